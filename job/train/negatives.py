"""Hard negatives for MultipleNegativesRankingLoss: given with the data, mined with the base model before
training, or both.

Every training row carries the same number of negatives, ``k``: the ``--hard-negatives`` asked for, or more
when the data gives some pair more than that. A pair's given negatives come first, exactly as prepared
(``data/train.jsonl``'s ``negatives``); they are never re-mined. With ``--hard-negatives N`` > 0, mining fills
only the places the given ones leave, and only for the questions that need it.

Mining uses sentence-transformers' ``mine_hard_negatives`` over the *training* passages (positives and given
negatives; test passages never become training negatives). False negatives are guarded against in three ways:
identical passages share one corpus entry and every positive of a question is excluded for it (so neither a
duplicate of the positive nor another positive of the same question is its negative); a relative margin keeps
only candidates scoring clearly below the positive (NV-Retriever's TopK-PercPos: with margin 0.05 a negative must
score under 95 % of the positive's score); and ``range_min`` skips each question's top-ranked passages, which
are the likeliest to be unlabelled positives. The library's positive-vs-negative score statistics (the table it
prints) are kept in the returned summary, which training.json records.

Pairs for which too few candidates pass the margin get random training passages instead (a documented
fallback, counted in the training summary), so no pair is silently dropped. Without mining, a pair with fewer
given negatives than ``k`` repeats its own (as FlagEmbedding does), or takes random passages when it has none.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import re
import warnings
from collections import defaultdict
from typing import Any

from job.data.prepare import Pair
from job.errors import JobError

_STATISTICS = ("count", "mean", "median", "std", "min", "25%", "50%", "75%", "max")
_NOTES = ("Skipped ", "Could not find ", "Found ", "Setting range_max ")
_SET_DEPTH = re.compile(r"Setting range_max to (\d+)")


def negatives_per_pair(pairs: list[Pair], asked: int) -> int:
    """How many negatives each training row carries: ``--hard-negatives``, or the most given for one pair."""
    return max(asked, max((len(p.negatives) for p in pairs), default=0))


def add_hard_negatives(
    pairs: list[Pair],
    model,
    num_negatives: int,
    *,
    margin: float = 0.05,
    depth: int = 0,
    range_min: int = 0,
    seed: int = 42,
    batch_size: int = 64,
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
):
    """Return ``(dataset with anchor, positive, negative_1..k, stats)``, ``k`` the larger of ``num_negatives``
    and the most negatives given for one pair. ``num_negatives`` 0: no mining (given negatives only).
    ``depth``: how many of each question's top-ranked passages are looked through (0: the library's default);
    ``range_min``: how many of the top-ranked ones are skipped."""
    import datasets

    k = negatives_per_pair(pairs, num_negatives)
    positives_of: dict[str, set[str]] = defaultdict(set)
    for p in pairs:
        positives_of[p.question].add(p.passage)
    passages = list(dict.fromkeys(p.passage for p in pairs))
    candidates = list(dict.fromkeys(passages + [n for p in pairs for n in p.negatives]))
    short = {p.question for p in pairs if len(p.negatives) < k}
    mined: dict[tuple[str, str], list[str]] = {}
    scores = None
    mined_rows = [p for p in pairs if p.question in short] if num_negatives else []
    if mined_rows:
        if len(candidates) <= k:
            raise JobError(
                f"Hard-negative mining asks for {k} negatives per pair, but the training split has only "
                f"{len(candidates)} distinct passages.",
                f"lower --hard-negatives to at most {len(candidates) - 1} (or 0 to turn mining off), or add data.",
            )
        if depth and depth - range_min < k:
            raise JobError(
                f"--hard-negative-depth {depth} less the {range_min} top-ranked passages --hard-negative-range-min "
                f"skips leaves fewer than the {k} negatives per pair to mine"
                + (f" ({k} given for some pair)." if k > num_negatives else "."),
                f"raise --hard-negative-depth to at least {range_min + 10 * k + 1}, or pass 0 (the library's default).",
            )
        mined, scores = _mine(
            mined_rows, model, k, candidates, margin=margin, depth=depth, range_min=range_min,
            batch_size=batch_size, query_prompt=query_prompt, passage_prompt=passage_prompt,
        )  # fmt: skip
    rng = random.Random(seed)
    negative_columns = [f"negative_{i}" for i in range(1, k + 1)]
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], **{c: [] for c in negative_columns}}
    counts = {"mined": 0, "fallback": 0, "repeated": 0}
    for p in pairs:
        negatives = list(p.negatives)
        missing = k - len(negatives)
        if missing and num_negatives:
            found = mined.get((p.question, p.passage))
            if found is not None:
                counts["mined"] += 1
                negatives += [n for n in found if n not in p.negatives][:missing]
            else:
                counts["fallback"] += 1
                negatives += _random_fill(rng, passages, positives_of[p.question] | set(p.negatives), missing)
        elif missing and negatives:
            counts["repeated"] += 1
            negatives += [negatives[i % len(negatives)] for i in range(missing)]
        elif missing:
            counts["fallback"] += 1
            negatives += _random_fill(rng, candidates, positives_of[p.question], missing)
        columns["anchor"].append(p.question)
        columns["positive"].append(p.passage)
        for c, neg in zip(negative_columns, negatives):
            columns[c].append(neg)
    stats: dict[str, Any] = {
        "negatives_per_pair": k,
        "relative_margin": margin,
        "range_min": range_min,
        "depth": depth or _library_depth(scores, range_min),
        "pairs_with_mined_negatives": counts["mined"],
        "pairs_with_random_fallback": counts["fallback"],
    }
    given = [len(p.negatives) for p in pairs if p.negatives]
    if given:
        stats.update(
            pairs_with_given_negatives=len(given),
            given_negatives_used=sum(given),
            pairs_mining_looked_at=len(mined_rows),
            pairs_repeating_their_given_negatives=counts["repeated"],
        )
    if not num_negatives:
        stats["mining"] = "off (--hard-negatives 0): given negatives only"
    if scores is not None:
        stats["mining_scores"] = scores
    return datasets.Dataset.from_dict(columns), stats


def _random_fill(rng: random.Random, population: list[str], excluded: set[str], missing: int) -> list[str]:
    """``missing`` random passages of ``population`` outside ``excluded``; repeated when there are too few."""
    pool = [x for x in population if x not in excluded]
    if not pool:
        raise JobError(
            "A training pair has no passage left to serve as its negative (every training passage is one of its "
            "question's positives or given negatives).",
            "add data, or turn hard negatives off with --hard-negatives 0 and --negative-columns off.",
        )
    picked = rng.sample(pool, min(missing, len(pool)))
    return [picked[i % len(picked)] for i in range(missing)]


def _mine(
    rows: list[Pair], model, k: int, corpus: list[str], *, margin, depth, range_min, batch_size, query_prompt,
    passage_prompt,
) -> tuple[dict[tuple[str, str], list[str]], dict[str, Any]]:  # fmt: skip
    """(anchor, positive) -> k mined negatives (pairs with too few candidates are left out), and the library's
    score statistics, read from the table ``mine_hard_negatives`` prints."""
    import datasets
    from sentence_transformers.util import mine_hard_negatives

    from job.progress import silenced

    base = datasets.Dataset.from_dict({"anchor": [p.question for p in rows], "positive": [p.passage for p in rows]})
    printed = io.StringIO()
    # its encoding and scoring bars: the train step prints one line for mining instead; its statistics table
    # (printed): kept for training.json
    with silenced(), contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch.std of one score: "degrees of freedom is <= 0"
        mined = mine_hard_negatives(
            base,
            model,
            anchor_column_name="anchor",
            positive_column_name="positive",
            corpus=corpus,
            num_negatives=k,
            relative_margin=margin,
            range_min=range_min,
            range_max=depth or None,
            sampling_strategy="top",
            output_format="n-tuple",
            batch_size=batch_size,
            query_prompt=query_prompt,
            corpus_prompt=passage_prompt,
            verbose=True,
        )
    negative_columns = [f"negative_{i}" for i in range(1, k + 1)]
    found = {(row["anchor"], row["positive"]): [row[c] for c in negative_columns] for row in mined}
    return found, library_statistics(printed.getvalue())


def _library_depth(scores: dict[str, Any] | None, range_min: int) -> str:
    """The depth the library chose (its note says), for the summary."""
    how = f"{range_min} skipped + 10 per negative + the most positives of one question"
    for note in (scores or {}).get("notes", []):
        if found := _SET_DEPTH.match(note):
            return f"library default: {found[1]} ({how})"
    return f"library default ({how})"


def library_statistics(text: str) -> dict[str, Any]:
    """sentence-transformers' printed mining report as data: ``{"positive": {"count": ..., "mean": ...},
    "negative": {...}, "difference": {...}, "notes": [...]}`` (positive: the question-positive scores; negative:
    the mined negatives' scores; difference: positive minus negative, per mined negative; notes: the library's
    lines on skipped candidates and pairs without enough negatives)."""
    out: dict[str, Any] = {}
    header: list[str] = []
    notes = []
    for line in text.split("\n"):
        cells = line.split()
        if cells[:1] == ["Metric"]:
            header = [c.lower() for c in cells[1:]]
        elif header and cells and cells[0].lower() in _STATISTICS:
            for name, value in zip(header, cells[1:]):
                out.setdefault(name, {})[cells[0].lower()] = _number(value)
        elif line.startswith(_NOTES):
            notes.append(line.strip())
    out["notes"] = notes
    return out


def _number(text: str) -> float | int | None:
    """A printed statistic as a number; None for nan / inf (an empty set of scores), which JSON cannot hold."""
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() and "." not in text else value
