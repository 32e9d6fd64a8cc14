"""Reliability, round 3: one writer per run directory, resuming exactly where a run stopped, done records that
do not vouch for changed files, and inputs that used to surprise (issue #25). Real processes and real files;
nothing is mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _args(run_dir, model, data, *extra):
    return [str(a) for a in ("run", "--run-dir", run_dir, "--model", model, "--data", data, "--batch-size", "8",
                             "--matryoshka-dims", "32,16", "--hard-negatives", "0", *extra)]  # fmt: skip


def _fails(capsys, code, *needles):
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "Traceback" not in err and "unexpected" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# --- resuming exactly -----------------------------------------------------------------------------
def test_a_resumed_max_steps_run_ends_exactly_as_the_uninterrupted_one(tmp_path, tiny_model_path, pairs_file, capsys):
    run_dir = tmp_path / "run"
    args = _args(run_dir, tiny_model_path, pairs_file, "--max-steps", "4", "--eval-steps", "2")
    assert main(args) == 0
    first = json.loads((run_dir / "model" / "training.json").read_text())
    import shutil

    shutil.rmtree(run_dir / "model")  # what the damaged-model fix says; equivalent to a kill before the save
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    again = json.loads((run_dir / "model" / "training.json").read_text())
    assert "resuming from" in out and "checkpoint-4" in out and "step 5" not in out
    assert again["global_steps"] == first["global_steps"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert again["best_checkpoint"].endswith(Path(first["best_checkpoint"]).name)
    assert again["train_seconds"] == pytest.approx(first["train_seconds"], rel=0.35)  # the real total, kept
    assert again["pairs_per_second"] > 0


def test_a_resumed_epochs_run_keeps_its_real_training_time(tmp_path, tiny_model_path, pairs_file, capsys):
    run_dir = tmp_path / "run"
    args = _args(run_dir, tiny_model_path, pairs_file, "--epochs", "1")
    assert main(args) == 0
    first = json.loads((run_dir / "model" / "training.json").read_text())
    import shutil

    shutil.rmtree(run_dir / "model")
    assert main(args) == 0
    again = json.loads((run_dir / "model" / "training.json").read_text())
    assert again["global_steps"] == first["global_steps"]
    assert again["train_seconds"] >= 0.65 * first["train_seconds"] and again["pairs_per_second"] > 0


# --- one writer per run directory ----------------------------------------------------------------------
def _job(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "job", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


def _holding(process, lock, timeout=120):
    """Wait until ``process`` holds the run directory (its pid in the lock file), then pause it (SIGSTOP): the
    lock stays held for as long as the test needs, however fast the machine is."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == process.pid:
                process.send_signal(signal.SIGSTOP)
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"pid {process.pid} never took {lock} (exit {process.poll()})")


def _finish(process):
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]


def test_two_runs_on_one_run_directory_the_second_is_refused(tmp_path, tiny_model_path, pairs_file):
    run_dir = tmp_path / "run"
    args = _args(run_dir, tiny_model_path, pairs_file, "--epochs", "2")
    lock = run_dir / ".lock"
    first = _job(*args)
    _holding(first, lock)
    try:
        second = _job(*args)
        out, err = second.communicate(timeout=300)
    finally:
        _finish(first)
    assert second.returncode == 2, out + err
    assert f"is in use by job run (pid {first.pid}" in err and "another --run-dir" in err
    assert not list((run_dir / "checkpoints").rglob("*.tmp"))
    # rag-eval reaches the lock once there is a model: the finished run directory, held again by the job's own
    # lock code (a job whose steps are all done holds it for too short a time to catch)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from job.layout import run_lock\n"
         f"with run_lock({str(run_dir)!r}, 'job run'):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        index = subprocess.run([sys.executable, "-m", "rag_eval", "index", "--model", str(run_dir)],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               timeout=300)  # fmt: skip
    finally:
        holder.communicate("", timeout=60)
    assert index.returncode == 2, index.stdout + index.stderr
    assert f"is in use by job run (pid {holder.pid}" in index.stderr and "another --run-dir" in index.stderr


def test_a_killed_holder_releases_the_run_directory(tmp_path, tiny_model_path, pairs_file, capsys):
    run_dir = tmp_path / "run"
    args = _args(run_dir, tiny_model_path, pairs_file, "--epochs", "2")
    holder = _job(*args)
    lock = run_dir / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and lock.read_text()):
        time.sleep(0.05)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert main(args) == 0  # no stale lock: the OS released it with the process
    assert "job run" in lock.read_text()


# --- done records vouch only for what they wrote ---------------------------------------------------------
def test_a_truncated_model_is_not_skipped_as_done(tmp_path, tiny_model_path, pairs_file, capsys):
    run_dir = tmp_path / "run"
    args = _args(run_dir, tiny_model_path, pairs_file, "--max-steps", "2", "--eval-steps", "2")
    assert main(args) == 0
    weights = run_dir / "model" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train: model/model.safetensors (" in out and "when written) changed since the step wrote it" in out
    assert "train: already done" not in out
    assert weights.read_bytes() == good  # rewritten from the last checkpoint: the same weights


def test_an_edited_test_split_is_not_skipped_as_done(tmp_path, tiny_model_path, pairs_file, capsys):
    run_dir = tmp_path / "run"
    args = _args(run_dir, tiny_model_path, pairs_file, "--max-steps", "2", "--eval-steps", "2")
    assert main(args) == 0
    qrels = run_dir / "ir" / "test" / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "qX\tc0\t1\n")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "prepare: ir/test/qrels/test.tsv" in out and "running prepare again" in out
    assert "qX" not in qrels.read_text()


# --- inputs ------------------------------------------------------------------------------------------
def test_a_csv_with_a_megabyte_passage(tmp_path, tiny_model_path, capsys):
    import csv

    from conftest import make_pairs

    data = tmp_path / "big.csv"
    rows = make_pairs(5)
    rows[0]["context"] = "word " * 220_000  # ~1.1 MB in one field (csv's default limit is 128 KiB)
    with data.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["question", "context"])
        w.writeheader()
        w.writerows(rows)
    code = main(["prepare", "--run-dir", str(tmp_path / "run"), "--data", str(data), "--model", str(tiny_model_path)])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--max-steps", "0", "max_steps is 0; it must be at least 1, or -1"),
        ("--max-steps", "-3", "max_steps is -3"),
        ("--max-seq-length", "0", "max_seq_length is 0"),
        ("--seed", "-5", "seed is -5; it must be in [0, 2**32)"),
    ],
)
def test_bad_numbers_fail_before_any_step(tmp_path, capsys, flag, value, needle):
    code = main(["run", "--run-dir", str(tmp_path / "run"), flag, value])
    _fails(capsys, code, needle)
    assert not (tmp_path / "run").exists()  # nothing ran, nothing was made


def test_a_run_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    _fails(capsys, main(["run", "--run-dir", str(target)]), "is a file, not a folder", "--run-dir")
    _fails(capsys, main(["prepare", "--run-dir", str(target / "sub")]), "is a file, not a folder")
    assert target.read_text() == "mine"


def test_push_to_an_endpoint_that_is_not_a_url_or_not_s3(tmp_path, capsys, monkeypatch):
    """A stand-in is not needed: a real (plain) HTTP server on loopback plays the web server that is not S3."""
    import http.server
    import threading

    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "training.json").write_text("{}")
    (run_dir / "report").mkdir()
    (run_dir / "report" / "metrics.json").write_text("{}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    code = main(["push", "--run-dir", str(run_dir), "--s3-uri", "s3://b/p", "--endpoint-url", "notaurl"])
    _fails(capsys, code, "The S3 endpoint URL 'notaurl' is not valid", "http://127.0.0.1:8333")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        code = main(["push", "--run-dir", str(run_dir), "--s3-uri", "s3://b/p", "--endpoint-url", url])
    finally:
        httpd.shutdown()
    err = _fails(capsys, code, "did not answer like an S3 server", "S3 API of your storage")
    assert "create it first" not in err
