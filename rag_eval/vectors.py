"""Embedding for the vector store: encode once at full dimension, then truncate and re-normalise.

A Matryoshka prefix of a unit vector is not a unit vector. Cosine search in Chroma normalises
anyway, but inner-product search and any exact comparison need unit vectors, and the stored
vectors are what users will reuse; so every stored and query vector is re-normalised after
truncation. The encoders are the ones the job's evaluator uses (``encode_query`` and
``encode_document`` with the run's prompts), so the vectors match the exact numbers'.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from job.config import fingerprint_digest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")
EXPORT_DIRS = ("onnx", "openvino")  # exports of the weights (`job export`): the index is made from the weights


def truncate_normalise(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` components of each row, scaled to unit length (a zero row stays zero)."""
    v = np.asarray(vectors, dtype=np.float32)[:, :dim]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12), dtype=np.float32)


def _encode(fn, texts: Sequence[str], prompt: str | None, batch_size: int, progress: bool) -> np.ndarray:
    emb = fn(list(texts), prompt=prompt, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float32)


def encode_passages(
    model, texts: Sequence[str], prompt: str | None = None, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    return _encode(model.encode_document, texts, prompt, batch_size, progress)


def encode_queries(
    model, texts: Sequence[str], prompt: str | None = None, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    return _encode(model.encode_query, texts, prompt, batch_size, progress)


def corpus_fingerprint(corpus: dict[str, str]) -> str:
    """16 hex digits over every (id, text): any change of a passage or an id changes it."""
    return fingerprint_digest({"corpus": sorted(corpus.items())})


def model_fingerprint(name_or_path: str) -> str:
    """16 hex digits over a local model's weight files (content, not dates), or the Hub id itself.

    Recorded in each collection, so that querying an index built from older weights at the same
    path (a re-trained run directory) is refused instead of silently mixing vector spaces."""
    path = Path(name_or_path)
    if not path.is_dir():
        return fingerprint_digest({"hub_id": name_or_path})
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.relative_to(path).parts[0] not in EXPORT_DIRS
    )
    for p in files:
        digest.update(str(p.relative_to(path)).encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    if not files:  # no weights we recognise: fall back to the model's config files
        for p in sorted(path.glob("*.json")):
            digest.update(p.name.encode() + p.read_bytes())
    return digest.hexdigest()[:16]
