"""`rag-eval serve`'s page: the HTML of answers, index facts and the quality report, and its CSS.

Passages, questions, ids and model names are user data: every one goes through :func:`esc`
(HTML-escaped, and ``$``/``{``/``}`` too, so no template sees them), so a passage holding ``<script>``
or ``<img onerror=...>`` shows as text and never runs.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from rag_eval.service import WORD, Answer, Column, RetrievalService, Row, move, query_terms
from rag_eval.sources import FINETUNED

__all__ = ["query_terms", "render_answer", "render_error", "render_facts", "render_placeholder", "render_quality"]


def esc(value: Any) -> str:
    """HTML-escape user data for the page; also ``$``, ``{`` and ``}`` so that no template expands it."""
    return html.escape(str(value), quote=True).replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;")


def highlight(text: str, terms: set[str]) -> str:
    """``text`` escaped, with the words in ``terms`` wrapped in <mark> (matched on whole words, any case)."""
    out, pos = [], 0
    for m in WORD.finditer(text):
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
    scored_in = (
        (service.page.score_report or {}).get("store_label", "Chroma")
        if service.page.score_report
        else service.store.label
    )
    head = f"<th>dim</th><th>vectors</th><th>bytes/vector ({esc(service.precision)})</th><th>bytes/vector on disk</th>"
    head += "".join(
        f"<th>{esc(label)} ANN recall@10</th><th>{esc(label)} NDCG@10 {esc(scored_in)} / exact (Δ)</th>"
        for label in labels
    )
    rows = []
    for f in service.facts:
        counts = sorted(set(f.vectors.values()))
        disk = [d for label in labels if (d := f.scored.get(label, {}).get("bytes_per_vector")) is not None]
        cells = [str(f.dim), " / ".join(map(str, counts)), str(f.raw_bytes), f"{max(disk):,.0f}" if disk else "n/a"]
        for label in labels:
            s = f.scored.get(label)
            if not s:
                cells += ["n/a", "n/a"]
                continue
            cells.append(_num(s["ann_recall@10"], ".3f"))
            cells.append(
                f"{_num(s['ndcg_store'], '.4f')} / {_num(s['ndcg_exact'], '.4f')} ({_num(s['ndcg_delta'], '+.4f')})"
            )
        rows.append(f'<tr data-dim="{f.dim}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    text = service.page.score_note
    if service.page.score_report is None:
        text += (
            " Run `rag-eval score` with the same --model for ANN recall, size on disk and NDCG@10 through the store "
            "vs exact."
        )
    return (
        f'<div class="re-facts"><table class="re-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<div class="re-note">{esc(service.describe_search(public=True))}. {note(text.strip())}</div></div>'
    )


def render_quality(service: RetrievalService) -> str:
    q = service.page.quality
    if q is None and service.page.quality_plot is None:
        return (
            '<div class="re-note">'
            f"{note('No held-out report for this model (`job run` / `job evaluate` write it into a run directory).')}"
            "</div>"
        )
    parts = ['<div class="re-quality">']
    if service.page.quality_plot is not None:
        data = base64.b64encode(service.page.quality_plot).decode("ascii")
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
