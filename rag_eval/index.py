"""The vector-index interface: everything rag_eval does with a vector store goes through these two classes.

- :class:`VectorStore`: where indexes live. ``names``, ``open(name)``, ``write(name, ...)`` (atomic: the old
  index stays until the new one is whole; resumable: a killed write continues where it stopped, and an
  unchanged index is kept), ``delete``, ``describe`` and ``errors()`` (a context manager that turns the
  store's own failures into errors that name it and the fix).
- :class:`VectorIndex`: one index, one (model, dim): ``query`` (top n by cosine similarity, ties by ascending
  id, documents optional), ``fetch`` (texts by id), ``fetch_all`` (every id, vector and text), ``count``,
  ``metadata`` and ``describe``.

`rag-eval index`, `score`, `query` and `serve` use only these, and get a store by name from
:mod:`rag_eval.stores` (``--store``). The Chroma implementation is :mod:`rag_eval.store` (embedded or server);
the exact store, brute-force search over saved vectors, is :mod:`rag_eval.exact_store`; an exact in-memory
index over quantized codes is :mod:`rag_eval.quantized`. Another store (pgvector, Qdrant, ...) is one new module
implementing the two classes and a ``connect``, plus one line in :data:`rag_eval.stores.STORES`.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from job.errors import JobError
from rag_eval import SCHEMA_VERSION
from rag_eval.naming import REQUIRED_METADATA, WRITE_KEY, description_changes

# What :meth:`VectorIndex.check` finds under one of our names
FOREIGN, CORRUPT, OURS = "foreign", "corrupted", "ours"


@dataclass
class Hit:
    rank: int
    id: str
    score: float  # the similarity the index ranks by: cosine (quantized indexes: see rag_eval.quantized)
    text: str = ""


def ranked(candidates: Iterable[tuple[str, float, str]]) -> list[Hit]:
    """(id, score, text) -> Hits ranked by score, ties by ascending id (every store the same way)."""
    ordered = sorted(candidates, key=lambda c: (-c[1], c[0]))
    return [Hit(i + 1, cid, float(score), text or "") for i, (cid, score, text) in enumerate(ordered)]


@dataclass
class WriteResult:
    name: str
    action: str  # "created", "replaced" or "kept" (already complete with the same settings)
    note: str = ""
    seconds: float = 0.0
    resumed: int = 0  # vectors an earlier, interrupted write had already stored (not written again)
    written: int = 0  # vectors written by this call
    reclaimed_bytes: int = 0  # disk freed from replaced indexes (a store that leaves them behind)


class VectorIndex(abc.ABC):
    """One index of unit vectors (one model at one dim) with their passage texts."""

    name: str

    @abc.abstractmethod
    def count(self) -> int: ...

    @property
    @abc.abstractmethod
    def metadata(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def query(self, vectors: np.ndarray, n: int, *, documents: bool = False) -> list[list[Hit]]:
        """For each row of ``vectors`` (unit length, shape (q, dim)), its top ``n`` hits."""

    @abc.abstractmethod
    def fetch(self, ids: Iterable[str]) -> dict[str, str]:
        """The stored text of each id."""

    @abc.abstractmethod
    def fetch_all(self) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Every stored (id, vector, text)."""

    def vector_dim(self) -> int | None:
        return self.metadata.get("dim")

    def stored_dim(self) -> int | None:
        """The length of the vectors actually stored (None when it cannot be told, or there are none)."""
        return None

    def search_settings(self) -> dict[str, Any] | None:
        """How this index searches, for reports (Chroma: its HNSW parameters; an exact index: its precision)."""
        return None

    def check(self, dim: int | None = None) -> tuple[str, list[str]]:
        """Is this one of our indexes, and is it whole? ``(FOREIGN | CORRUPT | OURS, problems)``."""
        meta = self.metadata
        if "rag_eval" not in meta:
            return FOREIGN, ["its metadata has no 'rag_eval' marker (it was not written by rag-eval)"]
        problems = []
        for key, typ in self.required_metadata().items():
            value = meta.get(key)
            if value is None or not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                problems.append(f"metadata '{key}' is {value!r}")
        if problems:
            return CORRUPT, problems
        if meta["rag_eval"] > SCHEMA_VERSION:
            problems.append(f"it was written by a newer rag-eval (schema {meta['rag_eval']})")
        if dim is not None and meta["dim"] != dim:
            problems.append(f"its name says dim {dim} but its metadata says {meta['dim']}")
        problems += self.store_problems()
        count = self.count()
        if count != meta["corpus_size"]:
            problems.append(f"it holds {count} vectors but its metadata says {meta['corpus_size']}")
        elif count:
            stored = self.stored_dim()
            if stored is not None and stored != meta["dim"]:
                problems.append(f"its vectors have {stored} dims but its metadata says {meta['dim']}")
        return (CORRUPT if problems else OURS), problems

    def required_metadata(self) -> dict[str, type]:
        """Metadata keys (and their types) an index of this store must have to be whole."""
        return REQUIRED_METADATA

    def store_problems(self) -> list[str]:
        """What the store itself finds wrong with this index (Chroma: a distance space other than cosine)."""
        return []

    def refresh_description(self, metadata: dict[str, Any]) -> bool:
        """Bring a kept index's descriptive metadata (:data:`rag_eval.naming.DESCRIPTIVE`) up to date without
        rewriting its vectors; True when it changed."""
        changes = description_changes(self.metadata, metadata)
        if not changes:
            return False
        return self.replace_metadata({**self.metadata, **changes})

    def replace_metadata(self, metadata: dict[str, Any]) -> bool:
        """Replace the whole metadata mapping; False for an index that cannot (nothing changes)."""
        return False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count(), "metadata": dict(self.metadata)}


class VectorStore(abc.ABC):
    """Where indexes live."""

    kind: str  # its name in rag_eval.stores.STORES ("chroma", "exact")
    label: str  # how reports and pages name it ("Chroma", "exact store")
    noun = "index"  # what messages call one of its indexes ("collection" in Chroma)
    search_name = "Search"  # what the report calls its search settings ("HNSW" in Chroma)
    disk_note = "Disk: the index's saved files."  # what footprint_bytes measures, for the report

    @abc.abstractmethod
    def describe(self) -> str:
        """One phrase naming the store, for messages ('embedded Chroma store runs/x/chroma')."""

    def public(self) -> str:
        """The store for a page or an API: what it is, never where it is on this machine."""
        return "vector store"

    @abc.abstractmethod
    def names(self) -> list[str]: ...

    @abc.abstractmethod
    def open(self, name: str) -> VectorIndex | None:
        """The index of that name, or None when there is none."""

    @abc.abstractmethod
    def write(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        documents: Sequence[str] | None,
        metadata: dict[str, Any],
        settings: Any,
        *,
        force: bool = False,
        progress: Callable[[int], None] | None = None,
        batch_size: int | None = None,
    ) -> WriteResult:
        """Write (or replace) one index in batches; the old one stays readable until the new one is complete,
        a write killed midway continues where it stopped when called again with the same metadata, and an
        index already complete with the same metadata is kept (``force``: written afresh)."""

    def existing(
        self, name: str, metadata: dict[str, Any], force: bool, start: float
    ) -> tuple[VectorIndex | None, str, WriteResult | None]:
        """Before a write of ``metadata`` (with its write key): the index already under ``name``, a note on it, and
        the result when it is kept. A foreign or corrupted one is a JobError unless ``force`` (then replaced); one
        complete with the same write key is kept, its descriptive metadata brought up to date."""
        old = self.open(name)
        if old is None:
            return None, "", None
        kind, problems = old.check(metadata["dim"])
        if kind != OURS and not force:
            raise JobError(
                f"A {kind} {self.noun} named {name} already exists in the {self.describe()}: {'; '.join(problems)}.",
                "pass --force to replace it, or use another --collection-prefix.",
            )
        if kind != OURS:
            return old, f"replaced a {kind} {self.noun} (--force)", None
        if old.metadata.get(WRITE_KEY) == metadata[WRITE_KEY] and not force:
            old.refresh_description(metadata)
            return old, "", WriteResult(name, "kept", "unchanged: already complete", time.perf_counter() - start)
        return old, "", None

    @abc.abstractmethod
    def delete(self, name: str) -> None: ...

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Translate the store's failures into JobErrors that name it (default: none to translate)."""
        yield

    def footprint_bytes(
        self, index: VectorIndex, ids: Sequence[str], vectors: np.ndarray, documents: Sequence[str | None]
    ) -> int | None:
        """Bytes on disk that ``index`` (whose ids, vectors and texts are given) takes in this kind of store,
        whether it lives on this machine or not (None: unknown)."""
        return None
