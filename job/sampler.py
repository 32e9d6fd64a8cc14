"""A no-duplicates batch sampler that checks duplicates on integer ids instead of row lookups.

sentence-transformers' ``NoDuplicatesBatchSampler`` reads every row back from the Arrow dataset
(``dataset[i]``) and builds a set of strings for it, on every epoch; on CPU that is most of the
data pipeline's time. This subclass reads each column once, maps every distinct value to an
integer id, and hands the parent's own batching loop those ids through its precomputed-values
path. Same shuffle, same greedy filling, so the batches are identical (a test checks this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

_NOT_CHECKED = {"dataset_name"}


class IdNoDuplicatesBatchSampler(NoDuplicatesBatchSampler):
    def __init__(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0, **_):
        super().__init__(
            dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns,
            generator=generator, seed=seed, precompute_hashes=False,
        )  # fmt: skip
        self.precompute_hashes = True  # take the parent's precomputed-values path, with our ids

    def _build_hashes(self) -> None:
        if self._row_hashes is not None:
            return
        ids: dict[str, int] = {}
        columns = [c for c in self.dataset.column_names if c not in _NOT_CHECKED]
        per_column = [[ids.setdefault(str(v), len(ids)) for v in self.dataset[c]] for c in columns]
        # A tuple of distinct ids per row: the parent checks `any(v in batch_values for v in row)`.
        self._row_hashes = [tuple(dict.fromkeys(row)) for row in zip(*per_column)]


class LengthGroupedBatchSampler(IdNoDuplicatesBatchSampler):
    """No-duplicates batches whose passages have similar lengths, so that little of each step is padding.

    Each column of a batch is padded to its longest text, and MultipleNegativesRankingLoss
    encodes every column in full: with random batches of financial-qa-10k contexts, two thirds of
    the tokens a step computes are padding. Like transformers' ``group_by_length``, every epoch
    shuffles the rows, cuts the shuffled order into pools of ``pool_batches`` batches, sorts each pool
    by the row's longest passage (positive or mined negative), fills no-duplicates batches along that
    order, and shuffles the order of the batches. Rows still meet different neighbours every epoch;
    what changes is that a batch's in-batch negatives have similar lengths.

    ``text_lengths`` maps a list of texts to their lengths in tokens (the job passes the model's
    tokenizer); without it, characters stand in (a weaker proxy: digits and tables tokenize densely).
    """

    def __init__(
        self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0, pool_batches=16,
        text_lengths: Callable[[list[str]], Sequence[int]] | None = None, **_,
    ):  # fmt: skip
        super().__init__(dataset, batch_size, drop_last, valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        self.pool_batches = pool_batches
        self.text_lengths = text_lengths or (lambda texts: [len(t) for t in texts])
        self._lengths: np.ndarray | None = None

    def row_lengths(self) -> np.ndarray:
        """Length of each row's longest passage (every column but the first, the question)."""
        if self._lengths is None:
            columns = [c for c in self.dataset.column_names if c not in _NOT_CHECKED]
            passages = columns[1:] or columns
            self._lengths = np.max([self.text_lengths([str(v) for v in self.dataset[c]]) for c in passages], axis=0)
        return self._lengths

    def _iter_one_pass(self, get_sample_values, has_overlap):
        num_rows = len(self.dataset)
        shuffled = torch.randperm(num_rows, generator=self.generator).numpy()
        lengths = self.row_lengths()
        pool = max(1, self.pool_batches) * self.batch_size
        order = np.concatenate(
            [chunk[np.argsort(lengths[chunk], kind="stable")] for chunk in (shuffled[s : s + pool] for s in range(0, num_rows, pool))]
        )
        batches = list(_greedy_batches(order, self.batch_size, self.drop_last, get_sample_values, has_overlap))
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


def _greedy_batches(order: np.ndarray, batch_size: int, drop_last: bool, get_sample_values, has_overlap):
    """sentence-transformers' no-duplicates filling along a given order: a row that would repeat a value
    already in the batch waits (in order) for a later batch."""
    next_position = np.arange(1, len(order) + 1)
    next_position[-1] = -1
    head = 0
    while head != -1:
        values: set = set()
        batch: list[int] = []
        current, previous = head, -1
        while current != -1:
            following = int(next_position[current])
            index = int(order[current])
            sample = get_sample_values(index)
            if has_overlap(sample, values):
                previous, current = current, following
                continue
            batch.append(index)
            if previous == -1:
                head = following
            else:
                next_position[previous] = following
            if len(batch) == batch_size:
                break
            values.update(sample)
            current = following
        if len(batch) == batch_size or not drop_last:
            yield batch
