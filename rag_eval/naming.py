"""Collection names and metadata, the same for every store: ``PREFIX-<model slug>-<hash>-d<dim>``, the
metadata every index carries (schema version, model, dim, prompts, normalisation, precision, corpus fingerprint,
HNSW settings: enough to query it with plain chromadb and sentence-transformers), and the write key that tells
an interrupted write of the same vectors (which may resume) from another one."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from job.errors import JobError
from rag_eval import SCHEMA_VERSION


class _Named(Protocol):  # what dims_in_store reads of a rag_eval.index.VectorStore (which imports this module)
    def names(self) -> list[str]: ...


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


def dims_in_store(vector_store: _Named, prefix: str, model_key: str) -> list[int]:
    """The dims indexed for a model in this store, largest first (from the index names)."""
    pattern = re.compile(re.escape(f"{prefix}-{model_slug(model_key)}-d") + r"(\d+)$")
    dims = {int(m[1]) for c in vector_store.names() if (m := pattern.match(c))}
    return sorted(dims, reverse=True)


# every store's; a store adds its own index parameters (VectorIndex.required_metadata: Chroma's HNSW ones)
REQUIRED_METADATA = {
    "rag_eval": int, "model": str, "model_key": str, "model_fingerprint": str, "model_dim": int, "dim": int,
    "normalized": bool, "corpus_fingerprint": str, "corpus_size": int,
}  # fmt: skip


PRECISION = "float32"  # what Chroma stores; int8/binary (rag_eval.quantized) are made from it at query time
# What a Chroma user needs to query a collection without rag-eval, beside model, dim, normalized and space:
# the model's public name, the exact prompts encode_query/encode_document applied (an explicit prompt, else the
# model's own), the stored precision and a one-line recipe. They describe the vectors without changing them,
# so they stay out of the write key (a kept collection gets them updated in place, see rag_eval.store), except
# a passage prompt that differs from the explicit one: the model's own, which its weights' digest does not cover.
DESCRIPTIVE = ("model_name", "precision", "query_prompt_used", "passage_prompt_used", "usage")


def usage_line(dim: int) -> str:
    """How to embed a question for this collection, in one line (collection metadata ``usage``)."""
    return (
        f"SentenceTransformer(model, truncate_dim={dim}).encode_query(questions, prompt=query_prompt_used, "
        "normalize_embeddings=True) -> collection.query(query_embeddings=..., n_results=k); "
        "similarity = 1 - distance (cosine)"
    )


def build_metadata(
    *, model: str, model_key: str, model_fingerprint: str, model_dim: int, dim: int, corpus_fingerprint: str,
    corpus_size: int, data_source: str, settings: Any, query_prompt: str | None, passage_prompt: str | None,
    model_name: str | None = None, query_prompt_used: str | None = None, passage_prompt_used: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every collection's metadata. ``query_prompt``/``passage_prompt`` are the prompts given (flags or the
    run's); ``*_prompt_used`` what the model applied (those, else its own prompts: pass them when known)."""
    return {
        "rag_eval": SCHEMA_VERSION,
        "model": model,
        "model_name": model_name or model,
        "model_key": model_key,
        "model_fingerprint": model_fingerprint,
        "model_dim": model_dim,
        "dim": dim,
        "normalized": True,
        "precision": PRECISION,
        "corpus_fingerprint": corpus_fingerprint,
        "corpus_size": corpus_size,
        "data_source": data_source,
        "query_prompt": query_prompt or "",
        "passage_prompt": passage_prompt or "",
        "query_prompt_used": query_prompt_used if query_prompt_used is not None else (query_prompt or ""),
        "passage_prompt_used": passage_prompt_used if passage_prompt_used is not None else (passage_prompt or ""),
        **(asdict(settings) if settings is not None else {}),  # the store's index parameters (exact store: none)
        "usage": usage_line(dim),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


WRITE_KEY = "write_key"
_VOLATILE = ("created_at", WRITE_KEY)


def write_key(metadata: dict[str, Any]) -> str:
    """16 hex digits over everything a collection's vectors depend on (its metadata but the creation time and
    the descriptive keys): model weights, prompts, corpus, dim, HNSW settings. Equal keys: the same vectors, so a
    write can resume."""
    from job.config import fingerprint_digest

    keyed = {k: v for k, v in sorted(metadata.items()) if k not in _VOLATILE and k not in DESCRIPTIVE}
    used = metadata.get("passage_prompt_used")
    if used is not None and used != metadata.get("passage_prompt", ""):
        keyed["passage_prompt_used"] = used
    return fingerprint_digest(keyed)


def description_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The descriptive keys of ``new`` that ``old`` lacks or holds otherwise."""
    return {k: new[k] for k in DESCRIPTIVE if k in new and old.get(k) != new[k]}


def metadata_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted((set(old) | set(new)) - set(_VOLATILE) - (set(DESCRIPTIVE) - {"passage_prompt_used"}))
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(changed) or "the same metadata under another write key"
