"""`job export`: the fine-tuned model as ONNX (float32 and int8) inside ``model/``, scored like the model.

Where each export goes, with names that ``SentenceTransformer(path, backend="onnx", model_kwargs={"file_name":
FILE})`` loads wherever Optimum is installed, and that publishing (S3, the Hub) carries with the model:

==============  ==========================  ======================================================================
export          file in model/              how
==============  ==========================  ======================================================================
``onnx``        ``onnx/model.onnx``         float32 graph (torch.onnx), the name TEI's ONNX backend and
                                            ``backend="onnx"`` load by default; pooling and normalisation
                                            inside (output ``sentence_embedding``, beside ``last_hidden_state``)
``onnx-int8``   ``onnx/model_qint8.onnx``   ONNX Runtime dynamic quantization of the attention and FFN-input
                                            MatMuls (int8 weights per channel in a 7-bit range, activations
                                            quantized at run time); embeddings, LayerNorms and the FFN output
                                            projections stay float32 (see below)
==============  ==========================  ======================================================================

sentence-transformers' ``export_optimized_onnx_model`` / ``export_dynamic_quantized_onnx_model`` /
``export_static_quantized_openvino_model`` need Optimum's ONNX Runtime and OpenVINO packages, and the newest of
those (optimum-onnx 0.1.0, optimum-intel 2.2.0) require transformers < 4.58 / < 5.6 and huggingface-hub < 1.22:
they cannot be installed beside this project's transformers 5. The same steps are done here with the tools those
functions call (torch.onnx for the graph, ``onnxruntime.quantization.quantize_dynamic``), and :mod:`job.export.runtime`
runs the files. ``model/exports.json`` records each file's SHA-256 and the digest of the weights it was made from:
a file that no longer matches is named as damaged, an export of older weights as stale, each with the fix.

**The graph pools** (issue #33): the model's own pooling (mean, CLS, last token, ...) and L2 normalisation are in
the graph, whose first output ``sentence_embedding`` is what ``SentenceTransformer.encode(normalize_embeddings=True)``
gives, so ONNX Runtime alone, TEI's ONNX backend, OpenSearch ml-commons and fastembed-style loaders need no pooling
code (docs/deploy.md says what each one needs). ``last_hidden_state`` stays for runtimes that pool themselves.

**The int8 recipe** (issue #30). Quantizing every MatMul (what ``export_dynamic_quantized_onnx_model(model,
"avx512_vnni")`` does, and what this project did up to the file ``onnx/model_qint8_avx512_vnni.onnx``) broke
base-size models: all-mpnet-base-v2 fine-tuned came out at a minimum cosine of 0.045 to its PyTorch vectors. Measured
one group of MatMuls at a time (on an AVX2-only CPU), the FFN output projection (intermediate -> hidden, whose input
is the GELU output with its outliers) costs by far the most (0.744 alone; attention 0.998-0.9999, FFN input 0.986).
On an AVX512-VNNI CPU (no saturation) it is the same: all-mpnet-base-v2 quantized the old way gives a minimum
cosine of 0.63 over the probe texts (mean 0.86) and loses 12.9 NDCG@10 points at dim 32 on the Corvane pairs; with
its 12 FFN output projections in float32, 0.966 (mean 0.988) and within 0.9 points at every dim. all-MiniLM-L6-v2:
0.964 -> 0.979, at about 1.6x float32's speed instead of 2.3x (one thread). So:

* only ``MatMul`` nodes with a constant weight are quantized: the embeddings (``Gather``) and the LayerNorms stay
  float32;
* the FFN output projections stay float32. They are found in the graph, not by node names (BERT, MPNet, XLM-R
  and DistilBERT name them differently): a MatMul whose input comes from an activation (``Erf``/``Tanh``/``Gelu``/
  ``Sigmoid``/``Relu``, through element-wise nodes only), or whose weight is intermediate x hidden size;
* weights are int8 per output channel with ``reduce_range`` (7 bits). ONNX Runtime's dynamic quantization
  quantizes activations to uint8 (``DynamicQuantizeLinear``), so the kernels are u8s8; on CPUs without
  AVX512-VNNI (AVX2, AVX512 without VNNI) their 16-bit intermediate sums saturate with full-range weights, and
  ONNX Runtime's documentation advises ``reduce_range`` there: 255 x 64 x 2 < 32767, so it cannot saturate;
* every export is checked on probe texts against the PyTorch model where it is made; an int8 file below
  :data:`INT8_MIN_COSINE` is tried again with the whole FFN in float32 (attention only in int8), and is
  refused if that fails too.

``exports.json`` records the settings, the recipe used and every node left in float32 with the reason.

**Probe vectors.** The PyTorch model's vectors for :data:`EXPORT_PROBE_TEXTS` are written beside the exports
(``onnx/probe.json``, digest in the manifest). Whatever loads an export (:func:`open_export`: `rag-eval serve`,
the evaluate step's export table) encodes them again on *its* machine, where the int8 kernels may differ from
the exporting machine's, and refuses the export below the limit (:class:`ExportRefused`). An export made before
the probe file existed is checked against the PyTorch weights it was made from, encoded at load.

**An export that fails costs only itself.** :func:`export_model` keeps going after a failed export, records the
failure in the manifest (``failed``, with the reason), and only then raises :class:`ExportsFailed` (or, with
``strict=False``, leaves the caller to report it: the evaluate step writes its report and card first).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job.config import EXPORT_NAMES
from job.errors import JobError
from job.export.runtime import ExportedModel, damaged, export_command

Echo = Callable[[str], None]
MANIFEST = "exports.json"
PROBE_FILE = "onnx/probe.json"  # the PyTorch model's vectors for EXPORT_PROBE_TEXTS, written with the exports
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
FP32_TOLERANCE = 1e-4  # max |difference| per component, ONNX float32 vs PyTorch (unit vectors), where it is made
FP32_MIN_COSINE = 0.9999  # a float32 export below this on the probe texts where it is loaded is wrong, not rounded
INT8_MIN_COSINE = 0.95  # an int8 export below this on the probe texts is broken, not merely approximate
INT8_RECIPE = "2"  # the int8 recipe's version: an export that failed with an older recipe is tried again
# texts every export is checked on: questions and passages, numbers, other languages, one over any token limit
EXPORT_PROBE_TEXTS = (
    "What was the order backlog at year end?",
    "query: How many employees does the company have?",
    "The board declared a quarterly dividend of $0.25 per share, payable in March.",
    " ".join(["Revenue grew in every segment while operating costs fell."] * 80),
    "passage: Net income attributable to shareholders was 1.27 billion dollars, or 4.85 per diluted share.",
    "Which segment had the highest operating margin in fiscal 2024?",
    "The revolving credit facility matures in 2029 and bears interest at SOFR plus 1.125 percent.",
    "We may be adversely affected by changes in foreign currency exchange rates and interest rates.",
    "How much did the company spend on research and development last year?",
    "Cash and cash equivalents totalled 2.4 billion dollars at December 31, 2024 (Note 7).",
    "Wie hoch war der Umsatz im letzten Quartal?",
    "¿Cuántos empleados tiene la empresa en España?",
    "EBITDA = net income + interest + taxes + D&A; see the reconciliation table.",
    "OK",
    "Risk factors: cybersecurity incidents, supply chain disruption, litigation, and regulatory change.",
    "The Monterrey plant added a second assembly line for servo drives in the third quarter.",
)


@dataclass(frozen=True)
class Export:
    name: str
    file: str  # relative to the model folder
    what: str
    legacy: tuple[str, ...] = ()  # names older versions wrote: still loaded when the manifest names them


EXPORTS = {
    "onnx": Export("onnx", "onnx/model.onnx", "ONNX float32"),
    "onnx-int8": Export(
        "onnx-int8",
        "onnx/model_qint8.onnx",
        "ONNX int8 (dynamic, per-channel 7-bit weights; FFN output projections, embeddings, LayerNorms float32)",
        legacy=("onnx/model_qint8_avx512_vnni.onnx",),
    ),
}
BACKENDS = ("torch", *EXPORTS)
assert tuple(EXPORTS) == EXPORT_NAMES


class ExportRefused(JobError):
    """An export whose vectors on this machine are too far from its PyTorch model's (the probe check at load)."""

    def __init__(self, problem: str, fix: str, *, name: str, path: Path, min_cosine: float, limit: float):
        super().__init__(problem, fix)
        self.name, self.path, self.min_cosine, self.limit = name, path, min_cosine, limit


class ExportsFailed(JobError):
    """One or more exports failed (each named with its reason); the others, and the model, are written."""

    def __init__(self, problem: str, fix: str, failures: dict[str, str]):
        super().__init__(problem, fix)
        self.failures = failures
        self.results: dict[str, Any] = {}  # `job run`: the steps' results, every step having finished


def min_cosine_limit(name: str) -> float:
    """The probe check's limit for an export (read at call time: tests and callers may change the constants)."""
    return INT8_MIN_COSINE if name == "onnx-int8" else FP32_MIN_COSINE


def check_names(names: list[str] | None) -> list[str]:
    names = list(dict.fromkeys(names or []))
    unknown = [n for n in names if n not in EXPORTS]
    if unknown:
        hint = (
            " (OpenVINO: its exporter, optimum-intel, cannot be installed beside transformers 5)"
            if "openvino" in unknown
            else ""
        )
        raise JobError(
            f"Unknown export {', '.join(unknown)}{hint}.",
            f"use one or more of: {', '.join(EXPORTS)} (comma-separated).",
        )
    return names


def check_installed() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise JobError(
            f"Exporting needs onnx and onnxruntime, and {exc.name} is not installed.",
            "install the export extra: pip install -e '.[export]' (`make` installs it with the dev extra).",
        ) from None


def weights_digest(folder: Path) -> str:
    """SHA-256 of the PyTorch weights an export is made from (first 16 hex digits)."""
    h = hashlib.sha256()
    files = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    for path in files:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16] if files else ""


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {"exports": {}}
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        return {"exports": {}}
    manifest.setdefault("exports", {})
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(folder / MANIFEST)


def export_file(folder: Path, name: str, manifest: dict[str, Any] | None = None) -> str:
    """The file of an export, relative to ``folder``: the one its manifest names (an older run's name included)."""
    entry = (manifest if manifest is not None else read_manifest(folder))["exports"].get(name) or {}
    known = (EXPORTS[name].file, *EXPORTS[name].legacy)
    return entry["file"] if entry.get("file") in known else EXPORTS[name].file


def _failure(manifest: dict[str, Any], name: str, source: str) -> dict[str, Any] | None:
    """The recorded failure of ``name`` for these weights and the current recipe, if any."""
    failed = (manifest.get("failed") or {}).get(name)
    if not failed or failed.get("source_weights") != source:
        return None
    return failed if name != "onnx-int8" or failed.get("recipe") == INT8_RECIPE else None


def status(folder: Path, name: str, source: Path | None = None) -> str:
    """'ok', 'missing', 'stale' (made from other weights), 'damaged' (the file no longer matches its digest) or
    'failed' (the last try for these weights failed: :func:`failure_reason` says why)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    entry = manifest["exports"].get(name)
    path = folder / export_file(folder, name, manifest)
    if entry is None or not path.is_file():
        return "failed" if _failure(manifest, name, weights_digest(source or folder)) else "missing"
    if entry.get("source_weights") != weights_digest(source or folder):
        return "stale"
    if path.stat().st_size != entry.get("bytes") or file_digest(path) != entry.get("sha256"):
        return "damaged"
    return "ok"


def failure_reason(folder: Path, name: str) -> str:
    return ((read_manifest(folder).get("failed") or {}).get(name) or {}).get("why", "no reason recorded")


def open_export(
    folder: Path,
    name: str,
    *,
    threads: int | None = None,
    source: Path | None = None,
    spin: bool = True,
    verify: bool = True,
) -> ExportedModel:
    """An export, checked against its manifest first (a missing, stale, damaged or failed one is a JobError with
    the fix), then, with ``verify``, on the probe texts on this machine (:class:`ExportRefused` below the limit)."""
    folder = Path(folder)
    state = status(folder, name, source)
    rel = export_file(folder, name)
    path = folder / rel
    again = export_command(folder, name)
    if state == "missing":
        raise JobError(f"{folder} has no {name} export ({rel}).", f"make it with {again}.")
    if state == "failed":
        raise JobError(
            f"The {name} export of {folder} failed when it was made: {failure_reason(folder, name)}.",
            f"use another backend (--backend onnx or torch); {again[:-1]} --force` tries again.",
        )
    if state == "stale":
        raise JobError(
            f"The {name} export in {folder} was made from other weights than the model's (retrained since).",
            f"make it again with {again[:-1]} --force`.",
        )
    if state == "damaged":
        raise damaged(path)
    exported = ExportedModel(folder, rel, threads=threads, name=name, spin=spin)
    if verify:
        exported.probe = verify_export(folder, name, exported, source)
    return exported


# --- the probe check ----------------------------------------------------------------------------------------------
_CHECKED: dict[tuple[str, str, str], dict[str, Any]] = {}  # (file, its SHA-256, reference) -> check, per process
_REFERENCES: dict[tuple[str, str], tuple[list[str], np.ndarray]] = {}  # PyTorch vectors computed at load


def probe_vectors(model, texts: list[str]) -> np.ndarray:
    """The PyTorch model's unit vectors for ``texts`` (no prompt: the check is of the graph, not the prompts)."""
    vectors = model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True, batch_size=8)
    return np.asarray(vectors, dtype=np.float32)


def compare(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """How close an export's unit vectors are to the PyTorch model's."""
    cosines = (reference * got).sum(1)
    return {
        "max_abs_diff": float(np.abs(reference - got).max()),
        "min_cosine": float(cosines.min()),
        "mean_cosine": float(cosines.mean()),
    }


def _write_probe(out: Path, texts: list[str], vectors: np.ndarray, source: str) -> dict[str, Any]:
    path = out / PROBE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "about": "The PyTorch model's normalised vectors for these texts, written when the exports were made: "
        "whatever loads an export encodes the texts again and compares (job/export/onnx.py).",
        "source_weights": source,
        "texts": list(texts),
        "vectors": [[round(float(x), 7) for x in row] for row in vectors],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)
    return {"file": PROBE_FILE, "sha256": file_digest(path), "texts": len(texts), "source_weights": source}


def reference(folder: Path, source: Path | None = None) -> tuple[list[str], np.ndarray, str]:
    """(texts, PyTorch vectors, where they come from) for checking ``folder``'s exports: its probe file when the
    manifest vouches for it and it belongs to these weights, else the PyTorch model encoded now."""
    folder = Path(folder)
    weights = Path(source or folder)
    digest = weights_digest(weights)
    record = read_manifest(folder).get("probe") or {}
    path = folder / PROBE_FILE
    if record.get("source_weights") == digest and path.is_file() and file_digest(path) == record.get("sha256"):
        payload = json.loads(path.read_text())
        return list(payload["texts"]), np.asarray(payload["vectors"], dtype=np.float32), "probe file"
    key = (str(weights.resolve()), digest)
    if not digest:
        raise JobError(
            f"The exports in {folder} cannot be checked: they have no probe file ({PROBE_FILE}, written by exports "
            "made since issue #30) and there are no PyTorch weights beside them to encode the probe texts with.",
            f"make them again with {export_command(folder)[:-1]} --force`.",
        )
    if key not in _REFERENCES:
        from job.models import load_model

        model = load_model(str(weights), device="cpu")
        model.float()
        texts = list(EXPORT_PROBE_TEXTS)
        _REFERENCES[key] = (texts, probe_vectors(model, texts))
    texts, vectors = _REFERENCES[key]
    return texts, vectors, "PyTorch weights, encoded now"


def verify_export(
    folder: Path, name: str, exported: ExportedModel | None = None, source: Path | None = None
) -> dict[str, Any]:
    """Encode the probe texts with the export on this machine and compare with the PyTorch vectors; below
    :func:`min_cosine_limit` an :class:`ExportRefused` naming the export, the cosine and the fix."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    rel = export_file(folder, name, manifest)
    path = folder / rel
    entry = manifest["exports"].get(name) or {}
    limit = min_cosine_limit(name)
    texts, ref, where = reference(folder, source)
    key = (str(path.resolve()), entry.get("sha256") or "", f"{where}:{hashlib.sha256(ref.tobytes()).hexdigest()}")
    check = _CHECKED.get(key)
    if check is None:
        exported = exported or ExportedModel(folder, rel, name=name)
        got = exported.encode(texts, normalize_embeddings=True)
        check = {**compare(ref, got), "texts": len(texts), "reference": where}
        _CHECKED[key] = check
    check = {**check, "limit": limit}
    if check["min_cosine"] < limit:
        made = (entry.get("agreement") or {}).get("min_cosine")
        there = f"; it was {made:.4f} on the machine that made it" if made is not None else ""
        raise ExportRefused(
            f"The {name} export {path} does not reproduce its model's vectors on this machine: minimum cosine "
            f"{check['min_cosine']:.4f} to the PyTorch vectors over {len(texts)} probe texts (the limit is "
            f"{limit:g}){there}",
            f"use the float32 export or PyTorch here (--backend onnx or torch); making it again on this machine "
            f"({export_command(folder, name)[:-1]} --force`) checks it here; if that fails too, int8 does not suit "
            "this model or CPU",
            name=name, path=path, min_cosine=check["min_cosine"], limit=limit,
        )  # fmt: skip
    return check


# --- exporting ----------------------------------------------------------------------------------------------------
GRAPH_POOLING = ("mean", "cls", "lasttoken", "max", "mean_sqrt_len_tokens")  # what the graph can pool with
GRAPH_OUTPUTS = ("sentence_embedding", "last_hidden_state")
ONNX_OPSET = 17


class _Pooled:
    """The transformer, then the model's own pooling and L2 normalisation, as one module to trace (issue #33): the
    graph outputs ``sentence_embedding`` (unit vectors, what ``SentenceTransformer.encode(normalize_embeddings=True)``
    gives) and, for runtimes that pool themselves (TEI, Optimum), ``last_hidden_state``. Pooling uses only
    element-wise ops and reductions (no MatMul): the int8 recipe's graph search sees the same MatMuls as before."""

    @staticmethod
    def module(transformer, mode: str):
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kwargs["token_type_ids"] = token_type_ids
                hidden = self.inner(**kwargs).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                if mode == "cls":
                    pooled = hidden[:, 0]
                elif mode == "lasttoken":
                    # the last position the mask keeps: the last column with left padding, the mask's own end with
                    # right padding (positions weighted by the mask; argmax of strictly increasing values)
                    positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device).unsqueeze(0)
                    last = (attention_mask.to(positions.dtype) * positions).argmax(dim=1, keepdim=True)
                    pick = (positions - 1 == last).unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * pick).sum(1)
                elif mode == "max":
                    pooled = torch.where(mask > 0, hidden, torch.full_like(hidden, -1e9)).max(1).values
                else:
                    summed = (hidden * mask).sum(1)
                    count = mask.sum(1).clamp(min=1e-9)
                    pooled = summed / (count.sqrt() if mode == "mean_sqrt_len_tokens" else count)
                norm = pooled.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1e-12)
                return pooled / norm, hidden

        return Pooled(transformer)


def _onnx_graph(model, path: Path) -> dict[str, Any]:
    """Trace the model into ``path``: inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the
    model takes them), outputs :data:`GRAPH_OUTPUTS`. Returns what the manifest records about the graph."""
    import warnings

    import torch

    transformer = model[0].auto_model.eval()
    mode = _pooling_of(model)
    if mode not in GRAPH_POOLING:
        modes = ", ".join(GRAPH_POOLING)
        raise _Failed(f"the model pools with {mode!r}, which the exported graph cannot hold (it holds {modes})")
    if any(type(m).__name__ == "Dense" for m in model):
        raise _Failed("the model has a Dense layer after pooling, which the exported graph does not hold")
    preprocess = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers 6 renamed it
    features = preprocess(["an example sentence", "another, longer example sentence to export with"])
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in features]
    args = tuple(features[n] for n in names)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in [*names, "last_hidden_state"]}
    axes["sentence_embedding"] = {0: "batch_size"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Pooled.module(transformer, mode), args, str(path), input_names=names, output_names=list(GRAPH_OUTPUTS),
            dynamic_axes=axes, opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    return {"inputs": names, "outputs": list(GRAPH_OUTPUTS), "pooling": mode, "normalized": True, "opset": ONNX_OPSET}


def _pooling_of(model) -> str:
    """The pooling mode of the model's Pooling module (one mode; several concatenated: their names joined)."""
    for module in model:
        if type(module).__name__ == "Pooling":
            mode = getattr(module, "pooling_mode", None)
            if mode is None and hasattr(module, "get_pooling_mode_str"):
                mode = module.get_pooling_mode_str()
            if isinstance(mode, (list, tuple)):
                mode = "+".join(mode)
            return str(mode)
    return "mean"


ACTIVATIONS = ("Erf", "Tanh", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Sigmoid", "Relu")
ELEMENTWISE = ("Mul", "Add", "Div", "Sub", "Pow", "Cast", "Identity", *ACTIVATIONS)


def _upstream(tensor: str, producer: dict[str, Any], constant_matmuls: set[str]) -> tuple[str | None, Any]:
    """Walk back from ``tensor`` through element-wise nodes only: (the first activation op met, the MatMul with a
    constant weight where the walk ends, if any)."""
    activation, matmul, seen, todo = None, None, set(), [(tensor, 0)]
    while todo:
        name, depth = todo.pop()
        node = producer.get(name)
        if node is None or id(node) in seen or depth > 16:
            continue
        seen.add(id(node))
        if node.op_type == "MatMul":
            matmul = matmul or (node if node.name in constant_matmuls else None)
            continue
        if node.op_type not in ELEMENTWISE:
            continue
        if node.op_type in ACTIVATIONS:
            activation = activation or node.op_type
        todo.extend((i, depth + 1) for i in node.input)
    return activation, matmul


def find_ffn(graph, intermediate: int | None = None, hidden: int | None = None) -> dict[str, dict[str, str]]:
    """The FFN MatMuls of a transformer graph, by structure: ``down`` (output projections: input from an activation,
    or weight intermediate x hidden) and ``up`` (input projections: the MatMul that feeds that activation, or weight
    hidden x intermediate), each {node name: why}."""
    weights = {init.name: tuple(init.dims) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    matmuls = [
        n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights and len(weights[n.input[1]]) == 2
    ]
    names = {n.name for n in matmuls}
    sizes_known = bool(intermediate and hidden and intermediate != hidden)
    down: dict[str, str] = {}
    up: dict[str, str] = {}
    for node in matmuls:
        shape = weights[node.input[1]]
        why = []
        activation, before = _upstream(node.input[0], producer, names)
        if activation:
            why.append(f"input from {activation}")
        if sizes_known and shape == (intermediate, hidden):
            why.append(f"weight {shape[0]}x{shape[1]} (intermediate x hidden)")
        if why:
            down[node.name] = ", ".join(why)
            if activation and before is not None:
                up[before.name] = f"feeds the {activation} before {node.name}"
    for node in matmuls:
        shape = weights[node.input[1]]
        if node.name not in down and node.name not in up and sizes_known and shape == (hidden, intermediate):
            up[node.name] = f"weight {shape[0]}x{shape[1]} (hidden x intermediate)"
    return {"down": down, "up": up}


# (name, which FFN MatMuls stay float32), tried in this order until one passes the probe check
INT8_RECIPES = (
    ("ffn-output-float", ("down",)),
    ("ffn-float", ("down", "up")),
)
QUANT_SETTINGS = {
    "tool": "onnxruntime.quantization.quantize_dynamic",
    "op_types_to_quantize": ["MatMul"],
    "MatMulConstBOnly": True,
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": True,
    "activations": "QUInt8, per tensor, quantized at run time (DynamicQuantizeLinear)",
    "kept_float32": "embeddings (Gather), LayerNorms, every non-MatMul op, and the MatMuls in float_nodes",
}


@contextmanager
def _root_log_quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools log advice on the root logger ("consider pre-processing": done here);
    quiet while they run, the root logger's level restored after (it once stayed at ERROR: every later warning of
    the job was lost)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _prepare_graph(source: Path, pre: Path):
    """ONNX Runtime's pre-processing for quantization (shape inference, basic graph optimisation); every node gets a
    name, so that the ones kept in float32 can be named."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _root_log_quiet():
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre))
    used = {n.name for n in graph.graph.node}
    for i, node in enumerate(graph.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in used:
                node.name += "_"
            used.add(node.name)
    onnx.save(graph, str(pre))
    return graph


def _quantize(pre: Path, target: Path, float_nodes: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _root_log_quiet():
        quantize_dynamic(
            str(pre), str(target), op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
            weight_type=QuantType.QInt8, nodes_to_exclude=float_nodes, extra_options={"MatMulConstBOnly": True},
        )  # fmt: skip


def _transformer_sizes(model) -> tuple[int | None, int | None]:
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    return getattr(config, "intermediate_size", None), getattr(config, "hidden_size", None)


class _Failed(Exception):
    """An export that does not pass its check: the reason, for the manifest and the report."""


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _encode_file(out: Path, path: Path, name: str, texts: list[str]) -> np.ndarray:
    # absolute: ``path`` already holds ``out``, which may be relative (`job export --run-dir runs/demo`)
    return ExportedModel(out, str(Path(path).resolve()), name=name).encode(texts, normalize_embeddings=True)


def _make_fp32(fp32: Path, out: Path, texts, ref) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    close = compare(ref, _encode_file(out, fp32, "onnx", texts))
    if close["max_abs_diff"] > FP32_TOLERANCE:
        raise _Failed(
            f"its vectors differ from the PyTorch model's by up to {close['max_abs_diff']:.1e} per component (the "
            f"limit is {FP32_TOLERANCE:g}; minimum cosine {close['min_cosine']:.4f})"
        )
    return fp32, close, {}


def _make_int8(fp32: Path, stage: Path, out: Path, model, texts, ref, echo: Echo):
    """The int8 recipe, with the fallback of :data:`INT8_RECIPES`: (file, agreement, quantization record)."""
    import onnx  # noqa: F401 - installed (check_installed)

    pre = stage / "onnx" / "model.pre.onnx"
    graph = _prepare_graph(fp32, pre)
    intermediate, hidden = _transformer_sizes(model)
    ffn = find_ffn(graph.graph, intermediate, hidden)
    constant = {init.name for init in graph.graph.initializer}
    matmuls = [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in constant]
    limit = INT8_MIN_COSINE
    tried = []
    for recipe, groups in INT8_RECIPES:
        float_nodes = {name: f"FFN {'output' if g == 'down' else 'input'} projection: {why}"
                       for g in groups for name, why in ffn[g].items()}  # fmt: skip
        target = stage / "onnx" / f"int8-{recipe}.onnx"
        _quantize(pre, target, list(float_nodes))
        close = compare(ref, _encode_file(out, target, "onnx-int8", texts))
        tried.append({"recipe": recipe, "float_nodes": len(float_nodes), "min_cosine": round(close["min_cosine"], 4)})
        if close["min_cosine"] >= limit:
            record = {
                **QUANT_SETTINGS,
                "recipe": recipe,
                "recipe_version": INT8_RECIPE,
                "min_cosine_limit": limit,
                "tried": tried,
                "float_nodes": float_nodes,
                "int8_nodes": [n for n in matmuls if n not in float_nodes],
                "sizes": {"intermediate": intermediate, "hidden": hidden},
            }
            if not ffn["down"]:
                echo("export: onnx-int8: no FFN output projection found in the graph; every MatMul is int8")
            return target, close, {"quantization": record}
        target.unlink()
    cells = ", ".join(f"{t['min_cosine']:.4f} with {t['recipe']} ({t['float_nodes']} MatMuls float32)" for t in tried)
    raise _Failed(
        f"int8 quantization does not reproduce the model's vectors: minimum cosine over {len(texts)} probe texts "
        f"{cells}; the limit is {limit:g}"
    )


def export_model(
    folder: str | Path,
    names: list[str],
    *,
    model=None,
    out: str | Path | None = None,
    force: bool = False,
    echo: Echo = print,
    strict: bool = True,
) -> dict[str, Any]:
    """Write the named exports of the model in ``folder`` into ``out`` (default: the same folder) and record them
    in ``out/exports.json``. With ``out`` elsewhere (the base model of a run, which lives outside it), the small
    files an export needs to encode (tokenizer, configs) are copied there, not the weights. Exports that are
    already there for these weights are kept unless ``force``; so is the record of one that failed for these
    weights (``force`` tries it again).

    An export that fails its check (or crashes) is recorded in the manifest's ``failed`` with the reason, and the
    others are still made; then, with ``strict``, :class:`ExportsFailed` names every failure."""
    from job.export.portable import make_portable
    from job.models import load_model

    check_installed()
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    names = check_names(names)
    states = {n: status(out, n, folder) for n in names}
    todo = [n for n in names if force or states[n] not in ("ok", "failed")]
    manifest = read_manifest(out)
    for name in names:
        if states[name] == "failed" and name not in todo:
            echo(
                f"export: the {name} export of {folder} failed when last tried ({failure_reason(out, name)}); "
                "--force tries again"
            )
    if todo:
        for name in todo:
            if states[name] in ("stale", "damaged"):
                echo(f"export: the {name} export in {out} was {states[name]}; making it again")
        if model is None or not _cpu_float32(model):  # the graph is traced on the CPU in float32 (TEI: float32)
            limit = getattr(model, "max_seq_length", None)
            model = load_model(str(folder), device="cpu", max_seq_length=limit)
            model.float()
        if out == folder:
            manifest["portable"] = make_portable(folder, model)
        else:
            _copy_small_files(model, out)
        _make(folder, out, todo, model, manifest, echo)
    failures = {}
    source = weights_digest(folder)
    for name in names:
        failed = _failure(manifest, name, source) if name not in manifest["exports"] else None
        if failed:
            failures[name] = failed["why"]
    if strict and failures:
        raise exports_failed(folder, failures)
    return manifest


def exports_failed(folder: Path, failures: dict[str, str], what: str = "") -> ExportsFailed:
    """The error for exports that failed: each named with its reason, the fix for each kind."""
    listed = "; ".join(f"{name}: {why}" for name, why in failures.items())
    retry = export_command(Path(folder), ",".join(failures))[:-1] + " --force`"
    return ExportsFailed(
        f"{len(failures)} export(s) of {folder} failed{what} ({listed})",
        f"the PyTorch model and any other export are unaffected: serve with --backend torch or an export that "
        f"passed; {retry} tries again; if int8 keeps failing, leave it out (--export onnx)",
        failures,
    )


def _make(folder: Path, out: Path, todo: list[str], model, manifest: dict[str, Any], echo: Echo) -> None:
    source = weights_digest(folder)
    stage = out.parent / f".{out.name}.export.tmp"  # beside the model: never published with it
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        texts = list(EXPORT_PROBE_TEXTS)
        ref = probe_vectors(model, texts)
        manifest["probe"] = _write_probe(out, texts, ref, source)
        fp32 = stage / EXPORTS["onnx"].file
        start = time.perf_counter()
        graph_error, graph = None, {}
        try:
            graph = _onnx_graph(model, fp32)
        except _Failed as exc:
            graph_error = f"the ONNX graph could not be made ({exc})"
        except Exception as exc:  # noqa: BLE001 - every export fails with the reason; the model is untouched
            graph_error = f"the ONNX graph could not be made ({_one_line(exc)})"
        graph_seconds = time.perf_counter() - start
        for name in sorted(todo, key=lambda n: n == "onnx"):  # the float32 graph moves into place last
            began = time.perf_counter()
            try:
                if graph_error:
                    raise _Failed(graph_error)
                if name == "onnx":
                    made, close, extra = _make_fp32(fp32, out, texts, ref)
                else:
                    made, close, extra = _make_int8(fp32, stage, out, model, texts, ref, echo)
            except _Failed as exc:
                why = str(exc)
            except Exception as exc:  # noqa: BLE001 - a crash costs this export only
                why = f"it crashed ({_one_line(exc)})"
            else:
                target = _place(out, name, made, manifest)
                seconds = graph_seconds + time.perf_counter() - began  # the graph, then this export's own steps
                manifest["exports"][name] = {
                    "file": EXPORTS[name].file, "what": EXPORTS[name].what, "bytes": target.stat().st_size,
                    "sha256": file_digest(target), "source_weights": source, "agreement": close,
                    "made_with": _versions(), "seconds": round(seconds, 1), "graph": graph, **extra,
                }  # fmt: skip
                (manifest.get("failed") or {}).pop(name, None)
                echo(
                    f"export: {name} -> {target} ({target.stat().st_size / 2**20:.1f} MiB; vs PyTorch on "
                    f"{len(texts)} probe texts: max |diff| {close['max_abs_diff']:.1e}, min cosine "
                    f"{close['min_cosine']:.4f})" + _recipe_note(extra)
                )
                continue
            _drop(out, name, manifest)
            manifest.setdefault("failed", {})[name] = {
                "why": why, "source_weights": source, "recipe": INT8_RECIPE if name == "onnx-int8" else None,
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }  # fmt: skip
            echo(f"export: {name} FAILED for {folder}: {why}")
        _write_manifest(out, manifest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _recipe_note(extra: dict[str, Any]) -> str:
    q = extra.get("quantization")
    if not q:
        return ""
    return f"; {len(q['int8_nodes'])} MatMuls int8, {len(q['float_nodes'])} kept float32 (recipe {q['recipe']})"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _place(out: Path, name: str, made: Path, manifest: dict[str, Any]) -> Path:
    """Move a checked export into place, removing the file an older version of it had (another name)."""
    old = out / export_file(out, name, manifest)
    target = out / EXPORTS[name].file
    target.parent.mkdir(parents=True, exist_ok=True)
    made.replace(target)
    if old != target:
        old.unlink(missing_ok=True)
    return target


def _drop(out: Path, name: str, manifest: dict[str, Any]) -> None:
    """A failed export leaves no file behind (an older one, of these weights or not, would pass for it)."""
    (out / export_file(out, name, manifest)).unlink(missing_ok=True)
    (out / EXPORTS[name].file).unlink(missing_ok=True)
    manifest["exports"].pop(name, None)


def _cpu_float32(model) -> bool:
    import torch

    return all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


SMALL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


def _copy_small_files(model, out: Path) -> None:
    """What an export of a model that lives elsewhere needs beside it: tokenizer and module configs, no weights."""
    import tempfile

    from job.export.portable import make_portable

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        model.save(tmp)
        make_portable(tmp, model, verify=False)
        for path in Path(tmp).rglob("*"):
            rel = path.relative_to(tmp)
            if path.is_file() and (rel.name in SMALL_FILES or rel.suffix == ".json") and rel.name != "README.md":
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out / rel)
