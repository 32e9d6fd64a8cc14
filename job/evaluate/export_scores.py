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

from job.evaluate.retrieval import evaluate_model

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
    max_drop: float, echo: Echo, *, crashed: dict[str, str] | None = None,
    base: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The export table of metrics.json: the PyTorch row, then one row per export. ``memo`` is the PyTorch model
    that scored ``tuned_metrics`` (its passage encodings are reused). An export that failed when it was made
    (``crashed``: ones the exporter could not even record), or that its probe check refuses here, gets a row with
    ``status: failed``, the reason and the fix, and the others are scored all the same. ``base``: the base
    model's exports' status (for `rag-eval serve`), listed in the table."""
    from job.errors import JobError
    from job.export.onnx import EXPORTS, failure_reason, open_export, read_manifest, status
    from job.export.runtime import export_command

    passages = [ir.corpus[i] for i in list(ir.corpus)[:SPEED_TEXTS]]
    relevant = ir.relevant_docs(options.get("relevance_threshold", 1))
    questions = [ir.queries[q] for q in list(relevant)[:SPEED_QUESTIONS]]
    batch = options.get("batch_size", 64)
    tuned = memo.model
    rows: dict[str, Any] = {
        "pytorch": {
            "file": "model.safetensors",
            "status": "ok",
            "bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors")),
            "dims": {str(d): {"ndcg@10": m["ndcg@10"], "drop_points": 0.0} for d, m in tuned_metrics.items()},
        }
    }
    models: dict[str, Any] = {"pytorch": tuned}
    manifest = read_manifest(model_dir)
    for name in names:
        entry = manifest["exports"].get(name, {})
        file = entry.get("file") or EXPORTS[name].file
        try:
            if crashed and name in crashed:
                raise JobError(crashed[name])
            if status(model_dir, name) == "failed":
                raise JobError(
                    f"it failed when it was made: {failure_reason(model_dir, name)}",
                    f"{export_command(model_dir, name)[:-1]} --force` tries again",
                )
            exported = open_export(model_dir, name)
        except JobError as exc:
            rows[name] = {"file": file, "status": "failed", "why": exc.problem, "fix": exc.fix}
            echo(f"evaluate: {name} FAILED, not scored: {exc.problem}")
            continue
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
        quantization = entry.get("quantization") or {}
        rows[name] = {
            "file": file, "status": "ok", "bytes": entry.get("bytes"), "agreement": entry.get("agreement"),
            "probe": exported.probe, "dims": per_dim, "worst_drop_points": worst, "flagged": worst > max_drop,
        }  # fmt: skip
        if quantization:
            rows[name]["quantization"] = {
                "recipe": quantization.get("recipe"),
                "float_nodes": len(quantization.get("float_nodes") or {}),
                "int8_nodes": len(quantization.get("int8_nodes") or []),
            }
        models[name] = exported
        cells = ", ".join(f"{d}: {v['ndcg@10']:.4f} ({0.0 - v['drop_points']:+.1f})" for d, v in per_dim.items())
        flag = f"; FLAGGED: loses {worst:.1f} points (over --export-max-drop {max_drop:g})" if worst > max_drop else ""
        echo(f"evaluate: {name} NDCG@10 by dim {{{cells}}}{flag}")
    for name, measured in speeds(models, passages, questions, batch).items():
        rows[name].update(measured)
    echo(
        "evaluate: encode speed (texts/s in batches of "
        f"{batch}; one question): "
        + ", ".join(f"{n} {r['texts_per_s']:.0f}/s, {r['question_ms']:.1f} ms" for n, r in rows.items() if n in models)
    )
    table: dict[str, Any] = {"max_drop_points": max_drop, "models": rows}
    if base:
        table["baseline_exports"] = base
    return table


def failed_exports(table: dict[str, Any] | None) -> dict[str, str]:
    """{export: why} for every export of the table that failed: the fine-tuned model's, then the base model's."""
    if not table:
        return {}
    out = {n: r.get("why", "") for n, r in table.get("models", {}).items() if r.get("status") == "failed"}
    for name, state in (table.get("baseline_exports") or {}).items():
        if state.get("status") == "failed":
            out[f"{name} (base model, for rag-eval serve)"] = state.get("why", "")
    return out


def markdown(table: dict[str, Any] | None) -> str:
    """The report's (and the card's) export section."""
    if not table:
        return ""
    every = table["models"]
    models = {n: r for n, r in every.items() if r.get("status", "ok") == "ok"}
    dims = list(models["pytorch"]["dims"])
    head = "| model | file | size | texts/s | one question | " + " | ".join(dims) + " | worst drop |"
    lines = [
        "## Exports",
        "",
        "NDCG@10 on the test split with each export encoding questions and passages, and the change against the "
        "PyTorch model in points; speed measured the same way for every row on this machine (texts per second in "
        "batches, median for one question alone).",
        "",
        "Status: "
        + "; ".join(
            f"{n} {'ok' if r.get('status', 'ok') == 'ok' else 'FAILED (below)'}"
            for n, r in every.items()
            if n != "pytorch"
        )
        + "."
        + "".join(
            f" Base model's {n}: {'ok' if st.get('status') == 'ok' else 'FAILED (below)'}."
            for n, st in (table.get("baseline_exports") or {}).items()
        ),
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
    failed = failed_exports(table)
    if failed:
        lines += [
            "**Failed exports** (not scored, and `rag-eval serve` does not use them; the PyTorch model and the other "
            "exports are unaffected):",
            "",
        ]
        for name, row in every.items():
            if row.get("status") == "failed":
                fix = f" Fix: {row['fix']}" if row.get("fix") else ""
                lines.append(f"- ⚠ **{name}** (`{row['file']}`): FAILED: {row['why']}.{fix}")
        for name, state in (table.get("baseline_exports") or {}).items():
            if state.get("status") == "failed":
                lines.append(
                    f"- ⚠ **{name} of the base model** (for `rag-eval serve`'s baseline column): FAILED: "
                    f"{state.get('why')}."
                )
        lines.append("")
    probes = [
        f"{name} {row['probe']['min_cosine']:.4f} (limit {row['probe']['limit']:g})"
        for name, row in models.items()
        if row.get("probe")
    ]
    if probes:
        lines += [
            "Probe check (minimum cosine to the PyTorch model's vectors over the probe texts, encoded on this "
            "machine; whatever loads an export repeats it): " + ", ".join(probes) + ".",
            "",
        ]
    for name, row in models.items():
        q = row.get("quantization")
        if q:
            lines += [
                f"{name} recipe `{q['recipe']}`: {q['int8_nodes']} MatMuls in int8, {q['float_nodes']} FFN "
                "projections kept in float32, embeddings and LayerNorms float32 (the nodes and settings are in "
                "model/exports.json).",
                "",
            ]
    flagged = [n for n, r in models.items() if r.get("flagged")]
    if flagged:
        lines.append(
            f"⚠ {', '.join(flagged)} loses more than {table['max_drop_points']:g} NDCG@10 points at some dim "
            "(`--export-max-drop`): `rag-eval serve` does not pick it unless asked (`--backend`)."
        )
    elif len(models) > 1:
        lines.append(
            f"Every {'scored ' if failed else ''}export is within {table['max_drop_points']:g} point(s) of the "
            "PyTorch model at every dim."
        )
    serve = [
        f"{name}: " + ", ".join(f"{d}: {v['questions_only_ndcg@10']:.4f}" for d, v in row["dims"].items())
        for name, row in models.items()
        if name != "pytorch"
    ]
    if serve:
        lines += [
            "",
            "Questions through the export against passages indexed with PyTorch (how `rag-eval serve --backend` "
            "uses it): " + "; ".join(serve) + ".",
        ]
    if len(models) > 1:
        lines += [
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
    ok = [
        n
        for n in available
        if n in rows and rows[n].get("status", "ok") == "ok" and "texts_per_s" in rows[n] and not rows[n].get("flagged")
    ]
    return max(ok, key=lambda n: rows[n]["texts_per_s"]) if ok else None
