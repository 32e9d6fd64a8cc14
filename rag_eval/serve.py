"""`rag-eval serve` without Gradio: the retrieval service behind the page, and the page's HTML.

- :class:`RetrievalService` resolves the store, loads the models ONCE and opens one collection per
  (model, dim); every start-up problem is a :class:`JobError` (no index, damaged store, a dim that
  is not indexed, another corpus than the evaluation data's).
- :meth:`RetrievalService.search` answers one question at one dim: each model's top k (baseline and
  fine-tuned side by side), how the fine-tuned model moved each passage, the relevant passages of a
  held-out question, and the time spent embedding and in the vector store. Bad input (empty, too
  long, a dim that is not indexed, a k out of range) is a :class:`JobError` whose message the page
  and the JSON API show.
- ``render_*``: the page's HTML. Passages, questions, ids and model names are user data: every one
  goes through :func:`esc` (HTML-escaped, and ``$``/``{``/``}`` too, so no template sees them), so a
  passage holding ``<script>`` or ``<img onerror=...>`` shows as text and never runs.

The Gradio page and the HTTP endpoints are a thin layer over this module (:mod:`rag_eval.web`).
"""

from __future__ import annotations

import base64
import html
import json
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from job.errors import JobError
from job.layout import REPORT_RECORD
from rag_eval import store
from rag_eval.demo import RANK_DEPTH, Searcher
from rag_eval.sources import FINETUNED, LoadedModel, Sources
from rag_eval.vectors import corpus_fingerprint, encode_queries, truncate_normalise

Echo = Callable[[str], None]
MAX_QUESTION_CHARS = 2000  # far beyond what the models read (MiniLM: 256 tokens); refuses pasted documents
MAX_K = 50  # at most RANK_DEPTH: every ranking is searched RANK_DEPTH deep
EMBED_CACHE = 2048  # question vectors kept per model: switching dims or k re-uses them
DOC_CACHE = 50_000  # passage texts kept
SCORE_REPORT = "metrics.json"  # in RUN_DIR/rag_eval (`rag-eval score`)
QUALITY_PLOT = "ndcg_by_dim.png"  # in RUN_DIR/report (`job evaluate`)


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
        return asdict(self)


def move(tuned_rank: int | None, base_rank: int | None) -> int | None:
    """How many places the fine-tuned model moved a passage up (+) or down (-) against the baseline;
    None when one of the two ranks is below the searched depth."""
    if tuned_rank is None or base_rank is None:
        return None
    return base_rank - tuned_rank


# --- the service ---------------------------------------------------------------------------------
def set_torch_threads(threads: int, models: int) -> int:
    """PyTorch's intra-op threads for serving: ``threads``, or (0) the CPU cores shared out among the
    models, which encode in parallel, so that they do not oversubscribe the cores. Returns the number."""
    import os

    import torch

    n = threads or max(1, (os.cpu_count() or 1) // max(1, models))
    torch.set_num_threads(n)
    return n


class Batcher:
    """Runs ``fn`` on its own thread over batches of whatever requests are waiting.

    Concurrent requests do not each pay a full call: while one batch runs, the next requests queue up
    and go through together (on CPU, a batch of 16 short questions through MiniLM, or 16 queries to
    a Chroma collection, costs a few times one, not 16 times). The thread is also the only one that
    touches its model, so a fast tokenizer is never used from two threads at once ("Already borrowed")."""

    def __init__(self, name: str, fn: Callable[[list], list], max_batch: int = 64):
        self.fn = fn
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Future:
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.fn([item for item, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)


def _timed(futures: list[Future]) -> list[Future]:
    """Record when each future completes (read back with :func:`_done_at`)."""
    for f in futures:
        if not f.done():
            f.add_done_callback(lambda f: setattr(f, "done_at", time.perf_counter()))
    return futures


def _done_at(future: Future) -> float:
    return getattr(future, "done_at", None) or time.perf_counter()


class LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


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
        target: store.StoreTarget,
        *,
        questions: list[tuple[str, str]] | None = None,
        gold: dict[str, set[str]] | None = None,
        k: int = 5,
        title: str = "",
        score_report: dict[str, Any] | None = None,
        score_note: str = "",
        quality: dict[str, Any] | None = None,
        quality_plot: bytes | None = None,
    ):
        self.models = models
        self.searchers = searchers
        self.dims = sorted(searchers, reverse=True)
        self.target = target
        self.questions = questions or []
        self.gold = gold or {}
        self.k = k
        self.title = title
        self.score_report = score_report
        self.score_note = score_note
        self.quality = quality
        self.quality_plot = quality_plot

        def encoder(m: LoadedModel) -> Batcher:
            return Batcher(
                f"encode-{m.label}", lambda qs: list(encode_queries(m.model, qs, m.spec.query_prompt, len(qs)))
            )

        def ranker(s: Searcher) -> Batcher:
            return Batcher(f"query-{s.model.label}-d{s.dim}", lambda vs: s.query_many(np.stack(vs), RANK_DEPTH))

        self._encoders = {m.label: encoder(m) for m in models}
        self._rankers = {(d, s.model.label): ranker(s) for d, group in searchers.items() for s in group}
        self._vectors = {m.label: LRU(EMBED_CACHE) for m in models}
        self._texts = LRU(DOC_CACHE)
        self._text_source = searchers[self.dims[0]][-1]  # every collection holds the same passages
        self._fetcher = Batcher("passages", self._fetch)
        self.facts = [self._dim_facts(d) for d in self.dims]

    # -- start-up ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        sources: Sources,
        target: store.StoreTarget,
        ir=None,
        dims: list[int] | None = None,
        *,
        prefix: str = store.DEFAULT_PREFIX,
        k: int = 5,
        load: Callable[[Sources], list[LoadedModel]] | None = None,
        echo: Echo = print,
    ) -> RetrievalService:
        """Check the store, load the models, open every collection: all or a JobError, before serving."""
        from rag_eval.scoring import check_indexed
        from rag_eval.sources import load_models

        client = store.connect(target, create=False)
        dims = dims or store.dims_in_store(client, prefix, sources.models[-1].key) or [0]
        check_indexed(client, target, sources.models, dims, prefix)
        models = load(sources) if load else load_models(sources.models)
        corpus_fp = corpus_fingerprint(ir.corpus) if ir is not None else None
        try:
            searchers = {d: [_searcher(client, target, m, d, prefix, corpus_fp) for m in models] for d in dims}
        except JobError as exc:
            if corpus_fp is None or "holds another corpus" not in exc.problem:
                raise
            raise JobError(
                exc.problem.replace(
                    "than the evaluation data given now", "than the held-out questions (--data/--split)"
                ),
                "serve with the --data it was indexed from, or re-run `rag-eval index` with this --data.",
            ) from None
        questions, gold = [], {}
        if ir is not None:
            relevant = ir.relevant_docs()
            questions = [(qid, text) for qid, text in ir.queries.items() if relevant.get(qid)]
            gold = {text.strip(): set(relevant[qid]) for qid, text in questions}
        run_dir = sources.run_dir
        report_dir = run_dir.rag_eval if run_dir is not None else Path("rag_eval_report")
        score_report, score_note = load_score_report(report_dir / SCORE_REPORT, models)
        quality, plot = load_quality(run_dir.root if run_dir is not None else None)
        title = str(run_dir.root) if run_dir is not None else models[-1].spec.ref
        service = cls(
            models, searchers, target, questions=questions, gold=gold, k=k, title=title,
            score_report=score_report, score_note=score_note, quality=quality, quality_plot=plot,
        )  # fmt: skip
        service.warm_up()
        echo(
            f"serve: {', '.join(f'{m.label} {m.spec.ref}' for m in models)}; dims {', '.join(map(str, service.dims))} "
            f"from the {target.describe()}; {len(questions)} held-out questions; "
            f"score report: {'yes' if score_report else 'none'}; quality report: {'yes' if quality else 'none'}"
        )
        return service

    def _dim_facts(self, dim: int) -> DimFacts:
        vectors = {
            s.model.label: int(s.size if s.size is not None else s.collection.count()) for s in self.searchers[dim]
        }
        scored = {}
        for m in self.models if self.score_report else []:
            row = self.score_report["models"].get(m.label, {}).get("dims", {}).get(str(dim))
            if row:
                ref = row.get("evaluator") if self.score_report.get("reference") == "evaluator" else row.get("exact")
                scored[m.label] = {
                    "bytes_per_vector": row.get("bytes_per_vector"),
                    "ann_recall@10": row.get("ann_recall@10"),
                    "ndcg_chroma": row["chroma"]["ndcg@10"],
                    "ndcg_exact": (ref or {}).get("ndcg@10"),
                    "ndcg_delta": row.get("ndcg_delta"),
                }
        return DimFacts(dim, vectors, 4 * dim, scored)

    def warm_up(self) -> None:
        """One search per dim before serving, so that the first visitor does not pay for lazy loading
        (the models' first batch, each collection's HNSW index)."""
        for dim in self.dims:
            self.search("warm-up question", 1, dim)

    # -- answering --------------------------------------------------------------------------------
    def max_tokens(self) -> int | None:
        lengths = [getattr(m.model, "max_seq_length", None) for m in self.models]
        lengths = [n for n in lengths if isinstance(n, int)]
        return min(lengths) if lengths else None

    def check_question(self, question: Any) -> str:
        text = "" if question is None else str(question)
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
        try:
            value = int(k if k is not None else self.k)
        except (TypeError, ValueError):
            raise JobError(f"top-k {k!r} is not a whole number.", f"pass a number from 1 to {MAX_K}.") from None
        if not 1 <= value <= MAX_K:
            raise JobError(f"top-k {value} is out of range.", f"pass a number from 1 to {MAX_K}.")
        return value

    def check_dim(self, dim: Any) -> int:
        indexed = ", ".join(map(str, self.dims))
        if dim is None or dim == "":
            return self.dims[0]
        try:
            value = int(dim)
        except (TypeError, ValueError):
            raise JobError(f"Dim {dim!r} is not a number.", f"pick one of the indexed dims: {indexed}.") from None
        if value not in self.searchers:
            raise JobError(
                f"Dim {value} is not indexed (indexed dims: {indexed}).",
                f"pick one of {indexed}, or index it first (`rag-eval index ... --dims {value}`) "
                "and restart `rag-eval serve`.",
            )
        return value

    def _embed(self, label: str, question: str) -> tuple[Future, bool]:
        """A future of the question's full-dim vector for one model, and whether it came from the cache."""
        cached = self._vectors[label].get(question)
        if cached is not None:
            done: Future = Future()
            done.set_result(cached)
            return done, True
        future = self._encoders[label].submit(question)
        future.add_done_callback(lambda f: f.exception() is None and self._vectors[label].put(question, f.result()))
        return future, False

    def _documents(self, ids: list[str]) -> Future:
        """A future of {id: passage text}: from the cache, the rest in one batched call to the store."""
        texts = {i: t for i in dict.fromkeys(ids) if (t := self._texts.get(i)) is not None}
        missing = [i for i in dict.fromkeys(ids) if i not in texts]
        if not missing:
            done: Future = Future()
            done.set_result(texts)
            return done
        result: Future = Future()

        def merge(fetched: Future) -> None:
            if fetched.exception() is not None:
                result.set_exception(fetched.exception())
                return
            for i, t in fetched.result().items():
                self._texts.put(i, t)
            result.set_result({**texts, **fetched.result()})

        self._fetcher.submit(missing).add_done_callback(merge)
        return result

    def _fetch(self, id_lists: list[list[str]]) -> list[dict[str, str]]:
        """One store call for the passages of several requests (run by the fetcher's batch thread)."""
        texts = self._text_source.documents(i for ids in id_lists for i in ids)
        return [{i: texts.get(i, "") for i in ids} for ids in id_lists]

    def search(self, question: Any, k: Any = None, dim: Any = None) -> Answer:
        """Both models' top k at one dim (blocks; :meth:`search_async` is the same for an event loop)."""
        steps = self._search_steps(question, k, dim)
        try:
            futures = next(steps)
            while True:
                try:
                    results = [f.result() for f in futures]
                except Exception as exc:  # noqa: BLE001 - raised inside the steps, where store errors are named
                    futures = steps.throw(exc)
                else:
                    futures = steps.send(results)
        except StopIteration as stop:
            return stop.value

    async def search_async(self, question: Any, k: Any = None, dim: Any = None) -> Answer:
        """:meth:`search` without blocking an event loop: the work runs on the batch threads."""
        import asyncio

        steps = self._search_steps(question, k, dim)
        try:
            futures = next(steps)
            while True:
                try:
                    results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
                except Exception as exc:  # noqa: BLE001
                    futures = steps.throw(exc)
                else:
                    futures = steps.send(list(results))
        except StopIteration as stop:
            return stop.value

    def _search_steps(self, question: Any, k: Any, dim: Any) -> Generator[list[Future], list[Any], Answer]:
        """The search as steps that hand out futures and get their results back, so that one body serves
        the blocking and the async caller. The models encode in parallel, each batched with concurrent
        requests (and cached per question); each collection is searched RANK_DEPTH deep, batched too."""
        start = time.perf_counter()
        q, k, dim = self.check_question(question), self.check_k(k), self.check_dim(dim)
        searchers = self.searchers[dim]
        gold = self.gold.get(q, set())
        t0 = time.perf_counter()
        pending = [self._embed(s.model.label, q) for s in searchers]  # both models at once
        vectors = yield _timed([f for f, _ in pending])
        embed_ms = [(_done_at(f) - t0) * 1000 for f, _ in pending]
        t1 = time.perf_counter()
        with store.store_errors(self.target):
            futures = [
                self._rankers[(dim, s.model.label)].submit(truncate_normalise(v[None, :], dim)[0])
                for s, v in zip(searchers, vectors)
            ]
            rankings = yield _timed(futures)
            store_ms = [(_done_at(f) - t1) * 1000 for f in futures]
            (texts,) = yield [self._documents([h.id for hits in rankings for h in hits[:k]])]
        t2 = time.perf_counter()
        ranks = [{h.id: h.rank for h in hits} for hits in rankings]
        columns = []
        for i, (s, hits) in enumerate(zip(searchers, rankings)):
            other = ranks[1 - i] if len(searchers) == 2 else None
            rows = [
                Row(
                    h.rank,
                    h.id,
                    h.score,
                    texts.get(h.id, ""),
                    h.id in gold,
                    other.get(h.id) if other is not None else None,
                )
                for h in hits[:k]
            ]
            relevant_rank = min((h.rank for h in hits if h.id in gold), default=None)
            columns.append(
                Column(s.model.label, s.model.spec.ref, rows, relevant_rank, embed_ms[i], store_ms[i], pending[i][1])
            )
        return Answer(
            question=q, dim=dim, k=k, depth=RANK_DEPTH, columns=columns, relevant=sorted(gold),
            terms=sorted(query_terms(q)), embed_ms=(t1 - t0) * 1000, store_ms=(t2 - t1) * 1000,
            total_ms=(time.perf_counter() - start) * 1000,
        )  # fmt: skip

    def info(self) -> dict[str, Any]:
        """What the page shows besides answers (also the JSON API's /api/info)."""
        return {
            "title": self.title,
            "models": [{"label": m.label, "model": m.spec.ref, "dim": m.dim} for m in self.models],
            "dims": self.dims,
            "k": self.k,
            "max_k": MAX_K,
            "max_question_chars": MAX_QUESTION_CHARS,
            "store": self.target.describe(),
            "questions": [text for _, text in self.questions],
            "index": [asdict(f) for f in self.facts],
            "quality": self.quality,
        }


def _searcher(client, target, model, dim, prefix, corpus_fp) -> Searcher:
    from rag_eval.scoring import open_collection

    collection = open_collection(client, target, model, dim, prefix, corpus_fp)
    return Searcher(model, collection, dim, size=collection.count())


# --- reports of the run --------------------------------------------------------------------------
def load_score_report(path: Path, models: list[LoadedModel]) -> tuple[dict[str, Any] | None, str]:
    """`rag-eval score`'s metrics.json, if it exists and was made from these models' weights."""
    if not path.is_file():
        return None, f"No `rag-eval score` report at {path}."
    try:
        report = json.loads(path.read_text())
        scored = report["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"The `rag-eval score` report at {path} cannot be read."
    stale = [m.label for m in models if m.label in scored and scored[m.label].get("fingerprint") != m.fingerprint]
    if stale:
        return None, f"The `rag-eval score` report at {path} was made from other weights of {', '.join(stale)}."
    return report, f"From the `rag-eval score` report at {path}."


def load_quality(run_root: Path | None) -> tuple[dict[str, Any] | None, bytes | None]:
    """The job's held-out NDCG@10 by dim (report/metrics.json) and its plot, for the run directory."""
    if run_root is None:
        return None, None
    metrics_path = run_root / REPORT_RECORD
    plot_path = metrics_path.with_name(QUALITY_PLOT)
    quality = None
    try:
        payload = json.loads(metrics_path.read_text())
        rows = [
            {"dim": int(r["dim"]), "baseline": float(r["baseline"]), "finetuned": float(r["finetuned"])}
            for r in payload.get("comparison", [])
        ]
        if rows:
            quality = {"rows": sorted(rows, key=lambda r: -r["dim"]), "test_queries": payload.get("test_queries"),
                       "corpus_size": payload.get("corpus_size"), "source": str(metrics_path)}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        quality = None
    plot = plot_path.read_bytes() if plot_path.is_file() else None
    return quality, plot


# --- HTML ----------------------------------------------------------------------------------------
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "than",
        "that",
        "the",
        "their",
        "there",
        "these",
        "this",
        "those",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "your",
        "you",
        "our",
        "we",
    ]
)
_WORD = re.compile(r"\w+", re.UNICODE)


def esc(value: Any) -> str:
    """HTML-escape user data for the page; also ``$``, ``{`` and ``}`` so that no template expands it."""
    return html.escape(str(value), quote=True).replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;")


def query_terms(question: str) -> set[str]:
    """The question's words worth highlighting: lower-cased, no stop words, at least 3 letters (or 2 digits)."""
    words = (w.lower() for w in _WORD.findall(question))
    return {w for w in words if w not in _STOPWORDS and (len(w) >= 3 or (w.isdigit() and len(w) >= 2))}


def highlight(text: str, terms: set[str]) -> str:
    """``text`` escaped, with the words in ``terms`` wrapped in <mark> (matched on whole words, any case)."""
    out, pos = [], 0
    for m in _WORD.finditer(text):
        out.append(esc(text[pos : m.start()]))
        word = m.group(0)
        out.append(f"<mark>{esc(word)}</mark>" if word.lower() in terms else esc(word))
        pos = m.end()
    out.append(esc(text[pos:]))
    return "".join(out)


def note(text: str) -> str:
    """A sentence of ours that may quote user data (paths): escaped, with `commands` shown as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def _moved(row: Row, tuned_column: bool, depth: int) -> tuple[str, str, str]:
    """(symbol, css class, tooltip) for how the fine-tuned model moved this passage."""
    tuned, base = (row.rank, row.other_rank) if tuned_column else (row.other_rank, row.rank)
    delta = move(tuned, base)
    if delta is None:
        if tuned_column:
            return "▲ new", "re-up", f"the baseline ranks it below #{depth}"
        return "▼ out", "re-down", f"the fine-tuned model ranks it below #{depth}"
    if delta > 0:
        return f"▲{delta}", "re-up", f"fine-tuned #{tuned}, baseline #{base}: up {delta}"
    if delta < 0:
        return f"▼{-delta}", "re-down", f"fine-tuned #{tuned}, baseline #{base}: down {-delta}"
    return "=", "re-same", f"#{tuned} in both"


def _outcome(column: Column, k: int, depth: int) -> str:
    if column.relevant_rank is None:
        return f'<span class="re-miss">✗ miss: relevant passage not in the top {depth}</span>'
    if column.relevant_rank <= k:
        return f'<span class="re-hit">✓ hit: relevant passage at #{column.relevant_rank}</span>'
    return f'<span class="re-miss">✗ miss: relevant passage at #{column.relevant_rank}, below the top {k}</span>'


def render_answer(answer: Answer) -> str:
    terms = set(answer.terms)
    detail = "; ".join(
        f"{esc(c.label)}: embedding {_ms(c.embed_ms)}{' (cached)' if c.cached else ''}, store {_ms(c.store_ms)}"
        for c in answer.columns
    )
    latency = (
        f"dim {answer.dim} · top {answer.k} · embedding {_ms(answer.embed_ms)} · vector store {_ms(answer.store_ms)} "
        f"· total {_ms(answer.total_ms)}"
    )
    parts = [
        f'<div class="re-answer" data-dim="{answer.dim}" data-k="{answer.k}">',
        f'<div class="re-question">Q: {esc(answer.question)}</div>',
        f'<div class="re-latency" id="re-latency">{latency} <span class="re-detail">({detail})</span></div>',
    ]
    if answer.relevant:
        parts.append(
            f'<div class="re-gold">Held-out test question; relevant passage{"s" if len(answer.relevant) > 1 else ""}: '
            f"{', '.join(esc(r) for r in answer.relevant)} (marked ✓ relevant)</div>"
        )
    parts.append('<div class="re-columns">')
    for column in answer.columns:
        tuned_column = column.label == FINETUNED or not answer.compared
        parts.append(f'<div class="re-col" data-model="{esc(column.label)}">')
        parts.append(f'<h3>{esc(column.label)} <span class="re-ref">{esc(column.model)}</span></h3>')
        if answer.relevant:
            parts.append(f'<div class="re-outcome">{_outcome(column, answer.k, answer.depth)}</div>')
        head = "<th>moved</th>" if answer.compared else ""
        parts.append(
            f'<table class="re-table"><thead><tr><th>rank</th><th>score</th>{head}<th>passage</th></tr></thead><tbody>'
        )
        for row in column.rows:
            moved = ""
            if answer.compared:
                symbol, css, tip = _moved(row, tuned_column, answer.depth)
                moved = f'<td class="re-moved {css}" title="{esc(tip)}">{esc(symbol)}</td>'
            rel = '<span class="re-rel">✓ relevant</span> ' if row.relevant else ""
            parts.append(
                f'<tr class="re-row{" re-relevant" if row.relevant else ""}" data-id="{esc(row.id)}">'
                f'<td class="re-rank">{row.rank}</td><td class="re-score">{row.score:.4f}</td>{moved}'
                f'<td class="re-passage">{rel}<span class="re-id">{esc(row.id)}</span> '
                f'<span class="re-text">{highlight(row.text, terms)}</span></td></tr>'
            )
        parts.append("</tbody></table></div>")
    parts.append("</div>")
    if answer.compared:
        parts.append(
            '<div class="re-legend">moved: where the fine-tuned model puts the passage compared with the baseline '
            f"(▲ up, ▼ down, = same rank; new/out: below #{answer.depth} in the other model). "
            "Highlighted: the question's words.</div>"
        )
    parts.append("</div>")
    return "".join(parts)


def render_error(message: str) -> str:
    return f'<div class="re-error" role="alert">⚠ {esc(message)}</div>'


def render_placeholder(service: RetrievalService) -> str:
    return (
        '<div class="re-placeholder">Type a question and press Enter, or pick a held-out test question. '
        f"Indexed dims: {', '.join(map(str, service.dims))}.</div>"
    )


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render_facts(service: RetrievalService) -> str:
    labels = [m.label for m in service.models]
    head = "<th>dim</th><th>vectors</th><th>bytes/vector (float32)</th><th>bytes/vector on disk</th>"
    head += "".join(
        f"<th>{esc(label)} ANN recall@10</th><th>{esc(label)} NDCG@10 Chroma / exact (Δ)</th>" for label in labels
    )
    rows = []
    for f in service.facts:
        counts = sorted(set(f.vectors.values()))
        disk = [f.scored.get(label, {}).get("bytes_per_vector") for label in labels]
        disk = [d for d in disk if d is not None]
        cells = [str(f.dim), " / ".join(map(str, counts)), str(f.raw_bytes), f"{max(disk):,.0f}" if disk else "n/a"]
        for label in labels:
            s = f.scored.get(label)
            if not s:
                cells += ["n/a", "n/a"]
                continue
            cells.append(_num(s["ann_recall@10"], ".3f"))
            cells.append(
                f"{_num(s['ndcg_chroma'], '.4f')} / {_num(s['ndcg_exact'], '.4f')} ({_num(s['ndcg_delta'], '+.4f')})"
            )
        rows.append(f'<tr data-dim="{f.dim}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    text = service.score_note
    if service.score_report is None:
        text += " Run `rag-eval score` with the same --model for ANN recall, size on disk and Chroma vs exact NDCG@10."
    return (
        f'<div class="re-facts"><table class="re-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<div class="re-note">{esc(service.target.describe())}. {note(text.strip())}</div></div>'
    )


def render_quality(service: RetrievalService) -> str:
    q = service.quality
    if q is None and service.quality_plot is None:
        return (
            '<div class="re-note">'
            f"{note('No held-out report for this model (`job run` / `job evaluate` write it into a run directory).')}"
            "</div>"
        )
    parts = ['<div class="re-quality">']
    if service.quality_plot is not None:
        data = base64.b64encode(service.quality_plot).decode("ascii")
        parts.append(
            f'<img class="re-plot" alt="NDCG@10 by dim, baseline and fine-tuned" src="data:image/png;base64,{data}">'
        )
    if q is not None:
        rows = "".join(
            f'<tr data-dim="{r["dim"]}"><td>{r["dim"]}</td><td>{r["baseline"]:.4f}</td><td>{r["finetuned"]:.4f}</td>'
            f"<td>{(r['finetuned'] - r['baseline']) / r['baseline'] * 100 if r['baseline'] else 0:+.1f}%</td></tr>"
            for r in q["rows"]
        )
        parts.append(
            '<table class="re-table"><thead><tr><th>dim</th><th>baseline NDCG@10</th><th>fine-tuned NDCG@10</th>'
            f"<th>improvement</th></tr></thead><tbody>{rows}</tbody></table>"
            f'<div class="re-note">Exact evaluator on {esc(q.get("test_queries") or "?")} held-out questions against '
            f"{esc(q.get('corpus_size') or '?')} passages ({esc(q['source'])}).</div>"
        )
    parts.append("</div>")
    return "".join(parts)


CSS = """
.re-columns { display: flex; gap: 16px; align-items: flex-start; }
.re-col { flex: 1 1 0; min-width: 0; }
.re-col h3 { margin: 4px 0; }
.re-ref { font-weight: normal; font-size: 0.8em; opacity: 0.7; word-break: break-all; }
.re-table { width: 100%; border-collapse: collapse; font-size: 0.9em; }
.re-table th, .re-table td { border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: top; }
.re-rank, .re-score, .re-moved { white-space: nowrap; }
.re-relevant { background: #eaf7ea; }
.re-rel { color: #1a7f1a; font-weight: 600; white-space: nowrap; }
.re-hit { color: #1a7f1a; font-weight: 600; }
.re-miss { color: #b42318; font-weight: 600; }
.re-up { color: #1a7f1a; } .re-down { color: #b42318; } .re-same { opacity: 0.7; }
.re-id { font-family: monospace; opacity: 0.7; }
.re-text { white-space: pre-wrap; overflow-wrap: anywhere; }
.re-latency, .re-gold, .re-question { margin: 4px 0; }
.re-question { font-weight: 600; overflow-wrap: anywhere; }
.re-detail, .re-note, .re-legend { font-size: 0.85em; opacity: 0.8; margin-top: 4px; }
.re-error { color: #b42318; font-weight: 600; padding: 8px; border: 1px solid #b42318; border-radius: 6px; }
.re-plot { max-width: 560px; width: 100%; }
mark { background: #fff3a3; color: inherit; padding: 0 1px; }
"""
