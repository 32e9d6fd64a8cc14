"""Retrieval metrics over ranked lists of corpus ids: pure functions, checked by hand in the tests.

The definitions follow sentence-transformers' ``InformationRetrievalEvaluator`` so that, on binary
qrels, the numbers here equal the evaluator's (the tests assert it):

- a document is relevant when its grade is > 0; queries without a relevant document are skipped;
- ties in score are broken by ascending corpus id (string order);
- NDCG@k = DCG@k / IDCG@k, DCG = sum of gain / log2(rank + 1) over ranks 1..k, gain = the grade
  (linear gain, as BEIR / pytrec_eval), so binary grades give the evaluator's binary NDCG; IDCG
  takes the best min(#relevant, k) grades;
- MRR@k = 1 / rank of the first relevant document within the top k (0 if none);
- MAP@k = sum of precision@rank at each relevant rank <= k, divided by min(#relevant, k) (trec_eval's
  map_cut_k and ir_measures' AP@k divide by all #relevant, so they differ once a query has more than k);
- Recall@k = relevant documents in the top k / all relevant documents.

Graded qrels therefore change NDCG only; the other metrics are binary by definition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# What `rag-eval score` reports, in order.
REPORTED = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@3", "recall@5", "recall@10")
DEPTH = 100  # the deepest cut-off above (MAP@100): how many results each query asks for


def rank_hits(hits: Iterable[tuple[str, float]]) -> list[str]:
    """Corpus ids by descending score, ties by ascending id: the evaluator's order."""
    return [cid for cid, _ in sorted(hits, key=lambda h: (-h[1], h[0]))]


def ndcg_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    dcg = sum(grades.get(cid, 0) / math.log2(i + 2) for i, cid in enumerate(ranked[:k]) if grades.get(cid, 0) > 0)
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def mrr_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    for i, cid in enumerate(ranked[:k]):
        if grades.get(cid, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def map_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    n_relevant = sum(1 for g in grades.values() if g > 0)
    if not n_relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, cid in enumerate(ranked[:k]):
        if grades.get(cid, 0) > 0:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, n_relevant)


def recall_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    n_relevant = sum(1 for g in grades.values() if g > 0)
    if not n_relevant:
        return 0.0
    return sum(1 for cid in ranked[:k] if grades.get(cid, 0) > 0) / n_relevant


_FUNCTIONS = {"ndcg": ndcg_at_k, "mrr": mrr_at_k, "map": map_at_k, "recall": recall_at_k}


def metric_value(name: str, ranked: Sequence[str], grades: Mapping[str, int]) -> float:
    kind, k = name.split("@")
    return _FUNCTIONS[kind](ranked, grades, int(k))


def score_rankings(
    rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], metrics: Sequence[str] = REPORTED
) -> dict[str, float]:
    """Mean of each metric over the queries that have at least one relevant document."""
    qids = [q for q, grades in qrels.items() if any(g > 0 for g in grades.values())]
    if not qids:
        raise ValueError("no query has a relevant document")
    missing = [q for q in qids if q not in rankings]
    if missing:
        raise ValueError(f"no ranking for {len(missing)} queries, e.g. {missing[0]!r}")
    return {m: float(np.mean([metric_value(m, rankings[q], qrels[q]) for q in qids])) for m in metrics}


def exact_search(queries: np.ndarray, corpus: np.ndarray, corpus_ids: Sequence[str], k: int) -> list[list[str]]:
    """Brute-force top-k by inner product (cosine for unit vectors), ties by ascending corpus id."""
    ids = np.asarray(corpus_ids, dtype=object)
    id_rank = np.empty(len(ids), dtype=np.int64)
    id_rank[np.argsort(ids.astype(str), kind="stable")] = np.arange(len(ids))
    k = min(k, len(ids))
    out = []
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(corpus, dtype=np.float32).T
    for row in scores:
        if k < len(row):
            kth = np.partition(row, len(row) - k)[len(row) - k]
            cand = np.nonzero(row >= kth)[0]  # every document tied with the k-th one competes on id
        else:
            cand = np.arange(len(row))
        order = cand[np.lexsort((id_rank[cand], -row[cand]))][:k]
        out.append([str(c) for c in ids[order]])
    return out


def overlap_at_k(approximate: Sequence[str], exact: Sequence[str], k: int) -> float:
    """ANN recall@k: the share of the exact top k that the approximate search also returned in its top k."""
    truth = list(exact[:k])
    return len(set(approximate[:k]) & set(truth)) / len(truth) if truth else 1.0


def mean_overlap_at_k(approximate: Sequence[Sequence[str]], exact: Sequence[Sequence[str]], k: int) -> float:
    return float(np.mean([overlap_at_k(a, e, k) for a, e in zip(approximate, exact, strict=True)]))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation, numpy's default); nan for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")
