"""Trainer checkpoints that can be trusted: a completion mark, validation, and the newest complete one.

The trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG state, trainer
state). A crash or a full disk in the middle leaves a folder that looks like a checkpoint but cannot
be resumed from. So:

* after the trainer has written a checkpoint, the job adds ``job_checkpoint_complete.json`` (written
  through a rename) listing every file and its size: the commit mark. A checkpoint without it, or
  whose files no longer match it, is incomplete;
* a checkpoint from before these marks is accepted only if every file the trainer needs is there
  and readable in full (JSON parses, safetensors header and size agree, PyTorch zip archives end in
  their central directory);
* resuming takes the newest complete checkpoint; incomplete ones are moved to
  ``checkpoints/incomplete/`` (never deleted silently) and named in the log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import time
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

MARK = "job_checkpoint_complete.json"
INCOMPLETE = "incomplete"
_NAME = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
NEEDED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def checkpoint_dirs(checkpoint_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, newest (largest N) first."""
    if not Path(checkpoint_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(checkpoint_dir).iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def mark_complete(path: Path, train_seconds: float | None = None) -> None:
    """Write the commit mark: every file of the checkpoint with its size, and the training seconds spent up
    to this checkpoint over every session (so a resumed run reports the whole run's time)."""
    path = Path(path)
    files = {
        p.relative_to(path).as_posix(): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != MARK
    }
    tmp = path / (MARK + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({"files": files, "written": time.time(), "train_seconds": train_seconds}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path / MARK)


def problems(path: Path) -> list[str]:
    """Why ``path`` cannot be resumed from (empty: it is complete)."""
    path = Path(path)
    mark = path / MARK
    if mark.is_file():
        try:
            files = json.loads(mark.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return [f"{MARK} is unreadable"]
        bad = [
            f"{name} {'missing' if not (path / name).is_file() else 'changed size'}"
            for name, size in files.items()
            if not (path / name).is_file() or (path / name).stat().st_size != size
        ]
        return bad
    return _content_problems(path)


def _content_problems(path: Path) -> list[str]:
    out = []
    weights = [path / w for w in WEIGHTS if (path / w).is_file()]
    if not weights:
        out.append("no model weights")
    for name in NEEDED:
        if not (path / name).is_file():
            out.append(f"{name} missing")
    if not list(path.glob("rng_state*.pth")):
        out.append("rng_state.pth missing")
    state = path / "trainer_state.json"
    if state.is_file():
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            out.append("trainer_state.json unreadable")
    for f in weights:
        if f.suffix == ".safetensors" and not _safetensors_whole(f):
            out.append(f"{f.name} truncated")
    for f in [
        path / "optimizer.pt",
        path / "scheduler.pt",
        *path.glob("rng_state*.pth"),
        *[w for w in weights if w.suffix == ".bin"],
    ]:
        if f.is_file() and not _zip_whole(f):
            out.append(f"{f.name} truncated")
    return out


def _safetensors_whole(path: Path) -> bool:
    """The header parses and the file is as long as its last tensor's end."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, KeyError, struct.error, TypeError):
        return False


def _zip_whole(path: Path) -> bool:
    """PyTorch saves zip archives; a truncated one has lost its central directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def newest_complete(checkpoint_dir: Path, echo=None) -> str | None:
    """The newest complete checkpoint; incomplete ones newer than it are moved to ``incomplete/``."""
    say = echo or logger.warning
    for path in checkpoint_dirs(checkpoint_dir):
        found = problems(path)
        if not found:
            return str(path)
        target = set_aside(path)
        say(f"train: {path.name} is incomplete ({', '.join(found[:4])}); moved it to {target} and looked further back")
    return None


def train_seconds(path: str | Path | None) -> float:
    """Training seconds spent up to this checkpoint, over every session (0 when unknown)."""
    if path is None:
        return 0.0
    try:
        return float(json.loads((Path(path) / MARK).read_text()).get("train_seconds") or 0.0)
    except (OSError, ValueError, TypeError):
        return 0.0


def finished_state(path: str | Path | None, max_steps: int, epochs: float) -> dict | None:
    """The trainer state of a checkpoint at which a run of ``max_steps`` (> 0) or, else, ``epochs`` has ended,
    else None. Resuming such a checkpoint must not train: transformers would take one more step."""
    if path is None:
        return None
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    steps = state.get("global_step") or 0
    if max_steps > 0:
        return state if steps >= max_steps else None
    same_run = state.get("num_train_epochs") == epochs or float(state.get("num_train_epochs") or -1) == float(epochs)
    last = state.get("max_steps") or 0
    return state if same_run and last > 0 and steps >= last else None


def complete(checkpoint_dir: Path) -> list[Path]:
    """The complete checkpoints, newest first, changing nothing on disk."""
    return [p for p in checkpoint_dirs(checkpoint_dir) if not problems(p)]


def newest(checkpoint_dir: Path) -> str | None:
    """The newest complete checkpoint, changing nothing on disk."""
    found = complete(checkpoint_dir)
    return str(found[0]) if found else None


def set_aside(path: Path) -> Path:
    """Move a checkpoint folder into ``incomplete/`` next to it (a rename: no copy, no extra space)."""
    path = Path(path)
    target_dir = path.parent / INCOMPLETE
    target_dir.mkdir(exist_ok=True)
    target = target_dir / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        n += 1
        target = target_dir / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    path.rename(target)
    return target


def remove_unmarked(checkpoint_dir: Path) -> list[str]:
    """Delete checkpoints that the trainer was writing when the disk filled (no commit mark): they are
    garbage, and on a full disk the space matters. Returns their names."""
    removed = []
    for path in checkpoint_dirs(checkpoint_dir):
        if not (path / MARK).is_file() and problems(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed
