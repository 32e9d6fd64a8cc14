"""Retrieval evaluation at every Matryoshka dim.

One sentence-transformers ``InformationRetrievalEvaluator`` per dim, run through a
``SequentialEvaluator``. The per-dim evaluators share one embedding cache: queries and corpus are
encoded once at full dimension per evaluation call and each dim slices the cached vectors, which
is exactly what ``encode(..., truncate_dim=d)`` returns. Cost: one corpus encoding, not one per dim.

Relevance. The evaluator's metrics are binary: a passage is relevant or not, and NDCG's gain is 1 for every
relevant passage. On graded qrels (a BEIR folder whose scores go above 1, e.g. TREC-DL's 0-3) a passage
counts as relevant from ``relevance_threshold`` (default 1: every grade > 0; TREC-DL counts from 2), and
``graded_ndcg@10`` is reported beside the evaluator's ``ndcg@10``: linear gains (the grade), over the same
ranking and the same queries, as trec_eval / pytrec_eval (BEIR) and ``rag-eval score`` compute it. Binary
qrels (grades 0/1) give no graded column (it would equal ``ndcg@10``) and ignore the threshold. Model
selection keeps the evaluator's binary NDCG@10 on the validation split.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, SequentialEvaluator

from job.data.prepare import IRData
from job.errors import JobError

VALIDATION = "validation"  # the evaluator name of the validation split (model selection)

# Metrics we report, in order, as (label, evaluator key suffix).
REPORTED_METRICS = [
    ("ndcg@10", "ndcg@10"),
    ("graded_ndcg@10", "graded_ndcg@10"),  # graded qrels only: linear gains, as trec_eval
    ("mrr@10", "mrr@10"),
    ("map@100", "map@100"),
    *[(f"accuracy@{k}", f"accuracy@{k}") for k in (1, 3, 5, 10)],
    *[(f"recall@{k}", f"recall@{k}") for k in (1, 3, 5, 10)],
    *[(f"precision@{k}", f"precision@{k}") for k in (1, 3, 5, 10)],
]


class _EmbeddingCache:
    """Full-dim embeddings of one evaluation call, keyed by what was encoded and how."""

    def __init__(self) -> None:
        self._store: dict[Any, Any] = {}
        self.encodes = 0  # how many encode calls were really made (tests check the saving)

    def clear(self) -> None:
        self._store.clear()

    def get(self, key, compute):
        if key not in self._store:
            self.encodes += 1
            self._store[key] = compute()
        return self._store[key]


def graded_ndcg_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    """NDCG@k with linear gains (gain = the grade, DCG = sum of gain / log2(rank + 1)), IDCG from the best
    min(#graded > 0, k) grades: trec_eval's ndcg_cut / pytrec_eval's, and ``rag_eval.metrics.ndcg_at_k``."""
    dcg = sum(grades.get(cid, 0) / math.log2(i + 2) for i, cid in enumerate(ranked[:k]) if grades.get(cid, 0) > 0)
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


class SharedEncodingIREvaluator(InformationRetrievalEvaluator):
    """An ``InformationRetrievalEvaluator`` at one truncated dim that reuses its siblings' encodings; given
    ``grades`` (graded qrels) it adds ``graded_ndcg@k`` over the same rankings."""

    @property
    def description(self) -> str:  # the model card's task name: what it measures, not our class name
        return "Information Retrieval"

    def __init__(self, *args, cache: _EmbeddingCache, grades: Mapping[str, Mapping[str, int]] | None = None, **kwargs):
        self._progress = kwargs.pop("show_progress_bar", False)  # one bar: the corpus encoding, nothing nested
        super().__init__(*args, show_progress_bar=False, **kwargs)  # type: ignore[misc]  # (popped just above)
        self._cache = cache
        self._grades = grades

    def compute_metrics(self, queries_result_list):
        scores = super().compute_metrics(queries_result_list)
        if self._grades:
            graded: dict[int, list[float]] = {k: [] for k in self.ndcg_at_k}
            for query_id, hits in zip(self.queries_ids, queries_result_list, strict=True):
                ranked = [h["corpus_id"] for h in sorted(hits, key=lambda h: (-h["score"], h["corpus_id"]))]
                for k in self.ndcg_at_k:
                    graded[k].append(graded_ndcg_at_k(ranked, self._grades[query_id], k))
            scores["graded_ndcg@k"] = {k: float(sum(v) / len(v)) for k, v in graded.items()}
        return scores

    def embed_inputs(self, model, sentences, encode_fn_name=None, prompt_name=None, prompt=None, **kwargs):
        key = (encode_fn_name, prompt_name, prompt, tuple(sentences), tuple(sorted(kwargs.items())))

        def encode():
            fn = {"query": model.encode_query, "document": model.encode_document}.get(encode_fn_name, model.encode)
            return fn(
                sentences,
                prompt_name=prompt_name,
                prompt=prompt,
                batch_size=self.batch_size,
                show_progress_bar=self._progress and encode_fn_name == "document",
                convert_to_tensor=True,
                **kwargs,
            )

        full = self._cache.get(key, encode)
        return full if self.truncate_dim is None else full[..., : self.truncate_dim]


class MatryoshkaEvaluator(SequentialEvaluator):
    """IR evaluation at each dim; clears the shared cache so every call sees the current weights."""

    def __init__(self, evaluators, cache: _EmbeddingCache, dims: list[int], name: str) -> None:
        super().__init__(evaluators)
        self.cache = cache
        self.dims = dims
        self.name = name

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1):
        self.cache.clear()
        try:
            return super().__call__(model, output_path, epoch, steps)
        finally:
            self.cache.clear()


def dim_name(name: str, dim: int) -> str:
    return f"{name}_dim{dim}"


def build_evaluator(
    data: IRData,
    dims: list[int],
    name: str,
    *,
    batch_size: int = 64,
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
    show_progress_bar: bool = False,
    relevance_threshold: int = 1,
) -> MatryoshkaEvaluator:
    cache = _EmbeddingCache()
    threshold = relevance_threshold if data.graded else 1  # binary qrels: grade 1 is relevant, whatever the flag
    relevant = data.relevant_docs(threshold)
    if not relevant:
        top = max((g for docs in data.qrels.values() for g in docs.values()), default=0)
        raise JobError(
            f"No {name} query has a passage graded {threshold} or more (the highest grade is {top}), so nothing "
            "counts as relevant.",
            f"lower --relevance-threshold (at most {top}).",
        )
    queries = {q: data.queries[q] for q in relevant}
    grades = {q: data.qrels[q] for q in relevant} if data.graded else None
    evaluators = [
        SharedEncodingIREvaluator(
            queries=queries,
            corpus=data.corpus,
            relevant_docs=relevant,
            name=dim_name(name, dim),
            truncate_dim=dim,
            batch_size=batch_size,
            query_prompt=query_prompt,
            corpus_prompt=passage_prompt,
            show_progress_bar=show_progress_bar and i == 0,  # only the first dim encodes; the rest slice
            write_csv=False,
            cache=cache,
            grades=grades,
        )
        for i, dim in enumerate(dims)
    ]
    return MatryoshkaEvaluator(evaluators, cache, dims, name)


_KEY = re.compile(r"^(?:eval_)?(?P<name>.+)_dim(?P<dim>\d+)_(?P<fn>[a-z_]+?)_(?P<metric>(?:graded_)?[a-z]+@\d+)$")


def metric_key(name: str, dim: int, similarity_fn: str, metric: str = "ndcg@10") -> str:
    return f"{dim_name(name, dim)}_{similarity_fn}_{metric}"


def per_dim_metrics(raw: dict[str, float], name: str) -> dict[int, dict[str, float]]:
    """``{"test_dim384_cosine_ndcg@10": 0.8, ...}`` -> ``{384: {"ndcg@10": 0.8, ...}}`` (reported metrics only)."""
    wanted = {suffix for _, suffix in REPORTED_METRICS}
    out: dict[int, dict[str, float]] = {}
    for key, value in raw.items():
        m = _KEY.match(key)
        if m and m["name"] == name and m["metric"] in wanted:
            out.setdefault(int(m["dim"]), {})[m["metric"]] = float(value)
    return {
        dim: {label: out[dim][suffix] for label, suffix in REPORTED_METRICS if suffix in out[dim]}
        for dim in sorted(out, reverse=True)
    }


def evaluation_options(cfg) -> dict[str, Any]:
    """The evaluator settings a JobConfig fixes: encoding batch size, the prompts, the relevance threshold."""
    return {
        "batch_size": cfg.eval_batch_size,
        "query_prompt": cfg.query_prompt,
        "passage_prompt": cfg.passage_prompt,
        "relevance_threshold": getattr(cfg, "relevance_threshold", 1),
    }


def evaluate_model(model, data: IRData, dims: list[int], name: str, **kwargs) -> dict[int, dict[str, float]]:
    """Score ``model`` on ``data`` at every dim: ``{dim: {"ndcg@10": ..., "mrr@10": ..., ...}}``."""
    evaluator = build_evaluator(data, dims, name, **kwargs)
    return per_dim_metrics(evaluator(model), name)
