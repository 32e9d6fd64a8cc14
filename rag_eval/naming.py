"""Collection names and metadata, the same for every store: ``PREFIX-<model slug>-<hash>-d<dim>``, the
metadata every index carries (schema version, model, dim, corpus fingerprint, HNSW settings), and the write
key that tells an interrupted write of the same vectors (which may resume) from another one."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.errors import JobError
from rag_eval import SCHEMA_VERSION

if TYPE_CHECKING:
    from rag_eval.index import VectorStore

DEFAULT_PREFIX = "rag-eval"
_NAME_OK = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9._-]+", "-", text).strip("-._")
    return s[:limit].strip("-._") or "model"


def model_slug(key: str) -> str:
    """A readable, unique-enough name for a model: the last two path parts or the Hub id, plus a hash."""
    from job.config import fingerprint_digest

    path = Path(key)
    readable = "-".join(path.parts[-2:]) if path.is_absolute() else key
    return f"{slug(readable)}-{fingerprint_digest({'model': key})[:8]}"


def check_prefix(prefix: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}", prefix):
        raise JobError(
            f"Collection prefix {prefix!r} is not allowed.",
            "use letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )


def collection_name(prefix: str, model_key: str, dim: int) -> str:
    name = f"{prefix}-{model_slug(model_key)}-d{dim}"
    assert _NAME_OK.match(name), name
    return name


def dims_in_store(vector_store: VectorStore, prefix: str, model_key: str) -> list[int]:
    """The dims indexed for a model in this store, largest first (from the index names)."""
    pattern = re.compile(re.escape(f"{prefix}-{model_slug(model_key)}-d") + r"(\d+)$")
    dims = {int(m[1]) for c in vector_store.names() if (m := pattern.match(c))}
    return sorted(dims, reverse=True)


REQUIRED_METADATA = {
    "rag_eval": int, "model": str, "model_key": str, "model_fingerprint": str, "model_dim": int, "dim": int,
    "normalized": bool, "corpus_fingerprint": str, "corpus_size": int, "space": str, "ef_construction": int,
    "ef_search": int, "max_neighbors": int,
}  # fmt: skip


def build_metadata(
    *, model: str, model_key: str, model_fingerprint: str, model_dim: int, dim: int, corpus_fingerprint: str,
    corpus_size: int, data_source: str, settings: Any, query_prompt: str | None, passage_prompt: str | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "rag_eval": SCHEMA_VERSION,
        "model": model,
        "model_key": model_key,
        "model_fingerprint": model_fingerprint,
        "model_dim": model_dim,
        "dim": dim,
        "normalized": True,
        "corpus_fingerprint": corpus_fingerprint,
        "corpus_size": corpus_size,
        "data_source": data_source,
        "query_prompt": query_prompt or "",
        "passage_prompt": passage_prompt or "",
        **asdict(settings),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


WRITE_KEY = "write_key"
_VOLATILE = ("created_at", WRITE_KEY)


def write_key(metadata: dict[str, Any]) -> str:
    """16 hex digits over everything a collection's vectors depend on (its metadata but the creation time):
    model weights, prompts, corpus, dim, HNSW settings. Equal keys: the same vectors, so a write can resume."""
    from job.config import fingerprint_digest

    return fingerprint_digest({k: v for k, v in sorted(metadata.items()) if k not in _VOLATILE})


def metadata_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted((set(old) | set(new)) - set(_VOLATILE))
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(changed) or "the same metadata under another write key"
