"""The Chroma side: connecting, naming, writing and checking one collection per (model, dim).

- Embedded persistent Chroma (``--chroma-path``) by default; a server (``--chroma-host/--chroma-port``)
  through ``HttpClient``. Telemetry is off; an unreachable server is a :class:`JobError` naming it.
- Embeddings are always passed explicitly and collections are created with
  ``embedding_function=None``: Chroma's default embedding function downloads an ONNX model.
- The distance space and HNSW parameters are fixed at creation (``get_or_create`` keeps old ones),
  so a collection is always written afresh: into ``<name>-staging``, checked, then renamed over the
  old one. A failure midway leaves the old collection as it was.
- Every collection's metadata carries ``rag_eval`` (schema version), the model, dim, corpus
  fingerprint and the HNSW settings. A collection under our name without it (foreign), or whose
  metadata, size, dim or space disagree (corrupted), is refused unless ``--force``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from job.errors import JobError
from rag_eval import SCHEMA_VERSION

DEFAULT_PREFIX = "rag-eval"
STAGING_SUFFIX = "-staging"
_NAME_OK = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")


# --- settings --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HnswSettings:
    """HNSW parameters, always set explicitly. The defaults reach recall@10 >= 0.99 against exact
    search on the evaluation corpora (see ``rag-eval score``'s ANN recall column and bench/chroma_scale.py);
    Chroma's own defaults (ef_search 100, max_neighbors 16) gave 0.71 on 5k random vectors."""

    ef_construction: int = 200
    ef_search: int = 400
    max_neighbors: int = 32
    space: str = "cosine"

    def configuration(self) -> dict[str, Any]:
        return {"hnsw": asdict(self)}

    def check(self) -> None:
        for name in ("ef_construction", "ef_search", "max_neighbors"):
            if getattr(self, name) < 1:
                raise JobError(f"{name} is {getattr(self, name)}; it must be at least 1.", f"pass a positive --{name.replace('_', '-')}.")
        if self.space != "cosine":
            raise JobError(f"space {self.space!r} is not supported.", "rag_eval scores cosine similarity, as the evaluator does.")

    @classmethod
    def of(cls, collection) -> "HnswSettings | None":
        """The settings a collection was created with (from Chroma's configuration), if it has HNSW ones."""
        hnsw = (collection.configuration_json or {}).get("hnsw") or {}
        try:
            return cls(int(hnsw["ef_construction"]), int(hnsw["ef_search"]), int(hnsw["max_neighbors"]), str(hnsw.get("space", "l2")))
        except (KeyError, TypeError, ValueError):
            return None


def describe_changes(old: HnswSettings | None, new: HnswSettings) -> str:
    if old is None:
        return "unknown before"
    return ", ".join(f"{k} {getattr(old, k)} -> {getattr(new, k)}" for k in asdict(new) if getattr(old, k) != getattr(new, k))


# --- connecting ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreTarget:
    """Where the collections live: an embedded store at ``path``, or a server at ``host:port``."""

    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @property
    def is_server(self) -> bool:
        return self.host is not None

    def describe(self) -> str:
        return f"Chroma server http://{self.host}:{self.port}" if self.is_server else f"embedded Chroma store {self.path}"


def _settings():
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def connect(target: StoreTarget, *, create: bool = True):
    """A Chroma client for ``target``. ``create=False`` refuses an embedded path that holds no store
    (scoring or querying a store that was never written is a mistake, not an empty result)."""
    import chromadb

    if target.is_server:
        with server_errors(target):
            try:
                client = chromadb.HttpClient(host=target.host, port=int(target.port), settings=_settings())
                client.heartbeat()
            except ValueError as exc:  # chromadb raises ValueError("Could not connect to a Chroma server...")
                raise _unreachable(target, exc) from None
        return client
    path = Path(target.path).expanduser()
    if path.exists() and not path.is_dir():
        raise JobError(f"--chroma-path {path} is a file; a Chroma store is a folder.", "pass a folder (it is created if missing).")
    if not create and not (path / "chroma.sqlite3").is_file():
        raise JobError(
            f"There is no Chroma store at {path} (no chroma.sqlite3).",
            "run `rag-eval index` first, or point --chroma-path (or --chroma-host/--chroma-port) at the store you indexed into.",
        )
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=_settings())


def _unreachable(target: StoreTarget, exc: BaseException) -> JobError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return JobError(
        f"Cannot reach the Chroma server at {target.host}:{target.port} ({reason}).",
        f"start it (`chroma run --host {target.host} --port {target.port} --path DIR`), check --chroma-host and "
        "--chroma-port, or leave both out to use the embedded store at --chroma-path.",
    )


@contextlib.contextmanager
def server_errors(target: StoreTarget) -> Iterator[None]:
    """Turn a lost connection to a Chroma server (at any step) into a JobError that names it."""
    if not target.is_server:
        yield
        return
    import httpx

    try:
        yield
    except (httpx.TransportError, ConnectionError) as exc:
        raise _unreachable(target, exc) from None


# --- names and metadata ----------------------------------------------------------------------------
def _slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9._-]+", "-", text).strip("-._")
    return s[:limit].strip("-._") or "model"


def model_slug(key: str) -> str:
    """A readable, unique-enough name for a model: the last two path parts or the Hub id, plus a hash."""
    from job.config import fingerprint_digest

    path = Path(key)
    readable = "-".join(path.parts[-2:]) if path.is_absolute() else key
    return f"{_slug(readable)}-{fingerprint_digest({'model': key})[:8]}"


def check_prefix(prefix: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}", prefix):
        raise JobError(f"Collection prefix {prefix!r} is not allowed.", "use letters, digits, '.', '_' or '-', starting with a letter or digit.")


def collection_name(prefix: str, model_key: str, dim: int) -> str:
    name = f"{prefix}-{model_slug(model_key)}-d{dim}"
    assert _NAME_OK.match(name), name
    return name


def dims_in_store(client, prefix: str, model_key: str) -> list[int]:
    """The dims indexed for a model in this store, largest first (from the collection names)."""
    pattern = re.compile(re.escape(f"{prefix}-{model_slug(model_key)}-d") + r"(\d+)$")
    dims = {int(m[1]) for c in list_names(client) if (m := pattern.match(c))}
    return sorted(dims, reverse=True)


def list_names(client) -> list[str]:
    names, offset = [], 0
    while True:
        page = client.list_collections(limit=1000, offset=offset)
        names += [c if isinstance(c, str) else c.name for c in page]
        if len(page) < 1000:
            return names
        offset += 1000


REQUIRED_METADATA = {
    "rag_eval": int, "model": str, "model_key": str, "model_fingerprint": str, "model_dim": int, "dim": int,
    "normalized": bool, "corpus_fingerprint": str, "corpus_size": int, "space": str, "ef_construction": int,
    "ef_search": int, "max_neighbors": int,
}  # fmt: skip


def build_metadata(
    *, model: str, model_key: str, model_fingerprint: str, model_dim: int, dim: int, corpus_fingerprint: str,
    corpus_size: int, data_source: str, settings: HnswSettings, query_prompt: str | None, passage_prompt: str | None,
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


FOREIGN, CORRUPT, OURS = "foreign", "corrupted", "ours"


def inspect(collection, dim: int | None = None) -> tuple[str, list[str]]:
    """Is this one of our collections, and is it whole? Returns (kind, problems)."""
    meta = collection.metadata or {}
    if "rag_eval" not in meta:
        return FOREIGN, ["its metadata has no 'rag_eval' marker (it was not written by rag-eval)"]
    problems = []
    for key, typ in REQUIRED_METADATA.items():
        value = meta.get(key)
        if value is None or not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            problems.append(f"metadata '{key}' is {value!r}")
    if problems:
        return CORRUPT, problems
    if meta["rag_eval"] > SCHEMA_VERSION:
        problems.append(f"it was written by a newer rag-eval (schema {meta['rag_eval']})")
    if dim is not None and meta["dim"] != dim:
        problems.append(f"its name says dim {dim} but its metadata says {meta['dim']}")
    settings = HnswSettings.of(collection)
    if settings is None or settings.space != "cosine":
        problems.append(f"its distance space is {settings.space if settings else 'unknown'}, not cosine")
    count = collection.count()
    if count != meta["corpus_size"]:
        problems.append(f"it holds {count} vectors but its metadata says {meta['corpus_size']}")
    elif count:
        got = collection.get(limit=1, include=["embeddings"])["embeddings"]
        if got is not None and len(got) and len(got[0]) != meta["dim"]:
            problems.append(f"its vectors have {len(got[0])} dims but its metadata says {meta['dim']}")
    return (CORRUPT if problems else OURS), problems


def get_collection(client, name: str):
    """The collection, or None if there is none of that name."""
    from chromadb.errors import NotFoundError

    try:
        return client.get_collection(name, embedding_function=None)
    except NotFoundError:
        return None
    except ValueError as exc:  # older clients raise ValueError("Collection ... does not exist")
        if "does not exist" in str(exc):
            return None
        raise


# --- writing -------------------------------------------------------------------------------------
@dataclass
class WriteResult:
    name: str
    action: str  # "created" or "replaced"
    note: str = ""
    seconds: float = 0.0


def write_collection(
    client,
    name: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    documents: Sequence[str] | None,
    metadata: dict[str, Any],
    settings: HnswSettings,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> WriteResult:
    """Write (or replace) one collection. The old one stays until the new one is complete."""
    import time

    start = time.perf_counter()
    old = get_collection(client, name)
    note = ""
    if old is not None:
        kind, problems = inspect(old, metadata["dim"])
        if kind != OURS and not force:
            raise JobError(
                f"A {kind} collection named {name} already exists: {'; '.join(problems)}.",
                "pass --force to replace it, or use another --collection-prefix.",
            )
        old_settings = HnswSettings.of(old)
        if kind != OURS:
            note = f"replaced a {kind} collection (--force)"
        elif old_settings != settings:
            note = f"HNSW settings changed ({describe_changes(old_settings, settings)}): recreated"
    staging = name + STAGING_SUFFIX
    leftover = get_collection(client, staging)
    if leftover is not None:
        if "rag_eval" not in (leftover.metadata or {}) and not force:
            raise JobError(f"A foreign collection named {staging} is in the way.", "pass --force to replace it, or use another --collection-prefix.")
        client.delete_collection(staging)
    col = client.create_collection(staging, configuration=settings.configuration(), metadata=metadata, embedding_function=None)
    try:
        batch = max(1, int(client.get_max_batch_size()))
        for s in range(0, len(ids), batch):
            e = min(len(ids), s + batch)
            col.add(
                ids=list(ids[s:e]),
                embeddings=np.asarray(vectors[s:e], dtype=np.float32),
                documents=list(documents[s:e]) if documents is not None else None,
            )
            if progress:
                progress(e - s)
        if col.count() != len(ids):
            raise JobError(f"Chroma holds {col.count()} of the {len(ids)} vectors written to {staging}.", "re-run the index command.")
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_collection(staging)
        raise
    if old is not None:
        client.delete_collection(name)
    col.modify(name=name)
    return WriteResult(name, "replaced" if old is not None else "created", note, time.perf_counter() - start)


# --- reading -------------------------------------------------------------------------------------
def fetch_all(collection, page: int = 5000) -> tuple[list[str], np.ndarray, list[str | None]]:
    """Every stored (id, vector, document), in pages."""
    ids: list[str] = []
    vecs: list[np.ndarray] = []
    docs: list[str | None] = []
    offset = 0
    while True:
        got = collection.get(limit=page, offset=offset, include=["embeddings", "documents"])
        if not got["ids"]:
            break
        ids += got["ids"]
        vecs.append(np.asarray(got["embeddings"], dtype=np.float32))
        docs += got["documents"] if got["documents"] is not None else [None] * len(got["ids"])
        offset += len(got["ids"])
        if len(got["ids"]) < page:
            break
    matrix = np.concatenate(vecs) if vecs else np.zeros((0, 0), dtype=np.float32)
    return ids, matrix, docs


def _dir_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


_EMPTY_STORE_BYTES: int | None = None


def footprint_bytes(ids: Sequence[str], vectors: np.ndarray, documents: Sequence[str | None], settings: HnswSettings) -> int:
    """Bytes on disk that this collection takes in an embedded Chroma store (SQLite: log, records,
    documents; HNSW files), measured by writing it alone into a fresh store and subtracting an empty
    store's size. Works the same whether the real collection lives embedded or on a server."""
    import chromadb

    global _EMPTY_STORE_BYTES
    root = Path(tempfile.mkdtemp(prefix="rag_eval_size_"))
    try:
        if _EMPTY_STORE_BYTES is None:
            chromadb.PersistentClient(path=str(root / "empty"), settings=_settings()).heartbeat()
            _EMPTY_STORE_BYTES = _dir_bytes(root / "empty")
        client = chromadb.PersistentClient(path=str(root / "one"), settings=_settings())
        col = client.create_collection("footprint", configuration=settings.configuration(), embedding_function=None)
        docs = None if all(d is None for d in documents) else [d or "" for d in documents]
        batch = max(1, int(client.get_max_batch_size()))
        for s in range(0, len(ids), batch):
            col.add(ids=list(ids[s : s + batch]), embeddings=vectors[s : s + batch], documents=docs[s : s + batch] if docs else None)
        return max(0, _dir_bytes(root / "one") - _EMPTY_STORE_BYTES)
    finally:
        shutil.rmtree(root, ignore_errors=True)
