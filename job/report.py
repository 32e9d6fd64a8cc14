"""Baseline vs fine-tuned report: Markdown table, JSON with every metric, PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PerDim = dict[int, dict[str, float]]


NO_GUARD = (
    "General retrieval: not measured. No guard set was given, so this report cannot say what the fine-tune costs "
    "outside its domain (on SciFact the default recipe loses 4.5-6.6 NDCG@10 points: BENCHMARKS.md). Pass "
    "`--guard-data DIR` (a BEIR folder; with train or dev queries it also turns on `--merge-base auto`, which keeps "
    "most of that)."
)


def _pct(new: float, old: float) -> str:
    return f"{(new - old) / old * 100:+.1f}%" if old else "n/a"


def _points(new: float, old: float) -> str:
    """The change in NDCG points (0.010 = 1 point)."""
    return f"{(new - old) * 100:+.1f}"


def comparison_rows(baseline: PerDim, finetuned: PerDim, metric: str = "ndcg@10") -> list[dict[str, Any]]:
    """One row per dim: both scores, relative improvement, and each model's retention vs its full dim."""
    dims = sorted(set(baseline) & set(finetuned), reverse=True)
    if not dims:
        return []
    full = dims[0]
    rows = []
    for d in dims:
        b, f = baseline[d][metric], finetuned[d][metric]
        rows.append(
            {
                "dim": d,
                "baseline": b,
                "finetuned": f,
                "improvement_points": (f - b) * 100,
                "improvement_pct": (f - b) / b * 100 if b else None,
                "baseline_retention": b / baseline[full][metric] if baseline[full][metric] else None,
                "finetuned_retention": f / finetuned[full][metric] if finetuned[full][metric] else None,
            }
        )
    return rows


def markdown_table(baseline: PerDim, finetuned: PerDim, metric: str = "ndcg@10") -> str:
    rows = comparison_rows(baseline, finetuned, metric)
    full = rows[0]["dim"] if rows else "full"
    lines = [
        (
            f"| dim | baseline {metric.upper()} | fine-tuned {metric.upper()} | gain (points) | gain (relative) "
            f"| baseline retention vs {full} | fine-tuned retention vs {full} |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dim']} | {r['baseline']:.4f} | {r['finetuned']:.4f} | {_points(r['finetuned'], r['baseline'])} "
            f"| {_pct(r['finetuned'], r['baseline'])} | {r['baseline_retention']:.1%} "
            f"| {r['finetuned_retention']:.1%} |"
        )
    return "\n".join(lines)


def secondary_table(baseline: PerDim, finetuned: PerDim, metrics=("mrr@10", "map@100", "recall@1", "recall@10")) -> str:
    dims = sorted(set(baseline) & set(finetuned), reverse=True)
    head = "| dim | " + " | ".join(f"{m.upper()} base -> tuned" for m in metrics) + " |"
    lines = [head, "|---:|" + "---:|" * len(metrics)]
    for d in dims:
        cells = [f"{baseline[d][m]:.3f} -> {finetuned[d][m]:.3f}" for m in metrics]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_ndcg(baseline: PerDim, finetuned: PerDim, path: Path, title: str = "NDCG@10 by embedding dim") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(set(baseline) & set(finetuned))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(dims, [baseline[d]["ndcg@10"] for d in dims], "o--", label="baseline", color="#888888")
    ax.plot(dims, [finetuned[d]["ndcg@10"] for d in dims], "o-", label="fine-tuned", color="#1f77b4")
    for d in dims:
        ax.annotate(
            f"{finetuned[d]['ndcg@10']:.3f}",
            (d, finetuned[d]["ndcg@10"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims)
    ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("embedding dim (Matryoshka truncation)")
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def side_by_side(baseline: PerDim, finetuned: PerDim, guard: dict[str, Any]) -> str:
    """In-domain gain beside the change on each guard set, per dim, in NDCG@10 points: the trade-off in one table."""
    sets = [s for s in guard["sets"] if s.get("finetuned")]
    head = "| dim | in-domain gain (test) | " + " | ".join(f"{s['name']} change" for s in sets) + " |"
    lines = ["### In domain and outside it (NDCG@10 points)", "", head, "|---:|---:|" + "---:|" * len(sets)]
    for d in finetuned:
        cells = [f"{(finetuned[d]['ndcg@10'] - baseline[d]['ndcg@10']) * 100:+.1f}"]
        for s in sets:
            f, b = s["finetuned"].get(d), s["baseline"].get(d)
            cells.append(f"{(f - b) * 100:+.1f}" if f is not None and b is not None else "-")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out_dir: Path, baseline: PerDim, finetuned: PerDim, meta: dict[str, Any]) -> dict[str, Path]:
    """Write report.md, metrics.json and ndcg_by_dim.png into ``out_dir``; metrics.json is written last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(baseline, finetuned)
    from job.card import summary_lines

    md = [
        f"# Retrieval report: {meta.get('model', '')}",
        "",
        f"Test set: {meta.get('test_queries', '?')} questions against a corpus of "
        f"{meta.get('corpus_size', '?')} passages. "
        "Metrics from sentence-transformers' InformationRetrievalEvaluator (cosine similarity); the checkpoint was "
        "selected on the validation split only. Gains are in NDCG points (0.010 = 1 point).",
        "",
        *summary_lines(meta),
        "",
        "## NDCG@10",
        "",
        table,
        "",
        "## Other metrics",
        "",
        secondary_table(baseline, finetuned),
        "",
        "![NDCG@10 by dim](ndcg_by_dim.png)",
        "",
    ]
    if meta.get("merge_base"):
        from job.merge import markdown as merge_markdown

        md += [merge_markdown(meta["merge_base"]), ""]
    if meta.get("guard"):
        from job.guard import markdown as guard_markdown

        md += [guard_markdown(meta["guard"]), "", side_by_side(baseline, finetuned, meta["guard"]), ""]
    else:
        md += [NO_GUARD, ""]
    if meta.get("exports"):
        from job.export_scores import markdown as exports_markdown

        md += [exports_markdown(meta["exports"]), ""]
    paths = {"markdown": out_dir / "report.md", "plot": out_dir / "ndcg_by_dim.png", "json": out_dir / "metrics.json"}
    paths["markdown"].write_text("\n".join(md))
    plot_ndcg(baseline, finetuned, paths["plot"])
    from job.layout import file_stamp

    payload = {
        **meta,
        "outputs": {f"{out_dir.name}/{p.name}": file_stamp(p) for p in (paths["markdown"], paths["plot"])},
        "baseline": {str(d): m for d, m in baseline.items()},
        "finetuned": {str(d): m for d, m in finetuned.items()},
        "comparison": comparison_rows(baseline, finetuned),
    }
    tmp = paths["json"].with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(paths["json"])
    return paths
