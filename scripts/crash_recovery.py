#!/usr/bin/env python
"""Kill `job run` with SIGKILL at five points, rerun the same command, compare with an uninterrupted run.

    .venv/bin/python scripts/crash_recovery.py [--model PATH] [--data FILE] [--workdir DIR] [--points ...]

Each crash is a real ``kill -9`` of the job's own process (it kills itself with SIGKILL at the
chosen point, so the point is exact and nothing gets to clean up):

=================  =====================================================================================
``prepare``        after the first split file is written into the prepare step's staging folder
``mining``         inside hard-negative mining, before training starts
``mid-epoch``      in the middle of a training step between two checkpoints
``checkpoint``     while a checkpoint is written: weights on disk, optimizer/scheduler/trainer state not
``evaluate``       in the evaluate step, after the fine-tuned model was scored, before the report is written
=================  =====================================================================================

Then the same command runs again, uninterrupted. It must finish (exit 0) with the same NDCG@10 table
(baseline and fine-tuned, every dim) as a run that was never interrupted. Prints one line per point
and exits non-zero if any differs. Defaults: the bundled MiniLM on 60 embedded pairs, 6 steps with a
checkpoint every 2 (about 10 minutes on 2 CPU cores); the test suite runs it on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POINTS = ("prepare", "mining", "mid-epoch", "checkpoint", "evaluate")

# Runs inside the job's process: patch the named point to SIGKILL the process, then run `job` itself.
_CRASH = r"""
import os, signal, sys
point = os.environ["CRASH_AT"]

def die(*_args, **_kwargs):
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if point == "prepare":
    import job.data.prepare as D
    real = D.write_pairs
    def write_pairs(path, pairs):
        real(path, pairs)
        die()
    D.write_pairs = write_pairs
elif point == "mining":
    import sentence_transformers.util as U
    U.mine_hard_negatives = die
elif point == "mid-epoch":
    import transformers
    real_step = transformers.Trainer.training_step
    calls = {"n": 0}
    def training_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(os.environ.get("CRASH_STEP", "5")):
            die()
        return real_step(self, *args, **kwargs)
    transformers.Trainer.training_step = training_step
elif point == "checkpoint":
    import transformers
    real_save = transformers.Trainer._save_optimizer_and_scheduler
    saves = {"n": 0}
    def save(self, output_dir):
        saves["n"] += 1
        if saves["n"] == int(os.environ.get("CRASH_SAVE", "2")):
            die()
        return real_save(self, output_dir)
    transformers.Trainer._save_optimizer_and_scheduler = save
elif point == "evaluate":
    import job.pipeline as P
    P.write_report = die
else:
    raise SystemExit(f"unknown crash point {point}")

from job.cli import main
sys.exit(main(sys.argv[1:]))
"""


def job_args(run_dir: Path, model: str, data: str) -> list[str]:
    return [
        "run", "--run-dir", str(run_dir), "--model", model, "--data", data, "--max-steps", "6", "--eval-steps", "2",
        "--batch-size", "8", "--hard-negatives", "1", "--eval-batch-size", "32", "--logging-steps", "1",
        "--matryoshka-dims", "32,16" if "tiny" in model else "384,128,64",
    ]  # fmt: skip


def run_job(args: list[str], crash_at: str | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    if crash_at:
        env["CRASH_AT"] = crash_at
        cmd = [sys.executable, "-c", _CRASH, *args]
    else:
        cmd = [sys.executable, "-m", "job", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, check=False)


def ndcg_table(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    return {str(r["dim"]): (round(r["baseline"], 6), round(r["finetuned"], 6)) for r in report["comparison"]}


def crash_and_recover(point: str, workdir: Path, model: str, data: str, reference: dict) -> dict:
    run_dir = workdir / f"run-{point}"
    shutil.rmtree(run_dir, ignore_errors=True)
    args = job_args(run_dir, model, data)
    t0 = time.perf_counter()
    crashed = run_job(args, crash_at=point)
    again = run_job(args)
    outcome = {
        "point": point,
        "crash_exit": crashed.returncode,  # -9: killed by SIGKILL
        "rerun_exit": again.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "notes": [
            line
            for line in again.stdout.splitlines() + again.stderr.splitlines()
            if "incomplete" in line or "resuming" in line
        ],
    }
    outcome["same_report"] = again.returncode == 0 and ndcg_table(run_dir) == reference
    if again.returncode != 0:
        outcome["rerun_error"] = again.stderr.strip().splitlines()[-3:]
    return outcome


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--data", default=None, help="pairs file (default: the first 60 embedded pairs)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--points", default=",".join(POINTS))
    args = ap.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="crash-recovery-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        sys.path.insert(0, str(REPO))
        from job.data.prepare import embedded_data_path

        data = str(workdir / "pairs.jsonl")
        Path(data).write_text("".join(embedded_data_path().read_text().splitlines(keepends=True)[:60]))
    reference_run = workdir / "run-uninterrupted"
    shutil.rmtree(reference_run, ignore_errors=True)
    ref = run_job(job_args(reference_run, args.model, data))
    if ref.returncode != 0:
        print(ref.stderr[-2000:], file=sys.stderr)
        return 2
    reference = ndcg_table(reference_run)
    print(f"uninterrupted: NDCG@10 (baseline, fine-tuned) by dim {reference}")
    failures = 0
    for point in args.points.split(","):
        o = crash_and_recover(point, workdir, args.model, data, reference)
        ok = o["crash_exit"] == -9 and o["same_report"]
        failures += not ok
        print(
            f"{point:11s} killed (exit {o['crash_exit']}), rerun exit {o['rerun_exit']}, "
            f"same report: {'yes' if o['same_report'] else 'NO'} ({o['seconds']} s)"
            + (f"; {' | '.join(o['notes'])}" if o["notes"] else "")
            + (f"; error: {o.get('rerun_error')}" if o.get("rerun_error") else "")
        )
    print(
        f"{len(args.points.split(',')) - failures} of {len(args.points.split(','))} "
        "crash points recovered to the same report"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
