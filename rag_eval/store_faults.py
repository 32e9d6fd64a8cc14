"""When the embedded Chroma store is not healthy: a damaged SQLite file (named, with the fix; `rag-eval index
--force` moves it aside, never deletes it), a full disk, a store this user cannot write. Used by
:mod:`rag_eval.store`; no other module touches Chroma."""

from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path

from job.errors import JobError

_FULL_MARKERS = ("database or disk is full", "no space left on device", "(code: 13)")
_READONLY_MARKERS = ("attempt to write a readonly database", "read-only file system", "(code: 8)")


def storage_problem(exc: BaseException, path: Path) -> JobError | None:
    """A full disk, or a store folder this user cannot write, as Chroma or the OS words it: a JobError with the
    fix (None for anything else). Chroma writes to its SQLite file even to answer a query, so a read-only store
    cannot be queried in place."""
    import errno

    from job.storage import storage_error

    text = str(exc).lower()
    code = getattr(exc, "errno", None)
    if any(m in text for m in _FULL_MARKERS) or code == errno.ENOSPC:
        from job.storage import free_bytes

        free = free_bytes(path)
        return JobError(
            f"The disk holding the Chroma store {path} is full ({_reason(exc)}; "
            f"{'unknown' if free is None else f'{free / 2**20:,.0f} MiB'} free).",
            "free space on that disk (re-indexing reclaims the space of the collections it replaces), or index into "
            "--chroma-path on a larger disk, then run the same command again.",
        )
    if any(m in text for m in _READONLY_MARKERS) or code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return JobError(
            f"The Chroma store {path} cannot be written by this user ({_reason(exc)}); Chroma writes to its SQLite "
            "file even to answer a query, so a read-only store cannot be used in place.",
            "make the store folder writable (e.g. `chown -R $(id -u) STORE`), or copy it to a writable place and "
            "pass that copy as --chroma-path.",
        )
    if isinstance(exc, OSError):
        return storage_error(exc, path, "the Chroma store")
    return None


# --- a damaged embedded store ------------------------------------------------------------------------
SQLITE_FILE = "chroma.sqlite3"
DAMAGED_SUFFIX = ".damaged-"
# SQLite's SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), as sqlite3 and Chroma's Rust bindings word them.
_DAMAGE_MARKERS = ("database disk image is malformed", "file is not a database", "(code: 11)", "(code: 26)")


def is_damage(exc: BaseException) -> bool:
    """Is this error a damaged SQLite file (Chroma's InternalError or sqlite3's DatabaseError)?"""
    import sqlite3

    from chromadb.errors import InternalError

    return isinstance(exc, (InternalError, sqlite3.DatabaseError)) and any(m in str(exc) for m in _DAMAGE_MARKERS)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.removeprefix("error returned from database: ")


def damaged_store(path: Path, exc: BaseException) -> JobError:
    return JobError(
        f"The Chroma store at {path} is damaged ({path / SQLITE_FILE}: {_reason(exc)}); it cannot be read.",
        f"rebuild it with `rag-eval index --force` and the same --model and --chroma-path (it moves the damaged store "
        f"aside to {path}{DAMAGED_SUFFIX}<time>, keeping it, and indexes afresh), or restore {path} from a backup.",
    )


def check_sqlite(path: Path) -> None:
    """Raise sqlite3.DatabaseError if the store's SQLite file fails SQLite's own ``quick_check``."""
    import sqlite3

    db = Path(path) / SQLITE_FILE
    if not db.is_file():
        return
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
    finally:
        con.close()
    if rows != ["ok"]:
        raise sqlite3.DatabaseError(f"database disk image is malformed (quick_check: {'; '.join(map(str, rows[:3]))})")


def forget_client(path: Path) -> None:
    """Drop Chroma's per-process cache of the client for ``path``: a client that failed to start stays
    cached and would be handed out again, even for a new store at the same path."""
    from chromadb.api.shared_system_client import SharedSystemClient

    for key in {str(path), str(Path(path).resolve())}:
        system = SharedSystemClient._identifier_to_system.pop(key, None)
        SharedSystemClient._identifier_to_refcount.pop(key, None)
        if system is not None:
            with contextlib.suppress(Exception):
                system.stop()


def move_aside(path: Path) -> Path:
    """Rename a damaged store to ``<path>.damaged-<UTC time>`` beside it (a new name if that exists)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}-{n}")
    path.rename(aside)
    return aside
