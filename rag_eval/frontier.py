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
    rows = []
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
