"""`rag-eval serve`'s batching pieces (rag_eval/batching.py) and the load generator's own parts
(bench/serve_load.py: its lean HTTP client, the encoders' ceiling per concurrency level, the results file)."""

from __future__ import annotations

import asyncio
import http.server
import json
import sys
import threading
import time
from pathlib import Path

import pytest

from rag_eval import batching
from rag_eval.batching import LRU, Reply, Stage, settle

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import serve_load  # noqa: E402


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# --- Stage ------------------------------------------------------------------------------------------------------
def test_items_that_wait_while_a_batch_runs_go_through_together():
    release, seen = threading.Event(), []

    def run(batch):
        seen.append(list(batch))
        release.wait(10)

    stage = Stage("test", run, lambda batch, exc: None, max_batch=4)
    stage.put("first")
    _wait(lambda: len(seen) == 1)  # the first batch is running: the next items queue up
    stage.put_many(["a", "b", "c", "d", "e"])
    release.set()
    _wait(lambda: sum(map(len, seen)) == 6)
    assert seen == [["first"], ["a", "b", "c", "d"], ["e"]]  # at most max_batch at a time, in order
    stats = stage.reset()
    assert (stats.batches, stats.items, stats.largest) == (3, 6, 4) and stage.stats.batches == 0


def test_an_error_reaches_every_item_of_its_batch_and_the_stage_goes_on():
    failed, done = [], []

    def run(batch):
        if "bad" in batch:
            raise RuntimeError("boom")
        done.extend(batch)

    stage = Stage("test", run, lambda batch, exc: failed.append((list(batch), str(exc))))
    stage.put("bad")
    _wait(lambda: failed)
    stage.put("good")
    _wait(lambda: done)
    assert failed == [(["bad"], "boom")] and done == ["good"]


# --- settle: one wake-up per event loop per batch -----------------------------------------------------------------
def test_a_batch_wakes_each_event_loop_once_and_blocking_callers_at_once():
    async def main():
        loop = asyncio.get_running_loop()
        calls = []
        original = loop.call_soon_threadsafe

        def counted(callback, *args):
            if callback is batching._set_all:  # asyncio.to_thread wakes the loop for itself too
                calls.append(len(args[0]))
            return original(callback, *args)

        loop.call_soon_threadsafe = counted
        replies = [Reply(loop) for _ in range(8)]
        cancelled = Reply(loop)
        cancelled.future.cancel()  # a client that went away: never an InvalidStateError
        blocking = Reply()
        outcomes = [(r, i, None) for i, r in enumerate(replies)] + [(cancelled, 99, None), (blocking, "b", None)]
        outcomes.append((Reply(loop), None, ValueError("bad")))
        await asyncio.to_thread(settle, outcomes)
        got = await asyncio.gather(*(r.future for r in replies))
        with pytest.raises(ValueError, match="bad"):
            await outcomes[-1][0].future
        return got, calls, blocking.future.result(timeout=1)

    got, wakeups, blocking = asyncio.run(main())
    assert got == list(range(8)) and wakeups == [10] and blocking == "b"  # 8 + cancelled + error: one call


def test_settle_after_the_loop_closed_is_quiet():
    loop = asyncio.new_event_loop()
    reply = Reply(loop)
    loop.close()
    settle([(reply, 1, None)])  # nobody waits any more: no error


def test_lru_keeps_the_most_recently_used():
    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, None, 3)


# --- the load generator -------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}).encode()
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (body[:5], body[5:]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Length", str(len(body)))
        if self.path.startswith("/close"):
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_lean_client_keeps_its_connection_and_reads_every_framing(http_server):
    conn = serve_load.LeanConnection("127.0.0.1", http_server)
    status, body = conn.request("GET", "/a?q=x", None, {"Authorization": "Basic eA=="})
    assert status == 200 and json.loads(body) == {"path": "/a?q=x", "auth": "Basic eA=="}
    sock = conn.sock
    assert json.loads(conn.request("GET", "/chunked", None, {})[1])["path"] == "/chunked"
    assert conn.request("GET", "/missing", None, {})[0] == 404
    assert conn.request("POST", "/p", b'{"q": 1}', {})[1] == b'{"q": 1}'
    assert conn.sock is sock  # one keep-alive connection throughout
    assert conn.request("GET", "/close", None, {})[0] == 200 and conn.sock is None  # the server closed it
    assert conn.request("GET", "/again", None, {})[0] == 200  # and the next request opens a new one


def test_the_ceiling_of_a_level_is_the_best_rate_its_clients_can_fill():
    ceiling = {"best": {"1": 100.0, "2": 150.0, "4": 240.0, "16": 300.0, "64": 290.0}}
    assert serve_load.ceiling_for(ceiling, 1) == 100.0  # one client: one question per model at a time
    assert serve_load.ceiling_for(ceiling, 4) == 240.0
    assert serve_load.ceiling_for(ceiling, 64) == 300.0  # the best batch, not the largest
    assert serve_load.ceiling_for(None, 16) is None
    row = serve_load.with_ceiling({"clients": 16, "requests_per_s": 135.0}, 2, ceiling)
    assert row["questions_per_s"] == 270.0 and row["served_over_ceiling"] == 0.9


def test_a_new_matrix_keeps_the_earlier_runs(tmp_path):
    out = tmp_path / "serve_load.json"
    first = {"measured": "1", "rows": [1]}
    assert serve_load.keep_earlier(first, out) == first  # no file yet
    out.write_text(json.dumps(first))
    second = serve_load.keep_earlier({"measured": "2", "rows": [2]}, out)
    out.write_text(json.dumps(second))
    third = serve_load.keep_earlier({"measured": "3", "rows": [3]}, out)
    assert [r["measured"] for r in [third, *third["earlier"]]] == ["3", "2", "1"]
    assert all("earlier" not in r for r in third["earlier"])


def test_the_cpu_is_named_with_the_flags_that_decide_the_kernels():
    import machine  # bench/machine.py: every bench script records it

    facts = machine.cpu_facts()
    assert facts["cpu"] and facts["cores"] >= 1 and set(facts["flags"]) <= set(machine.CPU_FLAGS)
    assert facts["avx512"] == ("avx512f" in facts["flags"])
    assert facts["cpu"] in machine.cpu_label(facts) and f"{facts['usable_cores']} cores" in machine.cpu_label(facts)
    assert serve_load.machine()["cpu"] == facts["cpu"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux /proc only")
def test_a_stage_names_its_thread_for_the_operating_system_too():
    Stage("search-probe", lambda batch: None, lambda batch, exc: None)
    names = lambda: {(p / "comm").read_text().strip() for p in Path("/proc/self/task").iterdir()}  # noqa: E731
    _wait(lambda: "search-probe" in names())
    assert serve_load._thread_cpu(__import__("os").getpid()).get("search-probe", -1) >= 0
