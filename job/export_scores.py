"""The evaluate step's export table: every export scored at every dim beside the PyTorch model.

For each export: NDCG@10 on the test split with the export encoding questions and passages (a deployment that
serves and indexes with it), the drop against the PyTorch model in points, NDCG@10 with the export encoding only
the questions against passages encoded by PyTorch (``rag-eval serve --backend`` over an index built with
PyTorch), and encode speed measured the same way for every model (texts per second in batches of
``--eval-batch-size``, and one question at a time). An export that loses more than ``--export-max-drop`` points at
any dim is flagged in the report and the card, and ``rag-eval serve`` does not pick it by default.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from job.evaluation import evaluate_model

Echo = Callable[[str], None]
SPEED_TEXTS = 128  # passages encoded for the throughput figure
SPEED_QUESTIONS = 10  # questions encoded one at a time for the latency figure
SPEED_ROUNDS = 3  # every model measured in turn, round after round; the best round counts (other load only slows)


class Memo:
    """A model whose passage encodings are kept, so that the PyTorch passages are encoded once for its own score and
    every export's questions-only score."""

    def __init__(self, model) -> None:
        self.model = model
        self.similarity_fn_name = getattr(model, "similarity_fn_name", "cosine")
        self.similarity = model.similarity
        self.model_card_data = model.model_card_data
        self._docs: dict[Any, Any] = {}

    def encode_query(self, *args, **kwargs):
        return self.model.encode_query(*args, **kwargs)

    def encode_document(self, sentences, **kwargs):
        key = (tuple(sentences), tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k != "show_progress_bar")))
        if key not in self._docs:
            self._docs[key] = self.model.encode_document(sentences, **kwargs)
        return self._docs[key]

    def encode(self, *args, **kwargs):
        return self.model.encode(*args, **kwargs)


class _QuestionsOnly(Memo):
    """Questions through ``queries`` (an export), passages through ``passages`` (PyTorch, memoised)."""

    def __init__(self, queries, passages: Memo) -> None:
        super().__init__(passages.model)
        self._docs = passages._docs
        self.queries = queries

    def encode_query(self, *args, **kwargs):
        return self.queries.encode_query(*args, **kwargs)


def speed(model, texts: list[str], questions: list[str], batch_size: int) -> dict[str, float]:
    """Texts per second in batches, and the median milliseconds for one question alone (after a warm-up)."""
    model.encode(texts[:batch_size], batch_size=batch_size)
    start = time.perf_counter()
    model.encode(texts, batch_size=batch_size)
    per_s = len(texts) / (time.perf_counter() - start)
    singles = []
    for q in questions:
        t = time.perf_counter()
        model.encode([q], batch_size=1)
        singles.append((time.perf_counter() - t) * 1000)
    return {"texts_per_s": round(per_s, 1), "question_ms": round(statistics.median(singles), 2)}


def speeds(models: dict[str, Any], texts: list[str], questions: list[str], batch_size: int) -> dict[str, dict]:
    """:func:`speed` of every model, measured in turn for :data:`SPEED_ROUNDS` rounds so that a change in the
    machine's other load hits every model alike; each model's best round is kept."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(SPEED_ROUNDS):
        for name, model in models.items():
            got = speed(model, texts, questions, batch_size)
            old = best.get(name)
            best[name] = got if old is None else {
                "texts_per_s": max(old["texts_per_s"], got["texts_per_s"]),
                "question_ms": min(old["question_ms"], got["question_ms"]),
            }  # fmt: skip
    return best


def score_exports(
    memo: Memo, model_dir: Path, names: list[str], ir, dims: list[int], tuned_metrics, options: dict[str, Any],
    max_drop: float, echo: Echo,
) -> dict[str, Any]:  # fmt: skip
    """The export table of metrics.json: the PyTorch row, then one row per export. ``memo`` is the PyTorch model
    that scored ``tuned_metrics`` (its passage encodings are reused)."""
    from job.export import EXPORTS, open_export, read_manifest

    passages = [ir.corpus[i] for i in list(ir.corpus)[:SPEED_TEXTS]]
    relevant = ir.relevant_docs()
    questions = [ir.queries[q] for q in list(relevant)[:SPEED_QUESTIONS]]
    batch = options.get("batch_size", 64)
    tuned = memo.model
    rows: dict[str, Any] = {
        "pytorch": {
            "file": "model.safetensors",
            "bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors")),
            "dims": {str(d): {"ndcg@10": m["ndcg@10"], "drop_points": 0.0} for d, m in tuned_metrics.items()},
        }
    }
    models: dict[str, Any] = {"pytorch": tuned}
    manifest = read_manifest(model_dir)
    for name in names:
        exported = open_export(model_dir, name)
        scores = evaluate_model(exported, ir, dims, "test", **options)
        serve = evaluate_model(_QuestionsOnly(exported, memo), ir, dims, "test", **options)
        per_dim = {}
        for d in dims:
            drop = (tuned_metrics[d]["ndcg@10"] - scores[d]["ndcg@10"]) * 100
            per_dim[str(d)] = {
                "ndcg@10": scores[d]["ndcg@10"],
                "drop_points": round(drop, 2),
                "questions_only_ndcg@10": serve[d]["ndcg@10"],
            }
        worst = max(v["drop_points"] for v in per_dim.values())
        entry = manifest["exports"].get(name, {})
        rows[name] = {
            "file": EXPORTS[name].file, "bytes": entry.get("bytes"), "agreement": entry.get("agreement"),
            "dims": per_dim, "worst_drop_points": worst, "flagged": worst > max_drop,
        }  # fmt: skip
        models[name] = exported
        cells = ", ".join(f"{d}: {v['ndcg@10']:.4f} ({0.0 - v['drop_points']:+.1f})" for d, v in per_dim.items())
        flag = f"; FLAGGED: loses {worst:.1f} points (over --export-max-drop {max_drop:g})" if worst > max_drop else ""
        echo(f"evaluate: {name} NDCG@10 by dim {{{cells}}}{flag}")
    for name, measured in speeds(models, passages, questions, batch).items():
        rows[name].update(measured)
    echo(
        "evaluate: encode speed (texts/s in batches of "
        f"{batch}; one question): "
        + ", ".join(f"{n} {r['texts_per_s']:.0f}/s, {r['question_ms']:.1f} ms" for n, r in rows.items())
    )
    return {"max_drop_points": max_drop, "models": rows}


def markdown(table: dict[str, Any] | None) -> str:
    """The report's (and the card's) export section."""
    if not table:
        return ""
    models = table["models"]
    dims = list(models["pytorch"]["dims"])
    head = "| model | file | size | texts/s | one question | " + " | ".join(dims) + " | worst drop |"
    lines = [
        "## Exports",
        "",
        "NDCG@10 on the test split with each export encoding questions and passages, and the change against the "
        "PyTorch model in points; speed measured the same way for every row on this machine (texts per second in "
        "batches, median for one question alone).",
        "",
        head,
        "|:---|:---|---:|---:|---:|" + "---:|" * len(dims) + "---:|",
    ]
    for name, row in models.items():
        size = f"{row['bytes'] / 2**20:.1f} MiB" if row.get("bytes") else "-"
        cells = []
        for d in dims:
            v = row["dims"][d]
            cells.append(f"{v['ndcg@10']:.4f}" + (f" ({0.0 - v['drop_points']:+.1f})" if name != "pytorch" else ""))
        worst = "-" if name == "pytorch" else f"{row['worst_drop_points']:.1f}" + (" ⚠" if row["flagged"] else "")
        lines.append(
            f"| {name} | `{row['file']}` | {size} | {row['texts_per_s']:.0f} | {row['question_ms']:.1f} ms | "
            + " | ".join(cells)
            + f" | {worst} |"
        )
    lines.append("")
    flagged = [n for n, r in models.items() if r.get("flagged")]
    if flagged:
        lines.append(
            f"⚠ {', '.join(flagged)} loses more than {table['max_drop_points']:g} NDCG@10 points at some dim "
            "(`--export-max-drop`): `rag-eval serve` does not pick it unless asked (`--backend`)."
        )
    else:
        lines.append(f"Every export is within {table['max_drop_points']:g} point(s) of the PyTorch model at every dim.")
    serve = [
        f"{name}: " + ", ".join(f"{d}: {v['questions_only_ndcg@10']:.4f}" for d, v in row["dims"].items())
        for name, row in models.items()
        if name != "pytorch"
    ]
    lines += [
        "",
        "Questions through the export against passages indexed with PyTorch (how `rag-eval serve --backend` uses "
        "it): " + "; ".join(serve) + ".",
        "",
        'Load an export elsewhere: `SentenceTransformer(MODEL, backend="onnx", model_kwargs={"file_name": '
        f'"{models[list(models)[-1]]["file"]}"}})` (needs `sentence-transformers[onnx]`).',
    ]
    return "\n".join(lines)


def pick_backend(table: dict[str, Any] | None, available: list[str]) -> str | None:
    """The fastest export within the drop limit among ``available`` (texts/s measured by the evaluate step)."""
    if not table:
        return None
    rows = table.get("models", {})
    ok = [n for n in available if n in rows and not rows[n].get("flagged")]
    return max(ok, key=lambda n: rows[n]["texts_per_s"]) if ok else None
