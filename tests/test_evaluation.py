"""Retrieval metrics on a hand-made keyword model, with the expected numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim

from job.data.prepare import IRData
from job.evaluate.retrieval import build_evaluator, evaluate_model, per_dim_metrics

KEYWORDS = ["alpha", "beta", "gamma", "delta"]


class _CardData:
    def set_evaluation_metrics(self, *args, **kwargs):
        pass


class KeywordModel:
    """Embeds a text as its keyword counts over KEYWORDS: dim 4, and dim 2 keeps alpha/beta only."""

    similarity_fn_name = "cosine"
    model_card_data = _CardData()

    def __init__(self):
        self.encode_calls = 0

    @staticmethod
    def similarity(a, b):
        return cos_sim(a, b)

    def encode(self, sentences, truncate_dim=None, **kwargs):
        self.encode_calls += 1
        emb = torch.tensor([[float(s.split().count(k)) for k in KEYWORDS] for s in sentences])
        return emb[:, :truncate_dim] if truncate_dim else emb

    encode_query = encode
    encode_document = encode


# corpus d0 "alpha" (1,0,0,0), d1 "beta" (0,1,0,0), d2 "alpha beta" (1,1,0,0), d3 "gamma" (0,0,1,0)
DATA = IRData(
    corpus={"d0": "alpha", "d1": "beta", "d2": "alpha beta", "d3": "gamma"},
    queries={"q0": "alpha", "q1": "alpha alpha beta", "q2": "gamma delta"},
    qrels={"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d3": 1}},
)
# dim 4: q0 ranks d0 first; q1 (2,1,0,0) scores d2 .949 > d0 .894 > d1 .447, so d1 is 3rd;
#        q2 (0,0,1,1) scores only d3 above zero, so d3 is 1st.
# dim 2: q0 and q1 as before; q2 becomes (0,0): every score ties at 0 and the evaluator orders
#        ties by corpus id, so d3 is 4th.
EXPECTED = {
    4: {"mrr@10": (1 + 1 / 3 + 1) / 3, "ndcg@10": (1 + 1 / math.log2(4) + 1) / 3, "accuracy@1": 2 / 3, "recall@3": 1.0},
    2: {
        "mrr@10": (1 + 1 / 3 + 1 / 4) / 3,
        "ndcg@10": (1 + 1 / math.log2(4) + 1 / math.log2(5)) / 3,
        "accuracy@1": 1 / 3,
        "recall@3": 2 / 3,
    },
}


def test_metrics_per_dim_match_hand_computed_values():
    got = evaluate_model(KeywordModel(), DATA, [4, 2], "test")
    assert list(got) == [4, 2]
    for dim, expected in EXPECTED.items():
        for metric, value in expected.items():
            assert got[dim][metric] == pytest.approx(value, abs=1e-6), (dim, metric)
    assert got[4]["ndcg@10"] == pytest.approx(0.8333333, abs=1e-6)
    assert got[2]["mrr@10"] == pytest.approx(0.5277778, abs=1e-6)


def test_all_dims_cost_one_encoding_of_queries_and_corpus():
    model = KeywordModel()
    evaluator = build_evaluator(DATA, [4, 3, 2, 1], "test")
    evaluator(model)
    assert model.encode_calls == 2  # one for the queries, one for the corpus, for all four dims
    evaluator(model)  # a second call (e.g. the next epoch) must re-encode: the weights may have changed
    assert model.encode_calls == 4


def test_shared_encoding_equals_plain_evaluator_with_truncate_dim(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    data = IRData(
        corpus={
            f"d{i}": t
            for i, t in enumerate(
                ["revenue grew", "dividend raised", "notes due 2031", "plant in monterrey", "tax rate"]
            )
        },
        queries={"q0": "what about revenue", "q1": "the dividend", "q2": "debt notes", "q3": "tax"},
        qrels={"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d4": 1}},
    )
    ours = evaluate_model(model, data, [32, 16, 8], "t")
    for dim in (32, 16, 8):
        plain = InformationRetrievalEvaluator(
            data.queries, data.corpus, data.relevant_docs(), truncate_dim=dim, name="p", write_csv=False
        )(model)
        for metric in ("ndcg@10", "mrr@10", "map@100", "recall@1", "accuracy@3"):
            assert ours[dim][metric] == pytest.approx(plain[f"p_cosine_{metric}"], abs=1e-6)


def test_per_dim_metrics_parses_trainer_prefixed_keys():
    raw = {"eval_validation_dim64_cosine_ndcg@10": 0.5, "eval_validation_dim64_cosine_mrr@10": 0.25, "eval_loss": 1.0}
    assert per_dim_metrics(raw, "validation") == {64: {"ndcg@10": 0.5, "mrr@10": 0.25}}


def test_graded_qrels_count_every_positive_grade_as_relevant():
    data = IRData(
        corpus={"d0": "alpha", "d1": "beta", "d2": "gamma"},
        queries={"q0": "alpha beta"},
        qrels={"q0": {"d0": 2, "d1": 1, "d2": 0}},
    )
    got = evaluate_model(KeywordModel(), data, [4], "g")
    # d0 and d1 tie at .707 and are both relevant; d2 (grade 0) is not relevant.
    assert got[4]["recall@3"] == pytest.approx(1.0)
    assert got[4]["ndcg@10"] == pytest.approx(1.0)
