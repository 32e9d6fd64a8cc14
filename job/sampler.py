"""A no-duplicates batch sampler that checks duplicates on integer ids instead of row lookups.

sentence-transformers' ``NoDuplicatesBatchSampler`` reads every row back from the Arrow dataset
(``dataset[i]``) and builds a set of strings for it, on every epoch; on CPU that is most of the
data pipeline's time. This subclass reads each column once, maps every distinct value to an
integer id, and hands the parent's own batching loop those ids through its precomputed-values
path. Same shuffle, same greedy filling, so the batches are identical (a test checks this).
"""

from __future__ import annotations

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
