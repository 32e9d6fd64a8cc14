"""Will training fit in this machine's memory? An estimate made before training, on the CPU.

On a GPU an out-of-memory error before the first update is caught and the job retries with the cached loss
(job.train.finetune). On the CPU there is no such error: the process grows until the OS kills it (or the machine swaps
for hours). So before training the job estimates what a step holds, and when that exceeds the memory available:

- with ``mnrl`` / ``gist`` it switches to the cached twin (GradCache: the same in-batch negatives, only a
  mini-batch of activations held at a time), with a mini-batch that fits, and says so;
- when even that cannot fit, it stops with the fix (shorter ``--max-seq-length``, smaller ``--mini-batch-size`` or
  ``--batch-size``) before any work.

The estimate: weights, gradients and Adam's two moments (16 bytes a parameter), what the process holds besides
(Python, torch, the data: 1.5 GiB), and autograd's saved activations, ``4 * (9 * hidden + 2 * intermediate)``
bytes per token and layer with every text counted at the full ``max_seq_length`` (float32; PyTorch's fused
attention on the CPU keeps no seq x seq matrices). That per-token figure is fitted to two measured peaks, and
the estimate lands at or above both: all-mpnet-base-v2 at batch 32, 128 tokens, one mined negative (measured
10.2 GiB, estimated 10.3 GiB) and all-MiniLM-L6-v2 the same way (bench/results/cpu_quality_2000x1.json's
default row: measured 3.2 GiB, estimated 3.6 GiB).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

from job.errors import JobError
from job.train import losses

logger = logging.getLogger(__name__)
PROCESS_OVERHEAD = 1.5 * 2**30  # Python, torch, tokenizers, the data (an evaluation-only run peaks at 1.2 GiB)
HEADROOM = 0.9  # use at most this share of the memory available


@dataclass(frozen=True)
class Shape:
    params: int
    hidden: int
    intermediate: int
    layers: int
    heads: int

    @classmethod
    def of(cls, model) -> Shape | None:
        """The transformer's shape from its config, or None when it does not say (an unusual module stack)."""
        try:
            config = model[0].auto_model.config
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
        hidden = getattr(config, "hidden_size", None)
        layers = getattr(config, "num_hidden_layers", None)
        if not hidden or not layers:
            return None
        return cls(
            params=sum(p.numel() for p in model.parameters()),
            hidden=int(hidden),
            intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden),
            layers=int(layers),
            heads=int(getattr(config, "num_attention_heads", None) or max(1, hidden // 64)),
        )


def step_bytes(shape: Shape, texts: int, seq: int) -> int:
    """What one training step holds: the optimiser's state and ``texts`` sequences' activations at ``seq``."""
    optimiser = 16 * shape.params  # weights, gradients, Adam's two moments (float32)
    per_token_layer = 4 * (9 * shape.hidden + 2 * shape.intermediate)  # calibrated: see the module's docstring
    return int(PROCESS_OVERHEAD + optimiser + texts * seq * shape.layers * per_token_layer)


def available_bytes() -> int | None:
    """Memory this process can still use: MemAvailable (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def fit_cpu_training(cfg, model, batch_size: int, texts_per_row: int, available: int | None = None):
    """``cfg`` as it can train in this machine's memory (the cached loss when the plain one would not fit), or a
    JobError with the fix when nothing fits. Only for the CPU (the GPU path retries after a real out-of-memory)."""
    shape = Shape.of(model)
    available = available_bytes() if available is None else available
    if shape is None or available is None:
        return cfg
    seq = int(cfg.max_seq_length or getattr(model, "max_seq_length", 512) or 512)
    budget = HEADROOM * available
    loss = losses.get(cfg.loss)
    cached = loss.cached
    held = min(cfg.mini_batch_size, batch_size) if cached else batch_size
    need = step_bytes(shape, held * texts_per_row, seq)
    if need <= budget:
        return cfg
    mini = held
    while mini > 1 and step_bytes(shape, mini * texts_per_row, seq) > budget:
        mini //= 2
    fits = step_bytes(shape, mini * texts_per_row, seq) <= budget
    what = f"{shape.params / 1e6:.0f}M parameters, batch {batch_size} x {texts_per_row} texts at {seq} tokens"
    if fits and (loss.cached_twin or cached):
        new_loss = loss.cached_twin or cfg.loss
        logger.warning(
            "training %s with %s would need about %s, more than the %s available: training with %s instead "
            "(the same in-batch negatives, mini-batches of %d)",
            what, cfg.loss, gib(need), gib(available), new_loss, mini,
        )  # fmt: skip
        return replace(cfg, loss=new_loss, mini_batch_size=mini)
    if fits:  # a loss with no cached twin (job/train/losses.py): a smaller batch would fit
        raise JobError(
            f"Training {what} with {cfg.loss} needs about {gib(need)}, and {gib(available)} of memory is available; "
            f"{cfg.loss} has no cached (GradCache) twin to fall back to.",
            f"pass --batch-size {mini} or less, shorten --max-seq-length (now {seq}), or register the loss with a "
            "cached_twin in job/train/losses.py; to train anyway, pass --no-memory-check.",
        )
    raise JobError(
        f"Training {what} needs about {gib(step_bytes(shape, texts_per_row, seq))} even one pair at a time, and "
        f"{gib(available)} of memory is available.",
        f"shorten --max-seq-length (now {seq}), train a smaller model, or free memory; to train anyway, pass "
        "--no-memory-check.",
    )
