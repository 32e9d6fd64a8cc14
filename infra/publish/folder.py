"""Publish a finished run into a folder: a mounted volume, an NFS share, a disk the serving hosts read.

The same files, run id and manifest as S3 (:mod:`infra.publish.bundle`), under ``<folder>/<run-id>/``, with the same
rules:

* every file is copied through a temporary name in its folder and renamed into place after ``fsync``, then read
  back and compared with the local SHA-256;
* ``manifest.json`` is written LAST (temporary file, fsync, then a hard link, which fails if a manifest appeared
  meanwhile): a run counts as published only once it is there, so an interrupted copy never leaves a manifest
  that lies;
* the same run published again is verified, not copied (``already published``); a sub-folder whose manifest
  describes other content is never touched; a sub-folder without a manifest is the leftover of an interrupted
  copy and is replaced;
* a full disk, a read-only folder or a permission problem is a JobError naming the folder and the fix; what was
  published before is kept.

The check before training (:func:`check_folder`) makes the folder if needed, writes and removes a probe file, and
compares the free space with the run's size when the run exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.publish import bundle
from infra.publish.bundle import MANIFEST_NAME, RunFile, sha256_file
from job import storage
from job.errors import JobError

Echo = Callable[[str], None]
FIX = (
    "free space on that disk or make the folder writable for this user (or pass another --publish-dir), then publish "
    "again (`job push`): what was published before is kept, a half-copied run is replaced"
)


@dataclass
class FolderPublication:
    run_id: str
    path: Path  # <folder>/<run-id>
    files: int
    bytes: int
    status: str  # "published", "already published" or "republished"


def _folder(folder) -> Path:
    path = Path(folder).expanduser()
    if not str(folder).strip():
        raise JobError("--publish-dir is empty.", "pass a folder, e.g. --publish-dir /mnt/models.")
    if path.exists() and not path.is_dir():
        raise JobError(f"--publish-dir {path} is a file, not a folder.", "pass a folder (it is made if missing).")
    return path.resolve()


def check_folder(folder, run_dir=None) -> None:
    """Fail fast, before any training: the folder can be made and written to (and, for a finished run, holds its
    size in free space)."""
    path = _folder(folder)
    with storage.storage_errors(path, "the publish folder", FIX):
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".publish-check-"):
            pass
    if run_dir is not None:
        need = sum(f.size for f in bundle.run_files(run_dir))
        free = shutil.disk_usage(path).free
        if free < need:
            raise JobError(
                f"--publish-dir {path} has {free / 1e6:.1f} MB free; the run needs {need / 1e6:.1f} MB.",
                "free space there or pass another --publish-dir.",
            )


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except ValueError:
        raise JobError(
            f"{path} exists but is not a valid manifest (not JSON).",
            "inspect that folder; publish into another --publish-dir or remove it if it is junk.",
        ) from None
    return manifest if isinstance(manifest, dict) else {"content_sha256": None}


def _copy(f: RunFile, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(f.local, "rb") as src:
            for block in iter(lambda: src.read(bundle.CHUNK), b""):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mismatched(dest: Path, files: list[RunFile]) -> list[str]:
    bad = []
    for f in files:
        target = dest / f.path
        if not target.is_file() or target.stat().st_size != f.size or sha256_file(target) != f.sha256:
            bad.append(f.path)
    return bad


def _write_manifest(dest: Path, manifest: dict[str, Any]) -> bool:
    """manifest.json, whole, only if none exists; False when another one appeared meanwhile."""
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=dest)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(manifest, indent=2) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, dest / MANIFEST_NAME)  # fails if a manifest is there: never replaces one
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _different_run(dest: Path, manifest: dict[str, Any], run_id: str) -> JobError:
    return bundle.different_run(str(dest), manifest, run_id, "--publish-dir")


def publish_folder(run_dir, folder, *, run_id: str | None = None, echo: Echo | None = None) -> FolderPublication:
    """Copy a finished run to ``<folder>/<run-id>/``, verify every file, write manifest.json last."""
    say = echo or (lambda _msg: None)
    root = bundle.run_root(run_dir)
    base = _folder(folder)
    run_id = run_id or bundle.run_id_for(root)
    dest = base / run_id
    files = bundle.run_files(root)
    digest = bundle.content_digest(files)
    total = sum(f.size for f in files)
    with storage.storage_errors(dest, "the published run", FIX):
        status = "published"
        existing = read_manifest(dest / MANIFEST_NAME)
        if existing is not None:
            if existing.get("content_sha256") != digest:
                raise _different_run(dest, existing, run_id)
            bad = _mismatched(dest, files)
            if not bad:
                return FolderPublication(run_id, dest, len(files), total, "already published")
            say(
                f"folder: {len(bad)} files under {dest} do not match the manifest ({', '.join(bad[:3])}); copying again"
            )
            (dest / MANIFEST_NAME).unlink()
            status = "republished"
        elif dest.exists():
            say(f"folder: {dest} holds files but no manifest (an interrupted copy); replacing them")
        start = time.perf_counter()
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            _copy(f, dest / f.path)
        wanted = {f.path for f in files}
        for leftover in [p for p in dest.rglob("*") if p.is_file() and p.relative_to(dest).as_posix() not in wanted]:
            leftover.unlink()
        bad = _mismatched(dest, files)
        if bad:
            raise JobError(
                f"Checksum verification failed after copying to {dest}: {', '.join(bad)} differ from the local files. "
                "No manifest was written, so the run does not count as published.",
                "publish again (a folder without a manifest is replaced); if it fails again, check that disk.",
            )
        manifest = bundle.build_manifest(root, run_id, files, f"file://{dest}/", {"read-back-sha256": len(files)})
        manifest["checksum_verification"]["how"] = "every copied file read back and its SHA-256 compared"
        if not _write_manifest(dest, manifest):
            other = read_manifest(dest / MANIFEST_NAME) or {}
            if other.get("content_sha256") != digest:
                raise _different_run(dest, other, run_id)
            status = "already published"
    say(f"folder: {len(files)} files ({total / 1e6:.1f} MB) verified in {time.perf_counter() - start:.1f} s -> {dest}")
    return FolderPublication(run_id, dest, len(files), total, status)
