"""The batching pieces behind `rag-eval serve`: a thread that runs a function over every item waiting
(:class:`Stage`), replies that settle a whole batch with one wake-up of each waiting event loop
(:class:`Reply`, :func:`settle`), per-stage counters (:class:`StageStats`) and a small thread-safe LRU map."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass
class StageStats:
    """What a stage did since it started (or since :meth:`Stage.reset`): batches, items and busy seconds."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    busy_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        mean = self.items / self.batches if self.batches else 0.0
        return {"batches": self.batches, "items": self.items, "mean_batch": round(mean, 2), "largest": self.largest,
                "busy_s": round(self.busy_s, 3)}  # fmt: skip


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the operating system too (Linux: the first 15 bytes), so that ``top -H``
    and /proc/PID/task/*/comm tell the stages apart (bench/serve_load.py reads the CPU each used). Best effort."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class Stage:
    """Runs ``fn`` on its own thread over batches of whatever items are waiting (at most ``max_batch``).

    Concurrent requests do not each pay a full call: while one batch runs, the next items queue up and go
    through together (on CPU a batch of 16 short questions through MiniLM, or 16 queries to a Chroma
    collection, costs a few times one, not 16 times). ``fn`` delivers its own results (the items carry their
    replies); if it raises, ``fail(batch, exc)`` is called, so that every waiting request gets the error."""

    def __init__(
        self, name: str, fn: Callable[[list], None], fail: Callable[[list, BaseException], None], max_batch: int = 64
    ):
        self.fn = fn
        self.fail = fail
        self.max_batch = max_batch
        self.stats = StageStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def put_many(self, items: Iterable[Any]) -> None:
        for item in items:
            self._queue.put(item)

    def reset(self) -> StageStats:
        """The counters so far, and zero them (for load tests between levels)."""
        stats, self.stats = self.stats, StageStats()
        return stats

    def _loop(self) -> None:
        name_os_thread(self._thread.name)
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            began = time.perf_counter()
            try:
                self.fn(batch)
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                self.fail(batch, exc)
            stats = self.stats
            stats.batches += 1
            stats.items += len(batch)
            stats.largest = max(stats.largest, len(batch))
            stats.busy_s += time.perf_counter() - began


class Reply:
    """Where one request's result goes: an asyncio future on its event loop (``search_async``), or a
    :class:`concurrent.futures.Future` for a blocking caller."""

    __slots__ = ("future", "loop")

    def __init__(self, loop=None):
        self.loop = loop
        self.future = loop.create_future() if loop is not None else Future()


def _set_all(outcomes: list[tuple[Any, Any, BaseException | None]]) -> None:
    for future, result, exc in outcomes:
        if future.done():  # the awaiting task was cancelled (a client that went away)
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


def settle(outcomes: Iterable[tuple[Reply, Any, BaseException | None]]) -> None:
    """Deliver (reply, result, error) for a batch: blocking callers at once, and each event loop's futures in
    ONE call on that loop (one wake-up per loop per batch, not one per request)."""
    by_loop: dict[Any, list] = {}
    for reply, result, exc in outcomes:
        if reply.loop is None:
            _set_all([(reply.future, result, exc)])
        else:
            by_loop.setdefault(reply.loop, []).append((reply.future, result, exc))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, items)
        except RuntimeError:  # that loop has closed: nobody waits any more
            pass


class LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)
