"""One progress bar per long phase: the library bars that would nest inside or repeat beside ours are silenced.

sentence-transformers' ``mine_hard_negatives`` always shows its encoding and scoring bars, and the trainer's
model-card callback shows "Computing widget examples"; tqdm reads its ``TQDM_DISABLE`` setting once, at import,
so :func:`silenced` turns tqdm off for the duration of a block instead (every bar created inside is disabled).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partialmethod


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No tqdm bar created inside this block is shown (the job prints its own line for the phase)."""
    from tqdm import std

    original = std.tqdm.__init__
    std.tqdm.__init__ = partialmethod(original, disable=True)
    try:
        yield
    finally:
        std.tqdm.__init__ = original
