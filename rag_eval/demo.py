"""`rag-eval query`: the retrieval demo in the terminal. The top-k passages with scores and ids for a question, from
one model's collection, or (``--compare``) the baseline's beside the fine-tuned model's, with the
passages the fine-tuned model ranks higher marked."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable

from rag_eval.index import Hit
from rag_eval.searcher import RANK_DEPTH, Searcher

__all__ = ["Hit", "show"]
Echo = Callable[[str], None]


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def mark(tuned_rank: int, base_rank: int | None) -> str:
    """'+' the fine-tuned model ranks the passage higher than the baseline, '=' the same, '-' lower."""
    if base_rank is None or tuned_rank < base_rank:
        return "+"
    return "=" if tuned_rank == base_rank else "-"


def _rank_text(rank: int | None) -> str:
    return f"#{rank}" if rank is not None else f">{RANK_DEPTH}"


def show(
    question: str,
    searchers: list[Searcher],
    k: int,
    *,
    relevant: Iterable[str] = (),
    echo: Echo = print,
    width: int | None = None,
) -> list[list[Hit]]:
    """Print the results for one question; with two searchers (baseline, fine-tuned), side by side."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    gold = set(relevant)
    echo(f"Q: {question}")
    if len(searchers) == 1:
        s = searchers[0]
        hits = s.search(question, k)
        echo(f"{s.model.label} ({s.model.spec.ref}), dim {s.dim}, top {k}:")
        for h in hits:
            star = "*" if h.id in gold else " "
            head = f"{h.rank:>3}. {h.score:.4f} {h.id:<10}{star} "
            echo(head + _clip(h.text, max(20, width - len(head))))
        if gold:
            echo("   * relevant to this question in the evaluation data")
        return [hits]
    base, tuned = searchers
    depth = max(k, RANK_DEPTH)
    base_hits, tuned_hits = base.search(question, depth), tuned.search(question, depth)
    base_rank = {h.id: h.rank for h in base_hits}
    tuned_rank = {h.id: h.rank for h in tuned_hits}
    col = max(30, (width - 3) // 2)
    shown = min(k, len(tuned_hits), len(base_hits))
    w = max(len(h.id) for h in tuned_hits[:shown] + base_hits[:shown])
    echo(
        f"dim {tuned.dim}, top {k}. Left: {tuned.model.label} ({tuned.model.spec.ref}). "
        f"Right: {base.model.label} ({base.model.spec.ref})."
    )
    left_head = f"{'rank':>4} {'score':<5} {'id':<{w}} mark {base.model.label[:4]:>4}"
    right_head = f"{'score':<5} {'id':<{w}}   {tuned.model.label[:4]:>4}"
    echo(f"{left_head + '  passage':<{col}} | {right_head}  passage")
    for i in range(shown):
        t, b = tuned_hits[i], base_hits[i]
        t_head = (
            f"{t.rank:>3}. {t.score:.3f} {t.id:<{w}} {mark(t.rank, base_rank.get(t.id)):>2}"
            f"{'*' if t.id in gold else ' '}  "
            f"{_rank_text(base_rank.get(t.id)):>4}  "
        )
        b_head = f"{b.score:.3f} {b.id:<{w}} {'*' if b.id in gold else ' '} {_rank_text(tuned_rank.get(b.id)):>4}  "
        left = t_head + _clip(t.text, max(0, col - len(t_head)))
        echo(f"{left:<{col}} | {b_head}{_clip(b.text, max(0, col - len(b_head)))}")
    better = sum(1 for h in tuned_hits[:k] if mark(h.rank, base_rank.get(h.id)) == "+")
    echo(
        f"mark: + {tuned.model.label} ranks the passage higher than {base.model.label} does ({better} of {shown}), "
        "= same rank, "
        f"- lower; '{base.model.label[:4]}'/'{tuned.model.label[:4]}': the other model's rank"
        + ("; * relevant in the evaluation data" if gold else "")
    )
    return [base_hits[:k], tuned_hits[:k]]


def interactive(lines: Iterable[str], answer: Callable[[str], object], prompt: Callable[[], None] | None = None) -> int:
    """Answer every non-empty line until EOF; returns how many questions were answered."""
    n = 0
    if prompt:
        prompt()
    for line in lines:
        question = line.strip()
        if question:
            answer(question)
            n += 1
        if prompt:
            prompt()
    return n
