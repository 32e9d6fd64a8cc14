"""What to index and score: models and evaluation data, from a job run directory or given directly.

A run directory (``job run --run-dir DIR``) supplies two models, ``baseline`` (training.json's
``base_model``) and ``fine-tuned`` (``DIR/model``), the prompts they were trained and evaluated
with, their Matryoshka dims and the held-out test set (``DIR/ir/test``, BEIR format). Anything else
is one model (a folder or a Hub id) and an evaluation set given as a BEIR folder or a pairs file,
read with the job's own loaders.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from job.config import OFFLINE_DEFAULT_MODEL
from job.data.prepare import (
    IRData,
    build_ir_corpus,
    build_ir_queries,
    dedupe_pairs,
    detect_columns,
    load_beir,
    load_records,
    validate_pairs,
)
from job.errors import JobError
from job.layout import REPORT_RECORD, RunDir
from job.models import bundled_model_path, hub_offline, load_model, model_dim, resolve_model_name
from rag_eval.vectors import model_fingerprint

BASELINE, FINETUNED, MODEL = "baseline", "fine-tuned", "model"
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")  # `rag-eval serve --backend`
BUNDLED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class ModelSpec:
    """One model to index or query: a label for tables, and how to load and prompt it."""

    label: str
    ref: str  # what job.models.load_model takes: a local folder or a Hub id (already resolved)
    query_prompt: str | None = None
    passage_prompt: str | None = None
    name: str = ""  # what pages and APIs call it: a Hub id or a run's name, never a path on this machine
    export_dir: str | None = None  # where its exports are (`job export`): a run's model/ or baseline/model
    _key: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.name = self.name or public_name(self.ref)

    @property
    def key(self) -> str:
        """Identity of the model for collection names: a Hub id as it is; a local folder by its name and the
        digest of its weights, so that a copied or renamed run directory still finds its collections (and
        re-trained weights at the same path never do)."""
        path = Path(self.ref)
        if not path.exists():
            return self.ref
        if self._key is None:
            self._key = f"{path.resolve().name}@{model_fingerprint(self.ref)}"
        return self._key


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any  # a SentenceTransformer (or anything with encode_query / encode_document)
    fingerprint: str
    dim: int  # full embedding dimension

    @property
    def label(self) -> str:
        return self.spec.label


@dataclass
class Sources:
    models: list[ModelSpec]
    run_dir: RunDir | None = None
    dims: list[int] | None = None  # the run's Matryoshka dims, if a run directory says so
    training: dict[str, Any] = field(default_factory=dict)


def _looks_like_run_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "model" / "training.json").is_file() or (path / "data" / "prepare.json").is_file()
    )


def _missing(value: str, what: str) -> JobError:
    return JobError(
        f"{what} {value} does not exist (no such run directory or model folder"
        + (", and the Hugging Face Hub cannot be reached to load it as a Hub id)." if hub_offline() else ")."),
        "check the path; pass a job run directory (made by `job run --run-dir DIR`), a model folder, or a Hub id.",
    )


def resolve_models(
    model: str,
    baseline: str | None = None,
    *,
    with_baseline: bool = True,
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
) -> Sources:
    """``model`` is a run directory, a model folder or a Hub id; ``baseline`` optionally another model.

    Explicit prompts win over the run's; a run's prompts apply to both of its models, as in the job."""
    path = Path(model).expanduser()
    if _looks_like_run_dir(path):
        rd = RunDir(path)
        training = rd.record("train")
        if training is None:
            raise JobError(
                f"Run directory {rd.root} has no trained model yet ({rd.done_file('train')} is missing).",
                f"finish the run first (`job run --run-dir {rd.root}`), or pass a model folder or Hub id to --model.",
            )
        fp = training.get("fingerprint", {})
        qp = query_prompt if query_prompt is not None else fp.get("query_prompt")
        pp = passage_prompt if passage_prompt is not None else fp.get("passage_prompt")
        specs = []
        if with_baseline:
            base_ref = baseline or training.get("base_model")
            if not base_ref:
                raise JobError(f"{rd.done_file('train')} does not name its base model.", "pass it with --baseline.")
            base_name = training.get("base_model_id") if not baseline else None
            resolved = _resolve(base_ref, "Baseline model")
            exports = _local(resolved) if baseline else str(rd.base_export)  # another baseline: its own exports
            specs.append(ModelSpec(BASELINE, resolved, qp, pp, base_name or "", exports))
        specs.append(ModelSpec(FINETUNED, str(rd.model), qp, pp, rd.root.name, str(rd.model)))
        return Sources(specs, rd, [int(d) for d in training.get("dims", [])] or None, training)
    if path.is_dir() and not any((path / f).is_file() for f in ("modules.json", "config.json")):
        raise JobError(
            f"{path} is neither a job run directory (no model/training.json) "
            "nor a model folder (no modules.json or config.json).",
            "pass a run directory made by `job run --run-dir DIR`, a sentence-transformers model folder, or a Hub id.",
        )
    ref = _resolve(model, "Model")
    if baseline and with_baseline:
        base_ref = _resolve(baseline, "Baseline model")
        specs = [ModelSpec(BASELINE, base_ref, query_prompt, passage_prompt, public_name(baseline), _local(base_ref)),
                 ModelSpec(FINETUNED, ref, query_prompt, passage_prompt, public_name(model), _local(ref))]  # fmt: skip
    else:
        specs = [ModelSpec(MODEL, ref, query_prompt, passage_prompt, public_name(model), _local(ref))]
    return Sources(specs)


def _local(ref: str) -> str | None:
    return ref if Path(ref).is_dir() else None


def public_name(value: str) -> str:
    """A model's name for a page or an API: its Hub id, or its folder's name (the bundled copy: its Hub id)."""
    if value == OFFLINE_DEFAULT_MODEL:
        return BUNDLED_HUB_ID
    path = Path(value).expanduser()
    if not path.exists():
        return value  # a Hub id
    try:
        if path.resolve() == Path(bundled_model_path()).resolve():
            return BUNDLED_HUB_ID
    except JobError:
        pass
    name = path.resolve().name
    return path.resolve().parent.name if name == "model" else name  # RUN/model: the run's name


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")


def _resolve(value: str, what: str) -> str:
    path = Path(value).expanduser()
    if not path.exists() and not value.startswith("bundled:") and (hub_offline() or not _HUB_ID.match(value)):
        raise _missing(value, what)
    return resolve_model_name(value)


def load_models(
    specs: list[ModelSpec], max_seq_length: int | None = None, *, backend: str = "torch", threads: int | None = None
) -> list[LoadedModel]:
    """Each model with the backend asked for: PyTorch, or one of its exports (`job export`). The fingerprint is
    always the PyTorch weights': an index is built from them, whatever encodes the questions."""
    out = []
    for spec in specs:
        if backend == "torch":
            st = load_model(spec.ref, max_seq_length=max_seq_length)
        else:
            from job.export.onnx import open_export

            if spec.export_dir is None:
                raise JobError(
                    f"The {spec.label} model {spec.name} is not a local folder, so it has no {backend} export.",
                    "serve with --backend torch, or pass a job run directory (`job export` exports both models).",
                )
            source = Path(spec.ref) if Path(spec.ref).is_dir() else None
            st = open_export(Path(spec.export_dir), backend, threads=threads, source=source, spin=False)
        out.append(LoadedModel(spec, st, model_fingerprint(spec.ref), model_dim(st)))
    return out


def choose_backend(sources: Sources, requested: str, warn: Callable[[str], None] | None = None) -> tuple[str, str]:
    """(backend, why): ``requested``, or for ``auto`` the fastest export within the drop limit that every model
    has (from the run's evaluate step: report/metrics.json's export table), else torch.

    For ``auto`` the chosen export is also checked on this machine (its probe texts,
    :func:`job.export.onnx.open_export`): one whose vectors are too far from the PyTorch model's here is passed over
    with a warning (``warn``, default stderr) naming it and the measured cosine, and the next one is tried (the
    float32 export, then torch). An export asked for by name is checked when it is loaded, and refused with a
    JobError."""
    if requested != "auto":
        return requested, "asked for"
    if sources.run_dir is None:
        return "torch", "no run directory, so no scored export"
    import json

    from job.evaluate.export_scores import pick_backend
    from job.export.onnx import EXPORTS, status

    try:
        table = json.loads((sources.run_dir.root / REPORT_RECORD).read_text()).get("exports")
    except (OSError, ValueError):
        table = None
    if not table:
        return "torch", "the run has no scored export (`job export`)"
    available = [
        name
        for name in EXPORTS
        if all(
            spec.export_dir is not None
            and status(Path(spec.export_dir), name, Path(spec.ref) if Path(spec.ref).is_dir() else None) == "ok"
            for spec in sources.models
        )
    ]
    warn = warn or (lambda msg: click.echo(msg, err=True))
    passed_over: list[str] = []
    while True:
        chosen = pick_backend(table, available)
        if chosen is None:
            why = "no other export" if passed_over else "no export of every model within --export-max-drop"
            break
        refused = _refusal(sources, chosen)
        if refused is None:
            limit = table.get("max_drop_points")
            why = f"the fastest export within {limit:g} NDCG@10 point(s) of the PyTorch model at every dim"
            break
        available.remove(chosen)
        passed_over.append(f"{chosen} refused on this machine ({refused[1]})")
        following = pick_backend(table, available) or "torch"
        warn(f"warning: rag-eval serve --backend auto: {refused[0]}; serving on {following} instead.")
    if passed_over:
        why = f"{'; '.join(passed_over)}; {why}"
    return chosen or "torch", why


def _refusal(sources: Sources, backend: str) -> tuple[str, str] | None:
    """Why ``backend`` cannot serve here, as (the error's problem, a short note), or None: every model's export
    loads and passes its probe check on this machine."""
    from job.export.onnx import ExportRefused, open_export

    for spec in sources.models:
        source = Path(spec.ref) if Path(spec.ref).is_dir() else None
        if spec.export_dir is None:
            return f"The {spec.label} model {spec.ref} has no exports.", f"the {spec.label} model has no export"
        try:
            open_export(Path(spec.export_dir), backend, threads=1, source=source, spin=False)
        except ExportRefused as exc:
            return exc.problem, f"the {spec.label} model's minimum cosine {exc.min_cosine:.4f} < {exc.limit:g}"
        except JobError as exc:
            return exc.problem, f"the {spec.label} model's export: {exc.problem}"
    return None


def load_eval_data(data: str | None, sources: Sources, split: str = "test") -> tuple[IRData, str]:
    """The evaluation set and where it came from: a run directory's ``ir/<split>``, a BEIR folder,
    or a (question, passage) pairs file (every pair becomes a query; identical passages share an id)."""
    if data is None:
        if sources.run_dir is None:
            raise JobError(
                "No evaluation data: --model is not a run directory, so it brings no test set.",
                "pass --data with a run directory, a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) "
                "or a pairs file.",
            )
        rd = sources.run_dir
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise JobError(
                f"Evaluation data {path} does not exist.",
                "pass a run directory, a BEIR folder or a pairs file to --data.",
            )
        if path.is_file():
            return _pairs_file(path), str(path)
        if (path / "corpus.jsonl").is_file():
            return load_beir(path, split), str(path)
        if not _looks_like_run_dir(path) and not (path / "ir").is_dir():
            raise JobError(
                f"{path} is neither a run directory (no ir/ folder) nor a BEIR folder (no corpus.jsonl).",
                "pass a run directory made by `job prepare`/`job run`, a BEIR folder, or a pairs file.",
            )
        rd = RunDir(path)
    folder = rd.ir(split)
    if not folder.is_dir():
        have = sorted(p.name for p in (rd.root / "ir").iterdir()) if (rd.root / "ir").is_dir() else []
        raise JobError(
            f"Run directory {rd.root} has no {split} set ({folder} is missing"
            + (f"; it has: {', '.join(have)})." if have else ")."),
            f"run `job prepare --run-dir {rd.root}` first, or pick another --split.",
        )
    return load_beir(folder, split), str(folder)


def _pairs_file(path: Path) -> IRData:
    records = load_records(str(path))
    columns = list(dict.fromkeys(k for row in records.rows[:1000] for k in row if k != "__line__"))
    q_col, p_col = detect_columns(columns, None, None, records.source)
    pairs, _ = dedupe_pairs(validate_pairs(records, q_col, p_col).pairs)
    corpus, passage_ids = build_ir_corpus({"test": pairs})
    queries, qrels = build_ir_queries(pairs, passage_ids, "q")
    return IRData(corpus, queries, qrels)
