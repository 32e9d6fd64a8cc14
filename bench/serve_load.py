"""Load test for `rag-eval serve` (not a test): N concurrent clients for a fixed time against a running server, or
(``--matrix``) the whole comparison in one command: `rag-eval serve` on each backend and infinity-emb as the peer.

Each client is a thread with one keep-alive HTTP connection that asks ``GET /api/search?q=...&k=K&dim=D``
again and again (the JSON endpoint beside the Gradio page: the same search the page runs, both models
side by side, without Gradio's queue and server-sent events). Questions cycle through the server's
held-out test questions (``/api/info``), each made unique with a run token and a request number
(``... (#3f9a-1234)``) so that the server's per-question vector cache never answers (``--repeat`` sends them
verbatim, to measure the cache). Per concurrency level it prints requests/s, latency
p50/p95/p99 as the client sees it, the error count (non-200 answers and failed connections), the
server's own mean embedding and vector-store time per request, the CPU the load generator itself used
(it runs on the same machine: its share is part of the result), and each server thread's CPU (the encode stages,
the search stage, the event loop, Chroma's threads). The clients use a lean keep-alive HTTP client
(:class:`LeanConnection`): http.client parsed every response's headers with the email package, which cost the
2-core machine about as much CPU as the server's whole HTTP layer.

The ceiling: before each server starts (``--matrix``; with one server, before the levels when ``--run`` names its
run directory), the same backend's encoders alone (:func:`encoder_ceiling`: the same model files, threads,
questions and encode call as the server, at every batch size its encode stage takes, each model alone on every
core and both side by side) give the questions/s no server on this machine can beat; each level prints
``served / ceiling``: the questions/s it served over the best ceiling rate its clients can fill. Every result
names the CPU (model, AVX2/AVX-512/VNNI flags, cores): absolute numbers hold only there, the ratio travels.

One server:

    .venv/bin/rag-eval serve --model runs/demo --port 7860 &          # stop it later by its PID
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:7860 --run runs/demo --clients 16,64 --dim 128

The matrix (starts and stops every server itself, by PID; infinity-emb from its own venv, see
scripts/compat_venvs.sh; writes bench/results/serve_load_cpu.json):

    .venv/bin/python bench/serve_load.py --matrix --run runs/demo --dim 128 --clients 1,16,64 --seconds 20 \
        --backends onnx,onnx-int8 --peer none --label "what changed"

infinity-emb serves the same fine-tuned model (RUN/model, torch engine) and is asked for one question embedding
per request (``POST /embeddings``, OpenAI format), with the same unique questions; `rag-eval serve` embeds two
questions per request (both models) and searches both. ``questions_per_s`` counts question embeddings.

Basic auth: RAG_EVAL_SERVE_AUTH=user:password in the environment, as for the server. --json FILE
writes every number.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import gc
import http.client
import itertools
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import cpu_facts, machine  # bench/machine.py

REPO = Path(__file__).resolve().parents[1]
RUN_TOKEN = secrets.token_hex(2)  # this run's questions differ from any earlier run's
REQUEST_NUMBERS = itertools.count()  # one sequence over every level and client: no question repeats

FALLBACK_QUESTIONS = [
    "How large is the order backlog?",
    "What was the effective tax rate?",
    "How many employees does the company have?",
    "What dividend did the board declare?",
    "How much revenue did the company report?",
]


def _headers() -> dict[str, str]:
    auth = os.environ.get("RAG_EVAL_SERVE_AUTH", "")
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def server_info(url: str) -> dict:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
    try:
        status, body = _get(conn, "/api/info", _headers())
    finally:
        conn.close()
    if status != 200:
        raise SystemExit(
            f"GET {url}/api/info answered {status}: {body[:200]!r} (is `rag-eval serve` running there? auth?)"
        )
    return json.loads(body)


# A request kind: (question) -> (method, path, body), and (response body) -> (embed_ms, store_ms) or None.
Request = Callable[[str], tuple[str, str, bytes | None]]
Parse = Callable[[bytes], tuple[float, float] | None]


try:  # the load generator shares the server's cores: parse the answers as cheaply as possible
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - gradio brings orjson
    _loads = json.loads


class HttpError(Exception):
    """A response the lean client cannot read (closed connection, malformed status line or headers)."""


class LeanConnection:
    """One keep-alive HTTP/1.1 connection with the least client-side work per request: the request written as
    one buffer, the status line and headers split by hand, the body read by its Content-Length (or chunked).
    http.client parses every response's headers with the email package, which cost about as much CPU as
    the server's whole HTTP layer; on a 2-core machine the load generator's CPU is taken from the server."""

    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        head = self._until(b"\r\n\r\n")
        status_line, _, header_text = head.partition(b"\r\n")
        try:
            status = int(status_line.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"bad status line {status_line[:80]!r}") from None
        fields = {}
        for line in header_text.split(b"\r\n"):
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            payload = self._chunked()
        else:
            payload = self._exactly(int(fields.get(b"content-length", b"0")))
        if fields.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, payload

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise HttpError("the server closed the connection")
        self.buffer += data

    def _until(self, marker: bytes) -> bytes:
        while (at := self.buffer.find(marker)) < 0:
            self._fill()
        out, self.buffer = self.buffer[:at], self.buffer[at + len(marker) :]
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _chunked(self) -> bytes:
        parts = []
        while size := int(self._until(b"\r\n").split(b";")[0], 16):
            parts.append(self._exactly(size))
            self._until(b"\r\n")
        self._until(b"\r\n")  # no trailers: the empty line after the last chunk
        return b"".join(parts)


def rag_eval_request(k: int, dim: int) -> tuple[Request, Parse]:
    def request(q: str):
        return "GET", "/api/search?" + urllib.parse.urlencode({"q": q, "k": k, "dim": dim}), None

    def parse(body: bytes):
        answer = _loads(body)
        return answer["embed_ms"], answer["store_ms"]

    return request, parse


def infinity_request(model_id: str) -> tuple[Request, Parse]:
    def request(q: str):
        return "POST", "/embeddings", json.dumps({"model": model_id, "input": [q]}).encode()

    def parse(body: bytes):
        _loads(body)["data"][0]["embedding"]  # noqa: B018 - an answer without a vector is an error
        return None

    return request, parse


def _cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (all threads), or of another process from /proc."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of another process, summed by thread name (`rag-eval serve` names its encode and
    search stages; Chroma names its own threads; the event loop is the main thread)."""
    out: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def run_level(
    url: str, clients: int, seconds: float, questions: list[str], k: int = 5, dim: int = 0, repeat: bool = False,
    kind: tuple[Request, Parse] | None = None, server_pid: int | None = None,
) -> dict:  # fmt: skip
    """``clients`` threads asking for ``seconds``; returns the numbers of this level."""
    parts = urllib.parse.urlsplit(url)
    headers = {**_headers(), "Content-Type": "application/json"}
    request, parse = kind or rag_eval_request(k, dim)
    start_gate = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    server_ms: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
    errors = [0] * clients
    first_error: list[str] = []
    deadline = [0.0]

    def client(i: int) -> None:
        conn = LeanConnection(parts.hostname, parts.port or 80)
        n = i  # each client starts at another question
        start_gate.wait()
        while time.perf_counter() < deadline[0]:
            q = questions[n % len(questions)]
            if not repeat:
                q = f"{q} (#{RUN_TOKEN}-{next(REQUEST_NUMBERS)})"
            n += clients
            method, path, body = request(q)
            t = time.perf_counter()
            try:
                status, payload = conn.request(method, path, body, headers)
            except (OSError, HttpError, ValueError) as exc:
                errors[i] += 1
                first_error.append(f"{type(exc).__name__}: {exc}")
                conn.close()  # the next request opens a new connection
                continue
            elapsed = (time.perf_counter() - t) * 1000
            if status != 200:
                errors[i] += 1
                first_error.append(f"HTTP {status}: {payload[:200]!r}")
                continue
            try:
                timing = parse(payload)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                errors[i] += 1
                first_error.append(f"bad answer ({type(exc).__name__}): {payload[:200]!r}")
                continue
            latencies[i].append(elapsed)
            if timing is not None:
                server_ms[i].append(timing)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for th in threads:
        th.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    cpu0, server_cpu0 = _cpu_seconds(), _cpu_seconds(server_pid) if server_pid else float("nan")
    threads0 = _thread_cpu(server_pid) if server_pid else {}
    start_gate.wait()
    for th in threads:
        th.join()
    wall = time.perf_counter() - began
    cpu, server_cpu = _cpu_seconds() - cpu0, (_cpu_seconds(server_pid) - server_cpu0) if server_pid else float("nan")
    threads1 = _thread_cpu(server_pid) if server_pid else {}
    # each server thread's CPU as a share of ONE core over the level (the biggest first)
    per_thread = {name: round((t - threads0.get(name, 0.0)) / wall, 3) for name, t in threads1.items()}
    per_thread = dict(sorted(((n, v) for n, v in per_thread.items() if v >= 0.005), key=lambda kv: -kv[1]))
    cores = os.cpu_count() or 1
    lat = np.asarray([x for per in latencies for x in per], dtype=float)
    srv = np.asarray([x for per in server_ms for x in per], dtype=float).reshape(-1, 2)
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": int(lat.size),
        "requests_per_s": lat.size / wall,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "max_ms": float(lat.max()) if lat.size else None,
        "errors": int(sum(errors)),
        "first_error": first_error[0] if first_error else None,
        "server_embed_ms_mean": float(srv[:, 0].mean()) if srv.size else None,
        "server_store_ms_mean": float(srv[:, 1].mean()) if srv.size else None,
        # shares of the whole machine (all cores) over the level's wall time
        "load_generator_cpu_share": round(cpu / (wall * cores), 3),
        "server_cpu_share": round(server_cpu / (wall * cores), 3) if server_pid else None,
        "server_threads_core_share": per_thread or None,
    }


# --- the ceiling: the same encoders alone, no server ---------------------------------------------------------------
CEILING_BATCHES = (1, 2, 4, 8, 16, 32, 64)  # the batch sizes `rag-eval serve`'s encode stage sees (at most 64)


def _unique(questions: list[str], n: int) -> list[str]:
    """The next n questions, cycling through them all as the load generator does, made unique the way it makes
    them (no cache anywhere helps)."""
    picked = []
    for _ in range(n):
        i = next(REQUEST_NUMBERS)
        picked.append(f"{questions[i % len(questions)]} (#{RUN_TOKEN}-c{i})")
    return picked


def _rate(encode, questions: list[str], batch: int, seconds: float) -> tuple[int, float]:
    """(questions encoded, seconds) for ``encode`` over batches of ``batch`` unique questions for ``seconds``."""
    encode(_unique(questions, batch))  # this batch size's buffers
    n, began = 0, time.perf_counter()
    while True:
        encode(_unique(questions, batch))
        n += batch
        if time.perf_counter() - began >= seconds:
            return n, time.perf_counter() - began


def _side_by_side(encoders: list, questions: list[str], batch: int, seconds: float) -> float:
    """Questions/s with every model encoding at once on its own thread (the server's layout)."""
    rates = [0.0] * len(encoders)
    gate = threading.Barrier(len(encoders))

    def work(i: int) -> None:
        encoders[i](_unique(questions, batch))  # this batch size's buffers, before the others start
        gate.wait()
        n, took = _rate(encoders[i], questions, batch, seconds)
        rates[i] = n / took

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(encoders))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return len(encoders) * min(rates)  # the slowest model decides how many requests get both their questions


def _encode_fn():
    """The server's encode call (:func:`rag_eval.service.encode_questions`), or for a serving path from before the
    encode stage, one call per batch."""
    try:
        from rag_eval.service import encode_questions
    except ImportError:
        from rag_eval.vectors import encode_queries

        def encode_questions(m, qs):
            return encode_queries(m.model, qs, m.spec.query_prompt, len(qs))

    return encode_questions


def ceiling_layouts(run: Path, backend: str, threads: int = 0) -> dict[str, tuple[int, list]]:
    """{layout: (intra-op threads per model, one encode function per model)}: ``alone``, each model with every
    core's threads, and ``side_by_side``, the cores shared out among the models (as `rag-eval serve --threads 0`)."""
    from rag_eval.service import set_torch_threads
    from rag_eval.sources import load_models, resolve_models

    encode = _encode_fn()
    sources = resolve_models(str(run))
    cores = threads or os.cpu_count() or 1
    layouts = {}
    for layout, n in (("alone", cores), ("side_by_side", max(1, cores // len(sources.models)))):
        set_torch_threads(n, 1)
        models = load_models(sources.models, backend=backend, threads=n)
        layouts[layout] = (n, [(lambda qs, m=m: encode(m, qs)) for m in models])
    return layouts


def ceiling_point(layout: str, threads: int, encoders: list, questions: list[str], batch: int, seconds: float) -> float:
    """One layout's questions/s at one batch size. A request needs one question from each model: alone, the time
    per pair adds up; side by side, the slowest model decides."""
    from rag_eval.service import set_torch_threads

    set_torch_threads(threads, 1)  # PyTorch's threads are per process (ONNX Runtime's per session: already set)
    if layout == "alone":
        per_pair = sum(t / c for c, t in (_rate(e, questions, batch, seconds) for e in encoders))
        return len(encoders) / per_pair
    return _side_by_side(encoders, questions, batch, seconds)


def encoder_ceiling(
    run: Path, backend: str, questions: list[str], seconds: float = 0.7, rounds: int = 3, threads: int = 0
) -> dict:
    """The raw encoders' questions/s on this machine, before any server runs: the run's models on ``backend``
    (the same files `rag-eval serve --backend` loads), the same unique questions and prompts, the same encode call
    as the server's encode stage (:func:`rag_eval.service.encode_questions`) at every batch size that stage takes,
    in both :func:`ceiling_layouts`. A request needs one question from each model, so a layout's rate counts
    pairs. Each point is the median of ``rounds`` passes over every batch size (interleaved, so that a burst of
    other load on the machine does not make one batch size look best). ``best`` is the higher of the two layouts
    at each batch size: the ceiling a server is measured against."""
    layouts = ceiling_layouts(run, backend, threads)
    result: dict = {"backend": backend, "threads_alone": layouts["alone"][0],
                    "threads_side_by_side": layouts["side_by_side"][0], "seconds_per_point": seconds,
                    "rounds": rounds}  # fmt: skip
    for layout, (n, encoders) in layouts.items():
        passes: dict[int, list[float]] = {b: [] for b in CEILING_BATCHES}
        for _ in range(max(1, rounds)):
            for batch in CEILING_BATCHES:
                passes[batch].append(ceiling_point(layout, n, encoders, questions, batch, seconds))
        result[layout] = {str(b): round(float(np.median(r)), 1) for b, r in passes.items()}
    del layouts
    gc.collect()
    result["best"] = {b: max(result["alone"][b], result["side_by_side"][b]) for b in result["alone"]}
    return result


def ceiling_for(ceiling: dict | None, clients: int) -> float | None:
    """The ceiling at a concurrency level: the best rate at any batch size those clients can fill (each client
    has one request, so one question per model, in flight)."""
    if not ceiling:
        return None
    fits = [rate for b, rate in ceiling["best"].items() if int(b) <= max(1, clients)]
    return max(fits) if fits else None


def print_ceiling(ceiling: dict) -> None:
    print(f"ceiling ({ceiling['backend']}, encoders alone, questions/s by batch size):", flush=True)
    for layout in ("alone", "side_by_side"):
        n = ceiling["threads_alone" if layout == "alone" else "threads_side_by_side"]
        points = ", ".join(f"{b}: {r:.0f}" for b, r in ceiling[layout].items())
        print(f"  {layout.replace('_', ' ')} ({n} thread{'s' if n != 1 else ''} per model): {points}", flush=True)


def _f(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def with_ceiling(row: dict, per_request: int, ceiling: dict | None) -> dict:
    """The row with the questions it served per second and, against the encoders' ceiling, the share of it."""
    served = row["requests_per_s"] * per_request
    top = ceiling_for(ceiling, row["clients"])
    return {**row, "questions_per_s": served, "ceiling_questions_per_s": top,
            "served_over_ceiling": round(served / top, 3) if top else None}  # fmt: skip


def print_level(row: dict, label: str = "") -> None:
    share = row.get("served_over_ceiling")
    ceiling = (
        f"; served {row['questions_per_s']:.0f} questions/s = {share:.0%} of the encoders' ceiling "
        f"({row['ceiling_questions_per_s']:.0f}/s)"
        if share is not None
        else ""
    )
    print(
        f"{label}{row['clients']:>4} clients: {row['requests']} requests in {row['seconds']:.1f} s "
        f"= {row['requests_per_s']:.1f}/s; "
        f"p50 {_f(row['p50_ms'], '.0f')} ms, p95 {_f(row['p95_ms'], '.0f')} ms, p99 {_f(row['p99_ms'], '.0f')} ms; "
        f"errors {row['errors']}"
        + (f" (first: {row['first_error']})" if row["first_error"] else "")
        + f"; server per request: embedding {_f(row['server_embed_ms_mean'], '.1f')} ms, "
        f"store {_f(row['server_store_ms_mean'], '.1f')} ms; load generator CPU {row['load_generator_cpu_share']:.0%}"
        + ceiling,
        flush=True,
    )
    if row.get("server_threads_core_share"):
        shares = ", ".join(f"{n} {v:.0%}" for n, v in row["server_threads_core_share"].items())
        print(f"{' ' * len(label)}      server threads (share of one core): {shares}", flush=True)


# --- the matrix: start each server, load it, stop it ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    parts = urllib.parse.urlsplit(url)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"{proc.args[:4]} exited with {proc.returncode} before serving:\n{log.read_text()[-3000:]}"
            )
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
            conn.request("GET", parts.path or "/")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # by PID: only the process this script started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _held_out_questions(run: Path) -> list[str]:
    path = run / "ir" / "test" / "queries.jsonl"
    if not path.is_file():
        return list(FALLBACK_QUESTIONS)
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def _levels(
    url: str, levels: list[int], args, questions: list[str], kind, pid: int, label: str, per_request: int,
    ceiling: dict | None = None,
) -> list[dict]:  # fmt: skip
    if args.warmup > 0:
        run_level(url, 2, args.warmup, questions, args.k, args.dim, kind=kind)
    rows = []
    for clients in levels:
        row = run_level(url, clients, args.seconds, questions, args.k, args.dim, kind=kind, server_pid=pid)
        row = with_ceiling(row, per_request, ceiling)
        print_level(row, label)
        rows.append(row)
    return rows


def matrix(args) -> dict:
    run = Path(args.run).resolve()
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    questions = _held_out_questions(run)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    rows, servers, ceilings = [], [], {}
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    for backend in [b for b in args.backends.split(",") if b]:
        ceiling = None
        if args.ceiling_seconds > 0:  # before the server starts: the encoders alone have the machine
            ceiling = ceilings[backend] = encoder_ceiling(
                run, backend, questions, args.ceiling_seconds, args.ceiling_rounds
            )
            print_ceiling(ceiling)
        port = _free_port()
        log = logs / f"serve-{backend}.log"
        cmd = [sys.executable, "-m", "rag_eval", "serve", "--model", str(run), "--backend", backend,
               "--host", "127.0.0.1", "--port", str(port), "--dims", str(args.dim)]  # fmt: skip
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url + "/healthz", proc, log, args.start_timeout)
            info = server_info(url)
            servers.append({"server": "rag-eval serve", "backend": info.get("backend", backend), "pid": proc.pid,
                            "models": info["models"], "command": " ".join(cmd)})  # fmt: skip
            print(f"rag-eval serve --backend {backend} (pid {proc.pid}): {info['models']}", flush=True)
            for row in _levels(
                url, levels, args, questions, rag_eval_request(args.k, args.dim), proc.pid, f"{backend:>10}",
                len(info["models"]), ceiling,
            ):  # fmt: skip
                rows.append({"server": "rag-eval serve", "backend": backend, **row})
        finally:
            _stop(proc)
    if args.peer == "infinity":
        rows += _infinity(args, run, levels, questions, logs, env, servers)
    return {
        **_result_header(args, run),
        "questions": len(questions),
        "unique_questions": True,
        "notes": "load generator on the same machine (its CPU share per row); rag-eval serve embeds two questions "
        "per request (baseline and fine-tuned) and searches both collections; infinity-emb embeds one question "
        "per request with the fine-tuned model; questions_per_s counts question embeddings. "
        "ceilings: the same backend's encoders alone (no server, no load generator) at each batch size, measured "
        "just before that server started; served_over_ceiling = questions_per_s / the best ceiling rate at a batch "
        "size the level's clients can fill.",
        "ceilings": ceilings,
        "servers": servers,
        "rows": rows,
    }


def _start_server(tree: Path, run: Path, backend: str, dim: int, logs: Path, name: str, env: dict):
    port = _free_port()
    log = logs / f"serve-{name}-{backend}.log"
    cmd = [sys.executable, "-m", "rag_eval", "serve", "--model", str(run), "--backend", backend,
           "--host", "127.0.0.1", "--port", str(port), "--dims", str(dim)]  # fmt: skip
    with log.open("w") as out:  # `python -m` from the tree's root: that checkout's rag_eval serves
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tree)
    return proc, f"http://127.0.0.1:{port}", log


def compare(args) -> dict:
    """Two checkouts' `rag-eval serve` on the same run, backend by backend, measured in turns: in each round and
    at each level, the encoders alone first (both layouts, at the batch sizes the level's clients can fill), then
    each server (the order alternating by round). Background load that comes and goes hits both servers and the
    ceiling alike; the medians over the rounds are the result."""
    run, other = Path(args.run).resolve(), Path(args.compare).resolve()
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    questions = _held_out_questions(run)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    trees = {"this": REPO, "other": other}
    rows, summary = [], []
    for backend in [b for b in args.backends.split(",") if b]:
        started = {name: _start_server(tree, run, backend, args.dim, logs, name, env) for name, tree in trees.items()}
        try:
            for proc, url, log in started.values():
                _wait_ready(url + "/healthz", proc, log, args.start_timeout)
                run_level(url, 2, max(args.warmup, 0.5), questions, args.k, args.dim)
            layouts = ceiling_layouts(run, backend)
            for r in range(args.rounds):
                for clients in levels:
                    sizes = [b for b in CEILING_BATCHES if b <= max(1, clients)]
                    top = max(ceiling_point(lay, n, enc, questions, b, args.ceiling_seconds)
                              for lay, (n, enc) in layouts.items() for b in sizes)  # fmt: skip
                    ceiling = {"best": {"1": top}}
                    for name in list(trees)[:: 1 if r % 2 == 0 else -1]:
                        proc, url, _ = started[name]
                        row = run_level(url, clients, args.seconds, questions, args.k, args.dim, server_pid=proc.pid)
                        row = with_ceiling(row, 2, ceiling)
                        print_level(row, f"{backend:>10} {name:>5} round {r + 1} ")
                        rows.append({"server": "rag-eval serve", "tree": name, "backend": backend, "round": r + 1,
                                     **row})  # fmt: skip
            del layouts
            gc.collect()
        finally:
            for proc, _, _ in started.values():
                _stop(proc)
        for clients in levels:
            for name in trees:
                mine = [x for x in rows if (x["backend"], x["tree"], x["clients"]) == (backend, name, clients)]

                def median(key: str, mine=mine) -> float:
                    return round(float(np.median([x[key] for x in mine])), 3)

                summary.append({"backend": backend, "tree": name, "clients": clients,
                                "served_over_ceiling_median": median("served_over_ceiling"),
                                "questions_per_s_median": median("questions_per_s"),
                                "ceiling_median": median("ceiling_questions_per_s")})  # fmt: skip
    return {
        **_result_header(args, run),
        "comparison": {"this": REPO.name, "other": other.name, "rounds": args.rounds},
        "notes": "two checkouts' rag-eval serve in turns; each row's ceiling is the encoders alone measured just "
        "before it (both layouts, the batch sizes its clients can fill); summary: medians over the rounds.",
        "summary": summary,
        "rows": rows,
    }


def _result_header(args, run: Path) -> dict:
    """What every results file of this script starts with: when, where (the CPU), the command and the settings."""
    return {
        "measured": datetime.datetime.now().isoformat(timespec="seconds"),
        "label": args.label,
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": run.name,
        "dim": args.dim,
        "k": args.k,
        "seconds_per_level": args.seconds,
    }


def print_comparison(result: dict) -> None:
    m = result["machine"]
    print(f"\nCPU: {m['cpu']} ({', '.join(m['flags']) or 'no AVX2'}), {m['cores']} cores; medians of "
          f"{result['comparison']['rounds']} rounds")  # fmt: skip
    print("| backend | clients | checkout | served / ceiling | questions/s | ceiling questions/s |")
    print("|:---|---:|:---|---:|---:|---:|")
    for s in result["summary"]:
        tree = result["comparison"][s["tree"]]
        print(f"| {s['backend']} | {s['clients']} | {tree} | {s['served_over_ceiling_median']:.0%} "
              f"| {s['questions_per_s_median']:.0f} | {s['ceiling_median']:.0f} |")  # fmt: skip


def _infinity(args, run: Path, levels, questions, logs: Path, env: dict, servers: list) -> list[dict]:
    exe = Path(args.infinity_venv) / "bin" / "infinity_emb"
    if not exe.is_file():
        raise SystemExit(f"{exe} is missing: build it with scripts/compat_venvs.sh infinity (or pass --peer none)")
    port = _free_port()
    log = logs / "infinity.log"
    model = run / "model"
    cmd = [str(exe), "v2", "--model-id", str(model), "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1",
           "--port", str(port), "--url-prefix", ""]  # fmt: skip
    peer_env = {**env, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=peer_env, cwd=REPO)
    rows = []
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url + "/health", proc, log, args.start_timeout)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/models")
        model_id = json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.close()
        servers.append({"server": "infinity-emb", "backend": "torch", "pid": proc.pid, "model": model_id,
                        "command": " ".join(cmd[1:])})  # fmt: skip
        print(f"infinity-emb (pid {proc.pid}): {model_id}", flush=True)
        for row in _levels(url, levels, args, questions, infinity_request(model_id), proc.pid, "  infinity", 1):
            rows.append({"server": "infinity-emb", "backend": "torch", **row})
    finally:
        _stop(proc)
    return rows


def print_matrix(result: dict) -> None:
    print()
    m = result["machine"]
    print(f"CPU: {m['cpu']} ({', '.join(m['flags']) or 'no AVX2'}), {m['cores']} cores")
    print(
        "| server | backend | clients | served / ceiling | requests/s | questions/s | ceiling questions/s | p50 ms "
        "| p95 ms | p99 ms | errors | load gen. CPU |"
    )
    print("|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        share, top = r.get("served_over_ceiling"), r.get("ceiling_questions_per_s")
        print(
            f"| {r['server']} | {r['backend']} | {r['clients']} | {_f(share, '.0%')} | {r['requests_per_s']:.1f} "
            f"| {r['questions_per_s']:.1f} | {_f(top, '.0f')} "
            f"| {_f(r['p50_ms'], '.0f')} | {_f(r['p95_ms'], '.0f')} | {_f(r['p99_ms'], '.0f')} | {r['errors']} "
            f"| {r['load_generator_cpu_share']:.0%} |"
        )


def keep_earlier(result: dict, out: Path) -> dict:
    """The new run on top; the runs already in ``out`` kept under ``earlier`` (newest first)."""
    try:
        before = json.loads(out.read_text())
    except (OSError, ValueError):
        return result
    if not isinstance(before, dict) or "rows" not in before:
        return result
    earlier = before.pop("earlier", [])
    return {**result, "earlier": [before, *earlier]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860", help="the running `rag-eval serve`")
    ap.add_argument("--clients", default="16,64", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of each level")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of 2-client traffic first, not counted")
    ap.add_argument("--dim", type=int, default=None, help="default: the largest indexed dim (--matrix: required)")
    ap.add_argument("-k", "--k", type=int, default=5)
    ap.add_argument("--repeat", action="store_true", help="send the held-out questions verbatim (cache hits)")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    matrix_args = ap.add_argument_group("--matrix: start, load and stop every server in turn")
    matrix_args.add_argument("--matrix", action="store_true", help="run the whole comparison")
    matrix_args.add_argument("--run", default="runs/demo", help="the job run directory (indexed, exported)")
    matrix_args.add_argument("--backends", default="torch,onnx,onnx-int8", help="rag-eval serve backends, in order")
    matrix_args.add_argument("--peer", choices=("infinity", "none"), default="infinity", help="the other server")
    matrix_args.add_argument("--infinity-venv", default=str(REPO / ".venv-infinity"))
    matrix_args.add_argument("--start-timeout", type=float, default=300.0, help="seconds a server may take to start")
    matrix_args.add_argument("--logs", default=str(REPO / "build" / "serve-load-logs"), help="the servers' output")
    matrix_args.add_argument("--label", default="", help="a name for this run in the JSON (e.g. what was changed)")
    matrix_args.add_argument(
        "--compare", default=None, metavar="CHECKOUT",
        help="with --matrix: this checkout's server against another checkout's (e.g. a `git worktree` of the "
        "commit before), measured in turns with the ceiling before every level (--rounds); no peer",
    )  # fmt: skip
    matrix_args.add_argument("--rounds", type=int, default=3, help="--compare: rounds of levels (medians count)")
    ap.add_argument(
        "--ceiling-seconds", type=float, default=0.7,
        help="seconds per batch size, layout and round for the encoders-alone ceiling, measured before each server "
        "(--matrix) or before the levels (one server: needs --run); 0: no ceiling",
    )  # fmt: skip
    ap.add_argument("--ceiling-rounds", type=int, default=3, help="passes over the batch sizes (the median counts)")
    args = ap.parse_args()

    if args.matrix:
        if args.dim is None:
            raise SystemExit("--matrix needs --dim (the same dim for every server, e.g. --dim 128)")
        if args.repeat:
            raise SystemExit("--matrix always sends unique questions (the peer has no cache to compare)")
        if args.compare:
            result = compare(args)
            print_comparison(result)
        else:
            result = matrix(args)
            print_matrix(result)
        out = args.json or REPO / "bench" / "results" / "serve_load_cpu.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(keep_earlier(result, out), indent=2))
        print(f"json: {out}")
        return

    info = server_info(args.url)
    dim = args.dim or info["dims"][0]
    questions = info.get("questions") or FALLBACK_QUESTIONS
    models = ", ".join(f"{m['label']} {m['model']}" for m in info["models"])
    how = "verbatim (cache hits)" if args.repeat else "each made unique (no cache hits)"
    print(
        f"server: {args.url} ({models}; dims {info['dims']}); dim {dim}, k {args.k}, {len(questions)} questions, {how}"
    )
    facts = cpu_facts()
    print(
        f"client: {platform.node()}, {facts['cpu']} ({', '.join(facts['flags'])}), {facts['cores']} cores, "
        "Python threads, one keep-alive connection each"
    )
    ceiling = None
    if args.ceiling_seconds > 0 and Path(args.run).is_dir():  # the server is up but idle meanwhile
        ceiling = encoder_ceiling(
            Path(args.run), info.get("backend", "torch"), questions, args.ceiling_seconds, args.ceiling_rounds
        )
        print_ceiling(ceiling)
    if args.warmup > 0:
        run_level(args.url, 2, args.warmup, questions, args.k, dim, args.repeat)
    rows = []
    for clients in [int(c) for c in args.clients.split(",") if c.strip()]:
        row = run_level(args.url, clients, args.seconds, questions, args.k, dim, args.repeat)
        row = with_ceiling(row, len(info["models"]), ceiling)
        rows.append(row)
        print_level(row)
    print()
    print(
        "| clients | served / ceiling | requests/s | p50 ms | p95 ms | p99 ms | errors | server embedding ms "
        "| server store ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']} | {_f(r['served_over_ceiling'], '.0%')} | {r['requests_per_s']:.1f} "
            f"| {_f(r['p50_ms'], '.0f')} | {_f(r['p95_ms'], '.0f')} | "
            f"{_f(r['p99_ms'], '.0f')} | {r['errors']} | {_f(r['server_embed_ms_mean'], '.1f')} | "
            f"{_f(r['server_store_ms_mean'], '.1f')} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "url": args.url,
            "dim": dim,
            "k": args.k,
            "repeat": args.repeat,
            "models": info["models"],
            "machine": machine(),
            "ceiling": ceiling,
            "levels": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
