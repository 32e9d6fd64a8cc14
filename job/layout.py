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
import errno
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.errors import JobError

DATA, IR, BASELINE, CHECKPOINTS, MODEL, REPORT = "data", "ir", "baseline", "checkpoints", "model", "report"
CHROMA, RAG_EVAL, LOGS, SYNTH = "chroma", "rag_eval", "logs", "synth"
SYNTH_PAIRS = f"{SYNTH}/pairs.jsonl"  # `job run --docs` trains on this file
BASE_EXPORT = f"{BASELINE}/model"  # the base model's exports, for `rag-eval serve --backend`
# Each step's "done" record, relative to the run directory: its presence means the step finished (a step registered
# in job/steps.py adds its own).
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
# Multi-process training (job.train.distributed): the configuration every rank reads, and the error paragraph a
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
    """Write ``payload`` as JSON through a new temporary file and a rename: never half a file, and never
    through a link planted where the file or its temporary goes (the rename replaces a link, not its target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # O_EXCL: a new file
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(payload, indent=2, default=str))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def _live_holders(dir_fd: int) -> list[int]:
    """The pids holding an OS lock on the folder behind ``dir_fd`` (Linux's /proc/locks; [] elsewhere)."""
    st = os.fstat(dir_fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == ident and parts[4].isdigit():
            pids.append(int(parts[4]))
    return sorted(set(pids))


def _command_of(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "a process"
    words = [
        Path(a.decode(errors="replace")).name if i == 0 else a.decode(errors="replace") for i, a in enumerate(argv) if a
    ]
    return " ".join(" ".join(words).split())[:120] or "a process"


def _holder(path: Path, dir_fd: int) -> str:
    """Who holds the run directory: the writer's record in ``.lock`` when that process still holds it, else the
    live holders the OS knows of (a reader such as `rag-eval serve` records nothing), else "another process"."""
    try:
        info = json.loads(_read_nofollow(path) or "{}")
    except (OSError, ValueError):
        info = {}
    live = _live_holders(dir_fd)
    recorded = isinstance(info, dict) and info.get("pid") is not None
    if recorded and (info.get("pid") in live or (not live and info.get("host") != socket.gethostname())):
        who = info.get("command", "a process")
        return f"{who} (pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('since', '?')})"
    if live:
        return ", ".join(f"{_command_of(pid)} (pid {pid} on {socket.gethostname()})" for pid in live[:3])
    return "another process"


def _read_nofollow(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(4096).decode(errors="replace")


def _lock_link_error(path: Path, what: str) -> JobError:
    return JobError(
        f"{path} is {what}; the run directory's lock file is never written through a link (it could overwrite "
        "the file it points to).",
        f"remove it (rm {path}): it holds only the name of the process that last wrote the run directory.",
    )


def _record_holder(path: Path, command: str) -> None:
    """Write who holds the run directory into ``.lock``, never through a symbolic or hard link."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _lock_link_error(path, "a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _lock_link_error(path, "not a plain file")
        if st.st_nlink > 1:
            raise _lock_link_error(path, f"a hard link ({st.st_nlink} names for one file)")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(root: Path, command: str, *, shared: bool = False) -> Iterator[None]:
    """Hold the run directory for ``command``: exclusive for a writer (the job's steps, `rag-eval index` and
    `score`), shared for a reader (`rag-eval serve` and `query`). An OS lock (flock) on the run directory
    ITSELF: a killed process releases it, so a crash never leaves a stale lock, and deleting ``RUN_DIR/.lock``
    cannot let a second writer in. ``.lock`` only records who holds it (pid, host, command), written without
    following links. A second writer, or a writer while readers hold it, is a JobError naming the live holder.
    Nested uses in one process, and the torchrun ranks a holder starts (they inherit ``JOB_RUN_LOCK_HELD``),
    pass through."""
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
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if shared:  # a reader of a folder it cannot open: nothing to guard against, no lock to take
            yield
            return
        from job.storage import storage_error

        raise storage_error(exc, root, f"the lock of {command}") or JobError(
            f"Cannot open the run directory {root} ({exc.strerror}).", "check the run directory's path and permissions."
        ) from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(
                f"{root} is in use by {_holder(path, fd)}; one process writes a run directory at a time.",
                "wait for it to finish or stop it (a killed process releases the run directory at once), or use "
                "another --run-dir.",
            ) from None
        except OSError as exc:  # a file system without locks (some network mounts): say so, go on unlocked
            print(f"warning: cannot lock {root} ({exc.strerror}); nothing stops a second writer", file=sys.stderr)
        if not shared:  # who holds it, for the message a second writer gets
            try:
                _record_holder(path, command)
            except OSError as exc:
                from job.storage import storage_error

                raise storage_error(exc, root, f"the lock file of {command}") or JobError(
                    f"Cannot write {path} ({exc.strerror}).", "check the run directory's path and permissions."
                ) from None
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
