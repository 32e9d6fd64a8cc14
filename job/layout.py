"""The run directory: one layout that every part of the project reads and writes.

Torch-free on purpose (publishing, the launcher and the container import it without paying for
PyTorch). Nothing else spells out a run directory's folder or file names::

    RUN_DIR/
      synth/       pairs.jsonl (+ .answers.jsonl cache, .dropped.jsonl, .summary.json)       (synthesize, --docs)
      data/        train.jsonl validation.jsonl test.jsonl, leakage.json, prepare.json  (prepare)
      ir/          validation/ and test/ in BEIR format                                  (prepare)
      baseline/    metrics.json                                                          (baseline)
      checkpoints/ trainer checkpoints, job_fingerprint.json                             (train)
      ddp_config.yaml, ddp_errors/   the configuration torchrun's ranks read, their errors    (train, DDP)
      model/       the fine-tuned model, its card README.md, training.json               (train)
      report/      report.md, metrics.json, ndcg_by_dim.png                              (evaluate)
      logs/        TensorBoard event files (train, when tensorboard is installed)
      chroma/      rag-eval's embedded vector store
      rag_eval/    rag-eval's reports

Writes are staged: :func:`write_json` writes a temporary file and renames it; :func:`replace_dir`
swaps a fully written staging folder in for the old one, so a crash leaves either the old or the
new content, never a half-written mix.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STEPS = ("prepare", "baseline", "train", "evaluate")
DATA, IR, BASELINE, CHECKPOINTS, MODEL, REPORT = "data", "ir", "baseline", "checkpoints", "model", "report"
CHROMA, RAG_EVAL, LOGS, SYNTH = "chroma", "rag_eval", "logs", "synth"
SYNTH_PAIRS = f"{SYNTH}/pairs.jsonl"  # `job run --docs` trains on this file
# Each step's "done" record, relative to the run directory: its presence means the step finished.
DONE_FILES = {
    "prepare": f"{DATA}/prepare.json",
    "baseline": f"{BASELINE}/metrics.json",
    "train": f"{MODEL}/training.json",
    "evaluate": f"{REPORT}/metrics.json",
}
TRAINING_RECORD = DONE_FILES["train"]
REPORT_RECORD = DONE_FILES["evaluate"]
# What leaves the machine with a finished run (S3 publishing, the container's output archive).
RESULT_DIRS = (MODEL, REPORT)
RESULT_FILES = (DONE_FILES["prepare"], DONE_FILES["baseline"])
# The run's evaluation inputs and records (the container's output/data, `job launch fetch`).
OUTPUT_DIRS = (DATA, IR, BASELINE, REPORT)
# The model card section that the evaluate step writes into model/README.md.
CARD_MARK = "<!-- job:evaluation -->"
CHECKPOINT_FINGERPRINT = "job_fingerprint.json"
# Multi-process training (job.distributed): the configuration every rank reads, and the error paragraph a
# failing rank leaves for the process that started torchrun on its machine.
DDP_CONFIG, DDP_ERRORS = "ddp_config.yaml", "ddp_errors"


@dataclass
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()

    data = property(lambda self: self.root / DATA)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    model = property(lambda self: self.root / MODEL)
    baseline = property(lambda self: self.root / BASELINE)
    report = property(lambda self: self.root / REPORT)
    chroma = property(lambda self: self.root / CHROMA)
    rag_eval = property(lambda self: self.root / RAG_EVAL)
    synth_pairs = property(lambda self: self.root / SYNTH_PAIRS)

    def ir(self, split: str) -> Path:
        return self.root / IR / split

    def done_file(self, step: str) -> Path:
        return self.root / DONE_FILES[step]

    def record(self, step: str) -> dict[str, Any] | None:
        path = self.done_file(step)
        return json.loads(path.read_text()) if path.is_file() else None

    def stage(self, name: str) -> Path:
        """An empty staging folder inside the run directory (same file system: the swap is a rename)."""
        stage = self.root / f".{name}.tmp"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        return stage


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON through a temporary file and a rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def replace_dir(staged: Path, final: Path) -> None:
    """Swap a fully written ``staged`` folder in for ``final`` (two renames; the old one goes last)."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staged.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(final)
