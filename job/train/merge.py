"""Fine-tune without forgetting: interpolate the fine-tuned weights with the base model's (WiSE-FT; what
LM-Cocktail does for embedding models), ``alpha * fine-tuned + (1 - alpha) * base``.

``--merge-base`` (the train step, after the best checkpoint and any checkpoint average):

* ``off``: the fine-tuned weights as they are;
* ``ALPHA`` (0 < ALPHA <= 1): that interpolation;
* ``auto``: every alpha of ``--merge-alphas`` is scored on the validation split (in-domain) and, when a
  guard set is given (``--guard-data``), on the guard set's CHOICE queries (its ``train`` qrels, else ``dev``;
  never the ``--guard-split`` queries the report scores). Kept: the alpha with the best in-domain validation
  NDCG@10 at ``best_model_dim`` whose guard drop (points below the base model, at every dim) is within
  ``--guard-max-drop``; with no guard set, the best validation alpha (1.0 when nothing beats the fine-tuned
  weights), and the record says so; with a guard set but no validation split (``--val-fraction 0``), nothing
  in the domain to compare on: the largest alpha within the guard's limit, and the record says that instead.
  Every alpha tried is reported (training.json, report, card).

The per-alpha scores are kept beside the checkpoints (``merge_scores.json``), so a crash mid-merge costs
only the alphas not yet scored: the next run resumes the training at its last checkpoint, which ends at
once, and merges again. A damaged scores file (cut short, or of another shape) is said and ignored: the alphas are
scored again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from job.config import CHOICE_SPLITS, JobConfig, fingerprint_digest, guard_choice_split
from job.data import prepare as data
from job.errors import JobError
from job.evaluate.retrieval import VALIDATION, evaluate_model, evaluation_options
from job.layout import write_json

logger = logging.getLogger(__name__)
SCORES_FILE = "merge_scores.json"


def interpolate(base: dict[str, Any], tuned: dict[str, Any], alpha: float) -> dict[str, Any]:
    """``alpha * tuned + (1 - alpha) * base`` for floating-point tensors (computed in fp32, stored in the
    tuned tensor's dtype); other tensors (integer buffers) from ``tuned``."""
    import torch

    if set(base) != set(tuned):
        missing = sorted(set(base) ^ set(tuned))[:3]
        raise JobError(
            f"The fine-tuned model and the base model do not hold the same weights ({', '.join(missing)} ...).",
            "use --merge-base off: interpolation needs the base model the run was fine-tuned from.",
        )
    out = {}
    for key, t in tuned.items():
        b = base[key]
        if torch.is_floating_point(t):
            if b.shape != t.shape:
                raise JobError(
                    f"Weight {key} has shape {tuple(t.shape)} in the fine-tuned model but {tuple(b.shape)} in the "
                    "base model.",
                    "use --merge-base off: interpolation needs the base model the run was fine-tuned from.",
                )
            out[key] = (alpha * t.float() + (1.0 - alpha) * b.to(t.device).float()).to(t.dtype)
        else:
            out[key] = t
    return out


def choice_split(guard_dir: str | Path, report_split: str) -> str:
    """The guard set's queries to choose alpha on: ``train``, else ``dev`` (never the reported split)."""
    qrels = Path(guard_dir).expanduser() / "qrels"
    split = guard_choice_split(guard_dir, report_split)
    if split is not None:
        return split
    raise JobError(
        f"--merge-base auto chooses alpha on the guard set's own choice queries, but {qrels} holds no "
        f"{' or '.join(f'{s}.tsv' for s in CHOICE_SPLITS if s != report_split)} besides the {report_split}.tsv that "
        "the report scores (choosing on the reported queries would flatter the result).",
        "give a BEIR folder with qrels/train.tsv or qrels/dev.tsv, pass --merge-base ALPHA (e.g. 0.5) or off, or "
        "drop --guard-data to choose on in-domain validation alone.",
    )


def check_merge(cfg: JobConfig) -> None:
    """What cannot work, before training starts."""
    if cfg.merge_base == "auto" and cfg.guard_data:
        choice_split(cfg.guard_data, cfg.guard_split)


def _scores(model, ir: data.IRData, dims: list[int], name: str, cfg: JobConfig) -> dict[int, float]:
    return {d: m["ndcg@10"] for d, m in evaluate_model(model, ir, dims, name, **evaluation_options(cfg)).items()}


def merge_with_base(
    cfg: JobConfig, model, dims: list[int], best_dim: int, validation, checkpoint_dir: Path, echo=logger.info
) -> dict[str, Any] | None:
    """Apply ``cfg.merge_base`` to ``model`` in place; return the record (None when off)."""
    import torch

    from job.models import load_model

    mode = cfg.merge_base
    if mode == "off":
        return None
    tuned = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    base_model = load_model(cfg.model, max_seq_length=cfg.max_seq_length, train=True)
    base = {k: v.detach().to("cpu") for k, v in base_model.state_dict().items()}
    if mode != "auto":
        alpha = float(mode)
        model.load_state_dict(interpolate(base, tuned, alpha))
        return {"mode": "fixed", "chosen": alpha, "alphas": [], "why": f"--merge-base {alpha:g}"}
    if validation is None and not cfg.guard_data:
        model.load_state_dict(tuned)
        return {"mode": "auto", "chosen": 1.0, "alphas": [], "why": "no validation split and no guard set to choose on"}

    guard: dict[str, Any] | None = None
    if cfg.guard_data:
        split = choice_split(cfg.guard_data, cfg.guard_split)
        guard_ir = data.load_beir(cfg.guard_data, split, option="--guard-data")
        guard = {"set": str(cfg.guard_data), "split": split, "queries": len(guard_ir.relevant_docs())}
    cache_path = Path(checkpoint_dir) / SCORES_FILE
    weights = [round(float(v.float().sum()), 4) for v in tuned.values() if torch.is_floating_point(v)]
    key = fingerprint_digest({"tuned": weights, "model": cfg.model, "guard": guard, "dims": dims,
                              "max_seq_length": cfg.max_seq_length})  # fmt: skip
    cache = read_scores(cache_path, key, dims, validation is not None, guard is not None)

    def scored(alpha: float) -> dict[str, Any]:
        tag = f"{alpha:.4f}"
        if tag not in cache["alphas"]:
            state = base if alpha == 0 else interpolate(base, tuned, alpha)
            model.load_state_dict(state)
            with torch.no_grad():
                row: dict[str, Any] = {"alpha": alpha}
                if validation is not None:
                    row["validation"] = _scores(model, validation, dims, VALIDATION, cfg)
                if guard is not None:
                    row["guard"] = _scores(model, guard_ir, dims, "guard-choice", cfg)
            cache["alphas"][tag] = {k: ({str(d): s for d, s in v.items()} if isinstance(v, dict) else v)
                                    for k, v in row.items()}  # fmt: skip
            write_json(cache_path, cache)
        row = cache["alphas"][tag]
        return {k: ({int(d): s for d, s in v.items()} if isinstance(v, dict) else v) for k, v in row.items()}

    base_row = scored(0.0) if guard is not None else None
    rows = []
    for alpha in sorted(set(cfg.merge_alphas), reverse=True):
        row = scored(alpha)
        if guard is not None and base_row is not None:
            row["guard_drop_points"] = {d: round((base_row["guard"][d] - row["guard"][d]) * 100, 2) for d in dims}
            row["within_guard"] = max(row["guard_drop_points"].values()) <= cfg.guard_max_drop
        rows.append(row)
        said = [f"validation {row['validation'][best_dim]:.4f}"] if "validation" in row else []
        if guard is not None:
            said.append(f"guard drop {max(row['guard_drop_points'].values()):+.1f} points")
        echo(f"train: base-model interpolation alpha {alpha:g}: {', '.join(said)}")

    def in_domain(row) -> float:
        return row["validation"][best_dim] if "validation" in row else 0.0

    feasible = [r for r in rows if r.get("within_guard", True)]
    if feasible and validation is None:
        # nothing in the domain to compare the alphas on (guard only): the one nearest the fine-tuned weights that
        # the guard allows, so as much of the fine-tuning as the guard permits is kept
        chosen = max(feasible, key=lambda r: r["alpha"])
        assert guard is not None  # (no validation and no guard returned early)
        why = (
            f"no validation split to compare the alphas in the domain (--val-fraction 0): the largest alpha (the most "
            f"fine-tuning kept) within {cfg.guard_max_drop:g} points of the base model on {guard['set']} "
            f"({guard['split']} queries)"
        )
    elif feasible:
        chosen = max(feasible, key=lambda r: (in_domain(r), r["alpha"]))
        why = (
            f"best validation NDCG@10 at dim {best_dim} among the alphas within {cfg.guard_max_drop:g} points of the "
            f"base model on {guard['set']} ({guard['split']} queries)"
            if guard is not None
            else f"best validation NDCG@10 at dim {best_dim} (no guard set: chosen on in-domain validation alone)"
        )
    else:
        chosen = min(rows, key=lambda r: (max(r["guard_drop_points"].values()), -r["alpha"]))
        why = (
            f"no alpha tried keeps the guard drop within {cfg.guard_max_drop:g} points; kept the one that loses least "
            "outside the domain (add smaller alphas to --merge-alphas to go further)"
        )
    model.load_state_dict(interpolate(base, tuned, chosen["alpha"]) if chosen["alpha"] < 1 else tuned)
    del base_model
    echo(f"train: base-model interpolation: kept alpha {chosen['alpha']:g} ({why})")
    return {
        "mode": "auto", "chosen": chosen["alpha"], "why": why, "best_dim": best_dim, "guard": guard,
        "base_guard": base_row["guard"] if base_row else None, "limit_points": cfg.guard_max_drop, "alphas": rows,
    }  # fmt: skip


def read_scores(path: Path, key: str, dims: list[int], validation: bool, guard: bool) -> dict[str, Any]:
    """The per-alpha scores a previous run kept for these weights (``key``); a fresh record when there are none, when
    they are for other weights, or when the file is damaged (cut short, or not the shape this code writes): a damaged
    file is said and ignored, and the alphas are scored again (nothing is lost but time)."""
    fresh = {"key": key, "alphas": {}}
    if not path.is_file():
        return fresh
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        logger.warning("%s is damaged (%s); ignoring it and scoring the alphas again", path, type(exc).__name__)
        return fresh
    if not isinstance(cache, dict) or not isinstance(cache.get("alphas"), dict):
        logger.warning(
            "%s is damaged (not the scores this step writes); ignoring it and scoring the alphas again", path
        )
        return fresh
    if cache.get("key") != key:
        return fresh  # scores of other weights (an earlier training): not these
    want = {str(d) for d in dims}

    def per_dim(scores: Any) -> bool:
        return (
            isinstance(scores, dict)
            and set(scores) >= want
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values())
        )

    kept = {}
    for tag, row in cache["alphas"].items():
        if (
            isinstance(row, dict)
            and isinstance(row.get("alpha"), (int, float))
            and f"{row['alpha']:.4f}" == tag
            and (not validation or per_dim(row.get("validation")))
            and (not guard or per_dim(row.get("guard")))
        ):
            kept[tag] = row
    if len(kept) < len(cache["alphas"]):
        logger.warning(
            "%s: %d of its %d alpha score records are damaged; scoring those alphas again",
            path,
            len(cache["alphas"]) - len(kept),
            len(cache["alphas"]),
        )
    return {"key": key, "alphas": kept}


def _at(scores: dict, dim: int) -> float:
    """A per-dim score whether the dims are ints (in memory) or strings (read back from JSON)."""
    return scores[dim] if dim in scores else scores[str(dim)]


def markdown(record: dict[str, Any]) -> str:
    """The report's section: every alpha tried, the one kept and why."""
    lines = ["## Interpolation with the base model (--merge-base)", ""]
    if record["mode"] != "auto" or not record["alphas"]:
        return "\n".join(lines + [f"alpha {record['chosen']:g}: {record['why']}.", ""])
    dim = record["best_dim"]
    guard = record.get("guard")
    head = f"| alpha | validation NDCG@10 @{dim} |"
    sep = "|---:|---:|"
    if guard:
        head += f" guard ({guard['split']} queries) NDCG@10 @{dim} | worst guard drop (points) |"
        sep += "---:|---:|"
    lines += [head + " kept |", sep + ":---:|"]
    for r in record["alphas"]:
        cells = [f"{r['alpha']:g}", f"{_at(r['validation'], dim):.4f}" if "validation" in r else "-"]
        if guard:
            cells += [f"{_at(r['guard'], dim):.4f}", f"{max(r['guard_drop_points'].values()):+.1f}"]
        cells.append("✓" if r["alpha"] == record["chosen"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Kept alpha {record['chosen']:g}: {record['why']}.", ""]
    if guard and record.get("base_guard"):
        base = _at(record["base_guard"], dim)
        lines.insert(2, f"Base model on the guard's {guard['split']} queries: {base:.4f} at dim {dim}.")
        lines.insert(3, "")
    return "\n".join(lines)
