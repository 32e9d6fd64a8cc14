"""The Chroma implementation of :mod:`rag_eval.index`: connecting, writing and checking one collection per (model, dim).

- Embedded persistent Chroma (``--chroma-path``) by default; a server (``--chroma-host/--chroma-port``, with TLS,
  a token, a tenant and database) through ``HttpClient``, or Chroma Cloud through ``CloudClient``, checked first
  by :mod:`rag_eval.store_access` (which names a refused token or an untrusted certificate). Telemetry is off.
- Embeddings are always passed explicitly and collections are created with
  ``embedding_function=None``: Chroma's default embedding function downloads an ONNX model.
- HNSW settings are fixed at creation, so a collection is always written afresh, in batches, into
  ``<name>-staging``, checked, then renamed over the old one: only a complete collection has the final
  name. A killed write leaves the old collection as it was; the same command (same write key) continues
  it; other settings are a JobError (``--force`` discards it); an unchanged collection is kept. A full
  disk or a lost server midway is a JobError naming it and the resume.
- A damaged embedded store (its SQLite file truncated or overwritten) is named with the fix;
  ``index --force`` moves it aside (``<path>.damaged-<time>``, never deleted) and rebuilds it.
- Names and metadata: :mod:`rag_eval.naming`. A collection under our name without the ``rag_eval`` marker
  (foreign), or whose metadata, size, dim or space disagree (corrupted), is refused unless ``--force``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from job.errors import JobError
from rag_eval import store_access as access
from rag_eval.chroma_options import describe_target, make_target, options  # noqa: F401 - rag_eval.stores' entry points
from rag_eval.index import CORRUPT, FOREIGN, OURS, Hit, VectorIndex, VectorStore, WriteResult, ranked  # noqa: F401
from rag_eval.naming import (  # noqa: F401 - re-exported: callers name collections through the store module
    DEFAULT_PREFIX,
    REQUIRED_METADATA,
    WRITE_KEY,
    build_metadata,
    check_prefix,
    collection_name,
    description_changes,
    dims_in_store,
    metadata_changes,
    model_slug,
    slug,
    write_key,
)
from rag_eval.store_access import (  # noqa: F401 - re-exported: the store's options and targets, as before
    DEFAULT_DATABASE,
    DEFAULT_TENANT,
    HnswSettings,
    StoreTarget,
    check_writable,
    describe_changes,
    missing_scope,
    store_errors,
    unreachable,
)
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

STAGING_SUFFIX = "-staging"
errors = store_errors  # rag_eval.stores' entry point: failures at any step as JobErrors naming the store
INDEX_SETTINGS = HnswSettings  # rag_eval.stores' entry point: the index parameters `rag-eval index` sets
HELP = "embedded, a server or Chroma Cloud; HNSW search"  # rag_eval.stores' entry point: --store's help
_SEGMENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# --- connecting ----------------------------------------------------------------------------------
def _settings(**extra):
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, **extra)


def connect(
    target: StoreTarget, *, create: bool = True, rebuild_damaged: bool = False, echo: Callable[[str], None] = print
):
    """The :class:`ChromaStore` at ``target``. ``create=False`` refuses an embedded path that holds no store
    (scoring or querying a store that was never written is a mistake, not an empty result).

    A server (or Chroma Cloud) is checked first (:func:`rag_eval.store_access.check_server`); a missing tenant
    is an error, a missing database is created by ``index`` (``create``) and an error otherwise.

    A damaged embedded store (a truncated or overwritten ``chroma.sqlite3``) is a :class:`JobError`
    naming it and the fix; with ``rebuild_damaged`` (``rag-eval index --force``) its file is checked
    first (SQLite ``quick_check``) and a damaged store is moved aside, never deleted, and started afresh."""
    import chromadb

    if target.is_server:
        return _connect_server(target, create=create, echo=echo)
    assert target.path is not None  # an embedded store (store_target always sets it)
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
    check_writable(path)  # before Chroma: a client that fails to start stays half-built in its cache
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


def _connect_server(target: StoreTarget, *, create: bool, echo: Callable[[str], None]):
    """A Chroma server through ``HttpClient``, or Chroma Cloud through ``CloudClient``, checked first
    (:func:`rag_eval.store_access.check_server`)."""
    import warnings

    import chromadb
    from chromadb.errors import ChromaAuthError, NotFoundError

    headers, key, verify = access.check_server(target)
    extra = {"chroma_server_ssl_verify": verify} if verify else {}

    def client():
        with warnings.catch_warnings():  # httpx deprecates verify=<path>, the only form chromadb's Settings take
            warnings.simplefilter("ignore", DeprecationWarning)
            if target.cloud:
                cloud_extra = {**extra, "chroma_server_headers": dict(headers)} if headers else extra
                return chromadb.CloudClient(
                    tenant=target.tenant, database=target.database, api_key=key, settings=_settings(**cloud_extra),
                    cloud_host=access.CLOUD_HOST, cloud_port=access.CLOUD_PORT,  # chromadb's defaults, for tests
                )  # fmt: skip
            return chromadb.HttpClient(
                host=target.host, port=int(target.port), ssl=target.ssl, headers=dict(headers) or None,
                settings=_settings(**extra), tenant=target.tenant or DEFAULT_TENANT,
                database=target.database or DEFAULT_DATABASE,
            )  # fmt: skip

    with store_errors(target):
        try:
            try:
                made = client()
            except NotFoundError as exc:
                if not (create and not target.cloud and str(exc).lower().startswith("database")):
                    raise
                database = access.create_database(target, headers, verify)
                echo(f"index: created database {database} in tenant {target.tenant or DEFAULT_TENANT} ({target.url})")
                made = client()
        except NotFoundError as exc:
            raise missing_scope(target, exc) from None
        except ChromaAuthError as exc:
            raise JobError(
                f"The {describe_target(target)} does not give this token access: {str(exc).splitlines()[0]}",
                "check --chroma-tenant and --chroma-database (Chroma Cloud: leave them out to use the key's own).",
            ) from None
        except ValueError as exc:  # chromadb raises ValueError("Could not connect to a Chroma server...")
            raise unreachable(target, exc) from None
    if target.cloud:  # the tenant and database Chroma Cloud resolved from the key, for messages and reports
        target = replace(target, tenant=made.tenant, database=made.database)
    return ChromaStore(made, target)


def inspect(index: VectorIndex, dim: int | None = None) -> tuple[str, list[str]]:
    """Is this one of our collections, and is it whole? Returns (kind, problems): :meth:`VectorIndex.check`."""
    return index.check(dim)


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

    def search_settings(self) -> dict[str, Any] | None:
        settings = self.settings
        return asdict(settings) if settings else None

    def required_metadata(self) -> dict[str, type]:
        return {**REQUIRED_METADATA, "space": str, "ef_construction": int, "ef_search": int, "max_neighbors": int}

    def store_problems(self) -> list[str]:
        settings = self.settings
        if settings is None or settings.space != "cosine":
            return [f"its distance space is {settings.space if settings else 'unknown'}, not cosine"]
        return []

    def replace_metadata(self, metadata: dict[str, Any]) -> bool:
        self.collection.modify(metadata=metadata)  # Chroma's modify(metadata=...) replaces the whole mapping
        return True

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

    kind, label, noun, search_name = "chroma", "Chroma", "collection", "HNSW"
    disk_note = "Disk: the collection alone in an embedded store (SQLite log, records and documents, HNSW files)."

    def __init__(self, client, target: StoreTarget):
        self.client = client
        self.target = target

    def describe(self) -> str:
        return describe_target(self.target)

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

    def footprint_bytes(self, index, ids, vectors, documents) -> int | None:
        settings = index.settings if isinstance(index, ChromaIndex) else None
        return footprint_bytes(ids, vectors, documents, settings or HnswSettings())

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
        batch_size: int | None = None,
    ) -> WriteResult:
        """Write one collection in batches into ``<name>-staging``, check it is whole, then rename it over the
        old one. Only a complete collection ever carries the final name. A staging copy left by a killed run
        with the same write key (:func:`write_key`) is continued where it stopped; one with another key is a
        JobError (``force``: discarded). A final collection with the same key is kept (``force``: rewritten)."""
        import time

        start = time.perf_counter()
        key = write_key(metadata)
        metadata = {**metadata, WRITE_KEY: key}
        old, note, kept = self.existing(name, metadata, force, start)
        if kept is not None:
            return kept
        if isinstance(old, ChromaIndex) and not note and old.settings != settings:
            note = f"HNSW settings changed ({describe_changes(old.settings, settings)}): recreated"
        staging = name + STAGING_SUFFIX
        col, todo = self._staging(staging, ids, metadata, settings, force)
        resumed = len(ids) - len(todo)
        if resumed:
            note = "; ".join(filter(None, [note, f"resumed: {resumed} of {len(ids)} vectors were already written"]))
        batch = max(1, int(batch_size or self.client.get_max_batch_size()))
        written = 0
        try:
            for s in range(0, len(todo), batch):
                part = todo[s : s + batch]
                col.add(
                    ids=[ids[i] for i in part],
                    embeddings=np.asarray(vectors[part], dtype=np.float32),
                    documents=[documents[i] for i in part] if documents is not None else None,
                )
                written += len(part)
                if progress:
                    progress(len(part))
        except Exception as exc:
            failed = self._write_failed(exc, staging, resumed + written, len(ids))
            if failed is exc:
                raise
            raise failed from exc
        if col.count() != len(ids):
            raise JobError(
                f"Chroma holds {col.count()} of the {len(ids)} vectors written to {staging}.",
                "re-run the index command: it writes the missing ones.",
            )
        if old is not None:
            self.delete(name)
        col.modify(name=name)  # the only step that gives the collection its final name
        action = "replaced" if old is not None else "created"
        return WriteResult(
            name, action, note, time.perf_counter() - start, resumed=resumed, written=written,
            reclaimed_bytes=self.reclaim(),
        )  # fmt: skip

    def reclaim(self) -> int:
        """Remove the vector folders of deleted collections from an embedded store: Chroma deletes a
        collection's records but leaves its HNSW folder behind, so every re-index grew the store. A folder is
        removed only when its name is a segment id that no live segment in ``chroma.sqlite3`` has. Returns the
        bytes freed (0 for a server, which manages its own disk)."""
        import sqlite3

        if self.target.is_server or self.target.path is None:
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

    def _staging(self, staging: str, ids: Sequence[str], metadata: dict[str, Any], settings: HnswSettings, force):
        """The staging collection to write into and the positions of ``ids`` it still lacks: a new one, or
        the one an interrupted write with the same key left behind."""
        leftover = self.open(staging)
        if leftover is not None:
            old_meta = leftover.metadata
            same = old_meta.get(WRITE_KEY) == metadata[WRITE_KEY] and leftover.settings == settings
            if same and not force:
                return leftover.collection, missing_positions(leftover.collection, ids)
            if not force:
                if "rag_eval" not in old_meta:
                    raise JobError(
                        f"A foreign collection named {staging} is in the way.",
                        "pass --force to replace it, or use another --collection-prefix.",
                    )
                raise JobError(
                    f"An interrupted index run left {staging} ({leftover.count()} of "
                    f"{old_meta.get('corpus_size', '?')} vectors) in the {self.describe()}, written with other "
                    f"settings than now: {metadata_changes(old_meta, metadata)}.",
                    "re-run with the settings it was started with to continue it, or pass --force to discard it "
                    "and index afresh.",
                )
            self.delete(staging)
        col = self.client.create_collection(
            staging, configuration=settings.configuration(), metadata=metadata, embedding_function=None
        )
        return col, np.arange(len(ids))

    def _write_failed(self, exc: BaseException, staging: str, stored: int, total: int) -> BaseException:
        """A failure midway through a write as a JobError naming the store, the likely cause and the resume."""
        resume = (
            f"re-run the same `rag-eval index` command: it continues from the {stored} of {total} vectors already in "
            f"{staging} (the old collection, if any, is untouched)"
        )
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if any(m in str(exc).lower() for m in _FULL_MARKERS):
            where = "the disk that holds the server's --path"
            if not self.target.is_server:
                where = f"the disk of {self.target.path}"
            return JobError(
                f"The {self.describe()} failed while writing {staging} ({text}): its disk is most likely full.",
                f"free space on {where} (or move the store to a larger disk), then {resume}.",
            )
        import httpx

        if isinstance(exc, (httpx.TransportError, ConnectionError)) and self.target.is_server:
            check = (
                f"`chroma run --host {self.target.host} --port {self.target.port} --path DIR`"
                if not (self.target.cloud or self.target.tls)
                else "and the network path to it"
            )
            return JobError(
                f"The connection to the {self.describe()} was lost while writing {staging} ({text}).",
                f"check that the server runs ({check}), then {resume}.",
            )
        return exc


# Chroma's words for a full disk: SQLite's SQLITE_FULL, the OS's ENOSPC, and what a Chroma 1.5 server answers
# (HTTP 500, its own log no wiser) when its disk fills during an add: "Error in compaction: Error purging logs"
# or "...: Failed to apply logs to the hnsw segment writer" (both seen with a server on a full 3 MiB tmpfs).
_FULL_MARKERS = ("database or disk is full", "no space left on device", "(code: 13)", "error in compaction")


def missing_positions(collection, ids: Sequence[str], page: int = 5000) -> np.ndarray:
    """Positions of ``ids`` that ``collection`` does not hold yet. Writes go in order, one batch per add, so
    an interrupted write holds a prefix: checked around its end (one small get), else found by reading every
    stored id."""
    n, count = len(ids), int(collection.count())
    if count == 0:
        return np.arange(n)
    if count <= n:
        lo, hi = max(0, count - page), min(n, count + page)
        got = set(collection.get(ids=list(ids[lo:hi]), include=[])["ids"])
        if got == set(ids[lo:count]):
            return np.arange(count, n)
    stored: set[str] = set()
    offset = 0
    while True:
        got = collection.get(limit=page, offset=offset, include=[])["ids"]
        stored.update(got)
        offset += len(got)
        if len(got) < page:
            break
    return np.asarray([i for i, cid in enumerate(ids) if cid not in stored], dtype=np.int64)


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
        col = client.create_collection(
            "footprint",
            configuration=settings.configuration(),  # type: ignore[arg-type]  # (chromadb types it as a TypedDict)
            embedding_function=None,
        )
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
