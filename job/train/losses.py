"""The training losses: one table from a name to what builds it (the one place a loss is added).

Each entry builds the in-batch-negatives loss that :func:`job.train.finetune.build_loss` wraps in ``MatryoshkaLoss``,
and says what the rest of the job needs to know about it: whether it holds only a mini-batch of activations at a time
(GradCache), which cached twin the job retries with when a batch does not fit in memory, whether it needs the frozen
guide model, whether it takes ``--loss-directions``. The configuration's choices, its cross-field checks,
the CPU memory check and the out-of-memory retry all read this table, so a new loss is one :func:`register` call:

    from job.train import losses
    losses.register(losses.Loss("my_loss", build=lambda model, cfg, guide, gather: MyLoss(model), summary="..."))

Register before the configuration is resolved (the ``--loss`` choices of an already-built CLI are fixed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from job.errors import JobError

# (model, the job.config.JobConfig, guide model or None, gather across devices) -> a sentence-transformers loss
Builder = Callable[[Any, Any, Any, bool], Any]


@dataclass(frozen=True)
class Loss:
    name: str
    build: Builder
    summary: str
    cached: bool = False  # GradCache: --mini-batch-size activations at a time, any batch size
    cached_twin: str | None = None  # the cached loss with the same negatives, tried when a batch does not fit
    guide: bool = False  # needs the frozen guide model (--guide-model, or a copy of the base model)
    directions: bool = False  # takes --loss-directions


REGISTRY: dict[str, Loss] = {}


def register(loss: Loss) -> Loss:
    """Add ``loss`` to the table (a name already there is replaced); returns it."""
    if loss.cached_twin is not None and loss.cached_twin not in REGISTRY:
        raise ValueError(f"{loss.name}: its cached twin {loss.cached_twin!r} is not registered (register it first)")
    REGISTRY[loss.name] = loss
    return loss


def get(name: str) -> Loss:
    """The entry of ``name``; an unknown name is a JobError that lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise JobError(f"Unknown loss {name!r}.", f"use one of: {', '.join(REGISTRY)}.") from None


def help_text() -> str:
    return (
        "; ".join(f"'{loss.name}': {loss.summary}" for loss in REGISTRY.values()) + ". All wrapped in MatryoshkaLoss."
    )


# --- the built-in losses ------------------------------------------------------------------------------------------
def _st_losses():
    from sentence_transformers.sentence_transformer import losses

    return losses


def _mnrl(model, cfg, guide, gather):
    return _st_losses().MultipleNegativesRankingLoss(
        model, scale=cfg.loss_scale, gather_across_devices=gather, directions=tuple(cfg.loss_directions)
    )


def _cached_mnrl(model, cfg, guide, gather):
    return _st_losses().CachedMultipleNegativesRankingLoss(
        model, scale=cfg.loss_scale, mini_batch_size=cfg.mini_batch_size, gather_across_devices=gather,
        directions=tuple(cfg.loss_directions),
    )  # fmt: skip


def _gist(model, cfg, guide, gather):
    return _st_losses().GISTEmbedLoss(model, guide, gather_across_devices=gather)


def _cached_gist(model, cfg, guide, gather):
    return _st_losses().CachedGISTEmbedLoss(
        model, guide, mini_batch_size=cfg.mini_batch_size, gather_across_devices=gather
    )


register(Loss("cached_mnrl", _cached_mnrl, "MNRL with GradCache (large batches in little memory)", cached=True,
              directions=True))  # fmt: skip
register(Loss("mnrl", _mnrl, "MultipleNegativesRankingLoss", cached_twin="cached_mnrl", directions=True))
register(Loss("cached_gist", _cached_gist, "GISTEmbedLoss with GradCache", cached=True, guide=True))
register(Loss("gist", _gist, "GISTEmbedLoss (in-batch negatives that the guide model scores above the positive "
              "are left out, against false negatives)", cached_twin="cached_gist", guide=True))  # fmt: skip
# the order users read in --help: the plain losses first
for _name in ("mnrl", "cached_mnrl", "gist", "cached_gist"):
    REGISTRY[_name] = REGISTRY.pop(_name)
