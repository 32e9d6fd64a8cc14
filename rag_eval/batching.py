"""The batching pieces behind `rag-eval serve`: a thread that runs a function over whatever requests are
waiting (:class:`Batcher`), completion times of futures, and a small thread-safe LRU map."""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Batcher:
    """Runs ``fn`` on its own thread over batches of whatever requests are waiting.

    Concurrent requests do not each pay a full call: while one batch runs, the next requests queue up
    and go through together (on CPU, a batch of 16 short questions through MiniLM, or 16 queries to
    a Chroma collection, costs a few times one, not 16 times). The thread is also the only one that
    touches its model, so a fast tokenizer is never used from two threads at once ("Already borrowed")."""

    def __init__(self, name: str, fn: Callable[[list], list], max_batch: int = 64):
        self.fn = fn
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Future:
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.fn([item for item, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)


def _timed(futures: list[Future]) -> list[Future]:
    """Record when each future completes (read back with :func:`_done_at`)."""
    for f in futures:
        if not f.done():
            f.add_done_callback(lambda f: setattr(f, "done_at", time.perf_counter()))
    return futures


def _done_at(future: Future) -> float:
    return getattr(future, "done_at", None) or time.perf_counter()


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
