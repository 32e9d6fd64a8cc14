"""What `rag-eval serve`'s page shows beside the answers, gathered once at start-up: the run's title, the held-out
questions (and which passages answer each), `rag-eval score`'s report and the job's quality report with its picture.

Kept apart from :mod:`rag_eval.service` (the search): the service takes a :class:`PageData` and only reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job.layout import RAG_EVAL, REPORT_RECORD, RunDir
from rag_eval.sources import LoadedModel

SCORE_REPORT = "metrics.json"  # in RUN_DIR/rag_eval (`rag-eval score`)
QUALITY_PLOT = "ndcg_by_dim.png"  # in RUN_DIR/report (`job evaluate`)


@dataclass
class PageData:
    title: str = ""  # the run directory's name (never a path), else the model's
    questions: list[tuple[str, str]] = field(default_factory=list)  # (id, text) of held-out questions with an answer
    gold: dict[str, set[str]] = field(default_factory=dict)  # question text -> ids of its relevant passages
    score_report: dict[str, Any] | None = None  # `rag-eval score`'s metrics.json, when made from these weights
    score_note: str = ""  # where the score numbers come from, or why there are none
    quality: dict[str, Any] | None = None  # the job's NDCG@10 by dim (report/metrics.json)
    quality_plot: bytes | None = None  # its picture (PNG)

    @classmethod
    def gather(cls, run_dir: RunDir | None, models: list[LoadedModel], ir=None) -> PageData:
        questions: list[tuple[str, str]] = []
        gold: dict[str, set[str]] = {}
        if ir is not None:
            relevant = ir.relevant_docs()
            questions = [(qid, text) for qid, text in ir.queries.items() if relevant.get(qid)]
            gold = {text.strip(): set(relevant[qid]) for qid, text in questions}
        report_dir = run_dir.rag_eval if run_dir is not None else Path("rag_eval_report")
        score_report, score_note = load_score_report(report_dir / SCORE_REPORT, models, f"{RAG_EVAL}/{SCORE_REPORT}")
        quality, plot = load_quality(run_dir.root if run_dir is not None else None)
        title = run_dir.root.name if run_dir is not None else models[-1].spec.name
        return cls(title, questions, gold, score_report, score_note, quality, plot)

    def describe(self) -> str:
        """For the start-up line."""
        return (
            f"{len(self.questions)} held-out questions; score report: {'yes' if self.score_report else 'none'}; "
            f"quality report: {'yes' if self.quality else 'none'}"
        )


# --- reports of the run --------------------------------------------------------------------------
def load_score_report(
    path: Path, models: list[LoadedModel], shown: str | None = None
) -> tuple[dict[str, Any] | None, str]:
    """`rag-eval score`'s metrics.json, if it exists and was made from these models' weights; the note names it as
    ``shown`` (the page's words: a path relative to the run, never one on the server's disk)."""
    shown = shown or path.name
    if not path.is_file():
        return None, f"No `rag-eval score` report ({shown})."
    try:
        report = json.loads(path.read_text())
        scored = report["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"The `rag-eval score` report ({shown}) cannot be read."
    stale = [m.label for m in models if m.label in scored and scored[m.label].get("fingerprint") != m.fingerprint]
    if stale:
        return None, f"The `rag-eval score` report ({shown}) was made from other weights of {', '.join(stale)}."
    return report, f"From the run's `rag-eval score` report ({shown})."


def load_quality(run_root: Path | None) -> tuple[dict[str, Any] | None, bytes | None]:
    """The job's held-out NDCG@10 by dim (report/metrics.json) and its plot, for the run directory."""
    if run_root is None:
        return None, None
    metrics_path = run_root / REPORT_RECORD
    plot_path = metrics_path.with_name(QUALITY_PLOT)
    quality = None
    try:
        payload = json.loads(metrics_path.read_text())
        rows = [
            {"dim": int(r["dim"]), "baseline": float(r["baseline"]), "finetuned": float(r["finetuned"])}
            for r in payload.get("comparison", [])
        ]
        if rows:
            quality = {"rows": sorted(rows, key=lambda r: -r["dim"]), "test_queries": payload.get("test_queries"),
                       "corpus_size": payload.get("corpus_size"), "source": REPORT_RECORD}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        quality = None
    plot = plot_path.read_bytes() if plot_path.is_file() else None
    return quality, plot
