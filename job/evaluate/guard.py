"""A general-retrieval guard: does fine-tuning on one domain damage retrieval elsewhere?

The evaluate step scores the base and the fine-tuned model on data the fine-tuning never saw:

* ``--guard-data DIR``: any BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), at every
  Matryoshka dim, with the job's own evaluator (works offline);
* ``--guard-nanobeir NAMES`` (online): sentence-transformers' ``NanoBEIREvaluator`` on those NanoBEIR
  datasets (e.g. ``msmarco,nq,scifact``), at the full dim.

and warns when the fine-tuned model loses more than ``--guard-max-drop`` NDCG@10 points on any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from job.config import JobConfig
from job.data import prepare as data
from job.errors import JobError
from job.evaluate.retrieval import evaluate_model, evaluation_options

Echo = Callable[[str], None]


def check_guard(cfg: JobConfig) -> None:
    """Refuse what cannot work before the step spends time: a folder that is not BEIR, NanoBEIR offline."""
    if cfg.guard_data:
        data.load_beir(cfg.guard_data, cfg.guard_split, option="--guard-data", split_option="--guard-split")
    if cfg.guard_nanobeir:
        from job.models import hub_offline

        if hub_offline():
            raise JobError(
                "--guard-nanobeir downloads the NanoBEIR datasets from the Hugging Face Hub, "
                "which offline mode forbids.",
                "unset HF_HUB_OFFLINE, or use --guard-data with a local BEIR folder.",
            )


def guard_scores(cfg: JobConfig, base, tuned, dims: list[int], echo: Echo) -> dict[str, Any] | None:
    """Base vs fine-tuned NDCG@10 on the guard sets, the largest drop in points, and the warnings."""
    if not (cfg.guard_data or cfg.guard_nanobeir):
        return None
    sets: list[dict[str, Any]] = []
    if cfg.guard_data:
        guard_set = data.load_beir(cfg.guard_data, cfg.guard_split, option="--guard-data", split_option="--guard-split")
        opts = evaluation_options(cfg)
        scored = {
            name: {d: m["ndcg@10"] for d, m in evaluate_model(model, guard_set, dims, "guard", **opts).items()}
            for name, model in (("baseline", base), ("finetuned", tuned))
        }
        sets.append(
            {
                "name": str(cfg.guard_data),
                "queries": len(guard_set.relevant_docs()),
                "corpus_size": len(guard_set.corpus),
                **scored,
            }
        )
    for name in cfg.guard_nanobeir or []:
        sets.append({"name": f"NanoBEIR {name}", **_nanobeir(name, base, tuned, dims[0], cfg)})
    drops = [
        (s["name"], d, (s["baseline"][d] - s["finetuned"][d]) * 100)
        for s in sets
        for d in s["finetuned"]
        if d in s["baseline"]
    ]
    worst = max(drops, key=lambda x: x[2]) if drops else None
    warnings = [
        f"fine-tuning lost {drop:.1f} NDCG@10 points on {name} at dim {d} (limit {cfg.guard_max_drop:g})"
        for name, d, drop in drops
        if drop > cfg.guard_max_drop
    ]
    for w in warnings:
        echo(
            f"evaluate: WARNING: {w}: the model got worse outside its domain; "
            "consider fewer epochs or a lower learning rate"
        )
    return {
        "sets": sets,
        "max_drop_points": round(worst[2], 2) if worst else None,
        "max_drop_at": {"set": worst[0], "dim": worst[1]} if worst else None,
        "limit_points": cfg.guard_max_drop,
        "warnings": warnings,
    }


def _nanobeir(name: str, base, tuned, dim: int, cfg: JobConfig) -> dict[str, Any]:
    from sentence_transformers.sentence_transformer.evaluation import NanoBEIREvaluator

    try:
        evaluator = NanoBEIREvaluator(
            dataset_names=[name], batch_size=cfg.eval_batch_size, write_csv=False,
            query_prompts=cfg.query_prompt, corpus_prompts=cfg.passage_prompt,
        )  # fmt: skip
    except (ValueError, KeyError) as exc:
        raise JobError(
            f"--guard-nanobeir {name!r} is not a NanoBEIR dataset ({exc}).", "use names such as msmarco, nq, scifact."
        ) from None
    out: dict[str, Any] = {}
    for label, model in (("baseline", base), ("finetuned", tuned)):
        scores = evaluator(model)
        key = next((k for k in scores if k.endswith("ndcg@10")), None)
        out[label] = {dim: float(scores[key])} if key else {}
    return out


def markdown(guard: dict[str, Any]) -> str:
    """The report's guard section."""
    lines = [
        "## General-retrieval guard (data the fine-tuning never saw)",
        "",
        "| set | dim | baseline NDCG@10 | fine-tuned NDCG@10 | change (points) |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in guard["sets"]:
        for d in s["finetuned"]:
            b, f = s["baseline"].get(d), s["finetuned"][d]
            lines.append(f"| {s['name']} | {d} | {b:.4f} | {f:.4f} | {(f - b) * 100:+.1f} |")
    lines.append("")
    if guard["warnings"]:
        lines += [f"**Warning**: {w}." for w in guard["warnings"]] + [""]
    else:
        lines.append(f"No drop beyond {guard['limit_points']:g} points.")
        lines.append("")
    return "\n".join(lines)
