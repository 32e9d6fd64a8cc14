"""Load test for `rag-eval serve` (not a test): N concurrent clients for a fixed time against a running server, or
(``--matrix``) the whole comparison in one command: `rag-eval serve` on each backend and infinity-emb as the peer.

Each client is a thread with one keep-alive HTTP connection that asks ``GET /api/search?q=...&k=K&dim=D``
again and again (the JSON endpoint beside the Gradio page: the same search the page runs, both models
side by side, without Gradio's queue and server-sent events). Questions cycle through the server's
held-out test questions (``/api/info``), each made unique with a run token and a request number
(``... (#3f9a-1234)``) so that the server's per-question vector cache never answers (``--repeat`` sends them
verbatim, to measure the cache). Per concurrency level it prints requests/s, latency
p50/p95/p99 as the client sees it, the error count (non-200 answers and failed connections), the
server's own mean embedding and vector-store time per request, and the CPU the load generator itself used
(it runs on the same machine: its share is part of the result).

One server:

    .venv/bin/rag-eval serve --model runs/demo --port 7860 &          # stop it later by its PID
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:7860 --clients 16,64 --seconds 30 --dim 128

The matrix (starts and stops every server itself, by PID; infinity-emb from its own venv, see
scripts/compat_venvs.sh; writes bench/results/serve_load_cpu.json):

    .venv/bin/python bench/serve_load.py --matrix --run runs/demo --dim 128 --clients 1,16,64 --seconds 30

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


def rag_eval_request(k: int, dim: int) -> tuple[Request, Parse]:
    def request(q: str):
        return "GET", "/api/search?" + urllib.parse.urlencode({"q": q, "k": k, "dim": dim}), None

    def parse(body: bytes):
        answer = json.loads(body)
        return answer["embed_ms"], answer["store_ms"]

    return request, parse


def infinity_request(model_id: str) -> tuple[Request, Parse]:
    def request(q: str):
        return "POST", "/embeddings", json.dumps({"model": model_id, "input": [q]}).encode()

    def parse(body: bytes):
        json.loads(body)["data"][0]["embedding"]  # noqa: B018 - an answer without a vector is an error
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
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
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
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                status, payload = response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                errors[i] += 1
                first_error.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
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
    start_gate.wait()
    for th in threads:
        th.join()
    wall = time.perf_counter() - began
    cpu, server_cpu = _cpu_seconds() - cpu0, (_cpu_seconds(server_pid) - server_cpu0) if server_pid else float("nan")
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
    }


def _f(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def print_level(row: dict, label: str = "") -> None:
    print(
        f"{label}{row['clients']:>4} clients: {row['requests']} requests in {row['seconds']:.1f} s "
        f"= {row['requests_per_s']:.1f}/s; "
        f"p50 {_f(row['p50_ms'], '.0f')} ms, p95 {_f(row['p95_ms'], '.0f')} ms, p99 {_f(row['p99_ms'], '.0f')} ms; "
        f"errors {row['errors']}"
        + (f" (first: {row['first_error']})" if row["first_error"] else "")
        + f"; server per request: embedding {_f(row['server_embed_ms_mean'], '.1f')} ms, "
        f"store {_f(row['server_store_ms_mean'], '.1f')} ms; load generator CPU {row['load_generator_cpu_share']:.0%}",
        flush=True,
    )


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


def _levels(url: str, levels: list[int], args, questions: list[str], kind, pid: int, label: str) -> list[dict]:
    if args.warmup > 0:
        run_level(url, 2, args.warmup, questions, args.k, args.dim, kind=kind)
    rows = []
    for clients in levels:
        row = run_level(url, clients, args.seconds, questions, args.k, args.dim, kind=kind, server_pid=pid)
        print_level(row, label)
        rows.append(row)
    return rows


def matrix(args) -> dict:
    run = Path(args.run).resolve()
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    questions = _held_out_questions(run)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    rows, servers = [], []
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    for backend in [b for b in args.backends.split(",") if b]:
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
                url, levels, args, questions, rag_eval_request(args.k, args.dim), proc.pid, f"{backend:>10}"
            ):
                rows.append({"server": "rag-eval serve", "backend": backend, **row,
                             "questions_per_s": row["requests_per_s"] * len(info["models"])})  # fmt: skip
        finally:
            _stop(proc)
    if args.peer == "infinity":
        rows += _infinity(args, run, levels, questions, logs, env, servers)
    return {
        "measured": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": os.getloadavg(),
        },  # fmt: skip
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": run.name,
        "dim": args.dim,
        "k": args.k,
        "seconds_per_level": args.seconds,
        "questions": len(questions),
        "unique_questions": True,
        "notes": "load generator on the same machine (its CPU share per row); rag-eval serve embeds two questions "
        "per request (baseline and fine-tuned) and searches both collections; infinity-emb embeds one question "
        "per request with the fine-tuned model; questions_per_s counts question embeddings.",
        "servers": servers,
        "rows": rows,
    }


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
        for row in _levels(url, levels, args, questions, infinity_request(model_id), proc.pid, "  infinity"):
            rows.append({"server": "infinity-emb", "backend": "torch", **row, "questions_per_s": row["requests_per_s"]})
    finally:
        _stop(proc)
    return rows


def print_matrix(result: dict) -> None:
    print()
    print(
        "| server | backend | clients | requests/s | questions/s | p50 ms | p95 ms | p99 ms | errors | load gen. CPU |"
    )
    print("|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(
            f"| {r['server']} | {r['backend']} | {r['clients']} | {r['requests_per_s']:.1f} "
            f"| {r['questions_per_s']:.1f} "
            f"| {_f(r['p50_ms'], '.0f')} | {_f(r['p95_ms'], '.0f')} | {_f(r['p99_ms'], '.0f')} | {r['errors']} "
            f"| {r['load_generator_cpu_share']:.0%} |"
        )


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
    args = ap.parse_args()

    if args.matrix:
        if args.dim is None:
            raise SystemExit("--matrix needs --dim (the same dim for every server, e.g. --dim 128)")
        if args.repeat:
            raise SystemExit("--matrix always sends unique questions (the peer has no cache to compare)")
        result = matrix(args)
        print_matrix(result)
        out = args.json or REPO / "bench" / "results" / "serve_load_cpu.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
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
    print(f"client: {platform.node()}, {os.cpu_count()} CPUs, Python threads, one keep-alive connection each")
    if args.warmup > 0:
        run_level(args.url, 2, args.warmup, questions, args.k, dim, args.repeat)
    rows = []
    for clients in [int(c) for c in args.clients.split(",") if c.strip()]:
        row = run_level(args.url, clients, args.seconds, questions, args.k, dim, args.repeat)
        rows.append(row)
        print_level(row)
    print()
    print("| clients | requests/s | p50 ms | p95 ms | p99 ms | errors | server embedding ms | server store ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests_per_s']:.1f} | {_f(r['p50_ms'], '.0f')} | {_f(r['p95_ms'], '.0f')} | "
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
            "levels": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
