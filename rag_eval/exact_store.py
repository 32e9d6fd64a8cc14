"""The exact store (``--store exact``): every passage scored for every question, over vectors saved in a folder.

For small corpora (up to a few hundred thousand passages, where a matrix product answers in milliseconds) and
as the ground truth beside an approximate store: no index parameters, no recall below 1. It searches float32
vectors by cosine, or int8 / binary codes of them (``--exact-precision``; :mod:`rag_eval.quantized`, with
float rescoring of the top candidates), computed from the saved float32 vectors when an index is opened, so one
written index serves every precision.

Layout (``--store-path``, default RUN_DIR/exact_store, else ./exact_store)::

    exact_store/
      rag-eval-exact-store.json     marks the folder as a store (format version)
      <collection>/                 one complete index: vectors.npy (float32), ids.json, documents.json,
                                    meta.json (the collection metadata; written last: its presence = complete)
      <collection>.staging/         a write in progress: write.json (its write key), part-<start>.npy + .json
                                    per batch (the .json, written after its .npy, marks the batch complete)

Writes follow the interface's rules (:meth:`rag_eval.index.VectorStore.write`): batches go into
``<collection>.staging`` (each file through a temporary name, fsync and rename); a write killed midway continues
from its complete batches when run again with the same write key; the finished index is assembled in the
staging folder and swapped in by two renames, so only a complete index ever carries the final name, and a crash
between the renames is repaired when the store is next opened (the newer complete copy wins). A full disk or a
read-only folder is a JobError naming it and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from job.errors import JobError
from job.storage import storage_errors
from rag_eval.index import CORRUPT, Hit, VectorIndex, VectorStore, WriteResult
from rag_eval.naming import WRITE_KEY, metadata_changes, write_key
from rag_eval.quantized import DEFAULT_RESCORE_MULTIPLIER, PRECISIONS, QuantizedIndex
from rag_eval.store_access import StoreTarget

MARKER = "rag-eval-exact-store.json"
FORMAT = 1
STAGING, OLD = ".staging", ".old"
META, IDS, VECTORS, DOCUMENTS, WRITE = "meta.json", "ids.json", "vectors.npy", "documents.json", "write.json"
DEFAULT_BATCH = 5000
FOLDER = "exact_store"  # the store's folder in a run directory (or the working directory)
HELP = "a folder of saved vectors, every passage scored (small corpora, or the ground truth)"  # --store's help


def options(func):
    """rag_eval.stores' entry point: the exact store's options (`rag_eval.store_options` adds them to every
    command and refuses them with another store)."""
    func = click.option(
        "--exact-precision", type=click.Choice(PRECISIONS), default="float32", show_default=True,
        envvar="RAG_EVAL_EXACT_PRECISION",
        help="--store exact: search float32 vectors, or int8 / binary codes of them (top candidates rescored).",
    )(func)  # fmt: skip
    func = click.option(
        "--store-path", type=click.Path(path_type=Path), default=None, envvar="RAG_EVAL_STORE_PATH",
        help=f"--store exact: its folder. Default: RUN_DIR/{FOLDER} with a run directory, else ./{FOLDER}.",
    )(func)  # fmt: skip
    return func


def make_target(values: dict[str, Any], run_dir) -> StoreTarget:
    """rag_eval.stores' entry point: the store at --store-path (default RUN_DIR/exact_store, else ./exact_store)."""
    path = values.get("store_path")
    if path is None:
        path = run_dir.root / FOLDER if run_dir is not None else Path(FOLDER)
    return StoreTarget(path=Path(path).expanduser(), kind="exact", precision=values.get("exact_precision") or "float32")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Through a temporary name, fsync and rename: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb" if binary else "w") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, payload: Any) -> None:
    _write_file(path, lambda fh: json.dump(payload, fh))


def _write_npy(path: Path, array: np.ndarray) -> None:
    _write_file(path, lambda fh: np.save(fh, np.ascontiguousarray(array, dtype=np.float32)), binary=True)


class ExactIndex(VectorIndex):
    """One saved index: float32 vectors searched exactly (or through int8 / binary codes of them)."""

    def __init__(self, folder: Path, precision: str = "float32", rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER):
        self.folder = folder
        self.name = folder.name
        self.precision = precision
        self.rescore_multiplier = rescore_multiplier
        self._meta: dict[str, Any] = json.loads((folder / META).read_text())
        self._loaded: tuple[list[str], np.ndarray, list[str | None]] | None = None
        self._search: QuantizedIndex | None = None

    # -- loading, once per opened index ---------------------------------------------------------------
    def _load(self) -> tuple[list[str], np.ndarray, list[str | None]]:
        """(ids, float32 vectors, texts), read on first use and kept."""
        if self._loaded is not None:
            return self._loaded
        try:
            ids = json.loads((self.folder / IDS).read_text())
            vectors = np.load(self.folder / VECTORS, allow_pickle=False)
            documents = json.loads((self.folder / DOCUMENTS).read_text())
        except (OSError, ValueError) as exc:
            raise JobError(
                f"The exact-store index {self.folder} cannot be read ({exc}).",
                "re-index it with `rag-eval index ... --store exact --force` (that replaces it).",
            ) from None
        documents = documents if documents is not None else [None] * len(ids)
        if vectors.ndim != 2 or len(vectors) != len(ids) or len(documents) != len(ids):
            raise JobError(
                f"The exact-store index {self.folder} is inconsistent: {len(ids)} ids, {len(documents)} texts and "
                f"vectors of shape {vectors.shape}.",
                "re-index it with `rag-eval index ... --store exact --force` (that replaces it).",
            )
        self._loaded = ids, vectors.astype(np.float32, copy=False), documents
        return self._loaded

    def _searcher(self) -> QuantizedIndex:
        if self._search is None:
            ids, vectors, documents = self._load()
            self._search = QuantizedIndex(
                self.name, ids, vectors, self.precision, rescore_multiplier=self.rescore_multiplier,
                metadata=self._meta, texts=documents,
            )  # fmt: skip
        return self._search

    # -- the interface --------------------------------------------------------------------------------
    def count(self) -> int:
        return len(self._load()[0])

    @property
    def metadata(self) -> dict[str, Any]:
        return self._meta

    def stored_dim(self) -> int | None:
        vectors = self._load()[1]
        return int(vectors.shape[1]) if len(vectors) else None

    def check(self, dim: int | None = None) -> tuple[str, list[str]]:
        try:
            return super().check(dim)
        except JobError as exc:  # files that cannot be read, or disagree: a damaged index, replaced by --force
            return CORRUPT, [exc.problem]

    def search_settings(self) -> dict[str, Any]:
        rescore = self.rescore_multiplier if self.precision != "float32" else 0
        return {"search": "exact", "precision": self.precision, "rescore_multiplier": rescore}

    def query(self, vectors: np.ndarray, n: int, *, documents: bool = False) -> list[list[Hit]]:
        return self._searcher().query(np.asarray(vectors, dtype=np.float32), n, documents=documents)

    def fetch(self, ids: Iterable[str]) -> dict[str, str]:
        stored, _, documents = self._load()
        texts = dict(zip(stored, documents))
        return {i: texts[i] or "" for i in dict.fromkeys(map(str, ids)) if i in texts}

    def fetch_all(self) -> tuple[list[str], np.ndarray, list[str | None]]:
        ids, vectors, documents = self._load()
        return list(ids), np.array(vectors, dtype=np.float32), list(documents)

    def replace_metadata(self, metadata: dict[str, Any]) -> bool:
        _write_json(self.folder / META, metadata)
        self._meta = dict(metadata)
        return True

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "search": self.search_settings()}


class ExactStore(VectorStore):
    """A folder of :class:`ExactIndex` folders."""

    kind, label = "exact", "exact store"
    disk_note = "Disk: the index's saved files (float32 vectors, ids and texts)."

    def __init__(self, root: Path, precision: str = "float32", rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER):
        self.root = root
        self.precision = precision
        self.rescore_multiplier = rescore_multiplier

    def describe(self) -> str:
        return describe_target(StoreTarget(path=self.root, kind=self.kind, precision=self.precision))

    def public(self) -> str:
        return "exact vector store" if self.precision == "float32" else f"exact vector store ({self.precision})"

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        with _storage_errors(self.root):
            yield

    # -- names, and repair of a swap cut short ------------------------------------------------------
    def _folders(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def _repair(self, name: str) -> None:
        """A crash between the two renames of a swap leaves ``name`` missing beside a complete staging copy (the
        new index) or an ``.old`` copy (the previous one): the newer complete copy takes the name."""
        final, staging, old = self.root / name, self.root / (name + STAGING), self.root / (name + OLD)
        if not (final / META).is_file():
            if (staging / META).is_file():
                if final.exists():
                    shutil.rmtree(final)
                staging.rename(final)
            elif (old / META).is_file():
                if final.exists():
                    shutil.rmtree(final)
                old.rename(final)
        if (final / META).is_file() and old.exists():
            shutil.rmtree(old, ignore_errors=True)

    def names(self) -> list[str]:
        bases = {p.name.removesuffix(STAGING).removesuffix(OLD) for p in self._folders()}
        for base in bases:
            self._repair(base)
        return sorted(b for b in bases if (self.root / b / META).is_file())

    def open(self, name: str) -> ExactIndex | None:
        self._repair(name)
        folder = self.root / name
        if not (folder / META).is_file():
            return None
        try:
            return ExactIndex(folder, self.precision, self.rescore_multiplier)
        except (OSError, ValueError) as exc:
            raise JobError(
                f"The metadata of exact-store index {folder} cannot be read ({exc}).",
                "re-index it with `rag-eval index ... --store exact --force` (that replaces it).",
            ) from None

    def delete(self, name: str) -> None:
        for suffix in ("", STAGING, OLD):
            shutil.rmtree(self.root / (name + suffix), ignore_errors=True)

    def footprint_bytes(self, index, ids, vectors, documents) -> int | None:
        """The bytes the saved files take: the vectors' .npy, the ids and texts as JSON, and the metadata."""
        vectors = np.asarray(vectors)
        npy = 128 + len(ids) * (vectors.shape[1] if vectors.ndim == 2 else 0) * 4
        texts = None if all(d is None for d in documents) else list(documents)
        return npy + len(json.dumps(list(ids)).encode()) + len(json.dumps(texts).encode())

    # -- writing --------------------------------------------------------------------------------------
    def write(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        documents: Sequence[str] | None,
        metadata: dict[str, Any],
        settings: Any = None,
        *,
        force: bool = False,
        progress: Callable[[int], None] | None = None,
        batch_size: int | None = None,
    ) -> WriteResult:
        """See :meth:`VectorStore.write`; ``settings`` (HNSW parameters for Chroma) has nothing to set here."""
        start = time.perf_counter()
        key = write_key(metadata)
        metadata = {**metadata, WRITE_KEY: key}
        old, note, kept = self.existing(name, metadata, force, start)
        if kept is not None:
            return kept
        staging = self.root / (name + STAGING)
        done = self._staging(staging, key, metadata, force)
        position = {cid: i for i, cid in enumerate(ids)}
        todo = np.array([i for i, cid in enumerate(ids) if cid not in done], dtype=np.int64)
        resumed = len(ids) - len(todo)
        if resumed:
            note = "; ".join(filter(None, [note, f"resumed: {resumed} of {len(ids)} vectors were already written"]))
        batch = max(1, int(batch_size or DEFAULT_BATCH))
        written = 0
        for s in range(0, len(todo), batch):
            part = todo[s : s + batch]
            stem = staging / f"part-{int(part[0]):09d}"
            _write_npy(stem.with_suffix(".npy"), np.asarray(vectors)[part])
            texts = [documents[i] for i in part] if documents is not None else None
            _write_json(stem.with_suffix(".json"), {"ids": [ids[i] for i in part], "documents": texts})
            written += len(part)
            if progress:
                progress(len(part))
        self._assemble(staging, ids, position, metadata)
        self._swap(name)
        action = "replaced" if old is not None else "created"
        return WriteResult(name, action, note, time.perf_counter() - start, resumed=resumed, written=written)

    def _staging(self, staging: Path, key: str, metadata: dict[str, Any], force: bool) -> set[str]:
        """The ids a write with this key, cut short, already stored in ``staging`` (a fresh staging folder: none).
        A leftover written with other settings is a JobError unless ``force``."""
        record = staging / WRITE
        if staging.exists():
            try:
                old = json.loads(record.read_text())
            except (OSError, ValueError):
                old = None  # cut short before its record: nothing in it can be trusted
            if old is not None and old.get(WRITE_KEY) == key and not force:
                done: set[str] = set()
                for part in sorted(staging.glob("part-*.json")):
                    if part.with_suffix(".npy").is_file():
                        done.update(json.loads(part.read_text())["ids"])
                return done
            if old is not None and not force:
                raise JobError(
                    f"An interrupted index run left {staging} ({len(list(staging.glob('part-*.json')))} batches) in "
                    f"the {self.describe()}, written with other settings than now: "
                    f"{metadata_changes(old.get('metadata', {}), metadata)}.",
                    "re-run with the settings it was started with to continue it, or pass --force to discard it "
                    "and index afresh.",
                )
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        _write_json(record, {WRITE_KEY: key, "metadata": metadata})
        _fsync_dir(self.root)
        return set()

    def _assemble(self, staging: Path, ids: Sequence[str], position: dict[str, int], metadata: dict[str, Any]) -> None:
        """The complete index in ``staging``, in the order of ``ids``; meta.json last."""
        dim = int(metadata["dim"])
        matrix = np.zeros((len(ids), dim), dtype=np.float32)
        texts: list[str | None] = [None] * len(ids)
        seen = np.zeros(len(ids), dtype=bool)
        for part in sorted(staging.glob("part-*.json")):
            got = json.loads(part.read_text())
            rows = np.load(part.with_suffix(".npy"), allow_pickle=False)
            for j, cid in enumerate(got["ids"]):
                i = position.get(cid)
                if i is not None:
                    matrix[i], seen[i] = rows[j], True
                    if got["documents"] is not None:
                        texts[i] = got["documents"][j]
        if not seen.all():
            raise JobError(
                f"{int((~seen).sum())} of the {len(ids)} vectors are missing from {staging}.",
                "re-run the index command: it writes the missing ones.",
            )
        _write_npy(staging / VECTORS, matrix)
        _write_json(staging / IDS, list(ids))
        _write_json(staging / DOCUMENTS, texts if any(t is not None for t in texts) else None)
        for part in staging.glob("part-*"):
            part.unlink()
        (staging / WRITE).unlink()
        _write_json(staging / META, metadata)
        _fsync_dir(staging)

    def _swap(self, name: str) -> None:
        final, staging, old = self.root / name, self.root / (name + STAGING), self.root / (name + OLD)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        staging.rename(final)
        _fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)


def describe_target(target: StoreTarget) -> str:
    """rag_eval.stores' entry point: how messages name the store."""
    searched = f", searched as {target.precision} codes" if target.precision != "float32" else ""
    return f"exact store {target.path}{searched}"


def connect(
    target, *, create: bool = True, rebuild_damaged: bool = False, echo: Callable[[str], None] = print
) -> ExactStore:
    """The exact store at ``target.path``. ``create=False`` refuses a folder that holds no store (scoring or
    querying a store that was never written is a mistake, not an empty result)."""
    root = Path(target.path).expanduser()
    if root.exists() and not root.is_dir():
        raise JobError(f"--store-path {root} is a file; an exact store is a folder.", "pass a folder.")
    marker = root / MARKER
    if not marker.is_file():
        if not create:
            raise JobError(
                f"There is no exact store at {root} (no {MARKER}).",
                "run `rag-eval index --store exact` first, or point --store-path at the store you indexed into.",
            )
        if root.is_dir() and any(not p.name.startswith(".") for p in root.iterdir()):  # (.lock: rag-eval's own)
            raise JobError(
                f"{root} is not empty and is not an exact store (no {MARKER}).",
                "pass an empty or new folder as --store-path.",
            )
        with _storage_errors(root):
            root.mkdir(parents=True, exist_ok=True)
            _write_json(marker, {"rag_eval_exact_store": FORMAT})
    elif json.loads(marker.read_text()).get("rag_eval_exact_store", 0) > FORMAT:
        raise JobError(
            f"The exact store at {root} was written by a newer rag-eval.", "upgrade rag-eval, or index afresh."
        )
    precision = getattr(target, "precision", "float32")
    if precision not in PRECISIONS:
        raise JobError(f"--exact-precision {precision} is not one of {', '.join(PRECISIONS)}.", "pick one of them.")
    return ExactStore(root, precision)


def errors(target) -> contextlib.AbstractContextManager[None]:
    """rag_eval.stores' entry point: a full disk, a read-only folder or a permission error as a JobError."""
    return _storage_errors(Path(target.path).expanduser())


def _storage_errors(root: Path) -> contextlib.AbstractContextManager[None]:
    return storage_errors(
        root, f"the exact store {root}",
        "free space on that disk or make the folder writable (or pass another --store-path), then run the same "
        "command again: a write continues from its complete batches.",
    )  # fmt: skip
