"""Multi-process (DDP) training through torchrun, on one machine or across several, with no change
for the user.

``job train`` / ``job run`` with ``--nproc N`` (default 0: one process per visible GPU) start
``torchrun --standalone --nproc-per-node N -m job train ...`` for the training step only; data
preparation and evaluation stay in the calling process. Across machines (:class:`Nodes`: SageMaker's
``--instance-count``, or plain ``torchrun --nnodes`` on your own machines) every machine runs one
torchrun agent with its node rank, and the agents meet on the first machine (static rendezvous:
node 0 holds global rank 0). Inside torchrun, every rank trains and global rank 0 alone writes files.

In-batch negatives are gathered across all processes of all machines (sentence-transformers'
``gather_across_devices``), so ``batch_size`` keeps its meaning - the global batch, the number of
pairs whose passages are scored against each other: each process gets ``batch_size / processes``.
Before the first step the ranks check that they hold the same training pairs and resume from the same
checkpoint (:func:`check_agreement`): machines with different run directories fail, named, at once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.config import ENV_PREFIX, JobConfig
from job.errors import JobError
from job.layout import DDP_CONFIG, DDP_ERRORS

DEFAULT_MASTER_PORT = 29500  # torchrun's default
RENDEZVOUS_TIMEOUT_S = 900  # how long torchrun's agents wait for each other to join


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def on_first_node() -> bool:
    """This process runs on the machine of global rank 0 (torchrun's GROUP_RANK is the node rank)."""
    return int(os.environ.get("GROUP_RANK", "0")) == 0


def inside_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and world_size() > 1


@dataclass(frozen=True)
class Nodes:
    """This machine's place in a training job over ``count`` machines: torchrun's ``--nnodes``,
    ``--node-rank`` and the first machine's address (the static rendezvous: node rank 0 is global rank 0)."""

    count: int = 1
    rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    rendezvous_timeout_s: int = RENDEZVOUS_TIMEOUT_S

    def torchrun_args(self) -> list[str]:
        if self.count == 1:
            return ["--standalone"]
        return [
            f"--nnodes={self.count}", f"--node-rank={self.rank}", f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}", "--rdzv-conf", f"timeout={self.rendezvous_timeout_s}",
            "--max-restarts=0",
        ]  # fmt: skip


def resolve_nproc(cfg: JobConfig, nodes: int = 1) -> int:
    """How many training processes to start on this machine; errors when more are asked for than
    devices exist, or when the global batch does not split over every process of every machine."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    nproc = max(1, gpus) if cfg.nproc == 0 else cfg.nproc
    if cfg.nproc and gpus and cfg.nproc > gpus:
        raise JobError(
            f"--nproc {cfg.nproc} asks for more training processes than there are GPUs ({gpus}).",
            f"use --nproc {gpus} or fewer (0 means one per GPU).",
        )
    cpus = os.cpu_count() or 1
    if cfg.nproc and not gpus and cfg.nproc > cpus:
        raise JobError(
            f"--nproc {cfg.nproc} asks for more CPU training processes than there are cores ({cpus}).",
            f"use --nproc {cpus} or fewer.",
        )
    check_batch_split(cfg.batch_size, nodes, nproc)
    return nproc


def check_batch_split(batch_size: int, nodes: int, nproc: int) -> None:
    """The global batch must split evenly over every process (each gets ``batch_size / processes`` pairs)."""
    processes = nodes * nproc
    if processes > 1 and batch_size % processes:
        each = f"{nproc} process{'es' if nproc > 1 else ''}"
        over = f"{nodes} nodes x {each} ({processes})" if nodes > 1 else f"{nproc} processes"
        raise JobError(
            f"batch_size {batch_size} does not split evenly over {over}.",
            f"use a batch size that is a multiple of {processes} (the global batch: each process gets an equal share).",
        )


def world_line(cfg: JobConfig, nodes: Nodes, nproc: int) -> str:
    """The train line's statement of the world: processes, global batch, negatives pool, learning rate."""
    processes = nodes.count * nproc
    where = (
        f"{nodes.count} nodes x {nproc} process{'es' if nproc > 1 else ''} = {processes} processes, this is node "
        f"{nodes.rank}, rendezvous {nodes.master_addr}:{nodes.master_port}"
        if nodes.count > 1
        else f"{processes} processes"
    )
    return (
        f"{where}; global batch {cfg.batch_size} ({cfg.batch_size // processes} pairs per process), in-batch negatives "
        f"gathered across all {processes} processes; learning rate {cfg.learning_rate:g}"
    )


def launch_training(
    cfg: JobConfig,
    run_dir: Path,
    nproc: int,
    *,
    resume: bool,
    force: bool = False,
    nodes: Nodes | None = None,
    entry: tuple[str, ...] = ("job", "train"),
    on_start: Callable[[subprocess.Popen], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run the training step under torchrun with this exact configuration (written to the run dir);
    returns torchrun's exit code. ``nodes`` places this machine in a multi-machine job (default: this
    machine alone). ``entry`` is the module (and subcommand) each rank runs; it gets ``--config FILE``
    and ``--resume`` / ``--force``. ``on_start`` sees the process (e.g. to pass on SIGTERM); ``env``
    adds environment variables (e.g. the network interface for gloo / NCCL)."""
    # Outside checkpoints/: rank 0 may clear that folder while the other ranks still read this file.
    config_file = Path(run_dir) / DDP_CONFIG
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(cfg.to_yaml())
    clear_rank_errors(run_dir)
    nodes = nodes or Nodes()
    cmd = [sys.executable, "-m", "torch.distributed.run", *nodes.torchrun_args(), f"--nproc-per-node={nproc}"]
    cmd += ["-m", *entry, "--config", str(config_file)]
    cmd += (["--resume"] if resume else []) + (["--force"] if force else [])
    # The YAML holds the fully resolved configuration: JOB_* variables must not override it again.
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | dict(env or {})
    proc = subprocess.Popen(cmd, env=child_env)
    if on_start:
        on_start(proc)
    return proc.wait()


# --- a rank's own error, for the process that started torchrun -----------------------------------
def record_rank_error(run_dir: Path, message: str) -> None:
    """Keep a rank's error paragraph (a JobError) where the launching process on this machine finds it."""
    folder = Path(run_dir) / DDP_ERRORS
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank-{rank()}.txt").write_text(message)
    except OSError:
        pass  # it was printed too


def rank_errors(run_dir: Path) -> list[str]:
    """The error paragraphs the ranks on this machine recorded, lowest rank first."""
    folder = Path(run_dir) / DDP_ERRORS
    files = sorted(folder.glob("rank-*.txt"), key=lambda p: int(p.stem.split("-")[1])) if folder.is_dir() else []
    return [f"rank {p.stem.split('-')[1]}: {p.read_text().strip()}" for p in files]


def clear_rank_errors(run_dir: Path) -> None:
    folder = Path(run_dir) / DDP_ERRORS
    for p in folder.glob("rank-*.txt") if folder.is_dir() else []:
        p.unlink(missing_ok=True)


# --- the ranks agree before the first step -------------------------------------------------------
def digest(values: list[Any]) -> str:
    h = hashlib.sha256()
    for v in values:
        h.update(repr(v).encode())
    return h.hexdigest()[:16]


def check_agreement(facts: dict[str, Any], fix: str) -> None:
    """Every rank must hold the same ``facts`` (e.g. the training pairs' digest, the checkpoint it resumes
    from); otherwise a JobError on every rank names what differs and on which ranks. A no-op outside DDP."""
    import torch.distributed as dist

    if world_size() < 2 or not (dist.is_available() and dist.is_initialized()):
        return
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, facts)
    for key in facts:
        seen: dict[str, list[int]] = {}
        for r, theirs in enumerate(gathered):
            seen.setdefault(repr(theirs.get(key)), []).append(r)
        if len(seen) > 1:
            cells = "; ".join(f"ranks {', '.join(map(str, rs))}: {value}" for value, rs in seen.items())
            raise JobError(f"The training processes disagree on {key} ({cells}).", fix)
