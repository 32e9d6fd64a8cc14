"""Disks the job writes to: write probes, free-space checks, and errors that say which folder and what to do.

A full disk, a read-only mount or a folder owned by someone else shows up deep inside libraries as
``OSError(ENOSPC)``, a safetensors ``SafetensorError: ... No space left on device``, or PyTorch's
``RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...`` (a short write). These
helpers turn each into one :class:`~job.errors.JobError` (exit code 2) that names the folder, the
free space where known, and the fix; and they check what can be checked before expensive work
starts (a write probe before any model is loaded, the space a training run needs before mining).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from job.errors import JobError

MiB = 1 << 20
# Below this much free space after a failed write, the failure is taken to be a full disk.
NEARLY_FULL_BYTES = 64 * MiB
_DISK_FULL_TEXT = ("no space left", "disk quota exceeded", "unexpected pos", "file write failed", "enospc")


def existing_parent(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(existing_parent(path)).free
    except OSError:
        return None


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / MiB:,.0f} MiB"


def probe_writable(folder: Path, what: str = "the run directory") -> None:
    """Create ``folder`` and write, sync and remove a small file in it; a JobError if that fails."""
    folder = Path(folder).expanduser()
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise JobError(
            f"{what.capitalize()} {folder} cannot be made: {blocking} is a file, not a folder.",
            "pass a --run-dir that is a folder (or does not exist yet), or move that file away.",
        )
    probe = folder / f".write-probe-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"probe")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise storage_error(exc, folder, what) or JobError(
            f"Cannot write {what} in {folder}: {_first_line(exc)}.", "check the path and its permissions."
        ) from None


def check_free_space(folder: Path, need: int, what: str) -> None:
    """A JobError before the work starts when ``folder``'s file system has less than ``need`` bytes free."""
    free = free_bytes(folder)
    if free is not None and free < need:
        raise JobError(
            f"{what} needs about {_mib(need)} free in {existing_parent(folder)}, which has {_mib(free)} free.",
            f"free at least {_mib(need - free)} there (old runs' checkpoints/ folders are the usual bulk), or use a "
            "--run-dir on a larger disk.",
        )


def is_disk_full(exc: BaseException, folder: Path | None = None) -> bool:
    """Whether ``exc`` is a failed write on a full disk (by its errno, its text, or the space left)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return True
    text = str(exc).lower()
    if any(marker in text for marker in _DISK_FULL_TEXT):
        if "unexpected pos" in text or "file write failed" in text:  # PyTorch's short write: check the disk
            free = free_bytes(folder) if folder is not None else None
            return free is None or free < NEARLY_FULL_BYTES
        return True
    return False


def storage_error(exc: BaseException, folder: Path, what: str, fix: str | None = None) -> JobError | None:
    """The JobError for a storage failure while writing ``what`` under ``folder``; None if ``exc`` is not one."""
    folder = Path(getattr(exc, "filename", None) or folder)
    where = existing_parent(folder) if not folder.exists() else folder
    if is_disk_full(exc, folder):
        return JobError(
            f"The disk is full: writing {what} in {where} failed ({_first_line(exc)}); "
            f"{_mib(free_bytes(folder))} free.",
            fix
            or "free space on that disk (or use a --run-dir on a larger one) and rerun the same command: "
            "finished steps are kept and training resumes from its last complete checkpoint.",
        )
    code = getattr(exc, "errno", None)
    if code == errno.EROFS:
        return JobError(
            f"{where} is on a read-only file system, so {what} cannot be written there.",
            fix or "pass a --run-dir on a writable disk (or remount it read-write).",
        )
    if code in (errno.EACCES, errno.EPERM):
        return JobError(
            f"Permission denied writing {what} in {where} (user id {os.getuid()}).",
            fix
            or "make the folder writable for this user (e.g. `chown -R $(id -u) FOLDER`), or pass another --run-dir.",
        )
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextlib.contextmanager
def storage_errors(folder: Path, what: str, fix: str | None = None) -> Iterator[None]:
    """Turn a full disk, a read-only folder or a permission error while writing ``what`` into a JobError."""
    try:
        yield
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - only storage failures are translated; others go on
        translated = storage_error(exc, folder, what, fix)
        if translated is None:
            raise
        raise translated from exc
