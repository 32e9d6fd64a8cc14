"""Checkpoint averaging (a uniform "model soup"): the mean of the weights of the last N checkpoints of
one training run. It is scored on the validation split with the same evaluator that picked the best
checkpoint and kept only when it beats that checkpoint at the selection metric; otherwise the best
single checkpoint stays. The test split is never looked at."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.evaluate import card
from job.train import checkpoints

logger = logging.getLogger(__name__)


def candidates(checkpoint_dir: Path, n: int) -> list[Path]:
    """The ``n`` newest complete checkpoints, oldest first (fewer when fewer exist)."""
    return list(reversed(checkpoints.complete(checkpoint_dir)[:n]))


def checkpoint_weights(path: Path) -> dict[str, Any]:
    """A checkpoint's full sentence-transformers state dict (every module, not only the transformer), on CPU."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(path), device="cpu").state_dict()
    except Exception as exc:  # noqa: BLE001 - any load failure is the same problem to the user
        raise JobError(
            f"Checkpoint {path} could not be loaded for averaging: {type(exc).__name__}: {exc}",
            "set --average-checkpoints 0, or delete the damaged checkpoint and rerun `job train --resume`.",
        ) from None


def average(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Uniform mean of floating-point tensors (in fp32); other tensors (integer buffers) from the newest."""
    import torch

    if not states:
        raise ValueError("nothing to average")
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys:
            raise JobError(
                "The checkpoints to average do not hold the same weights (different architectures).",
                "set --average-checkpoints 0, or train them from one model.",
            )
    out = {}
    for key in states[0]:
        tensors = [s[key] for s in states]
        if torch.is_floating_point(tensors[0]):
            out[key] = (sum(t.float() for t in tensors) / len(tensors)).to(tensors[0].dtype)
        else:
            out[key] = tensors[-1]
    return out


def try_soup(model, checkpoint_dir: Path, n: int, evaluator, selection_key: str, best_single: float | None) -> dict:
    """Average the last ``n`` checkpoints into ``model`` when that beats ``best_single`` on validation
    (``evaluator`` is the validation evaluator, ``selection_key`` its selection metric). ``model``
    holds the best single checkpoint on entry; it is put back when the average does not win.
    Returns what happened, for the training record."""
    paths = candidates(checkpoint_dir, n)
    if len(paths) < 2:
        return {"kept": False, "checkpoints": [p.name for p in paths], "why": "fewer than 2 complete checkpoints"}
    if evaluator is None or best_single is None:
        return {"kept": False, "checkpoints": [p.name for p in paths], "why": "no validation split to choose on"}
    best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    model.load_state_dict(average([checkpoint_weights(p) for p in paths]))  # copied onto the model's device
    scores = card.rescore_for_card(model, evaluator)  # when kept, these are the saved model's numbers
    score = float(scores[selection_key])
    kept = score > best_single
    if not kept:
        model.load_state_dict(best)
    logger.info(
        "checkpoint average of %s: validation %s %.4f vs best single checkpoint %.4f -> %s",
        ", ".join(p.name for p in paths), selection_key, score, best_single,
        "kept" if kept else "not kept (the best single checkpoint stays)",
    )  # fmt: skip
    return {
        "kept": kept, "checkpoints": [p.name for p in paths], "validation_score": score, "best_single": best_single,
        "validation_scores": {k: float(v) for k, v in scores.items()},
    }  # fmt: skip
