"""`rag-eval index`: embed the corpus once per model, write one collection per dim.

Every write goes through :func:`write_vectors` (also bench/chroma_scale.py's way in): batched, resumable
(a killed run continues where it stopped: see :meth:`rag_eval.index.VectorStore.write`), and an index that
is already complete with the same model, corpus, dim and settings is kept as it is."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from job.data.prepare import IRData
from job.errors import JobError
from rag_eval import naming
from rag_eval.index import VectorStore, WriteResult
from rag_eval.sources import LoadedModel
from rag_eval.vectors import corpus_fingerprint, encode_passages, truncate_normalise

Echo = Callable[[str], None]


def check_dims(dims: list[int], model: LoadedModel) -> list[int]:
    """Dims largest first; each must fit the model's embedding dimension."""
    if not dims or any(d < 1 for d in dims):
        raise JobError(f"Dims {dims} must be positive integers.", "pass e.g. --dims 384,256,128,64,32.")
    too_big = [d for d in dims if d > model.dim]
    if too_big:
        raise JobError(
            f"Dims {too_big} are larger than the embedding dimension of {model.label} model {model.spec.ref} "
            f"({model.dim}).",
            f"use dims of at most {model.dim}.",
        )
    return sorted(set(dims), reverse=True)


@dataclass
class IndexedCollection:
    label: str
    dim: int
    name: str
    action: str
    note: str
    vectors: int
    seconds: float
    resumed: int = 0


def write_vectors(
    vector_store: VectorStore,
    name: str,
    ids: list[str],
    vectors,
    texts: list[str] | None,
    meta: dict,
    settings: Any,  # the store's index parameters (Chroma: HnswSettings; the exact store: none)
    *,
    force: bool = False,
    write_batch: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> WriteResult:
    """One index of (truncated, re-normalised) vectors, through the store's resumable batched write."""
    with vector_store.errors():
        return vector_store.write(
            name, ids, vectors, texts, meta, settings, force=force, progress=progress, batch_size=write_batch
        )


def index_models(
    vector_store: VectorStore,
    models: list[LoadedModel],
    data: IRData,
    data_source: str,
    dims: list[int],
    settings: Any,  # the store's index parameters (Chroma: HnswSettings; the exact store: none)
    *,
    prefix: str = naming.DEFAULT_PREFIX,
    force: bool = False,
    batch_size: int = 64,
    progress: bool = False,
    write_batch: int | None = None,
    echo: Echo = print,
) -> list[IndexedCollection]:
    """For each model: encode the corpus at full dim once; per dim truncate, re-normalise, write."""
    if settings is not None:
        settings.check()
    naming.check_prefix(prefix)
    for m in models:  # check every model before any expensive step
        check_dims(dims, m)
    ids = list(data.corpus)
    texts = [data.corpus[i] for i in ids]
    fingerprint = corpus_fingerprint(data.corpus)
    done = []
    for m in models:
        metas = {
            dim: naming.build_metadata(
                model=m.spec.ref,
                model_key=m.spec.key,
                model_fingerprint=m.fingerprint,
                model_dim=m.dim,
                dim=dim,
                corpus_fingerprint=fingerprint,
                corpus_size=len(ids),
                data_source=data_source,
                settings=settings,
                query_prompt=m.spec.query_prompt,
                passage_prompt=m.spec.passage_prompt,
                model_name=m.spec.name,
                query_prompt_used=prompt_used(m.model, m.spec.query_prompt, QUERY_PROMPT_NAMES),
                passage_prompt_used=prompt_used(m.model, m.spec.passage_prompt, PASSAGE_PROMPT_NAMES),
            )  # fmt: skip
            for dim in check_dims(dims, m)
        }
        names = {dim: naming.collection_name(prefix, m.spec.key, dim) for dim in metas}
        if not force and all(is_complete(vector_store, names[d], metas[d]) for d in metas):
            for dim in metas:  # a rerun after a kill: the finished model is not even encoded again
                done.append(IndexedCollection(m.label, dim, names[dim], "kept", "unchanged", len(ids), 0.0))
                echo(f"index: {m.label} dim {dim}: kept {names[dim]} (unchanged: already complete)")
            continue
        start = time.perf_counter()
        full = encode_passages(m.model, texts, m.spec.passage_prompt, batch_size, progress)
        echo(
            f"index: {m.label} corpus of {len(ids)} passages encoded once at {m.dim} dims "
            f"in {time.perf_counter() - start:.1f} s"
        )
        for dim, meta in metas.items():
            name = names[dim]
            result = write_vectors(
                vector_store, name, ids, truncate_normalise(full, dim), texts, meta, settings, force=force,
                write_batch=write_batch,
            )  # fmt: skip
            done.append(
                IndexedCollection(
                    m.label, dim, name, result.action, result.note, len(ids), result.seconds, result.resumed
                )
            )
            notes = [result.note] if result.note else []
            if result.reclaimed_bytes:
                notes.append(f"reclaimed {result.reclaimed_bytes / 2**20:.2f} MiB of replaced collections")
            note = f" ({'; '.join(notes)})" if notes else ""
            echo(
                f"index: {m.label} dim {dim}: {result.action} {name}, "
                f"{len(ids)} vectors in {result.seconds:.1f} s{note}"
            )
    return done


def is_complete(vector_store: VectorStore, name: str, meta: dict) -> bool:
    """Is ``name`` already whole, written with exactly this metadata (the same write key)? A complete one gets
    its descriptive metadata (model name, prompts used, precision, usage) brought up to date."""
    with vector_store.errors():
        index = vector_store.open(name)
        complete = (
            index is not None
            and index.metadata.get(naming.WRITE_KEY) == naming.write_key(meta)
            and index.count() == meta["corpus_size"]
        )
        if complete and index is not None:
            index.refresh_description(meta)
        return complete


# sentence-transformers' own order: encode_query takes the model's "query" prompt, encode_document the first of
# "document", "passage", "corpus" it has (sentence_transformer/model.py)
QUERY_PROMPT_NAMES = ("query",)
PASSAGE_PROMPT_NAMES = ("document", "passage", "corpus")


def prompt_used(model, explicit: str | None, names: tuple[str, ...]) -> str:
    """The prompt ``encode_query``/``encode_document`` applies: ``explicit`` when given (``""``: none), else the
    model's own saved prompt of the first of ``names`` it has, else its default prompt, else none. Recorded in
    each collection so that plain sentence-transformers code embeds questions the same way."""
    if explicit is not None:
        return explicit
    prompts = getattr(model, "prompts", None) or {}
    for name in names:
        if name in prompts:
            return prompts[name] or ""
    default = getattr(model, "default_prompt_name", None)
    return (prompts.get(default) or "") if default else ""
