"""The batch samplers: sentence-transformers' hashed no-duplicates sampler as the job uses it, and the
length-grouped one (every no-duplicates rule kept, less padding)."""

from __future__ import annotations

import datasets
import pytest
import torch
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

from job.train.sampler import LengthGroupedBatchSampler, no_duplicates_sampler


def _dataset():
    # 12 passages, 5 questions each; one question repeated with another passage; one question
    # equal to a passage text (a cross-column duplicate).
    anchors, positives = [], []
    for p in range(12):
        for q in range(5):
            anchors.append(f"question {q} about topic {p}")
            positives.append(f"passage {p}")
    anchors.append("question 0 about topic 0")
    positives.append("passage 11")
    anchors.append("passage 3")
    positives.append("passage 7")
    return datasets.Dataset.from_dict({"anchor": anchors, "positive": positives})


@pytest.mark.parametrize("batch_size,drop_last", [(8, False), (8, True), (16, False)])
def test_hashed_sampler_gives_the_plain_samplers_batches(batch_size, drop_last):
    """The job's default (values hashed once) batches exactly like the row-lookup sampler."""
    ds = _dataset()
    ours = no_duplicates_sampler()(ds, batch_size=batch_size, drop_last=drop_last, generator=torch.Generator(), seed=3)
    plain = NoDuplicatesBatchSampler(
        ds, batch_size=batch_size, drop_last=drop_last, generator=torch.Generator(), seed=3
    )
    for epoch in range(3):
        ours.set_epoch(epoch)
        plain.set_epoch(epoch)
        got = list(ours)
        assert got == list(plain) and len(got) >= 1
    for batch in got:
        texts = [t for i in batch for t in (ds[i]["anchor"], ds[i]["positive"])]
        assert len(texts) == len(set(texts))  # no value twice in a batch, across columns


def _varied_dataset(n=400, seed=0):
    import random

    rng = random.Random(seed)
    anchors = [f"question {i}" for i in range(n)]
    # long-tailed lengths, like real passages (financial-qa-10k: mean 46 tokens, p99 158)
    positives = [f"passage {i} " + "word " * int(rng.lognormvariate(3.3, 0.6)) for i in range(n)]
    negatives = [positives[(i * 7 + 3) % n] for i in range(n)]
    anchors[5] = anchors[6]  # a repeated question
    negatives[10] = positives[11]  # a negative that is another row's positive
    return datasets.Dataset.from_dict({"anchor": anchors, "positive": positives, "negative": negatives})


def _padded_chars(ds, batches):
    return sum(
        len(batch) * max(len(ds[i][column]) for i in batch) for batch in batches for column in ("positive", "negative")
    )


@pytest.mark.parametrize("drop_last", [False, True])
def test_length_grouped_batches_keep_every_rule(drop_last):
    ds = _varied_dataset()
    sampler = LengthGroupedBatchSampler(ds, 16, drop_last, generator=torch.Generator(), seed=1, pool_batches=4)
    first = list(sampler)
    assert len(first) >= len(sampler)
    if not drop_last:  # (with drop_last, a pass that falls short is topped up with repeats, as upstream)
        seen = [i for batch in first for i in batch]
        assert sorted(seen) == list(range(len(ds)))  # every row exactly once
    for batch in first:
        texts = [t for i in batch for t in ds[i].values()]
        assert len(texts) == len(set(texts))
    assert list(sampler) == first  # same seed and epoch, same batches
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_length_grouping_cuts_padding():
    ds = _varied_dataset()
    random_batches = list(no_duplicates_sampler()(ds, 16, False, generator=torch.Generator(), seed=1))
    grouped = list(LengthGroupedBatchSampler(ds, 16, False, generator=torch.Generator(), seed=1, pool_batches=8))
    assert _padded_chars(ds, grouped) < 0.8 * _padded_chars(ds, random_batches)
