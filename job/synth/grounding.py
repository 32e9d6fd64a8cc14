"""The grounding filter of `job synthesize`: a question may name only what its own passage names.

A small generator copies its few-shot example into every domain ("How many pDCs did the company have in
2023?" for a biology abstract). The round-trip consistency filter does not catch it (the rare word still finds
the right chunk), so this check looks at the question's specific terms, each of which must occur in the passage:

- **numbers and years** (``2023``, ``1,450``, ``4.25``): compared without thousands separators;
- **names**: capitalised words past the question's first word, acronyms and mixed-case terms (``PML``, ``pDCs``,
  ``North America``);
- **domain phrases** the documents do not bring: a fixed list of phrases small models carry over from business
  text (``the company``, ``fiscal``), plus what the prompt's own examples are about (their names, numbers and
  subject words: whatever the prompt file is, its example's subject must not leak into other passages).

A term is grounded when its case-folded form, or its singular (a trailing ``s`` removed), occurs in the
case-folded passage. The first ungrounded term is the drop reason's evidence (recorded in ``pairs.dropped.jsonl``).
"""

from __future__ import annotations

import re

# Phrases a generator carries from business text into any domain; each must be in the passage to be asked.
DOMAIN_PHRASES = ("the company", "company's", "fiscal")
# Words that start or shape questions, never a name even when capitalised.
_QUESTION_WORDS = frozenset(
    "what which who whom whose when where why how is are was were do does did can could should would will has have "
    "had in on for to by according a an the of i".split()
)
# Common words that say nothing about a passage's subject (the example's content words are taken past these).
_STOP = frozenset(
    "a an the of in on at to for from by with and or but not no is are was were be been being do does did has have "
    "had this that these those it its their there what which who whom whose when where why how many much more most "
    "less least than as into over under about after before during between through each per all any some such own "
    "same other new end total number amount year years".split()
)
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[^\W_][\w'-]*", re.UNICODE)


def _norm_number(text: str) -> str:
    return text.replace(",", "").rstrip(".")


def _present(term: str, passage_folded: str) -> bool:
    t = term.casefold()
    if t in passage_folded:
        return True
    return len(t) > 3 and t.endswith("s") and t[:-1] in passage_folded


def example_terms(examples: list[tuple[str, str]]) -> tuple[str, ...]:
    """What a prompt's examples could leak: for each (example passage, example question), the question's names and
    numbers, and its content words (4+ letters) that its passage also holds: the example's subject."""
    terms: list[str] = []
    for passage, question in examples:
        folded = passage.casefold()
        terms += [n.casefold() for n in names(question)] + [_norm_number(n) for n in _NUMBER.findall(question)]
        for word in _WORD.findall(question):
            w = _bare(word).casefold()
            if len(w) >= 4 and w not in _STOP and w not in _QUESTION_WORDS and w in folded:
                terms.append(w)
    return tuple(dict.fromkeys(terms))


def _bare(word: str) -> str:
    """A word without a possessive ending (Apple's -> Apple)."""
    return re.sub(r"['’]s$", "", word)


def names(question: str) -> list[str]:
    """Capitalised words past the first, acronyms and mixed-case terms; neighbouring capitalised words joined."""
    words = _WORD.findall(question)
    out: list[str] = []
    run: list[str] = []
    for i, w in enumerate(words):
        caps = w[:1].isupper() and w.casefold() not in _QUESTION_WORDS and i > 0
        special = any(c.isupper() for c in w[1:])  # PML, pDCs, mRNA, iPhone
        if caps or special:
            run.append(_bare(w))
            continue
        if run:
            out.append(" ".join(run))
            run = []
    if run:
        out.append(" ".join(run))
    return out


def ungrounded_term(question: str, passage: str, extra_phrases: tuple[str, ...] = ()) -> str | None:
    """The first term of ``question`` that ``passage`` does not contain (a number, a name, a domain phrase, a word of
    the prompt's example), or None when the question is grounded."""
    folded = passage.casefold()
    numbers = {_norm_number(n) for n in _NUMBER.findall(passage)}
    for n in _NUMBER.findall(question):
        if _norm_number(n) not in numbers:
            return n
    for name in names(question):
        if not _present(name, folded) and not all(_present(part, folded) for part in name.split()):
            return name
    q_folded = question.casefold()
    q_words = {w.casefold() for w in _WORD.findall(question)} | {_bare(w).casefold() for w in _WORD.findall(question)}
    for phrase in (*DOMAIN_PHRASES, *extra_phrases):
        hit = phrase in q_words if " " not in phrase else re.search(rf"\b{re.escape(phrase)}\b", q_folded)
        if hit and not _present(phrase, folded):
            return phrase
    return None
