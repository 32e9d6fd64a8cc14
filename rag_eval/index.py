"""The vector-index interface: everything rag_eval does with a vector store goes through these two classes.

- :class:`VectorStore`: where indexes live. ``names``, ``open(name)``, ``write(name, ...)`` (atomic: the old
  index stays until the new one is whole; resumable: a killed write continues where it stopped, and an
  unchanged index is kept), ``delete``, ``describe`` and ``errors()`` (a context manager that turns the
  store's own failures into errors that name it and the fix).
- :class:`VectorIndex`: one index, one (model, dim): ``query`` (top n by cosine similarity, ties by ascending
  id, documents optional), ``fetch`` (texts by id), ``fetch_all`` (every id, vector and text), ``count``,
  ``metadata`` and ``describe``.

`rag-eval index`, `score`, `query` and `serve` use only these. The Chroma implementation is
:mod:`rag_eval.store` (embedded or server); an exact in-memory index over quantized vectors is
:mod:`rag_eval.quantized`. A second store (pgvector, Qdrant, ...) is one new module implementing the two
classes.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


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

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count(), "metadata": dict(self.metadata)}


class VectorStore(abc.ABC):
    """Where indexes live."""

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

    @abc.abstractmethod
    def delete(self, name: str) -> None: ...

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Translate the store's failures into JobErrors that name it (default: none to translate)."""
        yield
