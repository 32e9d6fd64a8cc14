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
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.layout import REPORT_RECORD
from rag_eval import store
from rag_eval.demo import RANK_DEPTH, Searcher
from rag_eval.sources import FINETUNED, LoadedModel, Sources
from rag_eval.vectors import corpus_fingerprint

Echo = Callable[[str], None]
MAX_QUESTION_CHARS = 2000  # far beyond what the models read (MiniLM: 256 tokens); refuses pasted documents
MAX_K = 50
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
    embed_ms: float
    store_ms: float


@dataclass
class Answer:
    question: str
    dim: int
    k: int
    depth: int  # how deep each ranking was searched (for the other model's rank and the relevant passage)
    columns: list[Column]  # baseline first, then fine-tuned (or one model)
    relevant: list[str]  # ids of the relevant passages when the question is a held-out one
    terms: list[str]  # the question's words that are highlighted in the passages
    embed_ms: float
    store_ms: float
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
        # fast tokenizers are not safe to call from two threads at once ("Already borrowed"): one lock per model
        self._locks = {m.label: threading.Lock() for m in models}
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
        from rag_eval.scoring import check_indexed, open_collection
        from rag_eval.sources import load_models

        client = store.connect(target, create=False)
        dims = dims or store.dims_in_store(client, prefix, sources.models[-1].key) or [0]
        check_indexed(client, target, sources.models, dims, prefix)
        models = load(sources) if load else load_models(sources.models)
        corpus_fp = corpus_fingerprint(ir.corpus) if ir is not None else None
        try:
            searchers = {
                d: [Searcher(m, open_collection(client, target, m, d, prefix, corpus_fp), d) for m in models]
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
        vectors = {s.model.label: int(s.collection.count()) for s in self.searchers[dim]}
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
        """One search before serving, so that the first visitor does not pay for lazy initialisation."""
        self.search("warm-up question", 1, self.dims[-1])

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
                f"The question is {len(text):,} characters long; questions are limited to {MAX_QUESTION_CHARS:,} characters{reads}.",
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
                f"pick one of {indexed}, or index it first (`rag-eval index ... --dims {value}`) and restart `rag-eval serve`.",
            )
        return value

    def search(self, question: Any, k: Any = None, dim: Any = None) -> Answer:
        start = time.perf_counter()
        q, k, dim = self.check_question(question), self.check_k(k), self.check_dim(dim)
        searchers = self.searchers[dim]
        depth = max(k, RANK_DEPTH)
        gold = self.gold.get(q, set())
        rankings, embed_ms, store_ms = [], [], []
        with store.store_errors(self.target):
            for s in searchers:
                t0 = time.perf_counter()
                with self._locks[s.model.label]:
                    vector = s.embed(q)
                t1 = time.perf_counter()
                rankings.append(s.query(vector, depth, documents=False))
                embed_ms.append((t1 - t0) * 1000)
                store_ms.append((time.perf_counter() - t1) * 1000)
            t2 = time.perf_counter()
            shown = [h.id for hits in rankings for h in hits[:k]]
            texts = searchers[-1].documents(shown)
            fetch_ms = (time.perf_counter() - t2) * 1000
        store_ms[-1] += fetch_ms
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
            columns.append(Column(s.model.label, s.model.spec.ref, rows, relevant_rank, embed_ms[i], store_ms[i]))
        return Answer(
            question=q, dim=dim, k=k, depth=depth, columns=columns, relevant=sorted(gold), terms=sorted(query_terms(q)),
            embed_ms=sum(embed_ms), store_ms=sum(store_ms), total_ms=(time.perf_counter() - start) * 1000,
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
    detail = "; ".join(f"{esc(c.label)}: embedding {_ms(c.embed_ms)}, store {_ms(c.store_ms)}" for c in answer.columns)
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
            f"(▲ up, ▼ down, = same rank; new/out: below #{answer.depth} in the other model). Highlighted: the question's words.</div>"
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
        f'<div class="re-facts"><table class="re-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f'<div class="re-note">{esc(service.target.describe())}. {note(text.strip())}</div></div>'
    )


def render_quality(service: RetrievalService) -> str:
    q = service.quality
    if q is None and service.quality_plot is None:
        return f'<div class="re-note">{note("No held-out report for this model (`job run` / `job evaluate` write it into a run directory).")}</div>'
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
