"""`rag-eval score`: the held-out questions through each collection, beside the exact numbers.

Per model and dim:
- **Chroma**: metrics of the rankings Chroma returns (top 100, ties by ascending id);
- **exact search**: the same metrics over brute-force search of the very vectors Chroma stores, so
  the difference between the two is the approximate search alone; ANN recall@10 compares the two
  rankings directly;
- **evaluator**: sentence-transformers' ``InformationRetrievalEvaluator`` (via the job's
  ``evaluate_model``) on the same data, encoding on its own. Its relevance is binary, so on graded
  qrels its NDCG is not comparable and the agreement is judged against exact search instead;
- disk footprint of the collection, and query latency (single queries and batches) of Chroma alone,
  embedding time excluded;
- the quality x storage frontier (:mod:`rag_eval.frontier`): the stored vectors as float32, int8 and binary
  codes (with and without rescoring), exact search, NDCG@10, bytes per vector and ms per query, and the
  recommendation per model;
- with ``run_dir`` (``--run-file DIR``): TREC run files, one per (model, dim, precision), and the qrels, for
  trec_eval / ir_measures / ranx (:func:`write_run_files`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job.data.prepare import IRData
from job.errors import JobError
from job.evaluate.retrieval import evaluate_model
from rag_eval import frontier, metrics, naming
from rag_eval.index import OURS, VectorIndex, VectorStore
from rag_eval.quantized import QuantizedIndex
from rag_eval.sources import LoadedModel, ModelSpec
from rag_eval.vectors import corpus_fingerprint, encode_queries, truncate_normalise

Echo = Callable[[str], None]
AGREEMENT_TOLERANCE = 0.002  # |NDCG@10 through Chroma - exact| allowed at high ef_search
ANN_RECALL_TARGET = 0.99


@dataclass
class ScoreOptions:
    latency_samples: int = 200  # single queries timed (the questions, cycled)
    batch_queries: int = 32  # queries per batched call
    latency_k: int = 10  # n_results of the timed queries
    measure_disk: bool = True
    batch_size: int = 64  # encoding batch size
    precisions: tuple[str, ...] = ("float32", "int8", "binary")  # the frontier's; () for none
    rescore_multiplier: int = 4  # candidates per result rescored with the float query (0: no rescoring)
    run_dir: Path | None = None  # where TREC run files and the qrels go (`--run-file DIR`); None: none written


# --- TREC run files -------------------------------------------------------------------------------
QRELS_FILE = "qrels.txt"


def _token(text: str) -> str:
    """A TREC column has no whitespace: runs of anything but letters, digits, ``.``, ``_``, ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _check_id(kind: str, value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise JobError(
            f"The {kind} id {value!r} is empty or holds whitespace, which a TREC run or qrels file cannot carry "
            "(its columns are split on whitespace).",
            "rename the ids in the data (BEIR _id / qrels), or leave out --run-file.",
        )
    return value


def write_trec_qrels(path: Path, qrels: Mapping[str, Mapping[str, int]]) -> Path:
    """``qid 0 docid grade`` per judged pair (grade 0 rows too: judged not relevant), as trec_eval reads."""
    lines = [
        f"{_check_id('query', q)} 0 {_check_id('corpus', d)} {int(g)}\n"
        for q, docs in qrels.items()
        for d, g in docs.items()
    ]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_trec_run(path: Path, rankings: Iterable[tuple[str, Sequence[tuple[str, float]]]], tag: str) -> Path:
    """``qid Q0 docid rank score tag``, rank from 1 in our order (score descending, ties by ascending id).
    trec_eval and pytrec_eval re-sort by score and break ties by descending docid; ties are rare with float
    vectors, common with binary codes unrescored (there the rank column, not the score, is our order)."""
    tag = _token(tag)
    with path.open("w", encoding="utf-8") as fh:
        for qid, hits in rankings:
            _check_id("query", qid)
            for rank, (doc, score) in enumerate(hits, 1):
                fh.write(f"{qid} Q0 {_check_id('corpus', doc)} {rank} {float(score)!r} {tag}\n")
    return path


def _ranked(hits: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    return sorted(hits, key=lambda h: (-h[1], h[0]))


def _run_variants(precisions: Sequence[str], rescore_multiplier: int) -> list[tuple[str, int]]:
    """(file name part, rescore multiplier) for each quantized precision the frontier scores."""
    out = []
    for p in precisions:
        if p == "float32":
            continue
        out.append((p, 0))
        if rescore_multiplier:
            out.append((f"{p}-rescored", rescore_multiplier))
    return out


def write_run_files(
    run_dir: Path,
    label: str,
    dim: int,
    qids: Sequence[str],
    queries: np.ndarray,
    ids: Sequence[str],
    vectors: np.ndarray,
    store_hits: Sequence[Sequence[tuple[str, float]]],
    opts: ScoreOptions,
    store_kind: str = "chroma",
) -> dict[str, str]:
    """One run per precision at (model, dim): the store's own (named by its kind: ``chroma``, ``exact``; what
    the store returned), ``float32`` (exact search
    over the stored vectors) and each quantized variant of the frontier (``int8``, ``int8-rescored``,
    ``binary``, ``binary-rescored``), each to depth 100. Returns {precision: file name}."""
    depth = min(metrics.DEPTH, len(ids))
    stem = f"{_token(label)}_dim{dim}"
    written: dict[str, str] = {}

    def emit(precision: str, rankings) -> None:
        path = run_dir / f"{stem}_{precision}.run"
        write_trec_run(path, zip(qids, rankings, strict=True), f"{label}-dim{dim}-{precision}")
        written[precision] = path.name

    emit(store_kind, [_ranked(h) for h in store_hits])
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T
    position = {cid: i for i, cid in enumerate(ids)}
    exact = metrics.exact_search(queries, vectors, ids, depth)
    emit("float32", [[(c, float(row[position[c]])) for c in ranked] for row, ranked in zip(scores, exact)])
    for name, multiplier in _run_variants(opts.precisions, opts.rescore_multiplier):
        index = QuantizedIndex(
            f"{label}-d{dim}-{name}", ids, vectors, name.split("-")[0], rescore_multiplier=multiplier
        )
        emit(name, [[(ids[p], s) for p, s in hits] for hits in index.search(queries, depth)])
    return written


def check_indexed(vector_store: VectorStore, specs: list[ModelSpec], dims: list[int], prefix: str) -> None:
    """Every (model, dim) has a collection; checked before any model is loaded. The error lists what is indexed."""
    names = set(vector_store.names())
    for spec in specs:
        missing = [d for d in dims if naming.collection_name(prefix, spec.key, d) not in names]
        if not missing:
            continue
        who = f"the {spec.label} model {spec.ref}"
        indexed = naming.dims_in_store(vector_store, prefix, spec.key)
        if indexed:
            listed = ", ".join(map(str, indexed))
            raise JobError(
                f"{'Dim' if len(missing) == 1 else 'Dims'} {', '.join(map(str, missing))} "
                f"{'is' if len(missing) == 1 else 'are'} "
                f"not indexed for {who} in the {vector_store.describe()}; indexed dims: {listed}.",
                f"pick from {listed}, or index it first (`rag-eval index ... --dims {','.join(map(str, missing))}`).",
            )
        name = spec.key.split("@", 1)[0] if "@" in spec.key else None
        if name and any(n.startswith(f"{prefix}-{naming.slug(name)}-") for n in names):
            raise JobError(
                f"The collections for a model named '{name}' in the {vector_store.describe()} were indexed from other "
                f"weights than {who} holds now (re-trained or replaced since).",
                "re-run `rag-eval index` for this model (the old collections are replaced).",
            )
        raise JobError(
            f"Nothing is indexed for {who} in the {vector_store.describe()}.",
            "run `rag-eval index` first, with the same --model and store options "
            "(--store, --store-path, --chroma-path or --chroma-host/--chroma-port).",
        )


def open_collection(
    vector_store: VectorStore, model: LoadedModel, dim: int, prefix: str, corpus_fp: str | None = None
) -> VectorIndex:
    """The index for (model, dim), checked against the model (and the corpus, when given)."""
    name = naming.collection_name(prefix, model.spec.key, dim)
    col = vector_store.open(name)
    who = f"the {model.label} model {model.spec.ref}"
    if col is None:
        check_indexed(vector_store, [model.spec], [dim], prefix)
        raise JobError(
            f"Collection {name} vanished from the {vector_store.describe()} while it was being opened.",
            "run the command again.",
        )
    kind, problems = col.check(dim)
    if kind != OURS:
        raise JobError(
            f"Collection {name} in the {vector_store.describe()} is {kind}: {'; '.join(problems)}.",
            "re-index it with `rag-eval index ... --force` (that replaces it).",
        )
    meta = col.metadata
    if meta["model_dim"] != model.dim:
        raise JobError(
            f"{who.capitalize()} makes {model.dim}-dim embeddings, but collection {name} was indexed from a "
            f"{meta['model_dim']}-dim model ({meta['model']}).",
            "query with the model the collection was built from, or re-index with this one (`rag-eval index`).",
        )
    if meta["model_fingerprint"] != model.fingerprint:
        raise JobError(
            f"Collection {name} was indexed from other weights than {model.spec.ref} holds now "
            "(re-trained or replaced since).",
            "re-run `rag-eval index` for this model.",
        )
    if meta["passage_prompt"] != (model.spec.passage_prompt or ""):
        raise JobError(
            f"Collection {name} was indexed with passage prompt {meta['passage_prompt']!r}, "
            f"not {model.spec.passage_prompt or ''!r}.",
            "use the same --passage-prompt as at indexing, or re-index.",
        )
    if corpus_fp is not None and meta["corpus_fingerprint"] != corpus_fp:
        raise JobError(
            f"Collection {name} holds another corpus "
            f"({meta['corpus_size']} passages from {meta.get('data_source', '?')}) "
            "than the evaluation data given now.",
            "score with the data it was indexed from, or re-run `rag-eval index` with this --data.",
        )
    return col


def query_rankings(
    index: VectorIndex, queries: np.ndarray, n_results: int, batch: int = 256
) -> list[list[tuple[str, float]]]:
    """(id, cosine similarity) lists, in the index's order."""
    out = []
    for s in range(0, len(queries), batch):
        out += [[(h.id, h.score) for h in hits] for hits in index.query(queries[s : s + batch], n_results)]
    return out


def measure_latency(index: VectorIndex, queries: np.ndarray, opts: ScoreOptions) -> dict[str, Any]:
    """Wall time of the index's query call, in ms: single questions, and batches of ``batch_queries``
    (with the documents: what an application asks for)."""
    k = opts.latency_k
    index.query(queries[:1], k, documents=True)  # warm-up
    single = []
    for i in range(opts.latency_samples):
        t = time.perf_counter()
        index.query(queries[i % len(queries)][None, :], k, documents=True)
        single.append((time.perf_counter() - t) * 1000)
    batched = []
    n_batches = max(20, opts.latency_samples // opts.batch_queries)  # enough batches for a p95
    for b in range(n_batches):
        idx = [(b * opts.batch_queries + j) % len(queries) for j in range(opts.batch_queries)]
        t = time.perf_counter()
        index.query(queries[idx], k, documents=True)
        batched.append((time.perf_counter() - t) * 1000)
    return {
        "single_p50_ms": metrics.percentile(single, 50),
        "single_p95_ms": metrics.percentile(single, 95),
        "batch_p50_ms": metrics.percentile(batched, 50),
        "batch_p95_ms": metrics.percentile(batched, 95),
        "batch_size": opts.batch_queries,
        "single_samples": len(single),
        "batches": len(batched),
        "n_results": k,
    }


def score_models(
    vector_store: VectorStore,
    models: list[LoadedModel],
    data: IRData,
    dims: list[int],
    *,
    prefix: str = naming.DEFAULT_PREFIX,
    opts: ScoreOptions | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Every (model, dim): the store's search vs exact search vs the evaluator, size and latency. JSON-ready.
    Each dim's row holds the store's metrics under ``store`` (``chroma`` in reports before 2026-12-07) and how
    it searched under ``store_settings`` (Chroma: its HNSW parameters; was ``hnsw``)."""
    opts = opts or ScoreOptions()
    fp = corpus_fingerprint(data.corpus)
    qrels = {q: g for q, g in data.qrels.items() if any(v > 0 for v in g.values())}
    qids = list(qrels)
    qtexts = [data.queries[q] for q in qids]
    reference = "exact" if data.graded else "evaluator"
    # open (and check) every collection before any expensive step
    cols = {(m.label, d): open_collection(vector_store, m, d, prefix, fp) for m in models for d in dims}
    runs: dict[str, Any] | None = None
    if opts.run_dir is not None:
        opts.run_dir.mkdir(parents=True, exist_ok=True)
        write_trec_qrels(opts.run_dir / QRELS_FILE, data.qrels)
        runs = {"dir": str(opts.run_dir), "qrels": QRELS_FILE, "runs": {}}
    out: dict[str, Any] = {}
    for m in models:
        start = time.perf_counter()
        evaluator = evaluate_model(
            m.model, data, dims, "exact", batch_size=opts.batch_size,
            query_prompt=m.spec.query_prompt, passage_prompt=m.spec.passage_prompt,
        )  # fmt: skip
        full_q = encode_queries(m.model, qtexts, m.spec.query_prompt, opts.batch_size)
        echo(
            f"score: {m.label}: exact evaluator at {len(dims)} dims and query encoding "
            f"in {time.perf_counter() - start:.1f} s"
        )
        per_dim: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        for dim in dims:
            col = cols[(m.label, dim)]
            settings = col.search_settings()
            q = truncate_normalise(full_q, dim)
            ids, vectors, documents = col.fetch_all()
            depth = min(metrics.DEPTH, len(ids))
            store_hits = query_rankings(col, q, depth)
            store_rank = [metrics.rank_hits(hits) for hits in store_hits]
            exact_rank = metrics.exact_search(q, vectors, ids, depth)
            through = metrics.score_rankings(dict(zip(qids, store_rank)), qrels)
            exact = metrics.score_rankings(dict(zip(qids, exact_rank)), qrels)
            ev = {k: evaluator[dim][k] for k in metrics.REPORTED}
            ref = ev if reference == "evaluator" else exact
            disk = vector_store.footprint_bytes(col, ids, vectors, documents) if opts.measure_disk else None
            row: dict[str, Any] = {
                "collection": col.name,
                "vectors": len(ids),
                "store_settings": settings,
                "store": through,
                "exact": exact,
                "evaluator": ev,
                "ndcg_delta": through["ndcg@10"] - ref["ndcg@10"],
                "ann_recall@10": metrics.mean_overlap_at_k(store_rank, exact_rank, 10),
                "disk_bytes": disk,
                "bytes_per_vector": disk / len(ids) if disk is not None and ids else None,
                "latency": measure_latency(col, q, opts),
            }
            per_dim[str(dim)] = row
            if runs is not None and opts.run_dir is not None:
                runs["runs"].setdefault(m.label, {})[str(dim)] = write_run_files(
                    opts.run_dir, m.label, dim, qids, q, ids, vectors, store_hits, opts, vector_store.kind
                )
            if opts.precisions:
                rows += frontier.frontier_rows(
                    m.label, dim, ids, vectors, q, qids, qrels, opts.precisions, opts.rescore_multiplier,
                    timed_queries=opts.latency_samples,
                )  # fmt: skip
            echo(
                f"score: {m.label} dim {dim}: NDCG@10 {through['ndcg@10']:.4f} through {vector_store.label}, "
                f"{ref['ndcg@10']:.4f} exact; "
                f"ANN recall@10 {row['ann_recall@10']:.3f}; {row['latency']['single_p50_ms']:.2f} ms per query (p50)"
            )
        out[m.label] = {"model": m.spec.ref, "fingerprint": m.fingerprint, "model_dim": m.dim, "dims": per_dim}
        if rows:
            out[m.label]["frontier"] = rows
            out[m.label]["recommendation"] = frontier.recommend(rows, m.dim)
            echo(f"score: {frontier.recommendation_line(out[m.label]['recommendation'])}")
    deltas = [abs(r["ndcg_delta"]) for v in out.values() for r in v["dims"].values()]
    recalls = [r["ann_recall@10"] for v in out.values() for r in v["dims"].values()]
    return {
        "store": vector_store.describe(),
        "store_kind": vector_store.kind,
        "store_label": vector_store.label,
        "store_search": vector_store.search_name,
        "store_disk": vector_store.disk_note,
        "data": {
            "queries": len(qids),
            "corpus_size": len(data.corpus),
            "graded": data.graded,
            "corpus_fingerprint": fp,
        },
        "dims": dims,
        "precisions": list(opts.precisions),
        "rescore_multiplier": opts.rescore_multiplier,
        "reference": reference,
        "models": out,
        **({"run_files": runs} if runs is not None else {}),
        "agreement": {
            "max_abs_ndcg_delta": max(deltas),
            "tolerance": AGREEMENT_TOLERANCE,
            "ok": max(deltas) <= AGREEMENT_TOLERANCE,
            "min_ann_recall@10": min(recalls),
            "ann_recall_target": ANN_RECALL_TARGET,
        },
    }
