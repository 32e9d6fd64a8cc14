"""Batch building that names the training pair it failed on.

The collator (tokenization, padding) runs in DataLoader worker processes when
``--dataloader-workers`` > 0. When it raises there, PyTorch re-raises the error in the main
process with the worker's traceback, but nothing says which training pair caused it; when a worker
dies outright (a segfault in native code, the kernel's out-of-memory killer) there is not even a
traceback. :class:`RowNamingCollator` wraps the real collator so that

* an exception names the pair that fails on its own (the batch is retried row by row to find it),
  by its line in the prepared training file and the start of its question;
* in a worker, the pairs of the batch being built are written to a small per-worker file first and
  cleared when the batch is done, so a worker that dies leaves the batch it died on behind.

:func:`raise_for_batch_failure` turns either case into a :class:`~job.errors.JobError`;
:func:`failing_pair_named` does the same for a failure before training starts (the trainer
tokenizes the data for its model card when it is built).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from job.errors import JobError

_FIX = (
    "correct or remove that pair in your data and rerun `job run` (prepared data is rebuilt when its "
    "input changes); `job train --resume` continues from the last checkpoint"
)


class BatchError(RuntimeError):
    """A batch could not be built; the message names the pair. One-argument constructor, so that
    PyTorch can re-raise it in the main process when it happens in a worker."""


def _excerpt(text: Any, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class RowNamingCollator:
    """Calls ``inner(features)``; on failure raises :class:`BatchError` naming the pair."""

    def __init__(
        self, inner: Callable, pair_index: dict[tuple[str, str], int], source: str, trace_dir: Path | None = None
    ):
        self.inner = inner
        self.pair_index = pair_index  # (question, passage) -> 1-based line of the prepared file
        self.source = source
        self.trace_dir = trace_dir

    def __getattr__(self, name: str) -> Any:
        # attributes of the wrapped collator (preprocess_fn, max_length, ...) stay reachable
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def line_of(self, feature: dict[str, Any]) -> int | None:
        return self.pair_index.get((str(feature.get("anchor")), str(feature.get("positive"))))

    def describe(self, feature: dict[str, Any]) -> str:
        line = self.line_of(feature)
        where = f"line {line} of {self.source}" if line is not None else f"a pair of {self.source}"
        return f"{where} (question {_excerpt(feature.get('anchor', ''))})"

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        trace = self._trace_file()
        if trace is not None:
            trace.write_text(" ".join(str(self.line_of(f)) for f in features))
        try:
            batch = self.inner(features)
        except Exception as batch_error:  # noqa: BLE001 - re-raised with the pair named
            raise BatchError(self._name_culprit(features, batch_error)) from batch_error
        if trace is not None:
            trace.write_text("")
        return batch

    def _trace_file(self) -> Path | None:
        if self.trace_dir is None:
            return None
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        return None if info is None else self.trace_dir / f"worker-{info.id}.lines"

    def _name_culprit(self, features: Sequence[dict[str, Any]], batch_error: Exception) -> str:
        for feature in features:
            try:
                self.inner([feature])
            except Exception as error:  # noqa: BLE001
                return f"Building a training batch failed on {self.describe(feature)}: {_one_line(error)}."
        lines = sorted(str(n) for n in (self.line_of(f) for f in features) if n is not None)
        return (
            f"Building a training batch failed ({_one_line(batch_error)}); every pair of it builds on its own, "
            f"so it is their combination: lines {', '.join(lines) or '?'} of {self.source}."
        )


def failing_pair(pairs: Sequence[Any], preprocess_fn: Callable) -> tuple[int, str, Exception] | None:
    """The first (1-based line, question, error) whose question, passage or a given negative ``preprocess_fn``
    rejects."""
    for line, pair in enumerate(pairs, 1):
        for text in (pair.question, pair.passage, *getattr(pair, "negatives", ())):
            try:
                preprocess_fn([text])
            except Exception as error:  # noqa: BLE001
                return line, pair.question, error
    return None


def raise_for_failing_pair(pairs: Sequence[Any], preprocess_fn: Callable, source: str) -> None:
    """After a failure outside the collator (e.g. the trainer's model-card statistics tokenize the
    data at start-up): a :class:`JobError` naming the pair that fails on its own, if there is one."""
    found = failing_pair(pairs, preprocess_fn)
    if found is not None:
        line, question, error = found
        raise JobError(
            f"Tokenizing the training data failed on line {line} of {source} (question {_excerpt(question)}): "
            f"{_one_line(error)}.",
            _FIX,
        ) from None


@contextmanager
def failing_pair_named(pairs: Sequence[Any], preprocess_fn: Callable, source: str):
    """Around work that tokenizes the training pairs outside the collator: an unexpected error
    becomes a :class:`JobError` naming the pair that fails on its own, if there is one."""
    try:
        yield
    except JobError:
        raise
    except Exception:
        raise_for_failing_pair(pairs, preprocess_fn, source)
        raise


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


_WORKER_DIED = re.compile(r"DataLoader worker \(pid\(?s?\)? ?[\d, ]+\) (?:exited unexpectedly|is killed by signal)")


@contextmanager
def worker_signals_paused():
    """PyTorch's SIGCHLD handler raises "DataLoader worker ... is killed" at whatever line the main
    process is on when a worker dies, which can be in the middle of handling the first sign of it
    (a reset connection while fetching a batch). Pause it while a failure is being explained."""
    try:
        previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except (AttributeError, ValueError):  # no SIGCHLD (Windows), or not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


def _pending_lines(trace_dir: Path | None) -> list[str]:
    """Lines of the batches that workers had started but not finished."""
    if trace_dir is None or not trace_dir.is_dir():
        return []
    pending = [p.read_text().split() for p in sorted(trace_dir.glob("worker-*.lines"))]
    return sorted({n for batch in pending for n in batch if n != "None"}, key=int)


def raise_for_batch_failure(error: BaseException, trace_dir: Path | None, source: str) -> None:
    """Re-raise ``error`` as a :class:`JobError` when it is a batch-building failure; else return."""
    text = str(error)
    if isinstance(error, BatchError):
        # In a worker, PyTorch wraps the message in its traceback; our message is the last line.
        marker = "BatchError: "
        message = text.rsplit(marker, 1)[-1].strip() if marker in text else text.strip()
        raise JobError(message, _FIX) from None
    lines = _pending_lines(trace_dir)
    # A worker that dies shows up as torch's RuntimeError, or first as a broken connection while
    # the main process fetches a batch the dead worker had shared.
    died = (isinstance(error, RuntimeError) and _WORKER_DIED.search(text)) or (
        isinstance(error, (OSError, EOFError)) and bool(lines)
    )
    if died:
        # Reap the dead worker while SIGCHLD is paused (see worker_signals_paused), so that
        # torch's handler does not raise about it again after this error is on its way.
        import multiprocessing

        for process in multiprocessing.active_children():
            process.join(timeout=0.3)
        held = (
            f" It was building a batch of lines {', '.join(lines)} of {source}; one of them is the likely cause."
            if lines
            else ""
        )
        raise JobError(
            f"A DataLoader worker process died while building training batches ({_one_line(error)}).{held}",
            "a worker killed by signal 9 usually ran out of host memory: lower --dataloader-workers or --batch-size; "
            "otherwise check that pair, or run with --dataloader-workers 0 to get the error in the main process. "
            "`job train --resume` continues from the last checkpoint.",
        ) from None
