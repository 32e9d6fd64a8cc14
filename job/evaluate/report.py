"""Baseline vs fine-tuned report: Markdown tables, JSON with every metric, the pictures (one PNG each: NDCG@10 by
dim, training curves, the mined negatives' scores, the forgetting trade-off, the per-question change; the quality x
storage frontier once `rag-eval score` ran) and report.html, the same content as one self-contained page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PerDim = dict[int, dict[str, float]]


NO_GUARD = (
    "General retrieval: not measured. No guard set was given, so this report cannot say what the fine-tune costs "
    "outside its domain (on SciFact the default recipe loses 4.5-6.6 NDCG@10 points: BENCHMARKS.md). Pass "
    "`--guard-data DIR` (a BEIR folder; with train or dev queries it also turns on `--merge-base auto`, which keeps "
    "most of that)."
)


def _pct(new: float, old: float) -> str:
    return f"{(new - old) / old * 100:+.1f}%" if old else "n/a"


def _points(new: float, old: float) -> str:
    """The change in NDCG points (0.010 = 1 point)."""
    return f"{(new - old) * 100:+.1f}"


def comparison_rows(baseline: PerDim, finetuned: PerDim, metric: str = "ndcg@10") -> list[dict[str, Any]]:
    """One row per dim: both scores, relative improvement, and each model's retention vs its full dim."""
    dims = sorted(set(baseline) & set(finetuned), reverse=True)
    if not dims:
        return []
    full = dims[0]
    rows = []
    for d in dims:
        b, f = baseline[d][metric], finetuned[d][metric]
        rows.append(
            {
                "dim": d,
                "baseline": b,
                "finetuned": f,
                "improvement_points": (f - b) * 100,
                "improvement_pct": (f - b) / b * 100 if b else None,
                "baseline_retention": b / baseline[full][metric] if baseline[full][metric] else None,
                "finetuned_retention": f / finetuned[full][metric] if finetuned[full][metric] else None,
            }
        )
    return rows


def markdown_table(baseline: PerDim, finetuned: PerDim, metric: str = "ndcg@10") -> str:
    rows = comparison_rows(baseline, finetuned, metric)
    full = rows[0]["dim"] if rows else "full"
    lines = [
        (
            f"| dim | baseline {metric.upper()} | fine-tuned {metric.upper()} | gain (points) | gain (relative) "
            f"| baseline retention vs {full} | fine-tuned retention vs {full} |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dim']} | {r['baseline']:.4f} | {r['finetuned']:.4f} | {_points(r['finetuned'], r['baseline'])} "
            f"| {_pct(r['finetuned'], r['baseline'])} | {r['baseline_retention']:.1%} "
            f"| {r['finetuned_retention']:.1%} |"
        )
    return "\n".join(lines)


def secondary_table(baseline: PerDim, finetuned: PerDim, metrics=("mrr@10", "map@100", "recall@1", "recall@10")) -> str:
    dims = sorted(set(baseline) & set(finetuned), reverse=True)
    head = "| dim | " + " | ".join(f"{m.upper()} base -> tuned" for m in metrics) + " |"
    lines = [head, "|---:|" + "---:|" * len(metrics)]
    for d in dims:
        cells = [f"{baseline[d][m]:.3f} -> {finetuned[d][m]:.3f}" for m in metrics]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_ndcg(baseline: PerDim, finetuned: PerDim, path: Path, title: str = "NDCG@10 by embedding dim") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(set(baseline) & set(finetuned))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(dims, [baseline[d]["ndcg@10"] for d in dims], "o--", label="baseline", color="#888888")
    ax.plot(dims, [finetuned[d]["ndcg@10"] for d in dims], "o-", label="fine-tuned", color="#1f77b4")
    for d in dims:
        ax.annotate(
            f"{finetuned[d]['ndcg@10']:.3f}",
            (d, finetuned[d]["ndcg@10"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims)
    ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("embedding dim (Matryoshka truncation)")
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


PER_QUESTION_MAX_CORPUS = 200_000  # above this the per-question scores are skipped (one more encoding of the corpus)
WORST_LISTED = 5
FRONTIER_START = "<!-- rag-eval score: quality x storage -->"
FRONTIER_END = "<!-- /rag-eval score -->"
PICTURES = {
    "training": ("training_curves.png", "Training loss and validation NDCG@10 by step"),
    "mining": ("mining_scores.png", "Mined negatives' scores against the positives'"),
    "merge": ("merge_tradeoff.png", "Forgetting trade-off: validation against the guard's drop, per alpha"),
    "per_question": ("per_question_change.png", "Per-question NDCG@10 change"),
}


def _ndcg_at_10(ranked: list[str], relevant: set[str]) -> float:
    """Binary-relevance NDCG@10 of one ranking, as sentence-transformers' InformationRetrievalEvaluator computes it."""
    import math

    dcg = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranked[:10]) if doc in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return dcg / ideal if ideal else 0.0


def per_query_ndcg(model, ir, dim: int, *, batch_size: int = 32, query_prompt=None, passage_prompt=None):
    """``{query id: NDCG@10}`` of ``model`` on ``ir`` at ``dim`` (exact cosine search over the whole corpus)."""
    import numpy as np

    relevant = ir.relevant_docs()
    qids = [q for q in ir.queries if q in relevant]
    cids = list(ir.corpus)

    def encode(texts, prompt):
        v = np.asarray(model.encode(texts, batch_size=batch_size, prompt=prompt, convert_to_numpy=True))[:, :dim]
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    corpus = encode([ir.corpus[c] for c in cids], passage_prompt)
    queries = encode([ir.queries[q] for q in qids], query_prompt)
    out = {}
    for start in range(0, len(qids), 256):
        sims = queries[start : start + 256] @ corpus.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :10]
        for q, row in zip(qids[start : start + 256], top):
            out[q] = _ndcg_at_10([cids[i] for i in row], relevant[q])
    return out


def per_question(base_model, tuned_model, ir, dim: int, **options) -> dict[str, Any] | None:
    """Each test question's NDCG@10 under both models at ``dim`` (None for a corpus over
    :data:`PER_QUESTION_MAX_CORPUS` passages, which would cost one more encoding each)."""
    if len(ir.corpus) > PER_QUESTION_MAX_CORPUS:
        return None
    base = per_query_ndcg(base_model, ir, dim, **options)
    tuned = per_query_ndcg(tuned_model, ir, dim, **options)
    rows = [{"query_id": q, "question": ir.queries[q], "baseline": base[q], "finetuned": tuned[q]} for q in base]
    rows.sort(key=lambda r: (r["finetuned"] - r["baseline"], r["query_id"]))
    return {"dim": dim, "rows": rows}


def per_question_section(record: dict[str, Any]) -> list[str]:
    rows, dim = record["rows"], record["dim"]
    changes = [(r["finetuned"] - r["baseline"]) * 100 for r in rows]
    better, worse = sum(c > 0 for c in changes), sum(c < 0 for c in changes)
    lines = [
        f"## Per-question change (NDCG@10 at dim {dim})",
        "",
        f"Of {len(rows)} test questions, {better} got better, {worse} got worse and {len(rows) - better - worse} "
        "did not change (exact cosine search over the test corpus, each model at this dim).",
        "",
    ]
    if worse:
        lines += ["The questions that lost most:", "", "| change (points) | baseline | fine-tuned | question |",
                  "|---:|---:|---:|:---|"]  # fmt: skip
        for r, c in list(zip(rows, changes))[:WORST_LISTED]:
            if c >= 0:
                break
            text = " ".join(r["question"].split())
            text = (text[:200] + "…") if len(text) > 200 else text
            text = text.replace("|", "\\|")
            lines.append(f"| {c:+.1f} | {r['baseline']:.3f} | {r['finetuned']:.3f} | {text} |")
        lines.append("")
    return lines


def draw_pictures(out_dir: Path, meta: dict[str, Any], training: dict[str, Any] | None) -> dict[str, Path]:
    """Every picture whose record exists, into ``out_dir``; ``{key: path}``. A picture that fails to draw is
    logged and left out: the report's numbers matter more than its pictures."""
    import logging

    from job.evaluate import plots

    jobs = {
        "training": lambda p: plots.training_curves(training, p) if training else None,
        "mining": lambda p: plots.mining_scores(meta.get("hard_negatives"), p),
        "merge": lambda p: plots.merge_tradeoff(meta.get("merge_base"), p),
        "per_question": lambda p: plots.per_question_change(
            (meta.get("per_question") or {}).get("rows"), p, (meta.get("per_question") or {}).get("dim")
        ),
    }
    drawn = {}
    for key, draw in jobs.items():
        path = out_dir / PICTURES[key][0]
        try:
            if draw(path):
                drawn[key] = path
            else:
                path.unlink(missing_ok=True)  # no record this time: no stale picture of an earlier run
        except Exception as exc:  # noqa: BLE001
            logging.getLogger(__name__).warning("report: %s not drawn (%s: %s)", path.name, type(exc).__name__, exc)
            path.unlink(missing_ok=True)
    return drawn


def _image(key: str) -> str:
    name, alt = PICTURES[key]
    return f"![{alt}]({name})"


def attach_frontier(report_dir: Path, picture: Path, section: list[str]) -> None:
    """After `rag-eval score` on a run: its quality x storage picture and table into the run's report (report.md's
    frontier section replaced, report.html written again). Nothing when the run has no report yet."""
    md = report_dir / "report.md"
    if not md.is_file():
        return
    import shutil

    text = md.read_text(encoding="utf-8")
    if FRONTIER_START in text:
        head, _, rest = text.partition(FRONTIER_START)
        text = head.rstrip("\n") + "\n" + rest.partition(FRONTIER_END)[2].lstrip("\n")
    block = "\n".join([FRONTIER_START, *section, FRONTIER_END])
    text = text.rstrip("\n") + "\n\n" + block + "\n"
    target = report_dir / picture.name
    if picture.resolve() != target.resolve():
        shutil.copyfile(picture, target)
    tmp = md.with_name(".report.tmp.md")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(md)
    from job.evaluate.report_html import write_html

    write_html(report_dir)


def side_by_side(baseline: PerDim, finetuned: PerDim, guard: dict[str, Any]) -> str:
    """In-domain gain beside the change on each guard set, per dim, in NDCG@10 points: the trade-off in one table."""
    sets = [s for s in guard["sets"] if s.get("finetuned")]
    head = "| dim | in-domain gain (test) | " + " | ".join(f"{s['name']} change" for s in sets) + " |"
    lines = ["### In domain and outside it (NDCG@10 points)", "", head, "|---:|---:|" + "---:|" * len(sets)]
    for d in finetuned:
        cells = [f"{(finetuned[d]['ndcg@10'] - baseline[d]['ndcg@10']) * 100:+.1f}"]
        for s in sets:
            f, b = s["finetuned"].get(d), s["baseline"].get(d)
            cells.append(f"{(f - b) * 100:+.1f}" if f is not None and b is not None else "-")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


GRADED = "graded_ndcg@10"


def is_graded(*per_dim: PerDim) -> bool:
    """Whether the evaluation carried graded qrels: its metrics hold graded NDCG@10 beside the binary one."""
    return all(per_dim) and all(GRADED in m for p in per_dim for m in p.values())


def relevance_record(baseline: PerDim, finetuned: PerDim, threshold: int | None = None) -> dict[str, Any]:
    """metrics.json's account of which NDCG@10 is which, and which one chose the checkpoint."""
    at = f"grade >= {threshold}" if threshold else "grade >= --relevance-threshold (default 1)"
    out: dict[str, Any] = {
        "graded_qrels": is_graded(baseline, finetuned),
        "ndcg@10": f"binary (sentence-transformers' InformationRetrievalEvaluator): relevant = {at}, gain 1",
        "model_selection": "ndcg@10 (the evaluator's, binary) on the validation split",
    }
    if threshold:
        out["relevance_threshold"] = threshold
    if out["graded_qrels"]:
        out[GRADED] = "linear gains (gain = the grade), as trec_eval / pytrec_eval (BEIR) and `rag-eval score`"
    return out


def graded_section(baseline: PerDim, finetuned: PerDim, threshold: int | None = None) -> list[str]:
    """The report's graded NDCG@10 table, and what sets it apart from the evaluator's, on graded qrels only."""
    if not is_graded(baseline, finetuned):
        return []
    at = f"graded {threshold} or more" if threshold else "at or above --relevance-threshold (default 1: any grade > 0)"
    return [
        "## Graded NDCG@10",
        "",
        "The test qrels carry grades. **NDCG@10** above is the evaluator's binary one: every passage "
        f"{at} counts as relevant with gain 1. **Graded NDCG@10** below uses the grades as gains (linear), as "
        "trec_eval, pytrec_eval (BEIR) and `rag-eval score` compute it, over the same rankings and questions; it "
        "is lower when a model ranks a lesser-graded passage above a better one. The checkpoint was selected on "
        "the binary NDCG@10 (validation split).",
        "",
        markdown_table(baseline, finetuned, GRADED).replace(GRADED.upper(), "graded NDCG@10"),
        "",
    ]


def write_report(
    out_dir: Path, baseline: PerDim, finetuned: PerDim, meta: dict[str, Any], training: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write report.md, report.html, metrics.json and the pictures into ``out_dir``; metrics.json is written last.
    ``training``: training.json (its log_history draws the training curves)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = draw_pictures(out_dir, meta, training)
    table = markdown_table(baseline, finetuned)
    from job.evaluate.card import summary_lines

    md = [
        f"# Retrieval report: {meta.get('model', '')}",
        "",
        f"Test set: {meta.get('test_queries', '?')} questions against a corpus of "
        f"{meta.get('corpus_size', '?')} passages. "
        "Metrics from sentence-transformers' InformationRetrievalEvaluator (cosine similarity); the checkpoint was "
        "selected on the validation split only. Gains are in NDCG points (0.010 = 1 point).",
        "",
        *summary_lines(meta),
        "",
        "## NDCG@10",
        "",
        table,
        "",
        *graded_section(baseline, finetuned, meta.get("relevance_threshold")),
        "## Other metrics",
        "",
        secondary_table(baseline, finetuned),
        "",
        "![NDCG@10 by dim](ndcg_by_dim.png)",
        "",
    ]
    if "training" in pictures:
        md += ["## Training", "", _image("training"), ""]
    if "mining" in pictures:
        md += ["## Mined hard negatives", "", _image("mining"), ""]
    if meta.get("per_question"):
        md += per_question_section(meta["per_question"])
        if "per_question" in pictures:
            md += [_image("per_question"), ""]
    if meta.get("merge_base"):
        from job.train.merge import markdown as merge_markdown

        md += [merge_markdown(meta["merge_base"]), ""]
        if "merge" in pictures:
            md += [_image("merge"), ""]
    if meta.get("guard"):
        from job.evaluate.guard import markdown as guard_markdown

        md += [guard_markdown(meta["guard"]), "", side_by_side(baseline, finetuned, meta["guard"]), ""]
    else:
        md += [NO_GUARD, ""]
    if meta.get("exports"):
        from job.evaluate.export_scores import markdown as exports_markdown

        md += [exports_markdown(meta["exports"]), ""]
    paths = {"markdown": out_dir / "report.md", "plot": out_dir / "ndcg_by_dim.png", "json": out_dir / "metrics.json"}
    frontier = out_dir / "frontier.png"
    old = paths["markdown"].read_text(encoding="utf-8") if paths["markdown"].is_file() else ""
    if FRONTIER_START in old and frontier.is_file():  # `rag-eval score` ran on this run: its section stays
        md += [FRONTIER_START + old.partition(FRONTIER_START)[2].partition(FRONTIER_END)[0] + FRONTIER_END, ""]
        pictures["frontier"] = frontier
    paths["markdown"].write_text("\n".join(md))
    plot_ndcg(baseline, finetuned, paths["plot"])
    from job.evaluate.report_html import write_html

    paths["html"] = write_html(out_dir)
    paths.update(pictures)
    from job.layout import file_stamp

    stamped = (paths["markdown"], paths["plot"], paths["html"], *pictures.values())
    payload = {
        **meta,
        "outputs": {f"{out_dir.name}/{p.name}": file_stamp(p) for p in stamped},
        "baseline": {str(d): m for d, m in baseline.items()},
        "finetuned": {str(d): m for d, m in finetuned.items()},
        "comparison": comparison_rows(baseline, finetuned),
        "relevance": relevance_record(baseline, finetuned, meta.get("relevance_threshold")),
    }
    if is_graded(baseline, finetuned):
        payload["comparison_graded"] = comparison_rows(baseline, finetuned, GRADED)
    tmp = paths["json"].with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(paths["json"])
    return paths
