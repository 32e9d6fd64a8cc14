"""The score report: Markdown tables (also printed), JSON with every number, a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rag_eval import frontier
from rag_eval.frontier import frontier_table, recommendation_line
from rag_eval.metrics import REPORTED

FRONTIER_PNG = "frontier.png"  # the quality x storage picture, beside report.md (only when the frontier was scored)

_LABELS = {
    "ndcg@10": "NDCG@10",
    "mrr@10": "MRR@10",
    "map@100": "MAP@100",
    "recall@1": "R@1",
    "recall@3": "R@3",
    "recall@5": "R@5",
    "recall@10": "R@10",
}


def _rows(result: dict[str, Any]):
    """(dim, label, row) for every scored pair, dims largest first, models in report order."""
    for dim in sorted(result["dims"], reverse=True):
        for label, model in result["models"].items():
            row = model["dims"].get(str(dim))
            if row is not None:
                yield dim, label, row


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.2f}"


def store_label(result: dict[str, Any]) -> str:
    """How the report names the store it scored ("Chroma", "exact store"; reports before 2026-12-07: Chroma)."""
    return result.get("store_label", "Chroma")


def through_store(row: dict[str, Any]) -> dict[str, float]:
    """A dim's metrics through the store (key ``store``; ``chroma`` in reports before 2026-12-07)."""
    return row["store"] if "store" in row else row["chroma"]


def ndcg_table(result: dict[str, Any]) -> str:
    """Per dim, each model side by side: NDCG@10 through the store, exact, the difference, ANN recall@10."""
    labels = list(result["models"])
    ref = "exact evaluator" if result["reference"] == "evaluator" else "exact search (graded)"
    head = ["dim"]
    for label in labels:
        head += [f"{label} {store_label(result)}", f"{label} {ref}", "Δ", "ANN recall@10"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for dim in sorted(result["dims"], reverse=True):
        cells = [str(dim)]
        for label in labels:
            r = result["models"][label]["dims"].get(str(dim))
            if r is None:
                cells += ["-"] * 4
                continue
            reference = r["evaluator"] if result["reference"] == "evaluator" else r["exact"]
            cells += [
                f"{through_store(r)['ndcg@10']:.4f}",
                f"{reference['ndcg@10']:.4f}",
                f"{r['ndcg_delta']:+.4f}",
                f"{r['ann_recall@10']:.3f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics_table(result: dict[str, Any]) -> str:
    """Every metric through the store, with the exact evaluator's number in brackets."""
    key = "evaluator" if result["reference"] == "evaluator" else "exact"
    head = ["dim", "model", *(_LABELS[m] for m in REPORTED)]
    lines = ["| " + " | ".join(head) + " |", "|---:|:---|" + "---:|" * len(REPORTED)]
    for dim, label, r in _rows(result):
        cells = [f"{through_store(r)[m]:.3f} ({r[key][m]:.3f})" for m in REPORTED]
        lines.append(f"| {dim} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(result: dict[str, Any]) -> str:
    """Disk footprint and the store's query latency per dim and model."""
    batch = next((r["latency"]["batch_size"] for _, _, r in _rows(result)), "?")
    head = [
        "dim",
        "model",
        "vectors",
        "disk MiB",
        "bytes/vector",
        "single p50 ms",
        "single p95 ms",
        f"batch of {batch} p50 ms",
        f"batch of {batch} p95 ms",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---:|:---|" + "---:|" * (len(head) - 2)]
    for dim, label, r in _rows(result):
        lat = r["latency"]
        bpv = "n/a" if r["bytes_per_vector"] is None else f"{r['bytes_per_vector']:.0f}"
        lines.append(
            f"| {dim} | {label} | {r['vectors']} | {_mib(r['disk_bytes'])} | {bpv} | {lat['single_p50_ms']:.2f} | "
            f"{lat['single_p95_ms']:.2f} | {lat['batch_p50_ms']:.2f} | {lat['batch_p95_ms']:.2f} |"
        )
    return "\n".join(lines)


def agreement_line(result: dict[str, Any]) -> str:
    a = result["agreement"]
    what = "the exact evaluator's" if result["reference"] == "evaluator" else "exact search's (graded)"
    verdict = "agrees with" if a["ok"] else "DIFFERS from"
    line = (
        f"NDCG@10 through {store_label(result)} {verdict} {what} within {a['max_abs_ndcg_delta']:.4f} at every dim "
        f"(tolerance {a['tolerance']}); lowest ANN recall@10 {a['min_ann_recall@10']:.3f}"
    )
    if not a["ok"] or a["min_ann_recall@10"] < a["ann_recall_target"]:
        line += (
            f" (below {a['ann_recall_target']}: "
            "re-index with a higher --ef-search / --ef-construction / --max-neighbors)"
        )
    return line + "."


def frontier_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for model in result["models"].values() for r in model.get("frontier", [])]


def recommendations(result: dict[str, Any]) -> str:
    """One line per model: the smallest configuration within 1 NDCG@10 point of float32 at full dim."""
    return "\n".join(recommendation_line(m.get("recommendation")) for m in result["models"].values() if "frontier" in m)


def frontier_section(result: dict[str, Any]) -> list[str]:
    rows = frontier_rows(result)
    if not rows:
        return []
    return [
        "## Quality x storage: every dim x precision",
        "",
        (
            "The stored vectors as float32, int8 (ranges calibrated on the corpus) and binary codes "
            "(sentence-transformers' quantize_embeddings), exact search in the quantized space, then (rescoring) "
            f"the top {result.get('rescore_multiplier')} x 10 candidates re-ranked with the float question. "
            "Bytes per vector: the codes alone. ms/query: one question's search (median), embedding excluded."
        ),
        "",
        frontier_table(rows),
        "",
        recommendations(result),
        "",
        f"![Quality x storage: NDCG@10 against bytes per vector]({FRONTIER_PNG})",
        "",
    ]


def run_files_section(result: dict[str, Any]) -> list[str]:
    """Where `--run-file` put the TREC runs and qrels, and how our numbers relate to trec_eval's."""
    runs = result.get("run_files")
    if not runs:
        return []
    names = [n for dims in runs["runs"].values() for files in dims.values() for n in files.values()]
    return [
        "## TREC run files",
        "",
        f"`{runs['dir']}`: {runs['qrels']} (`qid 0 docid grade`) and {len(names)} runs (`qid Q0 docid rank score "
        f"tag`, top 100), one per model, dim and precision, e.g. `{names[0]}`. `ir_measures` / `trec_eval` give "
        "the NDCG@10 above (graded gains on graded qrels). MAP differs: ours is sentence-transformers' MAP@100 "
        "(divided by min(relevant, 100)), trec_eval's AP divides by all relevant passages.",
        "",
    ]


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    d = result["data"]
    label = store_label(result)
    searched = next((r.get("store_settings", r.get("hnsw")) for _, _, r in _rows(result)), None) or {}
    settings = ", ".join(f"{k} {v}" for k, v in searched.items()) or "none"
    disk_note, search_name = result["store_disk"] + " ", result["store_search"]  # (the store's own: score_models)
    relevance = "graded relevance (NDCG with graded gains)" if d["graded"] else "binary relevance"
    models = "; ".join(f"{label}: {m['model']}" for label, m in result["models"].items())
    return "\n".join(
        [
            f"# Retrieval through {label}, by Matryoshka dim",
            "",
            (
                f"{d['queries']} questions against {d['corpus_size']} passages "
                f"({meta.get('data_source', '')}; {relevance}). "
                f"Store: {result['store']}. {search_name}: {settings}. Models: {models}."
            ),
            "",
            f"{label}: metrics of the rankings the vector store returns. Exact: sentence-transformers' "
            "InformationRetrievalEvaluator on the same data"
            + (
                " (binary relevance; for graded qrels the reference is exact search with graded gains)"
                if d["graded"]
                else ""
            )
            + f". ANN recall@10: overlap of {label}'s top 10 with exact search over the same stored vectors.",
            "",
            "## NDCG@10",
            "",
            ndcg_table(result),
            "",
            agreement_line(result),
            "",
            f"## All metrics through {label} (exact in brackets)",
            "",
            metrics_table(result),
            "",
            "## Index size and query latency",
            "",
            disk_note + f"Latency: {label}'s query call only (top 10 with documents), embedding excluded.",
            "",
            cost_table(result),
            "",
            *frontier_section(result),
            *run_files_section(result),
            "![NDCG@10 and index size by dim](rag_eval_by_dim.png)",
            "",
        ]
    )


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: NDCG@10 against dim (through the store solid, exact dashed). Right: index size against dim."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(result["dims"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    colours = ["#888888", "#1f77b4", "#d62728", "#2ca02c"]
    key = "evaluator" if result["reference"] == "evaluator" else "exact"
    for i, (label, model) in enumerate(result["models"].items()):
        c = colours[i % len(colours)]
        rows = [model["dims"][str(d)] for d in dims]
        left.plot(
            dims, [through_store(r)["ndcg@10"] for r in rows], "o-", color=c, label=f"{label} ({store_label(result)})"
        )
        left.plot(dims, [r[key]["ndcg@10"] for r in rows], "x--", color=c, alpha=0.6, label=f"{label} (exact)")
        sizes = [r["disk_bytes"] for r in rows]
        if all(s is not None for s in sizes):
            right.plot(dims, [s / 2**20 for s in sizes], "o-", color=c, label=label)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims)
        ax.set_xticklabels([str(d) for d in dims])
        ax.set_xlabel("embedding dim (Matryoshka truncation)")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    if not right.get_lines():
        right.text(0.5, 0.5, "not measured (--no-disk-size)", ha="center", va="center", transform=right.transAxes)
    left.set_ylabel("NDCG@10 (test)")
    left.set_title("NDCG@10 by dim")
    right.set_ylim(bottom=0)
    right.set_ylabel("collection size on disk (MiB)")
    right.set_title("Index size by dim")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def write(out_dir: Path, result: dict[str, Any], meta: dict[str, Any]) -> dict[str, Path]:
    """report.md, metrics.json, rag_eval_by_dim.png (and frontier.png when the frontier was scored) in ``out_dir``,
    each replaced whole; metrics.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "report.md",
        "json": out_dir / "metrics.json",
        "plot": out_dir / "rag_eval_by_dim.png",
    }
    _replace(paths["markdown"], lambda p: p.write_text(markdown(result, meta)))
    _replace(paths["plot"], lambda p: plot(result, p))
    if frontier_rows(result):
        paths["frontier"] = out_dir / FRONTIER_PNG
        recommended = [m.get("recommendation") for m in result["models"].values()]
        _replace(paths["frontier"], lambda p: frontier.plot(frontier_rows(result), recommended, p))
        run_report = out_dir.parent / "report"
        if out_dir.name == "rag_eval" and (run_report / "report.md").is_file():  # RUN_DIR/rag_eval: a job run's
            from job.evaluate.report import attach_frontier

            attach_frontier(run_report, paths["frontier"], frontier_section(result))
    _replace(paths["json"], lambda p: p.write_text(json.dumps(_clean({**meta, **result}), indent=2)))
    return paths


def _replace(path: Path, write) -> None:
    """Write through a temporary file, then rename: a killed `score` leaves the old file whole, never half."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    tmp.replace(path)
