"""The Chroma implementation of :mod:`rag_eval.index`: connecting, naming, writing and checking one
collection per (model, dim).

- Embedded persistent Chroma (``--chroma-path``) by default; a server (``--chroma-host/--chroma-port``)
  through ``HttpClient``. Telemetry is off; an unreachable server is a :class:`JobError` naming it.
- Embeddings are always passed explicitly and collections are created with
  ``embedding_function=None``: Chroma's default embedding function downloads an ONNX model.
- The distance space and HNSW parameters are fixed at creation (``get_or_create`` keeps old ones),
  so a collection is always written afresh: into ``<name>-staging``, checked, then renamed over the
  old one. A failure midway leaves the old collection as it was.
- A damaged embedded store (its SQLite file truncated or overwritten) is named with the fix;
  ``index --force`` moves it aside (``<path>.damaged-<time>``, never deleted) and rebuilds it.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job.errors import JobError
from rag_eval import SCHEMA_VERSION
from rag_eval.index import Hit, VectorIndex, VectorStore, WriteResult, ranked
from rag_eval.store_faults import (
    SQLITE_FILE,
    _reason,
    check_sqlite,
    damaged_store,
    forget_client,
    is_damage,
    move_aside,
    storage_problem,
)

DEFAULT_PREFIX = "rag-eval"
STAGING_SUFFIX = "-staging"
_SEGMENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
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
                raise JobError(
                    f"{name} is {getattr(self, name)}; it must be at least 1.",
                    f"pass a positive --{name.replace('_', '-')}.",
                )
        if self.space != "cosine":
            raise JobError(
                f"space {self.space!r} is not supported.", "rag_eval scores cosine similarity, as the evaluator does."
            )

    @classmethod
    def of(cls, collection) -> HnswSettings | None:
        """The settings a collection was created with (from Chroma's configuration), if it has HNSW ones."""
        hnsw = (collection.configuration_json or {}).get("hnsw") or {}
        try:
            return cls(
                int(hnsw["ef_construction"]),
                int(hnsw["ef_search"]),
                int(hnsw["max_neighbors"]),
                str(hnsw.get("space", "l2")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def describe_changes(old: HnswSettings | None, new: HnswSettings) -> str:
    if old is None:
        return "unknown before"
    return ", ".join(
        f"{k} {getattr(old, k)} -> {getattr(new, k)}" for k in asdict(new) if getattr(old, k) != getattr(new, k)
    )


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
        return (
            f"Chroma server http://{self.host}:{self.port}" if self.is_server else f"embedded Chroma store {self.path}"
        )


def _settings():
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def connect(
    target: StoreTarget, *, create: bool = True, rebuild_damaged: bool = False, echo: Callable[[str], None] = print
):
    """The :class:`ChromaStore` at ``target``. ``create=False`` refuses an embedded path that holds no store
    (scoring or querying a store that was never written is a mistake, not an empty result).

    A damaged embedded store (a truncated or overwritten ``chroma.sqlite3``) is a :class:`JobError`
    naming it and the fix; with ``rebuild_damaged`` (``rag-eval index --force``) its file is checked
    first (SQLite ``quick_check``) and a damaged store is moved aside, never deleted, and started afresh."""
    import chromadb

    if target.is_server:
        with store_errors(target):
            try:
                client = chromadb.HttpClient(host=target.host, port=int(target.port), settings=_settings())
                client.heartbeat()
            except ValueError as exc:  # chromadb raises ValueError("Could not connect to a Chroma server...")
                raise _unreachable(target, exc) from None
        return ChromaStore(client, target)
    path = Path(target.path).expanduser()
    if path.exists() and not path.is_dir():
        raise JobError(
            f"--chroma-path {path} is a file; a Chroma store is a folder.", "pass a folder (it is created if missing)."
        )
    if not create and not (path / SQLITE_FILE).is_file():
        raise JobError(
            f"There is no Chroma store at {path} (no {SQLITE_FILE}).",
            "run `rag-eval index` first, or point --chroma-path (or --chroma-host/--chroma-port) "
            "at the store you indexed into.",
        )
    _check_writable(path)  # before Chroma: a client that fails to start stays half-built in its cache
    try:
        if rebuild_damaged:
            check_sqlite(path)
        path.mkdir(parents=True, exist_ok=True)
        return ChromaStore(chromadb.PersistentClient(path=str(path), settings=_settings()), target)
    except Exception as exc:
        forget_client(path)
        if not is_damage(exc):
            translated = storage_problem(exc, path)
            if translated is not None:
                raise translated from None
            raise
        if not rebuild_damaged:
            raise damaged_store(path, exc) from None
        aside = move_aside(path)
        echo(
            f"index: the Chroma store at {path} is damaged ({_reason(exc)}); "
            f"moved it aside to {aside} (not deleted), indexing afresh"
        )
        path.mkdir(parents=True)
        return ChromaStore(chromadb.PersistentClient(path=str(path), settings=_settings()), target)


def _check_writable(path: Path) -> None:
    """A store folder (or the nearest existing parent) this process cannot write is named now, with the fix."""
    import os
    import uuid

    folder = next((p for p in (path, *path.parents) if p.exists()), None)
    if folder is None:
        return
    probe = folder / f".rag-eval-probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"probe")
        os.unlink(probe)
    except OSError as exc:
        translated = storage_problem(exc, path)
        if translated is not None:
            raise translated from None
        raise


def _unreachable(target: StoreTarget, exc: BaseException) -> JobError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return JobError(
        f"Cannot reach the Chroma server at {target.host}:{target.port} ({reason}).",
        f"start it (`chroma run --host {target.host} --port {target.port} --path DIR`), check --chroma-host and "
        "--chroma-port, or leave both out to use the embedded store at --chroma-path.",
    )


@contextlib.contextmanager
def store_errors(target: StoreTarget) -> Iterator[None]:
    """Turn the store's failures the user can act on into JobErrors that name it: a lost connection
    to a Chroma server (at any step), or an embedded store whose SQLite file turns out damaged."""
    if not target.is_server:
        try:
            yield
        except JobError:
            raise
        except Exception as exc:
            path = Path(target.path).expanduser()
            if is_damage(exc):
                forget_client(path)
                raise damaged_store(path, exc) from None
            translated = storage_problem(exc, path)
            if translated is not None:
                raise translated from None
            raise
        return
    import httpx

    try:
        yield
    except (httpx.TransportError, ConnectionError) as exc:
        raise _unreachable(target, exc) from None


# --- names and metadata ----------------------------------------------------------------------------
def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9._-]+", "-", text).strip("-._")
    return s[:limit].strip("-._") or "model"


def modelslug(key: str) -> str:
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
    name = f"{prefix}-{modelslug(model_key)}-d{dim}"
    assert _NAME_OK.match(name), name
    return name


def dims_in_store(vector_store: VectorStore, prefix: str, model_key: str) -> list[int]:
    """The dims indexed for a model in this store, largest first (from the index names)."""
    pattern = re.compile(re.escape(f"{prefix}-{modelslug(model_key)}-d") + r"(\d+)$")
    dims = {int(m[1]) for c in vector_store.names() if (m := pattern.match(c))}
    return sorted(dims, reverse=True)


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


def inspect(index: ChromaIndex, dim: int | None = None) -> tuple[str, list[str]]:
    """Is this one of our collections, and is it whole? Returns (kind, problems)."""
    meta = index.metadata
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
    settings = index.settings
    if settings is None or settings.space != "cosine":
        problems.append(f"its distance space is {settings.space if settings else 'unknown'}, not cosine")
    count = index.count()
    if count != meta["corpus_size"]:
        problems.append(f"it holds {count} vectors but its metadata says {meta['corpus_size']}")
    elif count:
        stored = index.stored_dim()
        if stored is not None and stored != meta["dim"]:
            problems.append(f"its vectors have {stored} dims but its metadata says {meta['dim']}")
    return (CORRUPT if problems else OURS), problems


# --- the store and its indexes (rag_eval.index's interface) ---------------------------------------
class ChromaIndex(VectorIndex):
    """One Chroma collection (one model at one dim)."""

    def __init__(self, collection):
        self.collection = collection
        self.name = collection.name

    def count(self) -> int:
        return int(self.collection.count())

    @property
    def metadata(self) -> dict[str, Any]:
        return self.collection.metadata or {}

    @property
    def settings(self) -> HnswSettings | None:
        return HnswSettings.of(self.collection)

    def stored_dim(self) -> int | None:
        got = self.collection.get(limit=1, include=["embeddings"])["embeddings"]
        return len(got[0]) if got is not None and len(got) else None

    def query(self, vectors: np.ndarray, n: int, *, documents: bool = False) -> list[list[Hit]]:
        include = ["distances", "documents"] if documents else ["distances"]
        got = self.collection.query(query_embeddings=np.asarray(vectors), n_results=n, include=include)
        out = []
        for i, (ids, dists) in enumerate(zip(got["ids"], got["distances"])):
            docs = got["documents"][i] if documents and got.get("documents") is not None else [""] * len(ids)
            out.append(ranked((cid, 1.0 - float(d), doc) for cid, d, doc in zip(ids, dists, docs)))
        return out

    def fetch(self, ids) -> dict[str, str]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        got = self.collection.get(ids=wanted, include=["documents"])
        docs = got["documents"] if got.get("documents") is not None else [""] * len(got["ids"])
        return {cid: doc or "" for cid, doc in zip(got["ids"], docs)}

    def fetch_all(self, page: int = 5000) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Every stored (id, vector, document), in pages."""
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        docs: list[str | None] = []
        offset = 0
        while True:
            got = self.collection.get(limit=page, offset=offset, include=["embeddings", "documents"])
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

    def describe(self) -> dict[str, Any]:
        settings = self.settings
        return {**super().describe(), "hnsw": asdict(settings) if settings else None}


class ChromaStore(VectorStore):
    """A Chroma client (embedded or server) as a :class:`~rag_eval.index.VectorStore`."""

    def __init__(self, client, target: StoreTarget):
        self.client = client
        self.target = target

    def describe(self) -> str:
        return self.target.describe()

    def public(self) -> str:
        return "Chroma server" if self.target.is_server else "embedded Chroma store"

    def names(self) -> list[str]:
        names, offset = [], 0
        while True:
            page = self.client.list_collections(limit=1000, offset=offset)
            names += [c if isinstance(c, str) else c.name for c in page]
            if len(page) < 1000:
                return names
            offset += 1000

    def open(self, name: str) -> ChromaIndex | None:
        from chromadb.errors import NotFoundError

        try:
            return ChromaIndex(self.client.get_collection(name, embedding_function=None))
        except NotFoundError:
            return None
        except ValueError as exc:  # older clients raise ValueError("Collection ... does not exist")
            if "does not exist" in str(exc):
                return None
            raise

    def delete(self, name: str) -> None:
        self.client.delete_collection(name)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        with store_errors(self.target):
            yield

    def write(
        self,
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
        """Write (or replace) one collection: into ``<name>-staging``, checked, then renamed over the old one."""
        import time

        start = time.perf_counter()
        old = self.open(name)
        note = ""
        if old is not None:
            kind, problems = inspect(old, metadata["dim"])
            if kind != OURS and not force:
                raise JobError(
                    f"A {kind} collection named {name} already exists: {'; '.join(problems)}.",
                    "pass --force to replace it, or use another --collection-prefix.",
                )
            if kind != OURS:
                note = f"replaced a {kind} collection (--force)"
            elif old.settings != settings:
                note = f"HNSW settings changed ({describe_changes(old.settings, settings)}): recreated"
        staging = name + STAGING_SUFFIX
        leftover = self.open(staging)
        if leftover is not None:
            if "rag_eval" not in leftover.metadata and not force:
                raise JobError(
                    f"A foreign collection named {staging} is in the way.",
                    "pass --force to replace it, or use another --collection-prefix.",
                )
            self.delete(staging)
        col = self.client.create_collection(
            staging, configuration=settings.configuration(), metadata=metadata, embedding_function=None
        )
        try:
            batch = max(1, int(self.client.get_max_batch_size()))
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
                raise JobError(
                    f"Chroma holds {col.count()} of the {len(ids)} vectors written to {staging}.",
                    "re-run the index command.",
                )
        except BaseException:
            with contextlib.suppress(Exception):
                self.delete(staging)
            raise
        if old is not None:
            self.delete(name)
        col.modify(name=name)
        freed = self.reclaim()
        action = "replaced" if old is not None else "created"
        return WriteResult(name, action, note, time.perf_counter() - start, reclaimed_bytes=freed)

    def reclaim(self) -> int:
        """Remove the vector folders of deleted collections from an embedded store: Chroma deletes a
        collection's records but leaves its HNSW folder behind, so every re-index grew the store. A folder is
        removed only when its name is a segment id that no live segment in ``chroma.sqlite3`` has. Returns the
        bytes freed (0 for a server, which manages its own disk)."""
        import sqlite3

        if self.target.is_server:
            return 0
        path = Path(self.target.path).expanduser()
        try:
            con = sqlite3.connect(f"file:{path / SQLITE_FILE}?mode=ro", uri=True)
            try:
                live = {str(r[0]) for r in con.execute("SELECT id FROM segments")}
            finally:
                con.close()
        except sqlite3.Error:  # another Chroma schema: leave the folders alone
            return 0
        freed = 0
        for d in path.iterdir():
            if d.is_dir() and _SEGMENT_ID.match(d.name) and d.name not in live:
                freed += _dir_bytes(d)
                shutil.rmtree(d, ignore_errors=True)
        return freed


def _dir_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


_EMPTY_STORE_BYTES: int | None = None


def footprint_bytes(
    ids: Sequence[str], vectors: np.ndarray, documents: Sequence[str | None], settings: HnswSettings
) -> int:
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
            col.add(
                ids=list(ids[s : s + batch]),
                embeddings=vectors[s : s + batch],
                documents=docs[s : s + batch] if docs else None,
            )
        return max(0, _dir_bytes(root / "one") - _EMPTY_STORE_BYTES)
    finally:
        shutil.rmtree(root, ignore_errors=True)
