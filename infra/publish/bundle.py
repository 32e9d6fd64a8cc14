"""A finished run as something to publish, whatever the destination: which files, their SHA-256,
a stable run id, and the manifest that describes them.

* ``run-id`` is ``<run dir name>-<12 hex>``, the hex being a SHA-256 of model/training.json and
  report/metrics.json: the same run always maps to the same id, so re-publishing is idempotent,
  and two different trainings never share one.
* The files are the model (with its card and training.json), the report, and the records of the
  prepare and baseline steps (what data the run used, not the pairs themselves): the layout's
  ``RESULT_DIRS`` and ``RESULT_FILES`` (:mod:`job.layout`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from job import layout
from job.errors import JobError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "rag-embed-finetune/publish-manifest/v1"
TRAINING_RECORD = layout.TRAINING_RECORD
REPORT_RECORD = layout.REPORT_RECORD
PUBLISHED_DIRS = layout.RESULT_DIRS
PUBLISHED_FILES = layout.RESULT_FILES
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class RunFile:
    path: str  # relative POSIX path inside the run (and under the run's S3 prefix)
    local: Path
    size: int
    sha256: str


# --- the run -------------------------------------------------------------------------------------
def run_root(run_dir) -> Path:
    """A run directory path (or a :class:`job.layout.RunDir`) that holds a finished run."""
    if not isinstance(run_dir, (str, os.PathLike)):  # a RunDir (a Path's own .root is "/")
        run_dir = run_dir.root
    root = Path(run_dir).expanduser()
    if not root.is_dir():
        raise JobError(f"Run directory {root} does not exist.", "pass the --run-dir of a finished `job run`.")
    for rel, step in ((TRAINING_RECORD, "train"), (REPORT_RECORD, "evaluate")):
        if not (root / rel).is_file():
            raise JobError(
                f"{root} is not a finished run: {root / rel} is missing.",
                f"finish it first (`job {step} --run-dir {root}`, or `job run --run-dir {root}`).",
            )
    return root


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def run_files(run_dir) -> list[RunFile]:
    """The files that make up a published run, sorted by path, with sizes and SHA-256."""
    root = run_root(run_dir)
    paths: list[Path] = []
    for d in PUBLISHED_DIRS:
        paths += [p for p in (root / d).rglob("*") if p.is_file() and not p.name.endswith(".tmp")]
    paths += [root / f for f in PUBLISHED_FILES if (root / f).is_file()]
    out = []
    for p in sorted(set(paths)):
        rel = p.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        out.append(RunFile(rel, p, p.stat().st_size, sha256_file(p)))
    return out


def run_id_for(run_dir) -> str:
    """``<run dir name>-<12 hex of SHA-256(training.json, metrics.json)>``: stable for the same run."""
    root = run_root(run_dir)
    h = hashlib.sha256()
    for rel in (TRAINING_RECORD, REPORT_RECORD):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", root.resolve().name).strip("-.") or "run"
    return f"{name}-{h.hexdigest()[:12]}"


def content_digest(files: list[RunFile]) -> str:
    """SHA-256 over (path, size, sha256) of every file: what "the same run content" means."""
    lines = "".join(f"{f.path}\t{f.size}\t{f.sha256}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(lines.encode()).hexdigest()


def metrics_summary(root: Path) -> dict[str, Any]:
    """The headline numbers of a run for the manifest: NDCG@10 by dim, base model, training size."""
    report = json.loads((root / REPORT_RECORD).read_text())
    training = json.loads((root / TRAINING_RECORD).read_text())
    return {
        "base_model": report.get("base_model") or training.get("base_model"),
        "dims": report.get("dims") or training.get("dims"),
        "test_queries": report.get("test_queries"),
        "corpus_size": report.get("corpus_size"),
        "ndcg@10": {
            str(r["dim"]): {
                k: r[k] for k in ("baseline", "finetuned", "improvement_points", "improvement_pct") if k in r
            }
            for r in report.get("comparison", [])
        },
        "training": {
            k: training.get(k)
            for k in ("train_pairs", "global_steps", "epochs", "train_seconds", "best_metric", "best_metric_name")
            if k in training
        },
    }


def _tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("rag-embed-finetune")
    except Exception:  # noqa: BLE001 - not installed as a package (e.g. run from a checkout)
        return "unknown"


def build_manifest(
    root: Path, run_id: str, files: list[RunFile], uri: str, verification: dict[str, int]
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "run_id": run_id,
        "run_dir": root.resolve().name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "published_to": uri,
        "tool": {"name": "rag-embed-finetune", "version": _tool_version()},
        "content_sha256": content_digest(files),
        "file_count": len(files),
        "total_bytes": sum(f.size for f in files),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
        "checksum_verification": {
            "algorithm": "sha256",
            "how": "S3 ChecksumSHA256 (server-computed on upload; composite for multipart) compared with the local "
            "SHA-256; objects without one downloaded and hashed",
            "by_method": verification,
        },
        "metrics": metrics_summary(root),
    }


def different_run(where: str, manifest: dict[str, Any], run_id: str, option: str) -> JobError:
    """The error for a destination (``where``) whose manifest describes another run than ``run_id`` holds now:
    publishing leaves it untouched. ``option`` names the flag that chose the destination."""
    return JobError(
        f"{where} already holds a different published run (manifest {manifest.get('run_id', '?')} created "
        f"{manifest.get('created', '?')}, content {str(manifest.get('content_sha256'))[:12]}) than {run_id} "
        "holds now; it is left untouched.",
        f"publish under another {option}; if the run directory was changed after publishing, restore it or use "
        "a new --run-dir.",
    )
