"""Every interrupted or damaged run recovers (issue: half-written checkpoints, edited data, full disks).

Crashes are real: the job's own process is killed with SIGKILL at a chosen point (scripts/crash_recovery.py).
Full and read-only disks are real too where the machine allows it (a size-limited / read-only tmpfs
mounted by the test, as root); elsewhere those tests skip and say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import crash_recovery  # noqa: E402

FAST = ["--max-steps", "6", "--eval-steps", "2", "--batch-size", "8", "--hard-negatives", "1",
        "--eval-batch-size", "32", "--matryoshka-dims", "32,16"]  # fmt: skip


def job(*args, code: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", code, *map(str, args)] if code else [sys.executable, "-m", "job", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout, check=False)


@pytest.mark.slow
def test_kill_9_at_five_points_recovers_to_the_same_report(tmp_path, tiny_model_path, pairs_file, capsys):
    code = crash_recovery.main(["--model", str(tiny_model_path), "--data", str(pairs_file), "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "5 of 5 crash points recovered to the same report" in out
    assert "checkpoint-4 is incomplete" in out and "resuming from" in out


def test_edited_data_reruns_every_step(tmp_path, tiny_model_path, pairs_file):
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", run_dir, "--model", tiny_model_path, "--data", pairs_file, *FAST]
    assert job(*args).returncode == 0
    first = (run_dir / "data" / "train.jsonl").read_text()
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    for row in rows[:10]:
        row["question"] = row["question"] + " (edited)"
    pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = job(*args)
    assert again.returncode == 0, again.stderr
    assert f"data ({pairs_file}) changed since prepare: re-running prepare, baseline, train, evaluate" in again.stdout
    assert "already done" not in again.stdout
    assert (run_dir / "data" / "train.jsonl").read_text() != first and "(edited)" in (
        run_dir / "data" / "train.jsonl"
    ).read_text()
    assert list(run_dir.glob("checkpoints.before-*")), "the old data's checkpoints are kept aside, not deleted"
    # touching the file without changing it is not a change
    os.utime(pairs_file)
    third = job(*args)
    assert third.returncode == 0 and "prepare: already done" in third.stdout


def test_read_only_run_directory_fails_before_loading_models(mount_tmpfs, tiny_model_path, pairs_file):
    disk = mount_tmpfs("4m", read_only=True)
    done = job("run", "--run-dir", disk / "run", "--model", tiny_model_path, "--data", pairs_file, *FAST)
    assert done.returncode == 2, done.stderr
    assert f"{disk} is on a read-only file system" in done.stderr and "--run-dir on a writable disk" in done.stderr
    assert "unexpected" not in done.stderr and "Loading weights" not in done.stderr  # no model was loaded


def test_too_little_space_for_training_is_refused_before_mining(mount_tmpfs, minilm_path, pairs_file):
    disk = mount_tmpfs("40m")
    done = job("run", "--run-dir", disk / "run", "--model", minilm_path, "--data", pairs_file, *FAST)
    assert done.returncode == 2, done.stderr
    assert "Training (checkpoints and the final model) needs about" in done.stderr and "MiB free" in done.stderr
    assert "unexpected" not in done.stderr


# Runs in the job's process: when the second checkpoint is saved, fill the disk first (the save then
# really fails with no space left), as a full disk during a long run would.
_FILL_DISK_AT_SECOND_SAVE = r"""
import os, sys, transformers
real = transformers.Trainer._save_optimizer_and_scheduler
calls = {"n": 0}
def save(self, output_dir):
    calls["n"] += 1
    if calls["n"] == 2:
        with open(os.environ["FILLER"], "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * (1 << 16))
                    fh.flush()
            except OSError:
                pass
    return real(self, output_dir)
transformers.Trainer._save_optimizer_and_scheduler = save
from job.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_during_a_checkpoint_is_a_clear_error_and_the_rerun_resumes(
    mount_tmpfs, tiny_model_path, pairs_file, monkeypatch
):
    disk = mount_tmpfs("64m")
    filler = disk / "filler.bin"
    monkeypatch.setenv("FILLER", str(filler))
    args = ["run", "--run-dir", disk / "run", "--model", tiny_model_path, "--data", pairs_file, *FAST]
    done = job(*args, code=_FILL_DISK_AT_SECOND_SAVE)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr
    assert "error: The disk is full: writing a training checkpoint in" in err and "MiB free" in err, err[-2000:]
    assert (
        "The half-written checkpoint-4 was removed" in err
        and "training resumes from its last complete checkpoint" in err
    )
    assert not (disk / "run" / "checkpoints" / "checkpoint-4").exists()
    filler.unlink()  # the user frees space
    again = job(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "train: resuming from" in again.stdout and "checkpoint-2" in again.stdout
    assert (disk / "run" / "report" / "metrics.json").is_file()


def test_damaged_fine_tuned_model_names_the_run_and_the_fix(tmp_path, tiny_model_path, pairs_file):
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", run_dir, "--model", tiny_model_path, "--data", pairs_file, *FAST]
    assert job(*args).returncode == 0
    weights = run_dir / "model" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    done = job("evaluate", "--run-dir", run_dir, "--model", tiny_model_path, "--data", pairs_file, *FAST)
    assert done.returncode == 2
    assert f"The fine-tuned model in {run_dir / 'model'} is damaged" in done.stderr
    assert f"remove {run_dir / 'model'} and rerun `job run --run-dir {run_dir}`" in done.stderr
    # following the fix works: training resumes from its last checkpoint and writes the model again
    import shutil

    shutil.rmtree(run_dir / "model")
    again = job(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "train: resuming from" in again.stdout and (run_dir / "report" / "metrics.json").is_file()
