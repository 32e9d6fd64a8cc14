"""Batch samplers for in-batch-negative losses: no text twice in a batch.

* :func:`no_duplicates_sampler`: sentence-transformers' own ``NoDuplicatesBatchSampler`` with its
  values hashed once (``precompute_hashes``, the ``NO_DUPLICATES_HASHED`` choice), in one process:
  measured as fast as the job's former id-based sampler (bench/throughput.py --parts samplers), so
  the library's is used.
* :class:`LengthGroupedBatchSampler`: the same no-duplicates rule, with each batch's passages of
  similar length (less padding, fewer tokens per step); built on the library's public
  ``DefaultBatchSampler`` base, with no private method overridden.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler, NoDuplicatesBatchSampler

_NOT_CHECKED = {"dataset_name"}
_MAX_EXTRA_PASSES = 8


def no_duplicates_sampler():
    """sentence-transformers' hashed no-duplicates sampler, hashing in this process (datasets.map
    workers cost more than they save on text pairs)."""
    return functools.partial(NoDuplicatesBatchSampler, precompute_hashes=True, precompute_num_proc=1)


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """No-duplicates batches whose passages have similar lengths, so that little of each step is padding.

    Each column of a batch is padded to its longest text, and MultipleNegativesRankingLoss
    encodes every column in full: with random batches of financial-qa-10k contexts, two thirds of
    the tokens a step computes are padding. Like transformers' ``group_by_length``, every epoch
    shuffles the rows, cuts the shuffled order into pools of ``pool_batches`` batches, sorts each pool
    by the row's longest passage (positive or mined negative), fills no-duplicates batches along that
    order (a row that would repeat a text already in the batch waits for a later one, as in
    sentence-transformers' sampler), and shuffles the order of the batches. Rows still meet different
    neighbours every epoch; what changes is that a batch's in-batch negatives have similar lengths.

    ``text_lengths`` maps a list of texts to their lengths in tokens (the job passes the model's
    tokenizer); without it, characters stand in (a weaker proxy: digits and tables tokenize densely).
    """

    def __init__(
        self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0, pool_batches=16,
        text_lengths: Callable[[list[str]], Sequence[int]] | None = None,
    ):  # fmt: skip
        super().__init__(
            dataset, batch_size, drop_last, valid_label_columns=valid_label_columns, generator=generator, seed=seed
        )
        labels = set(dataset.column_names) & set(self.valid_label_columns or [])
        self.dataset = dataset.remove_columns(list(labels)) if labels else dataset
        self.pool_batches = pool_batches
        self.text_lengths = text_lengths or (lambda texts: [len(t) for t in texts])
        self._values: list[tuple[int, ...]] | None = None
        self._lengths: np.ndarray | None = None

    def row_values(self) -> list[tuple[int, ...]]:
        """Each row's distinct texts as integer ids (equal texts, equal ids), across all columns."""
        if self._values is None:
            ids: dict[str, int] = {}
            columns = [c for c in self.dataset.column_names if c not in _NOT_CHECKED]
            per_column = [[ids.setdefault(str(v), len(ids)) for v in self.dataset[c]] for c in columns]
            self._values = [tuple(dict.fromkeys(row)) for row in zip(*per_column)]
        return self._values

    def row_lengths(self) -> np.ndarray:
        """Length of each row's longest passage (every column but the first, the question)."""
        if self._lengths is None:
            columns = [c for c in self.dataset.column_names if c not in _NOT_CHECKED]
            passages = columns[1:] or columns
            self._lengths = np.max([self.text_lengths([str(v) for v in self.dataset[c]]) for c in passages], axis=0)
        return self._lengths

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        if self.generator is not None and self.seed is not None:
            self.generator.manual_seed(self.seed + self.epoch)
        if len(self.dataset) == 0:
            return
        expected, yielded = len(self), 0
        for batch in self._one_pass():  # the first pass is never cut short (drop_last=False may yield more)
            yield batch
            yielded += 1
        # with drop_last and many repeated texts, one pass can fall short of len(): top it up with
        # further passes (repeating rows), as sentence-transformers' sampler does
        for _ in range(_MAX_EXTRA_PASSES):
            if yielded >= expected or yielded == 0:
                return
            for batch in self._one_pass():
                yield batch
                yielded += 1
                if yielded >= expected:
                    return

    def _one_pass(self) -> list[list[int]]:
        rows = len(self.dataset)
        shuffled = torch.randperm(rows, generator=self.generator).numpy()
        lengths = self.row_lengths()
        pool = max(1, self.pool_batches) * self.batch_size
        chunks = (shuffled[s : s + pool] for s in range(0, rows, pool))
        order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")] for chunk in chunks])
        batches = _greedy_batches(order, self.batch_size, self.drop_last, self.row_values())
        return [batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist()]


def _greedy_batches(
    order: np.ndarray, batch_size: int, drop_last: bool, values: list[tuple[int, ...]]
) -> list[list[int]]:
    """Fill batches along ``order``; a row that would repeat a value already in the batch waits (in
    order) for a later batch. A singly linked list over the order keeps this linear in practice."""
    out = []
    next_position = np.arange(1, len(order) + 1)
    next_position[-1] = -1
    head = 0
    while head != -1:
        seen: set[int] = set()
        batch: list[int] = []
        current, previous = head, -1
        while current != -1:
            following = int(next_position[current])
            index = int(order[current])
            row = values[index]
            if any(v in seen for v in row):
                previous, current = current, following
                continue
            batch.append(index)
            if previous == -1:
                head = following
            else:
                next_position[previous] = following
            if len(batch) == batch_size:
                break
            seen.update(row)
            current = following
        if len(batch) == batch_size or not drop_last:
            out.append(batch)
    return out
