"""rag_eval.metrics with numbers worked out by hand, and equal to InformationRetrievalEvaluator's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rag_eval_helpers import TableModel

from job.data.prepare import IRData
from job.evaluate.retrieval import evaluate_model
from rag_eval import metrics
from rag_eval.vectors import truncate_normalise

L2, L3, L4, L5 = (math.log2(n) for n in (2, 3, 4, 5))


def test_ndcg_binary_by_hand():
    # relevant d1, d3; ranked d0 d1 d2 d3: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    ranked, grades = ["d0", "d1", "d2", "d3"], {"d1": 1, "d3": 1}
    assert metrics.ndcg_at_k(ranked, grades, 10) == pytest.approx((1 / L3 + 1 / L5) / (1 + 1 / L3))
    assert metrics.ndcg_at_k(ranked, grades, 10) == pytest.approx(0.6509, abs=1e-4)
    # cut at 2: only d1 counts; the ideal still has min(2 relevant, k=2) = 2 entries
    assert metrics.ndcg_at_k(ranked, grades, 2) == pytest.approx((1 / L3) / (1 + 1 / L3))


def test_ndcg_graded_uses_linear_gain_and_the_ideal_order():
    # grades d0:1, d1:3, d2:0 (not relevant); ranked d0 d2 d1
    # DCG = 1/log2(2) + 3/log2(4) = 1 + 1.5 = 2.5; IDCG = 3/1 + 1/log2(3) = 3.6309
    ranked, grades = ["d0", "d2", "d1"], {"d0": 1, "d1": 3, "d2": 0}
    assert metrics.ndcg_at_k(ranked, grades, 10) == pytest.approx(2.5 / (3 + 1 / L3))
    assert metrics.ndcg_at_k(ranked, grades, 10) == pytest.approx(0.6885, abs=1e-4)
    assert metrics.ndcg_at_k(["d1", "d0"], grades, 10) == pytest.approx(1.0)


def test_mrr_map_recall_by_hand():
    ranked, grades = ["d0", "d1", "d2", "d3"], {"d1": 1, "d3": 2, "d9": 1}  # d9 never retrieved
    assert metrics.mrr_at_k(ranked, grades, 10) == pytest.approx(1 / 2)
    assert metrics.mrr_at_k(ranked, grades, 1) == 0.0
    # MAP@100: precision 1/2 at rank 2 and 2/4 at rank 4, over min(100, 3 relevant) = 3
    assert metrics.map_at_k(ranked, grades, 100) == pytest.approx((1 / 2 + 2 / 4) / 3)
    # MAP@2: only rank 2 counts, divided by min(2, 3) = 2
    assert metrics.map_at_k(ranked, grades, 2) == pytest.approx((1 / 2) / 2)
    assert metrics.recall_at_k(ranked, grades, 1) == 0.0
    assert metrics.recall_at_k(ranked, grades, 3) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(ranked, grades, 10) == pytest.approx(2 / 3)


def test_score_rankings_averages_over_queries_with_a_relevant_document():
    rankings = {"a": ["d0", "d1"], "b": ["d1", "d0"], "c": ["d0"]}
    qrels = {"a": {"d0": 1}, "b": {"d0": 1}, "c": {"d0": 0}}  # c has no relevant document: skipped
    got = metrics.score_rankings(rankings, qrels)
    assert got["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert got["ndcg@10"] == pytest.approx((1 + 1 / L3) / 2)
    assert got["recall@1"] == pytest.approx(1 / 2)
    assert list(got) == list(metrics.REPORTED)
    with pytest.raises(ValueError, match="no ranking"):
        metrics.score_rankings({"a": ["d0"]}, qrels)


def test_ties_are_broken_by_ascending_corpus_id_like_the_evaluator():
    assert metrics.rank_hits([("d2", 0.5), ("d10", 0.5), ("d1", 0.9)]) == ["d1", "d10", "d2"]  # string order
    corpus = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    ids = ["b", "c", "a", "a2"]
    # three documents tie at 1.0; k=2 keeps the two smallest ids among them, not the first two rows
    assert metrics.exact_search(np.array([[1, 0]], dtype=np.float32), corpus, ids, 2) == [["a2", "b"]]
    assert metrics.exact_search(np.array([[1, 0]], dtype=np.float32), corpus, ids, 10) == [["a2", "b", "c", "a"]]


def test_ann_overlap_and_percentiles():
    assert metrics.overlap_at_k(["a", "b", "x"], ["a", "b", "c"], 3) == pytest.approx(2 / 3)
    assert metrics.mean_overlap_at_k([["a"], ["b"]], [["a"], ["c"]], 1) == pytest.approx(0.5)
    assert metrics.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert metrics.percentile(list(range(101)), 95) == pytest.approx(95)


def test_truncate_normalise_makes_unit_prefixes():
    v = np.array([[3, 4, 12], [0, 0, 5]], dtype=np.float32)
    out = truncate_normalise(v, 2)
    assert out.ravel().tolist() == pytest.approx([0.6, 0.8, 0.0, 0.0])  # a zero prefix stays zero
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]


def test_exact_search_metrics_equal_the_evaluator_on_random_binary_data():
    """Our metrics over our exact search equal InformationRetrievalEvaluator's, at two dims."""
    rng = np.random.default_rng(7)
    corpus_v, query_v = rng.standard_normal((60, 8)), rng.standard_normal((25, 8))
    corpus = {f"d{i}": f"passage {i}" for i in range(60)}
    queries = {f"q{i}": f"question {i}" for i in range(25)}
    qrels = {f"q{i}": {f"d{j}": 1 for j in rng.choice(60, size=1 + i % 3, replace=False)} for i in range(25)}
    table = {f"passage {i}": corpus_v[i] for i in range(60)} | {f"question {i}": query_v[i] for i in range(25)}
    data = IRData(corpus, queries, qrels)
    exact = evaluate_model(TableModel(table), data, [8, 4], "t")
    for dim in (8, 4):
        ranked = metrics.exact_search(
            truncate_normalise(query_v, dim), truncate_normalise(corpus_v, dim), list(corpus), 100
        )
        ours = metrics.score_rankings(dict(zip(queries, ranked)), qrels)
        for metric in metrics.REPORTED:
            assert ours[metric] == pytest.approx(exact[dim][metric], abs=1e-6), (dim, metric)
