"""Hard negatives for MultipleNegativesRankingLoss, mined with the base model before training.

Mining uses sentence-transformers' ``mine_hard_negatives`` over the *training* passages only (test
passages never become training negatives). False negatives are guarded against in two ways:
identical passages share one corpus entry (so a duplicate of the positive is never its negative),
and a relative margin keeps only candidates scoring clearly below the positive (NV-Retriever's
TopK-PercPos: with margin 0.05 a negative must score under 95 % of the positive's score).

Pairs for which too few candidates pass the margin get random training passages instead (a
documented fallback, counted in the training summary), so no pair is silently dropped.
"""

from __future__ import annotations

import random
from typing import Any

from job.data import Pair
from job.errors import JobError


def add_hard_negatives(
    pairs: list[Pair],
    model,
    num_negatives: int,
    *,
    margin: float = 0.05,
    depth: int = 0,
    seed: int = 42,
    batch_size: int = 64,
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
):
    """Return ``(dataset with anchor, positive, negative_1..n, stats)``. ``depth``: how many of each
    question's top-ranked passages are looked through (0: the library's default)."""
    import datasets
    from sentence_transformers.util import mine_hard_negatives

    passages = list(dict.fromkeys(p.passage for p in pairs))
    if len(passages) <= num_negatives:
        raise JobError(
            f"Hard-negative mining asks for {num_negatives} negatives per pair, but the training split has only "
            f"{len(passages)} distinct passages.",
            f"lower --hard-negatives to at most {len(passages) - 1} (or 0 to turn mining off), or add data.",
        )
    base = datasets.Dataset.from_dict({"anchor": [p.question for p in pairs], "positive": [p.passage for p in pairs]})
    from job.progress import silenced

    with silenced():  # its encoding and scoring bars: the train step prints one line for mining instead
        mined = mine_hard_negatives(
            base,
            model,
            anchor_column_name="anchor",
            positive_column_name="positive",
            num_negatives=num_negatives,
            relative_margin=margin,
            range_max=depth or None,
            sampling_strategy="top",
            output_format="n-tuple",
            batch_size=batch_size,
            query_prompt=query_prompt,
            corpus_prompt=passage_prompt,
            verbose=False,
        )
    negative_columns = [f"negative_{i}" for i in range(1, num_negatives + 1)]
    found: dict[tuple[str, str], list[str]] = {
        (row["anchor"], row["positive"]): [row[c] for c in negative_columns] for row in mined
    }
    rng = random.Random(seed)
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], **{c: [] for c in negative_columns}}
    fallback = 0
    for p in pairs:
        negatives = found.get((p.question, p.passage))
        if negatives is None:
            fallback += 1
            negatives = rng.sample([x for x in passages if x != p.passage], num_negatives)
        columns["anchor"].append(p.question)
        columns["positive"].append(p.passage)
        for c, neg in zip(negative_columns, negatives):
            columns[c].append(neg)
    stats: dict[str, Any] = {
        "negatives_per_pair": num_negatives,
        "relative_margin": margin,
        "depth": depth or "library default (10 per negative + 1)",
        "pairs_with_mined_negatives": len(pairs) - fallback,
        "pairs_with_random_fallback": fallback,
    }
    return datasets.Dataset.from_dict(columns), stats
