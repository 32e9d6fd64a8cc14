"""Quantized embeddings: an exact in-memory :class:`~rag_eval.index.VectorIndex` over int8 or binary codes.

The codes are sentence-transformers' :func:`quantize_embeddings` of the stored (truncated, re-normalised)
vectors, as in its ``semantic_search_*`` helpers and the published embedding-quantization results:

- **int8**: per dimension, ``[min, max]`` of the CORPUS vectors (never the questions) split into 256 buckets;
  one byte per dim. Quantized-space score: the integer dot product of the query's and the passage's codes
  (the query quantized with the corpus's ranges), accumulated in int32.
- **binary**: one bit per dim (``> 0``), packed; ``ceil(dim / 8)`` bytes. Quantized-space score: minus the
  Hamming distance (XOR + popcount on 64-bit words).
- **float32**: the vectors themselves, cosine (inner product of unit vectors); the exact reference.

Search is exact (every passage scored) with numpy's integer and bit kernels, never on floats standing in
for the codes. With ``rescore_multiplier`` m > 0 the top ``m * n`` candidates of the quantized search are
re-ranked by the FLOAT query against each candidate's code, dequantized (int8: back to its bucket's
value; binary: its 0/1 bits), as sentence-transformers' rescoring does; only the codes are kept in memory.
Ties are broken by ascending id everywhere (as every rag_eval index does). A hit's score is the score it
was ranked by: cosine (float32), the rescored dot product, or the quantized-space score (integer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from job.errors import JobError
from rag_eval.index import Hit, VectorIndex

PRECISIONS = ("float32", "int8", "binary")
DEFAULT_RESCORE_MULTIPLIER = 4


def check_precisions(value: str | Sequence[str]) -> list[str]:
    """'float32,int8,binary' (or a list) -> the precisions, in the canonical order; bad input is a JobError."""
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [n for n in names if n not in PRECISIONS]
    if bad or not names:
        raise JobError(
            f"--precision {value!r} is not a comma-separated list of {', '.join(PRECISIONS)}.",
            "pass e.g. --precision float32,int8,binary.",
        )
    return [p for p in PRECISIONS if p in names]


def check_multiplier(value: int) -> int:
    if value < 0:
        raise JobError(
            f"--rescore-multiplier {value} is negative.",
            "pass 0 (no rescoring) or the number of candidates per result to rescore, e.g. 4.",
        )
    return int(value)


def bytes_per_vector(precision: str, dim: int) -> int:
    """Bytes one stored vector takes as codes: 4 per dim (float32), 1 per dim (int8), 1 per 8 dims (binary)."""
    return {"float32": 4 * dim, "int8": dim, "binary": (dim + 7) // 8}[precision]


def calibrate(corpus: np.ndarray) -> np.ndarray:
    """int8 ranges, shape (2, dim): each dimension's min and max over the corpus vectors."""
    corpus = np.asarray(corpus, dtype=np.float32)
    if len(corpus) < 2:
        raise JobError(
            f"int8 ranges need at least 2 corpus vectors to calibrate on; the index holds {len(corpus)}.",
            "index a larger corpus, or use --precision float32 or binary.",
        )
    return np.vstack((corpus.min(axis=0), corpus.max(axis=0)))


@dataclass
class Codes:
    """Quantized vectors in the form the search kernels read: int8 codes, or packed bits as uint64 words."""

    precision: str
    data: np.ndarray
    dim: int

    @property
    def nbytes_per_vector(self) -> int:
        return bytes_per_vector(self.precision, self.dim)


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> Codes:
    """``vectors`` (float, (n, dim)) as codes, through sentence-transformers' ``quantize_embeddings``."""
    from sentence_transformers.util import quantize_embeddings

    v = np.asarray(vectors, dtype=np.float32)
    dim = v.shape[1]
    if precision == "float32":
        return Codes(precision, np.ascontiguousarray(v), dim)
    if precision == "int8":
        if ranges is None:
            raise ValueError("int8 needs the corpus's ranges (calibrate); never the queries'")
        return Codes(precision, np.ascontiguousarray(quantize_embeddings(v, "int8", ranges=ranges)), dim)
    if precision == "binary":
        packed = np.asarray(quantize_embeddings(v, "ubinary"))  # np.packbits(v > 0): "binary"'s bits, unsigned
        words = -(-packed.shape[1] // 8)
        padded = np.zeros((len(v), words * 8), dtype=np.uint8)  # zero padding XORs to zero: no effect
        padded[:, : packed.shape[1]] = packed
        return Codes(precision, padded.view(np.uint64), dim)
    raise ValueError(f"unknown precision {precision!r}")


def quantized_scores(queries: Codes, corpus: Codes, block: int = 16384) -> np.ndarray:
    """Scores of every (query, passage) pair in the quantized space, shape (q, n): cosine for float32, the
    int32 dot product of int8 codes, minus the Hamming distance of binary codes. Exact integers for int8
    and binary; the corpus is widened (int8) or XOR-ed (binary) a block at a time, never as a whole."""
    q, c = queries.data, corpus.data
    if corpus.precision == "float32":
        return q @ c.T
    out = np.empty((len(q), len(c)), dtype=np.int32)
    wide_q = q.astype(np.int32)  # (int8; unused for binary)
    for s in range(0, len(c), block):
        part = c[s : s + block]
        if corpus.precision == "int8":
            out[:, s : s + len(part)] = wide_q @ part.astype(np.int32).T
            continue
        for r in range(0, len(q), 32):  # (32, block, words) uint64 at a time
            xor = q[r : r + 32, None, :] ^ part[None, :, :]
            out[r : r + 32, s : s + len(part)] = -np.bitwise_count(xor).sum(axis=2, dtype=np.int32)
    return out


def dequantize(codes: np.ndarray, precision: str, dim: int, ranges: np.ndarray | None) -> np.ndarray:
    """What a candidate's code stands for when the float query rescores it (sentence-transformers' rule):
    int8 -> the start of its bucket ``(code + 128) * step + min``; binary -> its bits as 0/1."""
    if precision == "float32":
        return np.asarray(codes, dtype=np.float32)
    if precision == "int8":
        assert ranges is not None, "int8 codes need the corpus's ranges"
        lo, hi = ranges[0].astype(np.float64), ranges[1].astype(np.float64)
        steps = (hi - lo) / 255
        steps = np.where(steps == 0, 1, steps)
        return (codes.astype(np.float64) + 128) * steps + lo
    bits = np.unpackbits(np.ascontiguousarray(codes).view(np.uint8), axis=-1)
    return bits[..., :dim].astype(np.float64)


def _top(scores: np.ndarray, id_rank: np.ndarray, n: int, among: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``n`` best scores (ties by ascending id) among ``among`` (default: all)."""
    cand = np.arange(len(scores)) if among is None else among
    s = scores[cand]
    if n < len(cand):
        kth = np.partition(s, len(s) - n)[len(s) - n]
        keep = s >= kth  # every position tied with the n-th competes on its id
        cand, s = cand[keep], s[keep]
    order = np.lexsort((id_rank[cand], -s))[:n]
    return cand[order]


class QuantizedIndex(VectorIndex):
    """An exact in-memory index over one precision's codes of another index's vectors (or of given vectors).

    ``text_source`` (an index holding the same ids) answers :meth:`fetch`; the codes, the ids and the int8
    ranges are all this index keeps."""

    def __init__(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        precision: str,
        *,
        rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER,
        metadata: dict[str, Any] | None = None,
        text_source: VectorIndex | None = None,
        texts: Sequence[str | None] | None = None,
    ):
        check_precisions([precision])
        vectors = np.asarray(vectors, dtype=np.float32)
        self.name = name
        self.precision = precision
        self.rescore_multiplier = check_multiplier(rescore_multiplier) if precision != "float32" else 0
        self.dim = int(vectors.shape[1]) if vectors.ndim == 2 and len(vectors) else 0
        self.ids = np.asarray(list(ids), dtype=object)
        self.ranges = calibrate(vectors) if precision == "int8" else None
        self.codes = quantize(vectors, precision, self.ranges)
        self._id_rank = np.empty(len(self.ids), dtype=np.int64)
        self._id_rank[np.argsort(self.ids.astype(str), kind="stable")] = np.arange(len(self.ids))
        self._metadata = dict(metadata or {})
        self._text_source = text_source
        self._texts = dict(zip(self.ids.tolist(), texts)) if texts is not None else None

    @classmethod
    def from_index(
        cls, index: VectorIndex, precision: str, rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER
    ) -> QuantizedIndex:
        """The codes of every vector ``index`` stores; its texts stay there (fetched on demand)."""
        ids, vectors, _ = index.fetch_all()
        return cls(
            index.name, ids, vectors, precision, rescore_multiplier=rescore_multiplier,
            metadata=index.metadata, text_source=index,
        )  # fmt: skip

    # -- the interface --------------------------------------------------------------------------------
    def count(self) -> int:
        return len(self.ids)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    def vector_dim(self) -> int | None:
        return self.dim or self._metadata.get("dim")

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "precision": self.precision,
            "rescore_multiplier": self.rescore_multiplier,
            "bytes_per_vector": bytes_per_vector(self.precision, self.dim),
        }

    def search(self, vectors: np.ndarray, n: int) -> list[list[tuple[int, float]]]:
        """For each float query (unit rows, shape (q, dim)): the top ``n`` (position, score), exact."""
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim != 2 or (self.dim and q.shape[1] != self.dim):
            raise ValueError(f"queries must have shape (q, {self.dim}), not {q.shape}")
        n = max(0, min(n, len(self.ids)))
        if not n:
            return [[] for _ in q]
        scores = quantized_scores(quantize(q, self.precision, self.ranges), self.codes)
        m = self.rescore_multiplier
        out = []
        for i, row in enumerate(scores):
            if not m:
                top = _top(row, self._id_rank, n)
                out.append([(int(p), float(row[p])) for p in top])
                continue
            cand = _top(row, self._id_rank, min(len(self.ids), m * n))
            exact = dequantize(self.codes.data[cand], self.precision, self.dim, self.ranges) @ q[i].astype(np.float64)
            rescored = np.full(len(self.ids), -np.inf)
            rescored[cand] = exact
            top = _top(rescored, self._id_rank, n, among=cand)
            out.append([(int(p), float(rescored[p])) for p in top])
        return out

    def query(self, vectors: np.ndarray, n: int, *, documents: bool = False) -> list[list[Hit]]:
        found = self.search(vectors, n)
        texts = self.fetch(self.ids[p] for hits in found for p, _ in hits) if documents else {}
        return [
            [Hit(r + 1, str(self.ids[p]), s, texts.get(str(self.ids[p]), "")) for r, (p, s) in enumerate(hits)]
            for hits in found
        ]

    def fetch(self, ids: Iterable[str]) -> dict[str, str]:
        wanted = [str(i) for i in dict.fromkeys(ids)]
        if self._texts is not None:
            return {i: self._texts.get(i) or "" for i in wanted if i in self._texts}
        return self._text_source.fetch(wanted) if self._text_source is not None else {}

    def fetch_all(self) -> tuple[list[str], np.ndarray, list[str | None]]:
        """The ids with the codes each vector stands for (dequantized; float32: the vectors)."""
        vectors = dequantize(self.codes.data, self.precision, self.dim, self.ranges).astype(np.float32)
        texts = self.fetch(self.ids.tolist())
        return [str(i) for i in self.ids], vectors, [texts.get(str(i)) for i in self.ids]
