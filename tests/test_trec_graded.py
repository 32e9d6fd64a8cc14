"""TREC run files and graded relevance (issue #33, item 4).

- `rag-eval score --run-file DIR` writes `qid Q0 docid rank score tag` runs and `qid 0 docid grade` qrels;
  ir_measures (pytrec_eval, i.e. trec_eval) scores them to our NDCG@10, binary and graded.
- The job's evaluator reports graded NDCG@10 beside its binary one where the qrels carry grades, the report,
  metrics.json and card say which is which, and --relevance-threshold moves the binary cut.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sentence_transformers.util import cos_sim

from job.data.prepare import IRData, load_beir
from job.errors import JobError
from job.evaluate.retrieval import evaluate_model, graded_ndcg_at_k, per_dim_metrics
from rag_eval import metrics, store
from rag_eval.indexing import index_models
from rag_eval.scoring import QRELS_FILE, ScoreOptions, score_models
from rag_eval.sources import FINETUNED, LoadedModel, ModelSpec


class _CardData:
    def set_evaluation_metrics(self, *args, **kwargs):
        pass


class TableModel:
    """Looks each text up in a table of vectors: enough for the evaluator and for `rag-eval score`."""

    similarity_fn_name = "cosine"
    model_card_data = _CardData()

    def __init__(self, table):
        self.table = {k: np.asarray(v, dtype=np.float32) for k, v in table.items()}

    def get_sentence_embedding_dimension(self) -> int:
        return len(next(iter(self.table.values())))

    @staticmethod
    def similarity(a, b):
        return cos_sim(a, b)

    def encode(self, sentences, truncate_dim=None, convert_to_tensor=False, **kwargs):
        emb = np.stack([self.table[s] for s in sentences])[:, :truncate_dim]
        return torch.from_numpy(emb) if convert_to_tensor else emb

    encode_query = encode
    encode_document = encode


def random_graded(seed: int = 3, n_docs: int = 60, n_queries: int = 14, dim: int = 16):
    """Random vectors (no score ties) and graded qrels 0-3, several judged passages per query, some of
    them close to the query so the rankings are neither perfect nor empty."""
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n_docs, dim))
    corpus = {f"d{i:02d}": f"passage {i}" for i in range(n_docs)}
    queries, qrels, table = {}, {}, {f"passage {i}": docs[i] for i in range(n_docs)}
    for q in range(n_queries):
        judged = rng.choice(n_docs, size=6, replace=False)
        grades = rng.integers(0, 4, size=6)
        grades[0] = max(grades[0], 1)
        vec = docs[judged[:3]].mean(axis=0) + rng.normal(scale=0.8, size=dim)
        queries[f"q{q:02d}"] = f"question {q}"
        table[f"question {q}"] = vec
        qrels[f"q{q:02d}"] = {f"d{int(j):02d}": int(g) for j, g in zip(judged, grades)}
    return IRData(corpus, queries, qrels), TableModel(table)


def _score(tmp_path, data, model, dims, run_dir):
    target = store.StoreTarget(path=tmp_path / "chroma")
    client = store.connect(target)
    m = LoadedModel(ModelSpec(FINETUNED, "table-model"), model, "fp-table", model.get_sentence_embedding_dimension())
    settings = store.HnswSettings(ef_search=500)
    index_models(client, [m], data, "random", dims, settings, echo=lambda _: None)
    opts = ScoreOptions(latency_samples=3, batch_queries=2, measure_disk=False, run_dir=run_dir)
    return score_models(client, [m], data, dims, opts=opts, echo=lambda _: None)


@pytest.mark.parametrize("graded", [False, True], ids=["binary", "graded"])
def test_run_files_scored_by_ir_measures_equal_our_ndcg(tmp_path, graded):
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import AP, RR, R, nDCG

    data, model = random_graded()
    if not graded:
        data = IRData(
            data.corpus, data.queries, {q: {d: int(g > 0) for d, g in docs.items()} for q, docs in data.qrels.items()}
        )
    assert data.graded is graded
    dims = [16, 8]
    runs = tmp_path / "runs"
    result = _score(tmp_path, data, model, dims, runs)

    qrels_lines = (runs / QRELS_FILE).read_text().splitlines()
    assert len(qrels_lines) == sum(len(d) for d in data.qrels.values())
    assert all(len(line.split()) == 4 and line.split()[1] == "0" for line in qrels_lines)
    listed = result["run_files"]["runs"][FINETUNED]
    assert set(listed) == {"16", "8"}
    assert set(listed["16"]) == {"chroma", "float32", "int8", "int8-rescored", "binary", "binary-rescored"}
    qrels = list(ir_measures.read_trec_qrels(str(runs / QRELS_FILE)))
    for dim in dims:
        row = result["models"][FINETUNED]["dims"][str(dim)]
        for precision, ours in (("chroma", row["store"]), ("float32", row["exact"])):
            path = runs / listed[str(dim)][precision]
            lines = [line.split() for line in path.read_text().splitlines()]
            assert all(len(cols) == 6 and cols[1] == "Q0" for cols in lines)
            assert {int(cols[3]) for cols in lines} == set(range(1, min(metrics.DEPTH, len(data.corpus)) + 1))
            run = list(ir_measures.read_trec_run(str(path)))
            theirs = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10, R @ 10, AP @ 100], qrels, run)
            assert round(theirs[nDCG @ 10], 4) == round(ours["ndcg@10"], 4), (dim, precision)
            assert round(theirs[R @ 10], 4) == round(ours["recall@10"], 4), (dim, precision)
            assert round(theirs[RR @ 10], 4) == round(ours["mrr@10"], 4), (dim, precision)  # relevant: grade >= 1
            # MAP: sentence-transformers' MAP@100 divides by min(relevant, 100), trec_eval's AP by all relevant;
            # with fewer than 100 relevant passages per query and a run 60 deep, the two agree here.
            assert round(theirs[AP @ 100], 4) == round(ours["map@100"], 4), (dim, precision)
        if graded:  # the evaluator's binary NDCG differs; its graded NDCG equals exact search's
            assert row["evaluator"]["ndcg@10"] != pytest.approx(row["exact"]["ndcg@10"], abs=1e-4)
    binary_eval = evaluate_model(model, data, dims, "exact")
    for dim in dims:
        row = result["models"][FINETUNED]["dims"][str(dim)]
        if graded:
            assert binary_eval[dim]["graded_ndcg@10"] == pytest.approx(row["exact"]["ndcg@10"], abs=1e-6)
        else:
            assert "graded_ndcg@10" not in binary_eval[dim]
            assert binary_eval[dim]["ndcg@10"] == pytest.approx(row["exact"]["ndcg@10"], abs=1e-6)


def test_graded_ndcg_by_hand_and_the_relevance_threshold():
    # one query; the model ranks d1 (grade 1) above d0 (grade 3): binary NDCG is 1, graded is not.
    table = {"q": [1.0, 0.2], "a": [0.6, 0.8], "b": [1.0, 0.0], "c": [0.0, 1.0]}
    model = TableModel(table)
    data = IRData({"d0": "a", "d1": "b", "d2": "c"}, {"q0": "q"}, {"q0": {"d0": 3, "d1": 1, "d2": 0}})
    got = evaluate_model(model, data, [2], "t")[2]
    # ranking: d1 (.98), d0 (.74), d2 (.20)
    assert got["ndcg@10"] == pytest.approx(1.0)
    graded = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert got["graded_ndcg@10"] == pytest.approx(graded, abs=1e-6)
    assert graded_ndcg_at_k(["d1", "d0", "d2"], data.qrels["q0"], 10) == pytest.approx(graded)
    assert metrics.ndcg_at_k(["d1", "d0", "d2"], data.qrels["q0"], 10) == pytest.approx(graded)
    # threshold 2: only d0 counts for the binary metrics; the graded column does not move
    at2 = evaluate_model(model, data, [2], "t", relevance_threshold=2)[2]
    assert at2["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert at2["mrr@10"] == pytest.approx(0.5) and at2["recall@1"] == 0.0
    assert at2["graded_ndcg@10"] == pytest.approx(graded, abs=1e-6)
    assert data.relevant_docs(2) == {"q0": {"d0"}} and data.relevant_docs() == {"q0": {"d0", "d1"}}
    with pytest.raises(JobError, match="relevance-threshold"):
        evaluate_model(model, data, [2], "t", relevance_threshold=4)
    # binary qrels ignore the threshold (grade 1 is all they have) and get no graded column
    binary = IRData(data.corpus, data.queries, {"q0": {"d0": 1, "d1": 1}})
    plain = evaluate_model(model, binary, [2], "t", relevance_threshold=2)[2]
    assert plain["ndcg@10"] == pytest.approx(1.0) and "graded_ndcg@10" not in plain


def test_trainer_keys_with_graded_ndcg_keep_both_numbers():
    raw = {"eval_validation_dim64_cosine_ndcg@10": 0.9, "eval_validation_dim64_cosine_graded_ndcg@10": 0.7}
    assert per_dim_metrics(raw, "validation") == {64: {"ndcg@10": 0.9, "graded_ndcg@10": 0.7}}


def _graded_beir(root):
    """A small BEIR folder with grades 0-3 whose questions and passages the tiny model knows."""
    from conftest import make_pairs

    rows = make_pairs(5)
    passages = list(dict.fromkeys(r["context"] for r in rows))
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(passages))
    )
    questions = list(dict.fromkeys(r["question"] for r in rows))[:8]
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(questions))
    )
    lines = ["query-id\tcorpus-id\tscore"]
    for i, question in enumerate(questions):
        own = next(
            j for j, p in enumerate(passages) if any(r["question"] == question and r["context"] == p for r in rows)
        )
        lines += [
            f"q{i}\tp{own}\t3",
            f"q{i}\tp{(own + 1) % len(passages)}\t1",
            f"q{i}\tp{(own + 2) % len(passages)}\t0",
        ]
        if i % 2:
            lines.append(f"q{i}\tp{(own + 3) % len(passages)}\t2")
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_job_report_metrics_and_card_show_graded_beside_binary(tmp_path, tiny_model_path, pairs_file):
    from job.config import resolve_config
    from job.pipeline import RunDir, baseline, evaluate, prepare, train

    beir = _graded_beir(tmp_path / "beir")
    assert load_beir(beir).graded and load_beir(beir).qrels["q1"]  # grades kept
    cfg = resolve_config(
        cli={
            "run_dir": str(tmp_path / "run"), "model": str(tiny_model_path), "data": str(pairs_file),
            "eval_data": str(beir), "batch_size": 8, "epochs": 1, "max_steps": 1, "eval_batch_size": 16,
            "logging_steps": 1, "hard_negatives": 0,
        },
        environ={},
    )  # fmt: skip
    rd = RunDir(cfg.run_dir)
    quiet = lambda m: None  # noqa: E731
    prepare(cfg, rd, echo=quiet)
    base = baseline(cfg, rd, echo=quiet)
    for m in base["metrics"].values():
        assert 0 <= m["graded_ndcg@10"] <= 1 and m["graded_ndcg@10"] != pytest.approx(m["ndcg@10"], abs=1e-9)
    train(cfg, rd, echo=quiet)
    record = evaluate(cfg, rd, echo=quiet)
    for side in ("baseline", "finetuned"):
        for m in record[side].values():
            assert "ndcg@10" in m and "graded_ndcg@10" in m
    assert record["relevance"]["graded_qrels"] is True
    assert "binary" in record["relevance"]["ndcg@10"] and "linear" in record["relevance"]["graded_ndcg@10"]
    assert record["relevance"]["model_selection"].startswith("ndcg@10")
    assert [r["dim"] for r in record["comparison_graded"]] == [r["dim"] for r in record["comparison"]]
    report = (rd.report / "report.md").read_text()
    assert "## Graded NDCG@10" in report and "baseline graded NDCG@10" in report
    assert "binary" in report and "trec_eval" in report
    card = (rd.model / "README.md").read_text()
    assert "Graded NDCG@10" in card and "cosine_graded_ndcg@10" in card
    assert "binary relevance, the evaluator's" in card


def test_relevance_threshold_is_a_config_field(tmp_path, tiny_model_path, pairs_file):
    from job.config import resolve_config

    cfg = resolve_config(
        cli={"run_dir": str(tmp_path / "r"), "model": str(tiny_model_path), "data": str(pairs_file)}, environ={}
    )
    assert cfg.relevance_threshold == 1
    cfg = resolve_config(
        cli={
            "run_dir": str(tmp_path / "r"),
            "model": str(tiny_model_path),
            "data": str(pairs_file),
            "relevance_threshold": 2,
        },
        environ={},
    )
    assert cfg.relevance_threshold == 2
    with pytest.raises(JobError, match="relevance_threshold"):
        resolve_config(
            cli={
                "run_dir": str(tmp_path / "r"),
                "model": str(tiny_model_path),
                "data": str(pairs_file),
                "relevance_threshold": 0,
            },
            environ={},
        )


def test_score_cli_writes_run_files_and_says_where(tmp_path, tiny_model_path, capsys):
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import nDCG

    from rag_eval.cli import main

    beir = _graded_beir(tmp_path / "beir")
    common = ["--model", str(tiny_model_path), "--data", str(beir), "--chroma-path", str(tmp_path / "chroma")]
    assert main(["index", *common, "--dims", "16"]) == 0
    runs = tmp_path / "trec"
    code = main(
        ["score", *common, "--dims", "16", "--out", str(tmp_path / "report"), "--latency-samples", "3",
         "--batch-queries", "2", "--precision", "float32", "--run-file", str(runs)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert f"score: 2 TREC run files and qrels.txt -> {runs}" in out
    assert sorted(p.name for p in runs.iterdir()) == ["model_dim16_chroma.run", "model_dim16_float32.run", "qrels.txt"]
    payload = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert payload["run_files"]["runs"] == {
        "model": {"16": {"chroma": "model_dim16_chroma.run", "float32": "model_dim16_float32.run"}}
    }
    assert "## TREC run files" in (tmp_path / "report" / "report.md").read_text()
    exact = payload["models"]["model"]["dims"]["16"]["exact"]["ndcg@10"]
    qrels = list(ir_measures.read_trec_qrels(str(runs / "qrels.txt")))
    theirs = ir_measures.calc_aggregate(
        [nDCG @ 10], qrels, list(ir_measures.read_trec_run(str(runs / "model_dim16_float32.run")))
    )
    assert round(theirs[nDCG @ 10], 4) == round(exact, 4)
