"""The search core every front end shares (`rag-eval query` in the terminal, `rag-eval serve`'s page and API): one
loaded model with its index at one Matryoshka dim, embedding and querying as separate steps."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rag_eval.index import Hit, VectorIndex
from rag_eval.sources import LoadedModel
from rag_eval.vectors import encode_queries, truncate_normalise

RANK_DEPTH = 100  # how deep the other model's ranking is searched for a compared passage


@dataclass
class Searcher:
    """A loaded model with its index at one dim. ``embed`` (the model) and ``query`` (the vector
    store) are separate steps, so that callers can time them apart (``rag-eval serve`` does)."""

    model: LoadedModel
    index: VectorIndex
    dim: int
    size: int | None = None  # the index's count, when the caller knows it (saves a call per query)

    def embed(self, question: str) -> np.ndarray:
        """The question's vector at this dim (truncated and re-normalised), shape (1, dim)."""
        return truncate_normalise(encode_queries(self.model.model, [question], self.model.spec.query_prompt), self.dim)

    def _depth(self, n: int) -> int:
        return max(1, min(n, self.size if self.size is not None else self.index.count()))

    def query(self, vector: np.ndarray, n: int, *, documents: bool = True) -> list[Hit]:
        """The top ``n`` passages for a vector from :meth:`embed`; ties by ascending id. Without
        ``documents`` each hit's text is empty (fetch the ones to show with :meth:`documents`)."""
        return self.index.query(np.asarray(vector), self._depth(n), documents=documents)[0]

    def query_many(self, vectors: np.ndarray, n: int) -> list[list[Hit]]:
        """:meth:`query` (without documents) for several vectors in one call to the store."""
        return self.index.query(np.asarray(vectors), self._depth(n))

    def documents(self, ids: Iterable[str]) -> dict[str, str]:
        """The stored passage text of each id."""
        return self.index.fetch(ids)

    def search(self, question: str, n: int) -> list[Hit]:
        return self.query(self.embed(question), n)
