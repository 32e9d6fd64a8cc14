"""Load test for `rag-eval serve` (not a test): N concurrent clients for a fixed time against a running server.

Each client is a thread with one keep-alive HTTP connection that asks ``GET /api/search?q=...&k=K&dim=D``
again and again (the JSON endpoint beside the Gradio page: the same search the page runs, both models
side by side, without Gradio's queue and server-sent events). Questions cycle through the server's
held-out test questions (``/api/info``), each made unique with a run token and a request number
(``... (#3f9a-1234)``) so that the server's per-question vector cache never answers (``--repeat`` sends them
verbatim, to measure the cache). Per concurrency level it prints requests/s, latency
p50/p95/p99 as the client sees it, the error count (non-200 answers and failed connections), and the
server's own mean embedding and vector-store time per request.

    .venv/bin/rag-eval serve --model runs/demo --port 7860 &          # stop it later by its PID
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:7860 --clients 16,64 --seconds 30 --dim 128

Basic auth: RAG_EVAL_SERVE_AUTH=user:password in the environment, as for the server. --json FILE
writes every number.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import platform
import secrets
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

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


def run_level(
    url: str, clients: int, seconds: float, questions: list[str], k: int, dim: int, repeat: bool = False
) -> dict:
    """``clients`` threads asking for ``seconds``; returns the numbers of this level."""
    parts = urllib.parse.urlsplit(url)
    headers = _headers()
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
            path = "/api/search?" + urllib.parse.urlencode({"q": q, "k": k, "dim": dim})
            t = time.perf_counter()
            try:
                status, body = _get(conn, path, headers)
            except (OSError, http.client.HTTPException) as exc:
                errors[i] += 1
                first_error.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
                continue
            elapsed = (time.perf_counter() - t) * 1000
            if status != 200:
                errors[i] += 1
                first_error.append(f"HTTP {status}: {body[:200]!r}")
                continue
            latencies[i].append(elapsed)
            answer = json.loads(body)
            server_ms[i].append((answer["embed_ms"], answer["store_ms"]))
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for th in threads:
        th.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start_gate.wait()
    for th in threads:
        th.join()
    wall = time.perf_counter() - began
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
    }


def _f(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860", help="the running `rag-eval serve`")
    ap.add_argument("--clients", default="16,64", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of each level")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of 2-client traffic first, not counted")
    ap.add_argument("--dim", type=int, default=None, help="default: the largest indexed dim")
    ap.add_argument("-k", "--k", type=int, default=5)
    ap.add_argument("--repeat", action="store_true", help="send the held-out questions verbatim (cache hits)")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    args = ap.parse_args()

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
        print(
            f"{clients:>4} clients: {row['requests']} requests in {row['seconds']:.1f} s "
            f"= {row['requests_per_s']:.1f}/s; "
            f"p50 {_f(row['p50_ms'], '.0f')} ms, p95 {_f(row['p95_ms'], '.0f')} ms, p99 {_f(row['p99_ms'], '.0f')} ms; "
            f"errors {row['errors']}"
            + (f" (first: {row['first_error']})" if row["first_error"] else "")
            + f"; server per request: embedding {_f(row['server_embed_ms_mean'], '.1f')} ms, "
            f"store {_f(row['server_store_ms_mean'], '.1f')} ms"
        )
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
