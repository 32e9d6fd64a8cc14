"""Quantized search against numbers worked out by hand, the kernels against plain Python, the frontier's
recommendation line, and `rag-eval score`'s frontier on a real (tiny) run."""

from __future__ import annotations

import numpy as np
import pytest

from job.errors import JobError
from rag_eval import frontier
from rag_eval.quantized import (
    QuantizedIndex,
    bytes_per_vector,
    calibrate,
    check_precisions,
    quantize,
    quantized_scores,
)

# Four passages in units of 1/256, so that every step below is exact in float32. Per dim the corpus spans
# [0, 255/256]: the int8 step is (255/256) / 255 = 1/256 and a value's bucket is simply value * 256.
IDS = ["z0", "a1", "m2", "m3"]
UNITS = np.array([[0, 255], [255, 0], [121, 131], [193, 243]], dtype=np.float32)
CORPUS = UNITS / 256
QUESTION = np.array([[9, 37]], dtype=np.float32) / 256


def test_int8_codes_are_the_corpus_buckets_minus_128():
    ranges = calibrate(CORPUS)
    assert ranges.tolist() == [[0, 0], [255 / 256, 255 / 256]]  # from the corpus, never the question
    assert quantize(CORPUS, "int8", ranges).data.tolist() == [[-128, 127], [127, -128], [-7, 3], [65, 115]]
    assert quantize(QUESTION, "int8", ranges).data.tolist() == [[9 - 128, 37 - 128]]  # [-119, -91]


def test_int8_search_without_and_with_rescoring_by_hand():
    # quantized space: (-119, -91) . code
    #   z0: -119*-128 + -91*127 = 15232 - 11557 = 3675      a1: -119*127 + -91*-128 = -15113 + 11648 = -3465
    #   m2: -119*-7   + -91*3   =   833 -   273 =  560      m3: -119*65  + -91*115  =  -7735 - 10465 = -18200
    # float question against the dequantized codes (here the passages themselves): (9*x + 37*y) / 65536
    #   z0: 9435 / 65536     a1: 2295 / 65536     m2: 5936 / 65536     m3: 10728 / 65536
    plain = QuantizedIndex("t", IDS, CORPUS, "int8", rescore_multiplier=0)
    assert [(h.id, h.score) for h in plain.query(QUESTION, 4)[0]] == [
        ("z0", 3675), ("m2", 560), ("a1", -3465), ("m3", -18200),
    ]  # fmt: skip
    # rescoring x2 for one result: candidates z0 and m2, rescored: z0 wins; x4 looks at all four: m3 wins
    two = QuantizedIndex("t", IDS, CORPUS, "int8", rescore_multiplier=2).query(QUESTION, 1)[0]
    assert [(h.id, h.score) for h in two] == [("z0", pytest.approx(9435 / 65536))]
    four = QuantizedIndex("t", IDS, CORPUS, "int8", rescore_multiplier=4).query(QUESTION, 1)[0]
    assert [(h.id, h.score) for h in four] == [("m3", pytest.approx(10728 / 65536))]
    exact = QuantizedIndex("t", IDS, CORPUS, "float32").query(QUESTION, 4)[0]
    assert [h.id for h in exact] == ["m3", "z0", "m2", "a1"]


def test_binary_search_without_and_with_rescoring_by_hand():
    # bits (> 0): z0 01, a1 10, m2 11, m3 11; question 11. Hamming: z0 1, a1 1, m2 0, m3 0.
    assert quantize(CORPUS, "binary").data.view(np.uint8)[:, 0].tolist() == [0b01000000, 0b10000000, 0xC0, 0xC0]
    plain = QuantizedIndex("t", IDS, CORPUS, "binary", rescore_multiplier=0).query(QUESTION, 3)[0]
    assert [(h.id, h.score) for h in plain] == [("m2", 0), ("m3", 0), ("a1", -1)]  # z0/a1 tie: ascending id
    # rescoring: the float question against the 0/1 bits: z0 37/256, a1 9/256, m2 = m3 = 46/256
    rescored = QuantizedIndex("t", IDS, CORPUS, "binary", rescore_multiplier=2).query(QUESTION, 3)[0]
    assert [(h.id, h.score) for h in rescored] == [("m2", 46 / 256), ("m3", 46 / 256), ("z0", 37 / 256)]


def test_the_kernels_agree_with_plain_python():
    rng = np.random.default_rng(3)
    corpus = rng.standard_normal((50, 100)).astype(np.float32)  # 100 bits: two 64-bit words, the second padded
    queries = rng.standard_normal((3, 100)).astype(np.float32)
    ranges = calibrate(corpus)
    got = quantized_scores(quantize(queries, "int8", ranges), quantize(corpus, "int8", ranges), block=7)
    qc, cc = quantize(queries, "int8", ranges).data.tolist(), quantize(corpus, "int8", ranges).data.tolist()
    assert got.tolist() == [[sum(a * b for a, b in zip(q, c)) for c in cc] for q in qc]
    got = quantized_scores(quantize(queries, "binary"), quantize(corpus, "binary"), block=7)
    bits_q, bits_c = (queries > 0).tolist(), (corpus > 0).tolist()
    assert got.tolist() == [[-sum(a != b for a, b in zip(q, c)) for c in bits_c] for q in bits_q]


def test_bytes_per_vector_and_bad_input():
    assert [bytes_per_vector(p, 384) for p in ("float32", "int8", "binary")] == [1536, 384, 48]
    assert bytes_per_vector("binary", 100) == 13
    assert check_precisions("binary, float32") == ["float32", "binary"]
    with pytest.raises(JobError, match="float32, int8, binary"):
        check_precisions("int4")
    with pytest.raises(JobError, match="at least 2 corpus vectors"):
        QuantizedIndex("t", ["a"], CORPUS[:1], "int8")


def _row(dim, precision, rescore, ndcg):
    return {
        "model": "fine-tuned", "dim": dim, "precision": precision, "rescore": rescore,
        "rescore_multiplier": 4 if rescore else None, "ndcg@10": ndcg,
        "bytes_per_vector": bytes_per_vector(precision, dim), "ms_per_query": 1.0,
    }  # fmt: skip


def test_the_recommendation_is_the_smallest_within_one_point_of_float32_at_full_dim():
    rows = [
        _row(384, "float32", None, 0.80), _row(384, "int8", False, 0.79), _row(384, "int8", True, 0.799),
        _row(384, "binary", False, 0.70), _row(384, "binary", True, 0.792), _row(128, "float32", None, 0.795),
        _row(128, "int8", True, 0.791), _row(128, "binary", True, 0.75), _row(64, "binary", True, 0.70),
    ]  # fmt: skip
    rec = frontier.recommend(rows, model_dim=384)
    assert rec["config"] == "dim 384 binary + rescoring x4"
    assert frontier.recommendation_line(rec) == (
        "recommendation (fine-tuned): dim 384 binary + rescoring x4: 48 bytes per vector, 32x smaller than float32 "
        "at 384 dims (1,536), NDCG@10 0.7920 vs 0.8000 (-0.80 points; the smallest within 1 point)."
    )
    # a little worse and it drops out: the next smallest within the point is int8 at 128 dims
    rows[4]["ndcg@10"] = 0.7899
    assert frontier.recommend(rows, 384)["config"] == "dim 128 int8 + rescoring x4"
    # the model's full dim was not scored: the reference is the largest scored dim, and the line says so
    line = frontier.recommendation_line(frontier.recommend([r for r in rows if r["dim"] != 384], 384))
    assert "float32 at 128 dims (the largest scored dim)" in line


def test_frontier_rows_on_the_hand_corpus():
    qrels = {"q": {"m3": 1}}
    rows = frontier.frontier_rows("m", 2, IDS, CORPUS, QUESTION, ["q"], qrels, ["float32", "int8"], 4, 3)
    got = {(r["precision"], r["rescore"]): r for r in rows}
    assert set(got) == {("float32", None), ("int8", False), ("int8", True)}
    assert got[("float32", None)]["ndcg@10"] == 1.0  # m3 first
    assert got[("int8", False)]["ndcg@10"] == pytest.approx(1 / np.log2(5))  # m3 fourth
    assert got[("int8", True)]["ndcg@10"] == 1.0 and got[("int8", True)]["bytes_per_vector"] == 2
    assert got[("int8", False)]["retained_vs_float32"] == pytest.approx(1 / np.log2(5))
