"""Retrieval evaluation at every Matryoshka dim.

One sentence-transformers ``InformationRetrievalEvaluator`` per dim, run through a
``SequentialEvaluator``. The per-dim evaluators share one embedding cache: queries and corpus are
encoded once at full dimension per evaluation call and each dim slices the cached vectors, which
is exactly what ``encode(..., truncate_dim=d)`` returns. Cost: one corpus encoding, not one per dim.
"""

from __future__ import annotations

import re
from typing import Any

from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, SequentialEvaluator

from job.data import IRData

VALIDATION = "validation"  # the evaluator name of the validation split (model selection)

# Metrics we report, in order, as (label, evaluator key suffix).
REPORTED_METRICS = [
    ("ndcg@10", "ndcg@10"),
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


class SharedEncodingIREvaluator(InformationRetrievalEvaluator):
    """An ``InformationRetrievalEvaluator`` at one truncated dim that reuses its siblings' encodings."""

    @property
    def description(self) -> str:  # the model card's task name: what it measures, not our class name
        return "Information Retrieval"

    def __init__(self, *args, cache: _EmbeddingCache, **kwargs) -> None:
        self._progress = kwargs.pop("show_progress_bar", False)  # one bar: the corpus encoding, nothing nested
        super().__init__(*args, show_progress_bar=False, **kwargs)
        self._cache = cache

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
) -> MatryoshkaEvaluator:
    cache = _EmbeddingCache()
    relevant = data.relevant_docs()
    queries = {q: data.queries[q] for q in relevant}
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
        )
        for i, dim in enumerate(dims)
    ]
    return MatryoshkaEvaluator(evaluators, cache, dims, name)


_KEY = re.compile(r"^(?:eval_)?(?P<name>.+)_dim(?P<dim>\d+)_(?P<fn>[a-z_]+?)_(?P<metric>[a-z]+@\d+)$")


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
    """The evaluator settings a JobConfig fixes: encoding batch size and the prompts."""
    return {"batch_size": cfg.eval_batch_size, "query_prompt": cfg.query_prompt, "passage_prompt": cfg.passage_prompt}


def evaluate_model(model, data: IRData, dims: list[int], name: str, **kwargs) -> dict[int, dict[str, float]]:
    """Score ``model`` on ``data`` at every dim: ``{dim: {"ndcg@10": ..., "mrr@10": ..., ...}}``."""
    evaluator = build_evaluator(data, dims, name, **kwargs)
    return per_dim_metrics(evaluator(model), name)
