"""`rag-eval index|score|query` on a tiny run directory in an embedded store, and every bad input:
one `error:` paragraph, exit code 2, no traceback, nothing lost."""

# ruff: noqa: F811 - fixtures imported from rag_eval_helpers are, by design, the test functions' parameters

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
from rag_eval_helpers import free_port, run_cli, tiny_pairs, tiny_run_dir  # noqa: F401 - fixtures

from rag_eval.cli import main

FAST_SCORE = ("--latency-samples", "10", "--batch-queries", "4")


def _clean_failure(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def indexed(tiny_run_dir, tmp_path_factory):
    """The tiny run indexed (baseline and fine-tuned, dims 32/16/8) into an embedded store."""
    store = tmp_path_factory.mktemp("store") / "chroma"
    code = main(["index", "--model", str(tiny_run_dir), "--chroma-path", str(store)])
    assert code == 0
    return tiny_run_dir, store


def test_index_writes_one_collection_per_model_and_dim(indexed, capsys):
    run_dir, store = indexed
    code, out, err = run_cli(capsys, "index", "--model", run_dir, "--chroma-path", store, "--dims", "16")
    assert code == 0, err
    lines = out.strip().splitlines()
    # already complete with the same model, corpus and settings: kept, not written again
    assert any(line.startswith("index: baseline dim 16: kept rag-eval-") for line in lines)
    assert any(line.startswith("index: fine-tuned dim 16: kept rag-eval-") for line in lines)
    assert lines[-1].startswith("index: 2 collections (2 models x dims 16), 8 passages each")
    assert str(store) in lines[-1]


def test_score_prints_the_per_dim_table_next_to_the_exact_numbers(indexed, tmp_path, capsys):
    run_dir, store = indexed
    code, out, err = run_cli(
        capsys, "score", "--model", run_dir, "--chroma-path", store, "--out", tmp_path / "report", *FAST_SCORE
    )
    assert code == 0, err
    assert "| dim | baseline Chroma | baseline exact evaluator | Δ | ANN recall@10 | fine-tuned Chroma |" in out
    assert "| 8 | fine-tuned |" in out and "bytes/vector" in out
    assert "agrees with the exact evaluator's" in out
    payload = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert payload["agreement"]["ok"] and payload["dims"] == [32, 16, 8]
    for label in ("baseline", "fine-tuned"):
        for dim in ("32", "16", "8"):
            row = payload["models"][label]["dims"][dim]
            assert abs(row["store"]["ndcg@10"] - row["evaluator"]["ndcg@10"]) <= 0.002
            assert row["ann_recall@10"] == 1.0 and row["disk_bytes"] > 0
            assert set(row["latency"]) >= {"single_p50_ms", "single_p95_ms", "batch_p50_ms", "batch_p95_ms"}
    assert (tmp_path / "report" / "rag_eval_by_dim.png").stat().st_size > 1000
    assert "## Index size and query latency" in (tmp_path / "report" / "report.md").read_text()
    # the frontier: every dim x precision (int8 and binary with and without rescoring), and one line per model
    assert "| model | dim | precision | rescoring | NDCG@10 | % of float32 (same dim) | bytes/vector |" in out
    assert "| fine-tuned | 8 | binary | x4 |" in out and "| fine-tuned | 8 | binary | no |" in out
    lines = [line for line in out.splitlines() if line.startswith("recommendation (")]
    assert [line.split(")")[0] for line in lines] == ["recommendation (baseline", "recommendation (fine-tuned"]
    for label in ("baseline", "fine-tuned"):
        model = payload["models"][label]
        assert len(model["frontier"]) == 3 * 5  # dims x (float32, int8, int8 + rescoring, binary, binary + ...)
        rec = model["recommendation"]
        assert rec["row"]["ndcg@10"] >= rec["reference"]["ndcg@10"] - 0.01
        assert rec["reference"]["dim"] == 32 and rec["reference"]["precision"] == "float32"
        assert all(r["ndcg@10"] < rec["reference"]["ndcg@10"] - 0.01 for r in model["frontier"]
                   if r["bytes_per_vector"] < rec["row"]["bytes_per_vector"])  # fmt: skip
        float32 = {r["dim"]: r["ndcg@10"] for r in model["frontier"] if r["precision"] == "float32"}
        assert float32 == {int(d): row["exact"]["ndcg@10"] for d, row in model["dims"].items()}
    assert "## Quality x storage: every dim x precision" in (tmp_path / "report" / "report.md").read_text()


def test_query_shows_top_k_with_scores_and_ids(indexed, capsys):
    run_dir, store = indexed
    question = tiny_pairs()[0].question  # a test question: its passage is marked relevant
    code, out, err = run_cli(
        capsys, "query", question, "--model", run_dir, "--chroma-path", store, "--dim", "16", "--k", "3"
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert f"Q: {question}" in lines
    assert any(line.startswith("fine-tuned (") and "dim 16, top 3:" in line for line in lines)
    hits = [line for line in lines if line[:4].strip().rstrip(".").isdigit()]
    assert [h.split()[0] for h in hits] == ["1.", "2.", "3."]
    assert all(h.split()[2].startswith("d") for h in hits)  # score then corpus id


def test_query_compare_marks_what_the_fine_tuned_model_ranks_higher(indexed, capsys):
    run_dir, store = indexed
    code, out, err = run_cli(
        capsys,
        "query",
        "dividend per share",
        "--model",
        run_dir,
        "--chroma-path",
        store,
        "--dim",
        "8",
        "--k",
        "4",
        "--compare",
    )
    assert code == 0, err
    assert "Left: fine-tuned" in out and "Right: baseline" in out
    rows = [line for line in out.splitlines() if " | " in line and line[:4].strip().rstrip(".").isdigit()]
    assert len(rows) == 4
    assert all(row.split()[3] in {"+", "-", "=", "+*", "-*", "=*"} for row in rows)
    assert "mark: + fine-tuned ranks the passage higher than baseline does" in out


def test_interactive_mode_reads_questions_until_eof(indexed, capsys, monkeypatch):
    run_dir, store = indexed
    monkeypatch.setattr(sys, "stdin", io.StringIO("revenue growth\n\nhow many employees\n"))
    code, out, err = run_cli(capsys, "query", "--model", run_dir, "--chroma-path", store, "--k", "2")
    assert code == 0, err
    assert "Q: revenue growth" in out and "Q: how many employees" in out
    assert "dim 32, top 2" in out  # the largest indexed dim by default
    assert out.strip().splitlines()[-1] == "query: answered 2 questions"


def test_a_dim_that_was_not_indexed_lists_the_indexed_dims(indexed, capsys):
    run_dir, store = indexed
    code, _, err = run_cli(capsys, "query", "x", "--model", run_dir, "--chroma-path", store, "--dim", "12")
    _clean_failure(code, err, "Dim 12 is not indexed", "indexed dims: 32, 16, 8")
    code, _, err = run_cli(
        capsys, "score", "--model", run_dir, "--chroma-path", store, "--dims", "12", "--no-disk-size"
    )
    _clean_failure(code, err, "indexed dims: 32, 16, 8")


def test_a_model_whose_dimension_does_not_match_the_collection(tiny_model_path, tiny_run_dir, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    model_dir, store = tmp_path / "model", tmp_path / "chroma"
    shutil.copytree(tiny_model_path, model_dir)
    code, _, err = run_cli(
        capsys, "index", "--model", model_dir, "--data", tiny_run_dir, "--chroma-path", store, "--dims", "32,16"
    )
    assert code == 0, err
    # the folder now holds a 16-dim model (e.g. retrained from another base into the same place)
    st = SentenceTransformer(str(tiny_model_path), device="cpu")
    narrower = SentenceTransformer(modules=[st[0], st[1], Dense(32, 16), Normalize()], device="cpu")
    shutil.rmtree(model_dir)
    narrower.save(str(model_dir))
    code, _, err = run_cli(capsys, "query", "x", "--model", model_dir, "--chroma-path", store, "--dim", "16")
    _clean_failure(code, err, "were indexed from other weights", "re-run `rag-eval index`")
    code, _, err = run_cli(
        capsys, "index", "--model", model_dir, "--data", tiny_run_dir, "--chroma-path", store, "--dims", "32"
    )
    _clean_failure(code, err, "Dims [32] are larger than the embedding dimension", "(16)")


def test_missing_run_directory_data_file_and_store(tiny_run_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "index", "--model", tmp_path / "runs" / "nope", "--chroma-path", tmp_path / "c")
    _clean_failure(code, err, "nope does not exist")
    code, _, err = run_cli(
        capsys, "index", "--model", tiny_run_dir, "--data", tmp_path / "missing.jsonl", "--chroma-path", tmp_path / "c"
    )
    _clean_failure(code, err, "Evaluation data", "missing.jsonl does not exist")
    code, _, err = run_cli(capsys, "score", "--model", tiny_run_dir, "--chroma-path", tmp_path / "empty")
    _clean_failure(code, err, "There is no Chroma store at", "rag-eval index")
    assert not (tmp_path / "c").exists() and not (tmp_path / "empty").exists()


def test_unreachable_server_names_host_and_port_without_a_traceback(tiny_run_dir, free_port, capsys):
    code, _, err = run_cli(
        capsys, "score", "--model", tiny_run_dir, "--chroma-host", "127.0.0.1", "--chroma-port", free_port
    )
    _clean_failure(code, err, f"Cannot reach the Chroma server at 127.0.0.1:{free_port}", "chroma run --host 127.0.0.1")


def test_a_foreign_collection_under_the_same_name_is_refused_unless_forced(
    tiny_model_path, tiny_run_dir, tmp_path, capsys
):
    from rag_eval import store
    from rag_eval.sources import resolve_models

    store_path = tmp_path / "chroma"
    client = store.connect(store.StoreTarget(path=store_path))
    key = resolve_models(str(tiny_model_path)).models[0].key
    name = store.collection_name(store.DEFAULT_PREFIX, key, 8)
    client.client.create_collection(name, metadata={"app": "prod"}, embedding_function=None).add(
        ids=["a"], embeddings=[[0.0] * 8]
    )
    args = ("index", "--model", tiny_model_path, "--data", tiny_run_dir, "--chroma-path", store_path, "--dims", "8")
    code, _, err = run_cli(capsys, *args)
    _clean_failure(code, err, f"A foreign collection named {name} already exists", "--force")
    assert client.client.get_collection(name).metadata == {"app": "prod"}
    code, out, err = run_cli(capsys, *args, "--force")
    assert code == 0, err
    assert "replaced a foreign collection (--force)" in out


def test_bad_flags_are_clear_errors(tiny_run_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "index", "--model", tiny_run_dir, "--dims", "32,x", "--chroma-path", tmp_path / "c")
    _clean_failure(code, err, "--dims '32,x' is not a comma-separated list of integers")
    code, _, err = run_cli(
        capsys, "query", "x", "--model", tiny_run_dir, "--chroma-path", tmp_path / "c", "--chroma-host", "h"
    )
    _clean_failure(code, err, "Both --chroma-path and --chroma-host")
    code, _, err = run_cli(
        capsys, "query", "x", "--model", tiny_run_dir / "model", "--compare", "--chroma-path", tmp_path / "c"
    )
    _clean_failure(code, err, "--compare needs two models")
    code, _, err = run_cli(capsys, "score", "--model", tiny_run_dir, "--precision", "float16")
    _clean_failure(code, err, "--precision 'float16' is not a comma-separated list of float32, int8, binary")
    code, _, err = run_cli(capsys, "score", "--model", tiny_run_dir, "--rescore-multiplier", "-1")
    _clean_failure(code, err, "--rescore-multiplier -1 is negative")


def test_python_dash_m_runs_the_same_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "rag_eval", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    for command in ("index", "score", "query"):
        assert command in done.stdout


def test_graded_beir_folder_and_pairs_file_as_evaluation_data(tiny_model_path, tmp_path, capsys):
    from rag_eval_helpers import tiny_ir

    from job.data.prepare import IRData, write_beir

    ir = tiny_ir()
    graded = IRData(
        ir.corpus, ir.queries, {q: {d: 2 if i % 2 else 1 for d in docs} for i, (q, docs) in enumerate(ir.qrels.items())}
    )
    write_beir(tmp_path / "beir", graded, "test")
    common = ("--model", tiny_model_path, "--chroma-path", tmp_path / "chroma", "--dims", "16")
    assert main(["index", *map(str, common), "--data", str(tmp_path / "beir")]) == 0
    code, out, err = run_cli(
        capsys, "score", *common, "--data", tmp_path / "beir", "--out", tmp_path / "r", *FAST_SCORE, "--no-disk-size"
    )
    assert code == 0, err
    payload = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert payload["data"]["graded"] and payload["reference"] == "exact" and payload["agreement"]["ok"]
    assert "| model Chroma | model exact search (graded) |" in out
    assert payload["models"]["model"]["dims"]["16"]["disk_bytes"] is None

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"question": p.question, "context": p.passage}) + "\n" for p in tiny_pairs()))
    # the same corpus from a pairs file: same fingerprint, so the collections built from the BEIR folder serve it
    code, out, err = run_cli(
        capsys, "score", *common, "--data", pairs, "--out", tmp_path / "r2", *FAST_SCORE, "--no-disk-size"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["data"]["queries"] == 24


def test_a_damaged_store_is_named_with_the_fix_and_index_force_rebuilds_it(tiny_run_dir, tmp_path, capsys):
    from rag_eval import store

    chroma = tmp_path / "chroma"
    common = ("--model", tiny_run_dir, "--chroma-path", chroma)
    assert main(["index", *map(str, common), "--dims", "16,8"]) == 0
    capsys.readouterr()
    store.forget_client(chroma)  # as a new process would: no client of the healthy store cached
    db = chroma / "chroma.sqlite3"
    with db.open("r+b") as fh:  # really truncated, as by a full disk or a copy cut short
        fh.truncate(db.stat().st_size // 2)
    damaged_bytes = db.read_bytes()
    for args in (
        ("query", "tax rate", *common, "--dims", "8"),
        ("score", *common, "--no-disk-size"),
        ("index", *common, "--dims", "8"),
    ):
        code, _, err = run_cli(capsys, *args)
        _clean_failure(
            code,
            err,
            f"The Chroma store at {chroma} is damaged",
            "database disk image is malformed",
            "rag-eval index --force",
        )
        assert "unexpected" not in err and db.read_bytes() == damaged_bytes  # nothing touched
    code, out, err = run_cli(capsys, "index", *common, "--dims", "8", "--force")
    assert code == 0, err
    asides = list(tmp_path.glob("chroma.damaged-*"))
    assert (
        len(asides) == 1 and (asides[0] / "chroma.sqlite3").read_bytes() == damaged_bytes
    )  # moved aside, never deleted
    assert f"index: the Chroma store at {chroma} is damaged" in out and f"moved it aside to {asides[0]}" in out
    code, out, err = run_cli(capsys, "query", "tax rate", *common, "--dims", "8", "-k", "2")
    assert code == 0, err
    assert "dim 8, top 2" in out


def test_query_takes_dims_and_k_like_the_other_commands(indexed, capsys):
    run_dir, store_path = indexed
    code, out, err = run_cli(
        capsys, "query", "tax rate", "--model", run_dir, "--chroma-path", store_path, "--dims", "16,8", "-k", "2"
    )
    assert code == 0, err
    assert "dim 16, top 2:" in out and "dim 8, top 2:" in out  # one answer per dim
    code, out, err = run_cli(
        capsys, "query", "tax rate", "--model", run_dir, "--chroma-path", store_path, "--dim", "8", "--k", "2"
    )
    assert code == 0 and "dim 8, top 2:" in out  # the old spelling still works
    code, _, err = run_cli(
        capsys, "query", "x", "--model", run_dir, "--chroma-path", store_path, "--dim", "8", "--dims", "16"
    )
    _clean_failure(code, err, "Both --dim and --dims are given")
    for command in ("index", "score", "query", "serve"):
        done = subprocess.run(
            [sys.executable, "-m", "rag_eval", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "--dims DIMS" in done.stdout, command
        if command in ("query", "serve"):
            assert "-k, --k INTEGER" in done.stdout, command


def test_compare_with_no_baseline_says_which_flag_to_drop(indexed, capsys):
    run_dir, store_path = indexed
    code, _, err = run_cli(
        capsys, "query", "x", "--model", run_dir, "--chroma-path", store_path, "--compare", "--no-baseline"
    )
    _clean_failure(code, err, "--compare and --no-baseline contradict each other", "drop --no-baseline")
    assert "pass a run directory" not in err
