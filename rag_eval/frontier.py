"""The quality x storage frontier of `rag-eval score`: every dim x precision (float32, int8, binary; int8 and
binary with and without rescoring), NDCG@10, bytes per vector and search time per query, and the recommendation:
the smallest configuration within 1 NDCG@10 point (0.01) of float32 at the model's full dim.

Every row searches the very vectors the collection stores (fetched from it), exactly (:mod:`rag_eval.quantized`),
so that the float32 row is the exact-search row of the report and the other rows differ by quantization alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from rag_eval import metrics
from rag_eval.quantized import QuantizedIndex, bytes_per_vector

TOLERANCE = 0.01  # one NDCG@10 point
K = 10


def frontier_rows(
    label: str,
    dim: int,
    ids: Sequence[str],
    vectors: np.ndarray,
    queries: np.ndarray,
    qids: Sequence[str],
    qrels: dict[str, dict[str, int]],
    precisions: Sequence[str],
    rescore_multiplier: int,
    timed_queries: int = 200,
) -> list[dict[str, Any]]:
    """One row per (precision, rescore) at this dim: NDCG@10 of the top 10, bytes per vector, ms per query
    (median wall time of one question's search, quantizing the question included)."""
    rows: list[dict[str, Any]] = []
    float_ndcg = None
    for precision in precisions:
        variants = [None] if precision == "float32" else [False] + ([True] if rescore_multiplier else [])
        for rescore in variants:
            index = QuantizedIndex(
                f"{label}-d{dim}-{precision}", ids, vectors, precision,
                rescore_multiplier=rescore_multiplier if rescore else 0,
            )  # fmt: skip
            found = index.search(queries, K)
            rankings = {q: [ids[p] for p, _ in hits] for q, hits in zip(qids, found)}
            ndcg = metrics.score_rankings(rankings, qrels, ["ndcg@10"])["ndcg@10"]
            times = []
            for i in range(min(timed_queries, len(queries))):
                t = time.perf_counter()
                index.search(queries[i : i + 1], K)
                times.append((time.perf_counter() - t) * 1000)
            if precision == "float32":
                float_ndcg = ndcg
            rows.append(
                {
                    "model": label,
                    "dim": dim,
                    "precision": precision,
                    "rescore": rescore,
                    "rescore_multiplier": rescore_multiplier if rescore else None,
                    "ndcg@10": ndcg,
                    "bytes_per_vector": bytes_per_vector(precision, dim),
                    "ms_per_query": metrics.percentile(times, 50),
                    "corpus": len(ids),
                }
            )
    for r in rows:  # share of float32's NDCG@10 at the same dim: what the published results report
        r["retained_vs_float32"] = r["ndcg@10"] / float_ndcg if float_ndcg else None
    return rows


def config_name(row: dict[str, Any]) -> str:
    rescore = f" + rescoring x{row['rescore_multiplier']}" if row["rescore"] else ""
    return f"dim {row['dim']} {row['precision']}{rescore}"


def recommend(rows: list[dict[str, Any]], model_dim: int | None = None) -> dict[str, Any] | None:
    """The smallest configuration (bytes per vector; then higher NDCG@10, no rescoring, faster) whose NDCG@10
    is within :data:`TOLERANCE` of float32 at the full dim (the model's, else the largest scored)."""
    floats = [r for r in rows if r["precision"] == "float32"]
    if not floats:
        return None
    full = [r for r in floats if r["dim"] == model_dim]
    ref = full[0] if full else max(floats, key=lambda r: r["dim"])
    ok = [r for r in rows if r["ndcg@10"] >= ref["ndcg@10"] - TOLERANCE - 1e-12]
    best = min(ok, key=lambda r: (r["bytes_per_vector"], -r["ndcg@10"], bool(r["rescore"]), r["ms_per_query"]))
    return {
        "model": ref["model"],
        "config": config_name(best),
        "row": best,
        "reference": ref,
        "reference_is_full_dim": bool(full),
        "tolerance": TOLERANCE,
    }


def recommendation_line(rec: dict[str, Any] | None) -> str:
    """The one line `rag-eval score` prints per model."""
    if rec is None:
        return "recommendation: none (score float32 too: --precision float32,int8,binary)."
    best, ref = rec["row"], rec["reference"]
    where = f"float32 at {ref['dim']} dims" + ("" if rec["reference_is_full_dim"] else " (the largest scored dim)")
    ratio = ref["bytes_per_vector"] / best["bytes_per_vector"]
    delta = (best["ndcg@10"] - ref["ndcg@10"]) * 100
    return (
        f"recommendation ({rec['model']}): {config_name(best)}: {best['bytes_per_vector']:,} bytes per vector, "
        f"{ratio:.0f}x smaller than {where} ({ref['bytes_per_vector']:,}), NDCG@10 {best['ndcg@10']:.4f} vs "
        f"{ref['ndcg@10']:.4f} ({delta:+.2f} points; the smallest within {TOLERANCE * 100:.0f} point)."
    )


def frontier_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per model x dim x precision x rescoring."""
    head = "| model | dim | precision | rescoring | NDCG@10 | % of float32 (same dim) | bytes/vector | ms/query |"
    lines = [head, "|:---|---:|:---|:---|---:|---:|---:|---:|"]
    for r in rows:
        rescore = "n/a" if r["rescore"] is None else (f"x{r['rescore_multiplier']}" if r["rescore"] else "no")
        kept = "-" if r["retained_vs_float32"] is None else f"{100 * r['retained_vs_float32']:.1f}"
        lines.append(
            f"| {r['model']} | {r['dim']} | {r['precision']} | {rescore} | {r['ndcg@10']:.4f} | {kept} "
            f"| {r['bytes_per_vector']:,} | {r['ms_per_query']:.3f} |"
        )
    return "\n".join(lines)


_MARKERS = {
    ("float32", None): "o",
    ("int8", False): "s",
    ("int8", True): "D",
    ("binary", False): "^",
    ("binary", True): "v",
}


def plot(rows: list[dict[str, Any]], recommended: list[dict[str, Any] | None], path) -> None:
    """Bytes per vector (log axis) against NDCG@10: a line per model x dim through its precisions, a marker per
    precision (filled: with rescoring), each model's recommended setting circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4.6), dpi=120, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, label in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == label]
        dims = sorted({r["dim"] for r in mine}, reverse=True)
        for i, dim in enumerate(dims):
            colour = cmap(i / max(1, len(dims) - 1))
            at = sorted((r for r in mine if r["dim"] == dim), key=lambda r: (r["bytes_per_vector"], bool(r["rescore"])))
            plain = [r for r in at if not r["rescore"]]
            ax.plot([r["bytes_per_vector"] for r in plain], [r["ndcg@10"] for r in plain], "-", color=colour,
                    alpha=0.7, label=f"dim {dim}")  # fmt: skip
            for r in at:
                marker = _MARKERS.get((r["precision"], r["rescore"]), "o")
                ax.plot([r["bytes_per_vector"]], [r["ndcg@10"]], marker, color=colour, markersize=6,
                        markerfacecolor=colour if r["rescore"] in (None, True) else "white")  # fmt: skip
        rec = next((x for x in recommended if x and x.get("model") == label), None)
        if rec:
            best = rec["row"]
            ax.plot([best["bytes_per_vector"]], [best["ndcg@10"]], "o", markersize=18, markerfacecolor="none",
                    markeredgecolor="#d62728", markeredgewidth=2)  # fmt: skip
            ax.annotate(f"recommended: {config_name(best)}", (best["bytes_per_vector"], best["ndcg@10"]),
                        textcoords="offset points", xytext=(-12, -18), ha="right", fontsize=8,
                        color="#d62728")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel("bytes per vector (log scale)")
        ax.set_ylabel("NDCG@10 (test)")
        ax.set_title(f"Quality x storage: {label}", fontsize=10)
        ax.grid(alpha=0.3)
        legend = ax.legend(fontsize=7, loc="lower right", title="line: one dim", title_fontsize=7)
        ax.add_artist(legend)
        kinds = [
            Line2D([], [], marker=m, linestyle="", color="#555555",
                   markerfacecolor="#555555" if rescore in (None, True) else "white",
                   label=p + ("" if rescore is None else (" + rescoring" if rescore else "")))
            for (p, rescore), m in _MARKERS.items()
            if any(r["precision"] == p and r["rescore"] == rescore for r in mine)
        ]  # fmt: skip
        ax.legend(handles=kinds, fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
