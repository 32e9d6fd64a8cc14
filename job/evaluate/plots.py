"""The report's pictures, one PNG each, drawn from the records the run already keeps.

* :func:`training_curves`: loss and validation NDCG@10 per dim over the steps (training.json's ``log_history``), the
  selected checkpoint, the checkpoint average and the base-model merge marked;
* :func:`merge_tradeoff`: ``--merge-base auto`` with a guard set: per alpha, validation NDCG@10 in the domain against
  the guard's drop, the ``--guard-max-drop`` line and the alpha kept;
* :func:`per_question_change`: the test questions sorted by their NDCG@10 change (fine-tuned minus baseline);
* :func:`mining_scores`: the mined negatives' scores against the positives' (sentence-transformers' mining
  statistics: quartiles, min, max, mean), as boxes.

Each returns the path it wrote, or None when its record is absent (nothing is drawn from nothing).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BASE = "#888888"
TUNED = "#1f77b4"
_EVAL_KEY = re.compile(r"^eval_validation_dim(\d+)_cosine_ndcg@10$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _step_of(name: str | None) -> int | None:
    found = re.search(r"checkpoint-(\d+)$", str(name or ""))
    return int(found[1]) if found else None


def training_curves(training: dict[str, Any], path: Path) -> Path | None:
    """Loss (left) and validation NDCG@10 per dim (right) against the step."""
    history = training.get("log_history") or []
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals: dict[int, list[tuple[int, float]]] = {}
    for h in history:
        for key, value in h.items():
            if (m := _EVAL_KEY.match(key)) and "step" in h:
                evals.setdefault(int(m[1]), []).append((h["step"], value))
    if not losses and not evals:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    if losses:
        left.plot(*zip(*losses), "o-", color="#d62728", markersize=3)
    else:
        left.text(0.5, 0.5, "no training loss logged", ha="center", va="center", transform=left.transAxes)
    left.set_title("Training loss")
    left.set_ylabel("loss")
    cmap = plt.get_cmap("viridis")
    dims = sorted(evals, reverse=True)
    for i, dim in enumerate(dims):
        right.plot(*zip(*evals[dim]), "o-", markersize=3, color=cmap(i / max(1, len(dims) - 1)), label=f"dim {dim}")
    before = training.get("validation_before") or {}
    for i, dim in enumerate(dims):
        if str(dim) in before or dim in before:
            value = before.get(str(dim), before.get(dim))
            right.plot([0], [value], "x", color=cmap(i / max(1, len(dims) - 1)))
    best = _step_of(training.get("best_checkpoint"))
    for ax in (left, right):
        if best is not None:
            ax.axvline(best, color="black", linestyle="--", linewidth=1, label=f"selected checkpoint (step {best})")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    notes = []
    averaged = training.get("checkpoint_average") or {}
    if averaged.get("validation_score") is not None:
        steps = [s for s in (_step_of(c) for c in averaged.get("checkpoints", [])) if s is not None]
        if steps:
            right.axvspan(min(steps), max(steps), color="#2ca02c", alpha=0.12, label="checkpoints averaged")
        notes.append(f"checkpoint average {'kept' if averaged.get('kept') else 'not kept'}")
    merged = training.get("merge_base") or {}
    if merged.get("chosen") is not None and merged.get("chosen") != 1.0:
        notes.append(f"then merged with the base model at alpha {merged['chosen']:g}")
    elif merged:
        notes.append("base-model merge: alpha 1 (fine-tuned weights kept whole)")
    right.set_title("Validation NDCG@10 by dim")
    if notes:
        fig.suptitle("; ".join(notes), fontsize=9)
    right.set_ylabel("NDCG@10 (validation; x = base model)")
    if right.get_lines():
        right.legend(fontsize=7)
    if best is not None:
        left.legend(fontsize=7)
    return _save(fig, path)


def merge_tradeoff(record: dict[str, Any] | None, path: Path) -> Path | None:
    """Per alpha: validation NDCG@10 at the selection dim (y) against the guard's worst drop in points (x)."""
    if not record or record.get("mode") != "auto" or not record.get("guard"):
        return None
    rows = [r for r in record.get("alphas") or [] if r.get("guard_drop_points")]
    if not rows:
        return None
    dim = record.get("best_dim")

    def at(scores: dict | None) -> float | None:
        if not scores:
            return None
        return scores.get(dim, scores.get(str(dim)))

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    xs = [max(r["guard_drop_points"].values()) for r in rows]
    ys = [at(r.get("validation")) for r in rows]
    if all(y is None for y in ys):  # guard only: the alphas along the y axis instead
        ys = [r["alpha"] for r in rows]
        ax.set_ylabel("alpha (no validation split)")
    else:
        ax.set_ylabel(f"validation NDCG@10 at dim {dim} (in the domain)")
    pts = [(x, y, r) for x, y, r in zip(xs, ys, rows) if y is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=TUNED)
    for x, y, r in pts:
        ax.annotate(f"α {r['alpha']:g}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if r["alpha"] == record.get("chosen"):
            ax.plot([x], [y], "o", markersize=16, markerfacecolor="none", markeredgecolor="#d62728", markeredgewidth=2,
                    label=f"kept: alpha {r['alpha']:g}")  # fmt: skip
    limit = record.get("limit_points")
    if limit is not None:
        ax.axvline(limit, color="#d62728", linestyle="--", linewidth=1, label=f"--guard-max-drop {limit:g} points")
    guard = record["guard"]
    name = Path(str(guard.get("set", "guard"))).name
    ax.set_xlabel(f"worst NDCG@10 drop on {name} ({guard.get('split', '?')} queries) vs the base model (points)")
    ax.set_title("Forgetting trade-off: base-model interpolation (--merge-base auto)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def per_question_change(rows: list[dict[str, Any]] | None, path: Path, dim: int | None = None) -> Path | None:
    """One bar per test question, sorted by its NDCG@10 change (points): worse on the left, better on the right."""
    if not rows:
        return None
    changes = sorted((r["finetuned"] - r["baseline"]) * 100 for r in rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=120)
    colours = ["#d62728" if c < 0 else ("#2ca02c" if c > 0 else BASE) for c in changes]
    ax.bar(range(len(changes)), changes, color=colours, width=1.0)
    ax.axhline(0, color="black", linewidth=0.8)
    better, worse = sum(c > 0 for c in changes), sum(c < 0 for c in changes)
    ax.set_title(
        f"Per-question NDCG@10 change{f' at dim {dim}' if dim else ''}: "
        f"{better} better, {worse} worse, {len(changes) - better - worse} unchanged",
        fontsize=10,
    )
    ax.set_xlabel("test questions, sorted by change")
    ax.set_ylabel("fine-tuned - baseline (points)")
    ax.set_xticks([])
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def mining_scores(stats: dict[str, Any] | None, path: Path) -> Path | None:
    """Positives' and mined negatives' similarity scores as boxes (quartiles; whiskers to min and max)."""
    scores = (stats or {}).get("mining_scores") or {}
    boxes = []
    for key, label in (("positive", "positives"), ("negative", "mined negatives")):
        s = scores.get(key) or {}
        q1, med, q3 = s.get("25%"), s.get("50%", s.get("median")), s.get("75%")
        if s.get("count") and None not in (q1, med, q3, s.get("min"), s.get("max")):
            boxes.append(
                {
                    "label": f"{label}\n(n={s['count']:,})", "whislo": s["min"], "q1": q1, "med": med, "q3": q3,
                    "whishi": s["max"], "mean": s.get("mean"),
                }
            )  # fmt: skip
    if not boxes:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    showmeans = all(b["mean"] is not None for b in boxes)
    if not showmeans:
        for b in boxes:
            b.pop("mean")
    ax.bxp(boxes, showfliers=False, showmeans=showmeans, orientation="horizontal")
    margin = (stats or {}).get("relative_margin")
    pos = scores.get("positive") or {}
    title = "Mining scores: question-positive vs mined negatives"
    if margin is not None and pos.get("50%", pos.get("median")) is not None:
        median = pos.get("50%", pos.get("median"))
        cut = median * (1 - margin)
        ax.axvline(cut, color="#d62728", linestyle="--", linewidth=1,
                   label=f"median positive x (1 - margin {margin:g})")  # fmt: skip
        ax.legend(fontsize=8, loc="lower left")
        title += f"\n(a negative must score below its own positive x (1 - {margin:g}))"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("similarity score (the model that mined them, before training)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
