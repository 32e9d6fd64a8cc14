"""A saved model that other serving stacks load with the same vectors.

sentence-transformers 6 saves its module list and configs in a new format: ``modules.json`` names classes that
older releases do not have (``sentence_transformers.base.modules.transformer.Transformer``),
``sentence_bert_config.json`` holds ``transformer_task`` / ``modality_config`` and no ``max_seq_length``, and
``1_Pooling/config.json`` says ``pooling_mode: "mean"``. sentence-transformers 3.x-5.x and infinity-emb (which
pins 3.4.1) fail on those files, and Text Embeddings Inference (TEI) reads two of them by fixed names:

* ``1_Pooling/config.json`` must hold the booleans ``pooling_mode_cls_token`` and ``pooling_mode_mean_tokens``
  (TEI takes CLS if the first is true, else mean, else last-token). Without those keys TEI refuses to start;
  without the file at all, TEI uses **CLS pooling for any BERT model**: silently different vectors for a
  mean-pooled model such as MiniLM.
* ``sentence_bert_config.json`` (or one of the older per-architecture names) must hold ``max_seq_length``;
  without the file TEI truncates at ``max_position_embeddings`` (512 for MiniLM, not its 256).
* its ONNX backend loads ``model.onnx`` or ``onnx/model.onnx`` and accepts float32 only, so those names must
  never hold a quantized graph (the int8 export is ``onnx/model_qint8.onnx``).

(Read from TEI's ``router/src/lib.rs``, ``core/src/download.rs`` and ``backends/ort/src/lib.rs``.)

The decision here: **the files older readers need replace sentence-transformers 6's three files in place**, in
the format every reader from sentence-transformers 3.x to 6.x, infinity-emb and TEI reads; no ``compat/``
copy (it would double the weights, and TEI and infinity-emb read only the model's root). ``tokenizer_config.json``
too, where transformers 5 wrote a tokenizer class older releases lack (``TokenizersBackend``: a tokenizer built with
the `tokenizers` library) or left out the inputs the tokenizer gives. sentence-transformers
6 reads these files through its own compatibility path with identical vectors, and :func:`make_portable`
proves it on every save: it reloads the rewritten folder and compares embeddings with the model in memory,
and puts the originals back if anything differs. A model whose modules the old format cannot express (another
task than feature extraction, several pooling modes at once, unknown modules) keeps sentence-transformers 6's
files and is recorded as not portable, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODULES = "modules.json"
ST_CONFIG = "sentence_bert_config.json"
# the names TEI (and sentence-transformers) try for the transformer's config, in order
ST_CONFIG_NAMES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
TEI_POOLING_DIR = "1_Pooling"  # TEI reads this path, whatever modules.json says
TOKENIZER_CONFIG = "tokenizer_config.json"
# tokenizer classes only transformers 5 has -> the class older releases load the same tokenizer.json with (a
# tokenizer built with the `tokenizers` library is saved as TokenizersBackend, which transformers 4 cannot import)
NEW_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
LEGACY_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Normalize": "sentence_transformers.models.Normalize",
    "Dense": "sentence_transformers.models.Dense",
}
# sentence-transformers' legacy pooling booleans, in its concatenation order
LEGACY_POOLING = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
TEI_POOLING = ("cls", "mean", "lasttoken")  # the pooling modes TEI can read from 1_Pooling/config.json
TEXT_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
READERS = "sentence-transformers 3.x-6.x, infinity-emb, Text Embeddings Inference"
# texts that every check encodes: short, with a prompt-like prefix, and one longer than any max_seq_length
PROBE_TEXTS = (
    "What was the order backlog at year end?",
    "query: How many employees does the company have?",
    "The board declared a quarterly dividend of $0.25 per share, payable in March.",
    " ".join(["Revenue grew in every segment while operating costs fell."] * 80),
)


@dataclass
class Pipeline:
    """What happens after the transformer, read from a saved model in either format."""

    pooling: str  # cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken
    normalize: bool
    max_seq_length: int | None
    do_lower_case: bool = False
    dim: int | None = None
    include_prompt: bool = True
    dense: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    pooling_dir: str | None = None


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _kind(module_type: str) -> str:
    return module_type.rsplit(".", 1)[-1]


def _pooling_mode(config: dict[str, Any]) -> str | tuple[str, ...]:
    mode = config.get("pooling_mode")
    if mode is None:
        modes = tuple(m for m, key in LEGACY_POOLING.items() if config.get(key))
        mode = modes[0] if len(modes) == 1 else (modes or ("mean",))
    return tuple(mode) if isinstance(mode, list) else mode


def read_pipeline(folder: str | Path) -> Pipeline:
    """Pooling, normalisation, token limit and prompts of a saved sentence-transformers model (old or new format)."""
    folder = Path(folder)
    modules = _json(folder / MODULES)
    pooling, normalize, dense, dim, include_prompt, pooling_dir = "mean", False, False, None, True, None
    for entry in modules:
        kind = _kind(entry["type"])
        if kind == "Pooling":
            config = _json(folder / entry["path"] / "config.json")
            mode = _pooling_mode(config)
            pooling = mode if isinstance(mode, str) else "+".join(mode)
            dim = config.get("embedding_dimension") or config.get("word_embedding_dimension")
            include_prompt = config.get("include_prompt", True)
            pooling_dir = entry["path"]
        elif kind == "Normalize":
            normalize = True
        elif kind == "Dense":
            dense = True
    st_config = next(((folder / n) for n in ST_CONFIG_NAMES if (folder / n).is_file()), None)
    config = _json(st_config) if st_config else {}
    max_len = config.get("max_seq_length")
    if max_len is None and (folder / "tokenizer_config.json").is_file():
        max_len = _json(folder / "tokenizer_config.json").get("model_max_length")
        max_len = max_len if isinstance(max_len, int) and max_len < 1_000_000 else None
    prompts: dict[str, str] = {}
    if (folder / "config_sentence_transformers.json").is_file():
        prompts = _json(folder / "config_sentence_transformers.json").get("prompts") or {}
    return Pipeline(
        pooling, normalize, max_len, bool(config.get("do_lower_case", False)), dim, include_prompt, dense,
        prompts, pooling_dir,
    )  # fmt: skip


# --- prompts that travel with the model -------------------------------------------------------------------------
PROMPT_KEYS = {"query": "query", "passage": "document"}  # the names encode_query / encode_document look up first


def carry_prompts(model, query_prompt: str | None, passage_prompt: str | None) -> dict[str, str]:
    """Put the run's prompts (``--query-prompt`` / ``--passage-prompt``) into the model before it is saved: they are
    written to ``config_sentence_transformers.json`` as ``prompts`` ``{"query": ..., "document": ...}``, so that
    ``model.encode_query`` / ``encode_document`` wherever the model is loaded (sentence-transformers >= 5; older
    releases: ``encode(..., prompt_name="query")``), our ONNX serve path and ``rag-eval`` apply them without flags.
    ``default_prompt_name`` stays unset: plain ``encode`` adds no prompt, as the model was trained (each side with
    its own prompt, or none). A prompt not given is not written (the model's own, if it had one, is kept)."""
    prompts = dict(getattr(model, "prompts", None) or {})
    given = {PROMPT_KEYS["query"]: query_prompt, PROMPT_KEYS["passage"]: passage_prompt}
    prompts.update({key: value for key, value in given.items() if value})
    model.prompts = prompts
    if getattr(model, "default_prompt_name", None) not in prompts:
        model.default_prompt_name = None
    return prompts


# --- what Text Embeddings Inference would do with the folder ------------------------------------------------------
def tei_view(folder: str | Path) -> dict[str, Any]:
    """TEI's reading of the folder, as its source does it: the pooling it would use (or why it would refuse to
    start), the token limit, and which ONNX file its ONNX backend would load."""
    folder = Path(folder)
    out: dict[str, Any] = {}
    pool_file = folder / TEI_POOLING_DIR / "config.json"
    if not pool_file.is_file():
        arch = _json(folder / "config.json").get("model_type", "") if (folder / "config.json").is_file() else ""
        out["pooling"] = "cls" if "bert" in arch.lower() else None
        out["pooling_note"] = f"no {TEI_POOLING_DIR}/config.json: TEI " + (
            "defaults to CLS pooling for a BERT model" if out["pooling"] else "refuses to start without --pooling"
        )
    else:
        config = _json(pool_file)
        if not all(isinstance(config.get(k), bool) for k in ("pooling_mode_cls_token", "pooling_mode_mean_tokens")):
            out["pooling"] = None
            out["pooling_note"] = (
                f"{TEI_POOLING_DIR}/config.json lacks pooling_mode_cls_token / pooling_mode_mean_tokens: TEI refuses "
                "to start (Failed to parse)"
            )
        elif config["pooling_mode_cls_token"]:
            out["pooling"] = "cls"
        elif config["pooling_mode_mean_tokens"]:
            out["pooling"] = "mean"
        elif config.get("pooling_mode_lasttoken"):
            out["pooling"] = "lasttoken"
        else:
            out["pooling"], out["pooling_note"] = None, "TEI supports only cls, mean and last-token pooling"
    st_config = next(((folder / n) for n in ST_CONFIG_NAMES if (folder / n).is_file()), None)
    if st_config is None:
        positions = (
            _json(folder / "config.json").get("max_position_embeddings") if (folder / "config.json").is_file() else None
        )
        out["max_input_length"] = positions
        out["max_length_note"] = "no sentence_bert_config.json: TEI uses max_position_embeddings"
    else:
        value = _json(st_config).get("max_seq_length")
        out["max_input_length"] = value if isinstance(value, int) else None
        if out["max_input_length"] is None:
            out["max_length_note"] = f"{st_config.name} has no max_seq_length: TEI refuses to start (Failed to parse)"
    onnx_file = folder / "model.onnx" if (folder / "model.onnx").is_file() else folder / "onnx" / "model.onnx"
    out["onnx_file"] = onnx_file.relative_to(folder).as_posix() if onnx_file.is_file() else None
    return out


def tei_problems(folder: str | Path, pipeline: Pipeline | None = None) -> list[str]:
    """Where TEI would refuse the folder or, worse, serve other vectors than sentence-transformers does."""
    folder = Path(folder)
    pipeline = pipeline or read_pipeline(folder)
    view = tei_view(folder)
    problems = []
    if pipeline.pooling not in TEI_POOLING:
        problems.append(f"the model pools with '{pipeline.pooling}', which TEI cannot do")
    elif pipeline.pooling_dir != TEI_POOLING_DIR:
        problems.append(f"the pooling config is in {pipeline.pooling_dir}/, but TEI reads {TEI_POOLING_DIR}/")
    elif view["pooling"] != pipeline.pooling:
        problems.append(
            view.get("pooling_note") or f"TEI would pool with {view['pooling']}, the model with {pipeline.pooling}"
        )
    if pipeline.max_seq_length is not None and view["max_input_length"] != pipeline.max_seq_length:
        problems.append(
            view.get("max_length_note")
            or f"TEI would truncate at {view['max_input_length']} tokens, the model at {pipeline.max_seq_length}"
        )
    if pipeline.dense:
        problems.append("the model has a Dense layer: TEI loads it only from 2_Dense/ (check with --dense-path)")
    if view["onnx_file"]:
        try:
            import onnx
        except ImportError:  # no exports without the export extra
            return problems
        graph = onnx.load(str(folder / view["onnx_file"]), load_external_data=False).graph
        if any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul") for n in graph.node):
            problems.append(f"{view['onnx_file']} is quantized, but TEI's ONNX backend loads that name as float32")
    return problems


# --- rewriting a saved model --------------------------------------------------------------------------------------
class NotPortable(Exception):
    """The model's modules cannot be written in the old format (the message says why)."""


def _legacy_transformer(config: dict[str, Any], max_seq_length: int | None, do_lower_case: bool) -> dict[str, Any]:
    if config.get("transformer_task", "feature-extraction") != "feature-extraction":
        raise NotPortable(f"the transformer's task is {config['transformer_task']!r}, not feature-extraction")
    if config.get("modality_config", TEXT_MODALITY) != TEXT_MODALITY:
        raise NotPortable("the transformer reads other modalities than text")
    if config.get("module_output_name", "token_embeddings") != "token_embeddings":
        raise NotPortable(f"the transformer outputs {config['module_output_name']!r}, not token_embeddings")
    known = {"transformer_task", "modality_config", "module_output_name", "max_seq_length", "do_lower_case"}
    for key in set(config) - known:
        if config[key]:  # empty kwargs dicts carry nothing
            raise NotPortable(f"sentence_bert_config.json sets {key}, which the old format cannot carry")
    out: dict[str, Any] = {"max_seq_length": max_seq_length or config.get("max_seq_length")}
    if out["max_seq_length"] is None:
        raise NotPortable("the model's max_seq_length is unknown")
    out["do_lower_case"] = bool(config.get("do_lower_case", do_lower_case))
    return out


def _legacy_pooling(config: dict[str, Any]) -> dict[str, Any]:
    mode = _pooling_mode(config)
    if not isinstance(mode, str):
        raise NotPortable(f"the model concatenates several poolings {mode}")
    dim = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    out: dict[str, Any] = {"word_embedding_dimension": dim}
    out.update({key: m == mode for m, key in LEGACY_POOLING.items()})
    out["include_prompt"] = bool(config.get("include_prompt", True))
    return out


def _legacy_dense(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("use_residual"):
        raise NotPortable("the Dense layer has a residual connection")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") != "sentence_embedding":
            raise NotPortable(f"the Dense layer's {key} is {config[key]!r}")
    return {k: config[k] for k in ("in_features", "out_features", "bias", "activation_function") if k in config}


def _legacy_tokenizer(config: dict[str, Any], input_names: list[str] | None) -> dict[str, Any] | None:
    """``tokenizer_config.json`` as older transformers read it (None: unchanged): a class they have, and the inputs
    the tokenizer gives when the file does not say (transformers 4's generic fast tokenizer would add
    ``token_type_ids``, which e.g. ModernBERT's forward refuses)."""
    out = dict(config)
    if out.get("tokenizer_class") in NEW_TOKENIZER_CLASSES:
        out["tokenizer_class"] = NEW_TOKENIZER_CLASSES[out["tokenizer_class"]]
    if input_names and "model_input_names" not in out:
        out["model_input_names"] = list(input_names)
    return out if out != config else None


def legacy_files(
    folder: Path, max_seq_length: int | None, do_lower_case: bool = False, input_names: list[str] | None = None
) -> dict[str, Any]:
    """{relative path: JSON content} of the old-format files for the model in ``folder`` (``input_names``: what its
    tokenizer gives the model); NotPortable if it cannot be expressed."""
    modules = _json(folder / MODULES)
    files: dict[str, Any] = {}
    if (folder / TOKENIZER_CONFIG).is_file():
        tokenizer = _legacy_tokenizer(_json(folder / TOKENIZER_CONFIG), input_names)
        if tokenizer is not None:
            files[TOKENIZER_CONFIG] = tokenizer
    new_modules = []
    for entry in modules:
        kind = _kind(entry["type"])
        if kind not in LEGACY_TYPES:
            raise NotPortable(f"module {entry['name']} is a {entry['type']}, which older releases do not have")
        if kind == "Transformer":
            if entry["path"] != "":
                raise NotPortable("the transformer is not at the model's root")
            name = next((n for n in ST_CONFIG_NAMES if (folder / n).is_file()), ST_CONFIG)
            config = _json(folder / name) if (folder / name).is_file() else {}
            files[name] = _legacy_transformer(config, max_seq_length, do_lower_case)
        elif kind == "Pooling":
            files[f"{entry['path']}/config.json"] = _legacy_pooling(_json(folder / entry["path"] / "config.json"))
        elif kind == "Dense":
            files[f"{entry['path']}/config.json"] = _legacy_dense(_json(folder / entry["path"] / "config.json"))
        new_modules.append({**entry, "type": LEGACY_TYPES[kind]})
    if not modules or _kind(modules[0]["type"]) != "Transformer":
        raise NotPortable("the first module is not a transformer")
    files[MODULES] = new_modules
    return files


def _write(folder: Path, files: dict[str, Any]) -> None:
    for rel, content in files.items():
        path = folder / rel
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(content, indent=2) + "\n")
        tmp.replace(path)


def _probe(model) -> Any:
    import numpy as np

    return np.asarray(model.encode(list(PROBE_TEXTS), convert_to_numpy=True, batch_size=8), dtype=np.float32)


def make_portable(folder: str | Path, model=None, *, verify: bool = True) -> dict[str, Any]:
    """Rewrite the saved model in ``folder`` in the format every reader understands, check that sentence-transformers
    loads it with the same embeddings as before, and say what TEI would do with it. ``model``: the model it was
    saved from (its token limit is the one to write; by default the saved one).

    Returns the record kept in training.json: ``portable`` (bool), ``why`` when not, ``readers``, ``tei``
    (pooling and token limit TEI reads) and ``tei_problems``. Both loads for the check run on the CPU, so a model
    trained on a GPU (TF32 matrix multiplies) is compared with itself, not with its GPU numbers."""
    import numpy as np

    folder = Path(folder)
    record: dict[str, Any] = {"portable": False, "readers": READERS}
    before = None
    if verify or model is None:
        from sentence_transformers import SentenceTransformer

        before = SentenceTransformer(str(folder), device="cpu")
    source: Any = model if model is not None else before
    max_len = getattr(source, "max_seq_length", None)
    do_lower = bool(getattr(source[0], "do_lower_case", False))
    input_names = getattr(getattr(source[0], "tokenizer", None), "model_input_names", None)
    try:
        files = legacy_files(folder, max_len, do_lower, input_names)
    except NotPortable as exc:
        record["why"] = str(exc)
    else:
        originals = {rel: (folder / rel).read_text() for rel in files if (folder / rel).is_file()}
        _write(folder, files)
        record["portable"] = True
        if verify:
            from sentence_transformers import SentenceTransformer

            assert before is not None  # (loaded above whenever verify)
            before.max_seq_length = max_len
            after = SentenceTransformer(str(folder), device="cpu")
            difference = float(np.abs(_probe(after) - _probe(before)).max())
            record["reload_max_abs_diff"] = difference
            if after.max_seq_length != max_len or difference > 1e-6:
                for rel, text in originals.items():
                    (folder / rel).write_text(text)
                record["portable"] = False
                record["why"] = (
                    f"the rewritten files load with other embeddings (max difference {difference:.2e}, token limit "
                    f"{after.max_seq_length} vs {max_len}); sentence-transformers 6's files were kept"
                )
    pipeline = read_pipeline(folder)
    view = tei_view(folder)
    record["tei"] = {"pooling": view["pooling"], "max_input_length": view["max_input_length"]}
    record["tei_problems"] = tei_problems(folder, pipeline)
    record["pipeline"] = {k: v for k, v in asdict(pipeline).items() if k in ("pooling", "normalize", "max_seq_length")}
    return record


def describe(record: dict[str, Any] | None) -> list[str]:
    """Report lines for a portability record (training.json's ``portable``)."""
    if not record:
        return []
    if not record.get("portable"):
        return [
            f"- Other serving stacks: **not portable** ({record.get('why')}); load it with sentence-transformers 6."
        ]
    tei = record.get("tei") or {}
    lines = [
        f"- Loads in {record['readers']} (module list and configs in the format all of them read; sentence-"
        f"transformers 6 reloads it with identical embeddings). TEI reads pooling `{tei.get('pooling')}` and "
        f"{tei.get('max_input_length')} tokens from it."
    ]
    lines += [f"- TEI warning: {p}." for p in record.get("tei_problems") or []]
    return lines
