"""`rag-eval serve`'s retrieval service: the models loaded once, one index per (model, dim), and the search.

- :class:`RetrievalService` resolves the store, loads the models ONCE and opens one index per
  (model, dim); every start-up problem is a :class:`JobError` (no index, damaged store, a dim that
  is not indexed, another corpus than the evaluation data's).
- :meth:`RetrievalService.search` answers one question at one dim: each model's top k (baseline and
  fine-tuned side by side), how the fine-tuned model moved each passage, the relevant passages of a
  held-out question, and the time spent embedding and in the vector store. Bad input (empty, too
  long, a dim that is not indexed, a k out of range) is a :class:`JobError` whose message the page
  and the JSON API show.

Concurrency (:mod:`rag_eval.batching`): batch threads, each taking every request waiting for it. One encode
stage per model (the models side by side, neither waiting for the other): the batch's questions through the
model in one call, as length-sorted chunks of ENCODE_CHUNK. A request whose vectors are all there goes on to
the search stage: each (dim, model) collection queried once for the whole batch, then the missing passage texts
in one call; a batch wakes each waiting event loop once. While the search stage serves one batch, the encoders
already run the next. What the page shows beside the answers (the run's title, held-out questions, reports) is
:mod:`rag_eval.page_data`; the page's HTML is :mod:`rag_eval.page`; the HTTP layer is :mod:`rag_eval.web`.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from job.errors import JobError
from rag_eval import stores
from rag_eval.batching import LRU, Reply, Stage, name_os_thread, settle
from rag_eval.index import VectorStore
from rag_eval.naming import DEFAULT_PREFIX, dims_in_store
from rag_eval.page_data import PageData
from rag_eval.quantized import DEFAULT_RESCORE_MULTIPLIER, QuantizedIndex, bytes_per_vector
from rag_eval.searcher import RANK_DEPTH, Searcher
from rag_eval.sources import LoadedModel, Sources
from rag_eval.store_access import StoreTarget
from rag_eval.vectors import corpus_fingerprint, encode_queries, truncate_normalise

Echo = Callable[[str], None]
MAX_QUESTION_CHARS = 2000  # far beyond what the models read (MiniLM: 256 tokens); refuses pasted documents
MAX_K = 50  # at most RANK_DEPTH: every ranking is searched RANK_DEPTH deep
EMBED_CACHE = 2048  # question vectors kept per model: switching dims or k re-uses them
DOC_CACHE = 50_000  # passage texts kept
ENCODE_BATCH = 64  # the encode stage's largest batch (requests per pass through the encoders)
# The encoders run a batch as length-sorted chunks of this many questions: a chunk pads only to its own longest
# question (on the 2-core machine measured, 64 questions in chunks of 8 encoded 20-65 % faster than in one call;
# BENCHMARKS.md, `rag-eval serve` at the encoders' ceiling).
ENCODE_CHUNK = 8
SEARCH_BATCH = 256  # the search stage's largest batch (requests per pass over the collections)


# --- answers -------------------------------------------------------------------------------------
@dataclass
class Row:
    rank: int
    id: str
    score: float
    text: str
    relevant: bool
    other_rank: int | None = None  # the passage's rank in the other model's list (None: below the searched depth)


@dataclass
class Column:
    label: str
    model: str
    rows: list[Row]
    relevant_rank: int | None  # best rank of a relevant passage within the searched depth
    embed_ms: float  # until this model's vector was there (the models encode in parallel)
    store_ms: float  # until this model's ranking was there (the collections are searched in parallel)
    cached: bool = False  # the question's vector came from the cache


@dataclass
class Answer:
    question: str
    dim: int
    k: int
    depth: int  # how deep each ranking was searched (for the other model's rank and the relevant passage)
    columns: list[Column]  # baseline first, then fine-tuned (or one model)
    relevant: list[str]  # ids of the relevant passages when the question is a held-out one
    terms: list[str]  # the question's words that are highlighted in the passages
    embed_ms: float  # wall time for both vectors
    store_ms: float  # wall time for both rankings and the passages' texts
    total_ms: float

    @property
    def compared(self) -> bool:
        return len(self.columns) == 2

    def to_dict(self) -> dict[str, Any]:
        """What ``dataclasses.asdict`` gives, without its recursive deep copies (the JSON API's every answer)."""
        out = dict(self.__dict__)
        out["columns"] = [{**c.__dict__, "rows": [dict(r.__dict__) for r in c.rows]} for c in self.columns]
        return out


def encode_questions(m: LoadedModel, questions: list[str]) -> np.ndarray:
    """A batch of questions through one model as the encode stage runs it (and `bench/serve_load.py`'s ceiling
    measures it): the model's query prompt, length-sorted chunks of ENCODE_CHUNK; full-dim vectors in order."""
    return encode_queries(m.model, questions, m.spec.query_prompt, ENCODE_CHUNK)


class _Pending:
    """One request on its way through the stages: its vectors, rankings and texts, and when each was there."""

    __slots__ = ("question", "k", "dim", "reply", "start", "vectors", "encoded_at", "from_cache", "rankings",
                 "ranked_at", "texts", "done_at", "failed")  # fmt: skip

    def __init__(self, question: str, k: int, dim: int, reply: Reply, start: float):
        self.question, self.k, self.dim, self.reply, self.start = question, k, dim, reply, start
        self.vectors: dict[str, np.ndarray] = {}
        self.encoded_at: dict[str, float] = {}
        self.from_cache: set[str] = set()
        self.rankings: dict[str, list] = {}
        self.ranked_at: dict[str, float] = {}
        self.texts: dict[str, str] = {}
        self.done_at = 0.0
        self.failed = False

    def cached(self, label: str) -> bool:
        return label in self.from_cache


def whole_number(value: Any) -> int | None:
    """An int from an int, an integral float (the page's slider sends 5.0) or a string of digits (a URL's query
    string); None for anything else: 2.5, true, 1e309, lists, objects. Never truncated or rounded."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,9}\s*", value):
        return int(value)
    return None


def move(tuned_rank: int | None, base_rank: int | None) -> int | None:
    """How many places the fine-tuned model moved a passage up (+) or down (-) against the baseline;
    None when one of the two ranks is below the searched depth."""
    if tuned_rank is None or base_rank is None:
        return None
    return base_rank - tuned_rank


def set_torch_threads(threads: int, models: int) -> int:
    """PyTorch's intra-op threads for serving: ``threads``, or (0) the CPU cores shared out among the
    models, which encode in parallel, so that they do not oversubscribe the cores. Returns the number."""
    import os

    import torch

    n = threads or max(1, (os.cpu_count() or 1) // max(1, models))
    torch.set_num_threads(n)
    return n


@dataclass
class DimFacts:
    dim: int
    vectors: dict[str, int]  # per model label
    raw_bytes: int  # float32 bytes of one stored vector
    scored: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model label, from `rag-eval score`


class RetrievalService:
    """Models loaded once, one :class:`Searcher` per (dim, model); thread-safe :meth:`search`."""

    def __init__(
        self,
        models: list[LoadedModel],
        searchers: dict[int, list[Searcher]],
        vector_store: VectorStore,
        *,
        page: PageData | None = None,
        k: int = 5,
        backend: str = "torch",
        backend_note: str = "",
        precision: str = "float32",
        rescore_multiplier: int = 0,
    ):
        self.precision = precision
        self.rescore_multiplier = rescore_multiplier
        self.models = models
        self.searchers = searchers
        self.dims = sorted(searchers, reverse=True)
        self.store = vector_store
        self.page = page or PageData()  # what the page shows beside the answers (rag_eval.page_data)
        self.k = k
        self.backend = backend  # what encodes the questions: torch, onnx or onnx-int8 (`rag-eval serve --backend`)
        self.backend_note = backend_note

        self._lock = threading.Lock()  # a request's vectors arrive from both models' stages
        self._encode_stages = {
            m.label: Stage(f"encode-{m.label}", functools.partial(self._encode_batch, m), self._fail, ENCODE_BATCH)
            for m in models
        }
        self._search_stage = Stage("search", self._search_batch, self._fail, SEARCH_BATCH)
        self._rankers = ThreadPoolExecutor(  # the search stage's helpers: the other collections' queries
            max(1, len(models) - 1), "search-helper", initializer=lambda: name_os_thread("search-helper")
        )
        self._vectors = {m.label: LRU(EMBED_CACHE) for m in models}
        self._texts = LRU(DOC_CACHE)
        self._text_source = searchers[self.dims[0]][-1]  # every collection holds the same passages
        self.facts = [self._dim_facts(d) for d in self.dims]

    # -- start-up ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        sources: Sources,
        target: StoreTarget | VectorStore,
        ir=None,
        dims: list[int] | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        k: int = 5,
        load: Callable[[Sources], list[LoadedModel]] | None = None,
        echo: Echo = print,
        backend: str = "torch",
        backend_note: str = "",
        precision: str = "float32",
        rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER,
    ) -> RetrievalService:
        """Check the store, load the models, open every collection: all or a JobError, before serving."""
        from rag_eval.scoring import check_indexed
        from rag_eval.sources import load_models

        vector_store = stores.connect(target, create=False) if isinstance(target, StoreTarget) else target
        dims = dims or dims_in_store(vector_store, prefix, sources.models[-1].key) or [0]
        check_indexed(vector_store, sources.models, dims, prefix)
        models = load(sources) if load else load_models(sources.models, backend=backend)
        corpus_fp = corpus_fingerprint(ir.corpus) if ir is not None else None
        try:
            searchers = {
                d: [_searcher(vector_store, m, d, prefix, corpus_fp, precision, rescore_multiplier) for m in models]
                for d in dims
            }
        except JobError as exc:
            if corpus_fp is None or "holds another corpus" not in exc.problem:
                raise
            raise JobError(
                exc.problem.replace(
                    "than the evaluation data given now", "than the held-out questions (--data/--split)"
                ),
                "serve with the --data it was indexed from, or re-run `rag-eval index` with this --data.",
            ) from None
        page = PageData.gather(sources.run_dir, models, ir)
        service = cls(
            models, searchers, vector_store, page=page, k=k, backend=backend, backend_note=backend_note,
            precision=precision, rescore_multiplier=rescore_multiplier if precision != "float32" else 0,
        )  # fmt: skip
        service.warm_up()
        echo(
            f"serve: {', '.join(f'{m.label} {m.spec.ref}' for m in models)} on {backend} ({backend_note or 'asked'}); "
            f"dims {', '.join(map(str, service.dims))} from the {service.describe_search()}; {page.describe()}"
        )
        return service

    def _dim_facts(self, dim: int) -> DimFacts:
        vectors = {s.model.label: int(s.size if s.size is not None else s.index.count()) for s in self.searchers[dim]}
        scored = {}
        report = self.page.score_report or {}
        for m in self.models if report else []:
            row = report["models"].get(m.label, {}).get("dims", {}).get(str(dim))
            if row:
                ref = row.get("evaluator") if report.get("reference") == "evaluator" else row.get("exact")
                scored[m.label] = {
                    "bytes_per_vector": row.get("bytes_per_vector"),
                    "ann_recall@10": row.get("ann_recall@10"),
                    "ndcg_store": row.get("store", row.get("chroma", {})).get("ndcg@10"),  # ("chroma": before 12-07)
                    "ndcg_exact": (ref or {}).get("ndcg@10"),
                    "ndcg_delta": row.get("ndcg_delta"),
                }
        return DimFacts(dim, vectors, bytes_per_vector(self.precision, dim), scored)

    def describe_search(self, public: bool = False) -> str:
        """Where the answers come from: the store, and the precision when it is not the store's float32 search.
        public: for the page and the API, what the store is and never where it is on this machine."""
        where = self.store.public() if public else self.store.describe()
        if self.precision == "float32":
            return where
        rescore = f", rescoring x{self.rescore_multiplier}" if self.rescore_multiplier else ", no rescoring"
        return f"{where}, searched as {self.precision} codes in memory (exact{rescore})"

    def warm_up(self) -> None:
        """Before serving, so that the first visitors do not pay for lazy loading: each encoder once at every
        chunk size it will run (PyTorch's and ONNX Runtime's buffers grow with the batch), then one search per
        dim (each collection's HNSW index, the passage texts)."""
        size = 1
        while size <= ENCODE_CHUNK:
            for m in self.models:
                encode_questions(m, [f"warm-up question {i}" for i in range(size)])
            size *= 2
        for dim in self.dims:
            self.search("warm-up question", 1, dim)

    # -- answering --------------------------------------------------------------------------------
    def max_tokens(self) -> int | None:
        lengths = [n for m in self.models if isinstance(n := getattr(m.model, "max_seq_length", None), int)]
        return min(lengths) if lengths else None

    def check_question(self, question: Any) -> str:
        if question is None:
            question = ""
        if not isinstance(question, str):
            raise JobError(
                f"The question must be text, not {type(question).__name__} {str(question)[:40]!r}.",
                'send the question as a string, e.g. {"q": "What was revenue in 2024?"}.',
            )
        try:
            question.encode("utf-8")
        except UnicodeEncodeError:
            raise JobError(
                "The question is not valid text (it holds a lone surrogate, half of a character).",
                "send the question as UTF-8 text.",
            ) from None
        text = question
        if not text.strip():
            raise JobError("The question is empty.", "type a question, or pick one of the held-out test questions.")
        if len(text) > MAX_QUESTION_CHARS:
            tokens = self.max_tokens()
            reads = f" (the models read only the first {tokens} tokens)" if tokens else ""
            raise JobError(
                f"The question is {len(text):,} characters long; "
                f"questions are limited to {MAX_QUESTION_CHARS:,} characters{reads}.",
                "shorten it to the question itself.",
            )
        return text.strip()

    def check_k(self, k: Any) -> int:
        value = whole_number(self.k if k is None or k == "" else k)
        if value is None:
            raise JobError(f"top-k {k!r} is not a whole number.", f"pass a number from 1 to {MAX_K}.")
        if not 1 <= value <= MAX_K:
            raise JobError(f"top-k {value} is out of range.", f"pass a number from 1 to {MAX_K}.")
        return value

    def check_dim(self, dim: Any) -> int:
        indexed = ", ".join(map(str, self.dims))
        if dim is None or dim == "":
            return self.dims[0]
        value = whole_number(dim)
        if value is None:
            raise JobError(f"Dim {str(dim)[:40]!r} is not a whole number.", f"pick one of the indexed dims: {indexed}.")
        if value not in self.searchers:
            raise JobError(
                f"Dim {value} is not indexed (indexed dims: {indexed}).",
                f"pick one of {indexed}, or index it first (`rag-eval index ... --dims {value}`) "
                "and restart `rag-eval serve`.",
            )
        return value

    def _request(self, question: Any, k: Any, dim: Any, reply: Reply) -> _Pending:
        """A checked request (a JobError for bad input), its cached vectors taken, on its way through the stages:
        to the encode stage of each model whose vector is missing, or straight to the search stage."""
        start = time.perf_counter()
        q, k, dim = self.check_question(question), self.check_k(k), self.check_dim(dim)
        p = _Pending(q, k, dim, reply, start)
        for m in self.models:
            vector = self._vectors[m.label].get(q)
            if vector is not None:
                p.vectors[m.label], p.encoded_at[m.label] = vector, time.perf_counter()
                p.from_cache.add(m.label)
        missing = [m.label for m in self.models if m.label not in p.vectors]
        for label in missing:
            self._encode_stages[label].put(p)
        if not missing:
            self._search_stage.put(p)
        return p

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        """Every request of a failed batch gets the error, once (the other model's stage may hold it too)."""
        with self._lock:
            failed = [p for p in batch if not p.failed]
            for p in failed:
                p.failed = True
        settle((p.reply, None, exc) for p in failed)

    def _encode_batch(self, m: LoadedModel, batch: list[_Pending]) -> None:
        """One model's encode stage: the batch's distinct questions in one call (:func:`encode_questions`); each
        request whose vectors are now all there goes on to the search stage. The models' stages run side by side
        and never wait for each other."""
        todo = list(dict.fromkeys(p.question for p in batch))
        vectors, at = self._encode(m, todo)
        by_question = dict(zip(todo, vectors))
        cache = self._vectors[m.label]
        for q, v in by_question.items():
            cache.put(q, v)
        ready = []
        with self._lock:
            for p in batch:
                p.vectors[m.label], p.encoded_at[m.label] = by_question[p.question], at
                if len(p.vectors) == len(self.models) and not p.failed:
                    ready.append(p)
        self._search_stage.put_many(ready)

    @staticmethod
    def _encode(m: LoadedModel, questions: list[str]) -> tuple[list[np.ndarray], float]:
        return list(encode_questions(m, questions)), time.perf_counter()

    def _search_batch(self, batch: list[_Pending]) -> None:
        """The search stage: each (dim, model) collection queried once for the whole batch, RANK_DEPTH deep (the
        models' collections at the same time: the store works without the GIL), then the passage texts not in the
        cache in one call; every request of the batch is answered at once."""
        with self.store.errors():
            jobs = [(s, [p for p in batch if p.dim == dim]) for dim in dict.fromkeys(p.dim for p in batch)
                    for s in self.searchers[dim]]  # fmt: skip
            others = [self._rankers.submit(self._rank, s, group) for s, group in jobs[1:]]
            self._rank(*jobs[0])
            for other in others:
                other.result()
            wanted = {h.id for p in batch for hits in p.rankings.values() for h in hits[: p.k]}
            texts = {i: t for i in wanted if (t := self._texts.get(i)) is not None}
            missing = [i for i in wanted if i not in texts]
            if missing:
                fetched = self._text_source.documents(missing)
                for i, t in fetched.items():
                    self._texts.put(i, t)
                texts.update(fetched)
        at = time.perf_counter()
        for p in batch:
            p.texts, p.done_at = texts, at
        settle((p.reply, p, None) for p in batch if not p.failed)

    @staticmethod
    def _rank(s: Searcher, group: list[_Pending]) -> None:
        label = s.model.label
        hits = s.query_many(truncate_normalise(np.stack([p.vectors[label] for p in group]), s.dim), RANK_DEPTH)
        at = time.perf_counter()
        for p, h in zip(group, hits):
            p.rankings[label], p.ranked_at[label] = h, at

    def search(self, question: Any, k: Any = None, dim: Any = None) -> Answer:
        """Both models' top k at one dim (blocks; :meth:`search_async` is the same for an event loop)."""
        p = self._request(question, k, dim, Reply())
        p.reply.future.result()
        return self._answer(p)

    async def search_async(self, question: Any, k: Any = None, dim: Any = None) -> Answer:
        """:meth:`search` without blocking an event loop: the work runs on the stages' threads."""
        import asyncio

        p = self._request(question, k, dim, Reply(asyncio.get_running_loop()))
        await p.reply.future
        return self._answer(p)

    def _answer(self, p: _Pending) -> Answer:
        """The answer of a request the stages are done with. Times from the request's arrival: each model's
        vector (queue, encoder), then from both vectors on: each ranking, and the passages' texts."""
        searchers = self.searchers[p.dim]
        gold = self.page.gold.get(p.question, set())
        t1 = max(p.encoded_at.values())
        rankings = [p.rankings[s.model.label] for s in searchers]
        ranks = [{h.id: h.rank for h in hits} for hits in rankings]
        columns = []
        for i, (s, hits) in enumerate(zip(searchers, rankings)):
            label = s.model.label
            other = ranks[1 - i] if len(searchers) == 2 else None
            rows = [
                Row(h.rank, h.id, h.score, p.texts.get(h.id, ""), h.id in gold,
                    other.get(h.id) if other is not None else None)
                for h in hits[: p.k]
            ]  # fmt: skip
            relevant_rank = min((h.rank for h in hits if h.id in gold), default=None) if gold else None
            embed_ms, store_ms = (p.encoded_at[label] - p.start) * 1000, (p.ranked_at[label] - t1) * 1000
            columns.append(Column(label, s.model.spec.name, rows, relevant_rank, embed_ms, store_ms, p.cached(label)))
        return Answer(
            question=p.question, dim=p.dim, k=p.k, depth=RANK_DEPTH, columns=columns, relevant=sorted(gold),
            terms=sorted(query_terms(p.question)), embed_ms=(t1 - p.start) * 1000, store_ms=(p.done_at - t1) * 1000,
            total_ms=(time.perf_counter() - p.start) * 1000,
        )  # fmt: skip

    def stage_stats(self, reset: bool = False) -> dict[str, dict[str, Any]]:
        """The encode and search stages' batches, items and busy time (``reset``: zero them afterwards)."""
        stages = {**{f"encode-{label}": s for label, s in self._encode_stages.items()}, "search": self._search_stage}
        return {name: (s.reset() if reset else s.stats).as_dict() for name, s in stages.items()}

    def info(self) -> dict[str, Any]:
        """What the page shows besides answers (also the JSON API's /api/info)."""
        return {
            "title": self.page.title,
            "models": [{"label": m.label, "model": m.spec.name, "dim": m.dim} for m in self.models],
            "backend": self.backend,
            "dims": self.dims,
            "k": self.k,
            "max_k": MAX_K,
            "max_question_chars": MAX_QUESTION_CHARS,
            "store": self.describe_search(public=True),
            "precision": self.precision,
            "rescore_multiplier": self.rescore_multiplier,
            "questions": [text for _, text in self.page.questions],
            "index": [asdict(f) for f in self.facts],
            "quality": self.page.quality,
        }


def _searcher(vector_store: VectorStore, model, dim, prefix, corpus_fp, precision="float32", multiplier=0) -> Searcher:
    """The checked collection of (model, dim); for int8/binary, its vectors as codes in an exact in-memory index
    (passage texts still come from the collection)."""
    from rag_eval.scoring import open_collection

    index = open_collection(vector_store, model, dim, prefix, corpus_fp)
    if precision != "float32":
        index = QuantizedIndex.from_index(index, precision, multiplier)
    return Searcher(model, index, dim, size=index.count())


_STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how in is it its of on or than that the their there "
    "these this those to was were what when where which who why will with your you our we".split()
)
WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(question: str) -> set[str]:
    """The question's words worth highlighting: lower-cased, no stop words, at least 3 letters (or 2 digits)."""
    words = (w.lower() for w in WORD.findall(question))
    return {w for w in words if w not in _STOPWORDS and (len(w) >= 3 or (w.isdigit() and len(w) >= 2))}
