"""Multi-process (DDP) training through torchrun, with no change for the user.

``job train`` / ``job run`` with ``--nproc N`` (default 0: one process per visible GPU) start
``torchrun --standalone --nproc-per-node N -m job train ...`` for the training step only; data
preparation and evaluation stay in the calling process. Inside torchrun, every rank trains and
rank 0 alone writes files. In-batch negatives are gathered across ranks, so ``batch_size`` keeps
its meaning (the number of pairs whose passages are scored against each other): each rank gets
``batch_size / N`` pairs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from job.config import ENV_PREFIX, JobConfig
from job.errors import JobError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def inside_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and world_size() > 1


def resolve_nproc(cfg: JobConfig) -> int:
    """How many training processes to start; errors when more are asked for than devices exist."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.nproc == 0:
        return max(1, gpus)
    if gpus and cfg.nproc > gpus:
        raise JobError(
            f"--nproc {cfg.nproc} asks for more training processes than there are GPUs ({gpus}).",
            f"use --nproc {gpus} or fewer (0 means one per GPU).",
        )
    cpus = os.cpu_count() or 1
    if not gpus and cfg.nproc > cpus:
        raise JobError(
            f"--nproc {cfg.nproc} asks for more CPU training processes than there are cores ({cpus}).",
            f"use --nproc {cpus} or fewer.",
        )
    if cfg.batch_size % cfg.nproc:
        raise JobError(
            f"batch_size {cfg.batch_size} does not split evenly over {cfg.nproc} processes.",
            f"use a batch size that is a multiple of {cfg.nproc}.",
        )
    return cfg.nproc


def launch_training(
    cfg: JobConfig,
    run_dir: Path,
    nproc: int,
    *,
    resume: bool,
    force: bool = False,
    entry: tuple[str, ...] = ("job", "train"),
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """Run the training step under torchrun with this exact configuration (written to the run dir);
    returns torchrun's exit code. ``entry`` is the module (and subcommand) each rank runs; it gets
    ``--config FILE`` and ``--resume`` / ``--force``. ``on_start`` sees the process (e.g. to pass on
    SIGTERM)."""
    # Outside checkpoints/: rank 0 may clear that folder while the other ranks still read this file.
    config_file = run_dir / "ddp_config.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(cfg.to_yaml())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", *entry]
    cmd += ["--config", str(config_file)] + (["--resume"] if resume else []) + (["--force"] if force else [])
    # The YAML holds the fully resolved configuration: JOB_* variables must not override it again.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    proc = subprocess.Popen(cmd, env=env)
    if on_start:
        on_start(proc)
    return proc.wait()
