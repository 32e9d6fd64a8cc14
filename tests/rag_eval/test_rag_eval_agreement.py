"""Chroma agrees with the exact evaluator, on a dataset whose metrics are worked out by hand.

Corpus (4-d vectors; dim 2 keeps the first two components, re-normalised):
    d0 (4,0,0,0)   d1 (0,4,0,0)   d2 (3,1,0,0)   d3 (1,3,0,0)   d4 (2,2,0,4)
Queries and relevant passages:
    q0 (1,0,0,0) -> d2        q1 (2,1,0,3) -> d4        q2 (0,1,0,0) -> d1, d3

Cosine scores and the rank of each relevant passage:
    dim 4: q0: d0 1, d2 .949, d4 .408, d3 .316, d1 0        -> d2 at rank 2
           q1: d4 .982, d2 .592, d0 .535, d3 .423, d1 .267  -> d4 at rank 1
           q2: d1 1, d3 .949, d4 .408, d2 .316, d0 0        -> d1, d3 at ranks 1, 2
    dim 2: q0: d0 1, d2 .949, d4 .707, d3 .316, d1 0        -> d2 at rank 2
           q1 (2,1): d2 .990, d4 .949, d0 .894, d3 .707, d1 .447 -> d4 at rank 2
           q2: as at dim 4                                  -> ranks 1, 2
No score ties, no zero vectors.
"""

from __future__ import annotations

import math

import pytest
from rag_eval_helpers import hand_data, loaded

from job.evaluate.retrieval import evaluate_model
from rag_eval import store
from rag_eval.indexing import index_models
from rag_eval.scoring import ScoreOptions, score_models

G = 1 / math.log2(3)  # the gain of a hit at rank 2
EXPECTED = {
    4: {
        "ndcg@10": (G + 1 + 1) / 3,
        "mrr@10": (1 / 2 + 1 + 1) / 3,
        "map@100": (1 / 2 + 1 + 1) / 3,
        "recall@1": (0 + 1 + 1 / 2) / 3,
        "recall@3": 1.0,
    },
    2: {
        "ndcg@10": (G + G + 1) / 3,
        "mrr@10": (1 / 2 + 1 / 2 + 1) / 3,
        "map@100": (1 / 2 + 1 / 2 + 1) / 3,
        "recall@1": (0 + 0 + 1 / 2) / 3,
        "recall@3": 1.0,
    },
}
FAST = ScoreOptions(latency_samples=5, batch_queries=2, measure_disk=False)


def _index_and_score(tmp_path, data, model, dims=(4, 2), settings=None):
    target = store.StoreTarget(path=tmp_path / "chroma")
    client = store.connect(target)
    m = loaded(model)
    index_models(client, [m], data, "hand", list(dims), settings or store.HnswSettings(), echo=lambda _: None)
    return score_models(client, [m], data, list(dims), opts=FAST, echo=lambda _: None)


def test_hand_values_exact_evaluator_and_chroma_agree(tmp_path):
    data, model = hand_data()
    assert EXPECTED[4]["ndcg@10"] == pytest.approx(0.8770, abs=1e-4)
    assert EXPECTED[2]["ndcg@10"] == pytest.approx(0.7540, abs=1e-4)
    exact = evaluate_model(model, data, [4, 2], "hand")
    for dim, expected in EXPECTED.items():
        for metric, value in expected.items():
            assert exact[dim][metric] == pytest.approx(value, abs=1e-6), ("evaluator", dim, metric)

    result = _index_and_score(tmp_path, data, model, settings=store.HnswSettings(ef_search=500))  # a high ef_search
    for dim, expected in EXPECTED.items():
        row = result["models"]["fine-tuned"]["dims"][str(dim)]
        for metric, value in expected.items():
            assert row["store"][metric] == pytest.approx(value, abs=1e-6), ("chroma", dim, metric)
            assert row["exact"][metric] == pytest.approx(value, abs=1e-6), ("exact search", dim, metric)
        assert abs(row["store"]["ndcg@10"] - row["evaluator"]["ndcg@10"]) <= 0.002
        assert row["ann_recall@10"] == 1.0
    assert result["agreement"]["ok"] and result["reference"] == "evaluator"


def test_graded_qrels_give_graded_ndcg_and_are_judged_against_exact_search(tmp_path):
    # q2's passages now have grades d1:1, d3:2. Both rank as before (d1 1st, d3 2nd), so
    # q2's NDCG = (1/1 + 2/log2(3)) / (2/1 + 1/log2(3)) instead of 1; q0, q1 are unchanged.
    data, model = hand_data({"q0": {"d2": 1}, "q1": {"d4": 1}, "q2": {"d1": 1, "d3": 2}})
    q2 = (1 + 2 * G) / (2 + G)
    assert q2 == pytest.approx(0.8597, abs=1e-4)
    result = _index_and_score(tmp_path, data, model)
    assert result["reference"] == "exact" and result["data"]["graded"]
    for dim, (q0, q1) in {4: (G, 1.0), 2: (G, G)}.items():
        row = result["models"]["fine-tuned"]["dims"][str(dim)]
        assert row["store"]["ndcg@10"] == pytest.approx((q0 + q1 + q2) / 3, abs=1e-6)
        assert row["exact"]["ndcg@10"] == pytest.approx((q0 + q1 + q2) / 3, abs=1e-6)
        assert row["evaluator"]["ndcg@10"] == pytest.approx(
            EXPECTED[dim]["ndcg@10"], abs=1e-6
        )  # binary: grade 2 counts as 1
        assert row["store"]["recall@1"] == pytest.approx(EXPECTED[dim]["recall@1"], abs=1e-6)
        assert row["ndcg_delta"] == pytest.approx(0.0, abs=1e-6)
