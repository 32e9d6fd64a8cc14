"""Our id-based no-duplicates sampler must produce exactly sentence-transformers' batches."""

from __future__ import annotations

import datasets
import pytest
import torch
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

from job.sampler import IdNoDuplicatesBatchSampler


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
def test_same_batches_as_sentence_transformers(batch_size, drop_last):
    ds = _dataset()
    ours = IdNoDuplicatesBatchSampler(ds, batch_size, drop_last, generator=torch.Generator(), seed=3)
    theirs = NoDuplicatesBatchSampler(ds, batch_size=batch_size, drop_last=drop_last, generator=torch.Generator(), seed=3)
    for epoch in range(3):
        ours.set_epoch(epoch)
        theirs.set_epoch(epoch)
        got, want = list(ours), list(theirs)
        assert got == want
        assert len(got) >= 1
    for batch in got:
        texts = [t for i in batch for t in (ds[i]["anchor"], ds[i]["positive"])]
        assert len(texts) == len(set(texts))  # no value twice in a batch, across columns
