"""The run directory: one layout that every part of the project reads and writes.

Torch-free on purpose (publishing, the launcher and the container import it without paying for
PyTorch). Nothing else spells out a run directory's folder or file names::

    RUN_DIR/
      synth/       pairs.jsonl (+ .answers.jsonl cache, .dropped.jsonl, .summary.json)       (synthesize, --docs)
      data/        train.jsonl validation.jsonl test.jsonl, leakage.json, prepare.json  (prepare)
      ir/          validation/ and test/ in BEIR format                                  (prepare)
      baseline/    metrics.json                                                          (baseline)
                   model/: the base model's exports, tokenizer and configs (no weights)  (evaluate --export)
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

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.errors import JobError

STEPS = ("prepare", "baseline", "train", "evaluate")
DATA, IR, BASELINE, CHECKPOINTS, MODEL, REPORT = "data", "ir", "baseline", "checkpoints", "model", "report"
CHROMA, RAG_EVAL, LOGS, SYNTH = "chroma", "rag_eval", "logs", "synth"
SYNTH_PAIRS = f"{SYNTH}/pairs.jsonl"  # `job run --docs` trains on this file
BASE_EXPORT = f"{BASELINE}/model"  # the base model's exports, for `rag-eval serve --backend`
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
LOCK_FILE = ".lock"  # one writer per run directory (see run_lock)
_LOCK_ENV = "JOB_RUN_LOCK_HELD"  # the run directories this process (or its parent, for torchrun ranks) holds
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
    base_export = property(lambda self: self.root / BASE_EXPORT)

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


def file_stamp(path: Path) -> list:
    """[size, SHA-256 of the first and last 64 KiB (16 hex digits)]: cheap, and it catches truncation and edits."""
    import hashlib

    size = Path(path).stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 16))
        if size > 1 << 16:
            fh.seek(max(1 << 16, size - (1 << 16)))
            h.update(fh.read(1 << 16))
    return [size, h.hexdigest()[:16]]


def output_stamp(folder: Path, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, list]:
    """:func:`file_stamp` of every file under ``folder``, keyed by ``prefix/relative path``: what a step's done
    record vouches for. ``skip``: names not stamped (the record itself, files a later step edits)."""
    return {
        f"{prefix}/{p.relative_to(folder).as_posix()}": file_stamp(p)
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and p.name not in skip
    }


def changed_outputs(root: Path, record: dict[str, Any]) -> list[str]:
    """The files a done record vouches for that are missing or no longer what the step wrote."""
    changed = []
    for rel, (size, digest) in (record.get("outputs") or {}).items():
        path = Path(root) / rel
        if not path.is_file():
            changed.append(f"{rel} (missing)")
            continue
        now_size, now_digest = file_stamp(path)
        if now_size != size:
            changed.append(f"{rel} ({now_size} bytes, {size} when written)")
        elif now_digest != digest:
            changed.append(f"{rel} (content changed)")
    return changed


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


# --- one writer per run directory ------------------------------------------------------------------
_held: dict[str, int] = {}  # run dir -> nesting depth, in this process


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    if not info:
        return "another process"
    who = info.get("command", "a process")
    return f"{who} (pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('since', '?')})"


@contextlib.contextmanager
def run_lock(root: Path, command: str, *, shared: bool = False) -> Iterator[None]:
    """Hold the run directory for ``command``: exclusive for a writer (the job's steps, `rag-eval index` and
    `score`), shared for a reader (`rag-eval serve` and `query`). An OS file lock (flock) on
    ``RUN_DIR/.lock``: a killed process releases it, so a crash never leaves a stale lock. A second writer,
    or a writer while readers hold it, is a JobError naming the holder. Nested uses in one process, and the
    torchrun ranks a holder starts (they inherit ``JOB_RUN_LOCK_HELD``), pass through."""
    import fcntl

    root = Path(root).expanduser()
    key = str(root.resolve())
    inherited = key in os.environ.get(_LOCK_ENV, "").split(os.pathsep)
    if key in _held or inherited:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    path = root / LOCK_FILE
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if shared:  # a reader of a folder it cannot write: nothing to guard against, no lock to take
            yield
            return
        from job.storage import storage_error

        raise storage_error(exc, root, f"the lock file of {command}") or JobError(
            f"Cannot create {path} ({exc.strerror}).", "check the run directory's path and permissions."
        ) from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(
                f"{root} is in use by {_holder(path)}; one process writes a run directory at a time.",
                "wait for it to finish or stop it (a killed process releases the run directory at once), or use "
                "another --run-dir.",
            ) from None
        except OSError as exc:  # a file system without locks (some network mounts): say so, go on unlocked
            print(f"warning: cannot lock {path} ({exc.strerror}); nothing stops a second writer", file=sys.stderr)
        if not shared:  # who holds it, for the message a second writer gets
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        _held[key] = 1
        previous = os.environ.get(_LOCK_ENV)
        os.environ[_LOCK_ENV] = os.pathsep.join(p for p in (previous, key) if p)
        try:
            yield
        finally:
            _held.pop(key, None)
            if previous is None:
                os.environ.pop(_LOCK_ENV, None)
            else:
                os.environ[_LOCK_ENV] = previous
    finally:
        os.close(fd)  # releases the lock
