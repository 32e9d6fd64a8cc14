"""Logs that read well where they end up: no carriage-return frames where no terminal shows them (CloudWatch,
docker logs, CI, a file), and --log-format json (JOB_LOG_FORMAT=json): one JSON object per stdout line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tqdm.auto import tqdm

from job import progress
from job.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _text_output_after():
    yield
    progress.reset()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- bars -------------------------------------------------------------------------------------------------
def test_a_bar_no_terminal_shows_prints_a_line_every_n_seconds_and_one_at_the_end():
    progress.install()
    progress.configure("text", seconds=0.05)
    out = io.StringIO()
    for _ in tqdm(range(6), desc="encoding", file=out, mininterval=0):
        time.sleep(0.03)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 2, text  # at least one while it ran, and the last
    assert lines[0].startswith("encoding: ") and " left" in lines[0], text
    assert lines[-1].startswith("encoding: 6/6 it (100%) in 00:0"), text
    assert sum(line.startswith("encoding: 6/6") for line in lines) == 1  # the end is said once


def test_zero_seconds_leaves_only_the_line_at_the_end(monkeypatch):
    progress.install()
    progress.reset()
    monkeypatch.setenv(progress.SECONDS_ENV, "0")  # what a process without a resolved configuration reads
    assert progress.interval() == 0
    out = io.StringIO()
    for _ in tqdm(range(3), total=3, file=out, mininterval=0):
        time.sleep(0.01)
    assert out.getvalue().count("\n") == 1 and "\r" not in out.getvalue()


def test_a_bar_drawn_on_a_terminal_stays_a_bar():
    progress.install()
    progress.configure("text", seconds=0.01)
    out = _Terminal()
    for _ in tqdm(range(3), desc="encoding", file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue()  # tqdm's own frames: whoever watches sees the bar move


def test_with_json_a_bar_is_progress_events_on_stdout(capsys):
    progress.install()
    progress.configure("json", seconds=0)
    drawn = _Terminal()
    for _ in tqdm(range(4), desc="Batches", file=drawn):
        pass
    assert drawn.getvalue() == ""  # nothing drawn, even on a terminal
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"], e["phase"], e["n"], e["total"], e["done"]) for e in events] == [
        ("progress", "Batches", 4, 4, True)
    ]
    tqdm.write("a line a library writes")
    assert json.loads(capsys.readouterr().out)["message"] == "a line a library writes"


# --- errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["flag", "env"])
def test_with_json_an_error_is_an_event_with_its_fix(capsys, monkeypatch, how):
    argv = ["config", "--batch-size", "0"]
    if how == "flag":
        argv += ["--log-format", "json"]
    else:
        monkeypatch.setenv(progress.FORMAT_ENV, "json")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["event"] == "error" and event["exit_code"] == 2
    assert event["problem"].startswith("batch_size is 0")
    assert event["fix"] == "pass a positive --batch-size."
    assert "error: batch_size is 0" in err  # a person reading stderr still sees it
    assert not progress.is_json()  # the next command in this process starts in text again


def test_a_text_error_stays_text(capsys):
    assert main(["config", "--batch-size", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: batch_size is 0")


# --- a whole run, its output piped (not a terminal) --------------------------------------------------------
def _run(run_dir, model, data, *extra) -> subprocess.CompletedProcess:
    args = ["run", "--run-dir", run_dir, "--model", model, "--data", data, "--batch-size", "8",
            "--matryoshka-dims", "32,16", "--hard-negatives", "0", "--max-steps", "2", *extra]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "job", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_a_piped_run_has_no_carriage_returns(tmp_path, tiny_model_path, pairs_file):
    done = _run(tmp_path / "run", tiny_model_path, pairs_file)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\r" not in done.stdout and "\r" not in done.stderr
    assert "train: 2 steps over 48 pairs" in done.stdout  # the text lines are as before
    assert "| dim | baseline NDCG@10 |" in done.stdout
    assert "training steps: 2/2 it (100%) in " in done.stderr, done.stderr  # the trainer's bar: one line
    assert "Batches: 1/1 it (100%)" in done.stderr  # the evaluator's encoding bar: one line


def test_json_log_format_is_one_object_per_line(tmp_path, tiny_model_path, pairs_file):
    run_dir = tmp_path / "run"
    done = _run(run_dir, tiny_model_path, pairs_file, "--log-format", "json", "--logging-steps", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\r" not in done.stdout and "\r" not in done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]  # every line parses
    assert all({"time", "event"} <= set(e) for e in events)
    steps = [e for e in events if e["event"] == "train_step"]
    assert [e["step"] for e in steps] == [1, 2] and all(isinstance(e["loss"], float) for e in steps)
    (validation,) = [e for e in events if e["event"] == "validation"]
    assert set(validation["ndcg@10"]) == {"32", "16"} and validation["selection"] == validation["best"]
    phases = {e["phase"]: e for e in events if e["event"] == "phase"}
    assert list(phases) == ["prepare", "baseline", "train", "evaluate"]
    assert all(e["seconds"] >= 0 for e in phases.values())
    assert set(phases["evaluate"]["ndcg@10"]) == {"32", "16"}
    assert all(0 <= v["fine_tuned"] <= 1 and 0 <= v["baseline"] <= 1 for v in phases["evaluate"]["ndcg@10"].values())
    assert phases["train"]["mixed_precision"]["resolved"] == "fp32"  # the CPU
    training = json.loads((run_dir / "model" / "training.json").read_text())
    assert training["mixed_precision"] == phases["train"]["mixed_precision"]
    assert any(e["event"] == "message" and e["message"].startswith("train: 2 steps") for e in events)
