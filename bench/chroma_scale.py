"""Scale benchmark (not a test): a Chroma SERVER at 1,000,000 passages, written through rag-eval's own indexing code.

Per dim (default 384, 128, 64) the script starts its own `chroma run --host 127.0.0.1 --port P --path DIR` (one data
folder per dim under --work, so disk and memory are that collection's alone), writes the collection with
``rag_eval.indexing.write_vectors`` (batched and resumable: kill this script at any point and run the same command
again; finished dims are kept, a dim cut short continues from the vectors already stored), then measures through
``rag_eval``'s ChromaIndex:

    build time (summed over resumed sessions) and vectors/s, disk (du of the data folder), the server's memory
    (RSS after the queries, peak RSS of its last session), query latency p50/p95/p99 of single top-10 queries and
    of batches of --batch-queries, and recall@10 against exact (brute-force) search, for --queries real questions;
    then, without rebuilding, the same at each --ef-sweep value of ef_search (Chroma 1.5 stores a changed ef_search
    at once but searches with it only once the server has loaded the index again: the server is restarted per
    value; ef_construction and max_neighbors would need a rebuild).

The server is stopped by its PID after each dim.

Data: the 6,757 distinct contexts and the questions of ../shared/data/financial-qa-10k (read in place, never
copied), embedded once with --model (cached in --work). The corpus of --n passages repeats each context
embedding about n / 6,757 times; every copy after the first gets isotropic Gaussian noise of norm --jitter and
is re-normalised (cosine about 0.96 to its original at 0.3): near-duplicate clusters, never identical vectors.

    HF_HUB_OFFLINE=1 python bench/chroma_scale.py --n 1000000 --out bench/results/chroma_scale_1m.json
    HF_HUB_OFFLINE=1 python bench/chroma_scale.py --n 20000 --dims 64 --queries 200 --out /tmp/small.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine  # noqa: E402 - bench/machine.py

from job.config import fingerprint_digest  # noqa: E402
from rag_eval import metrics, store  # noqa: E402
from rag_eval.indexing import write_vectors  # noqa: E402
from rag_eval.store import HnswSettings  # noqa: E402
from rag_eval.vectors import truncate_normalise  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "financial-qa-10k" / "Financial-QA-10k.csv"
GOAL = {"dim": 128, "recall@10": 0.99, "p95_ms": 20.0}


def load_texts(path: Path) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    contexts = list(dict.fromkeys(r["context"].strip() for r in rows))
    return contexts, [r["question"].strip() for r in rows]


def embeddings(model: str, csv_path: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(contexts, questions) embeddings at full dim, from the cache or encoded now."""
    contexts, questions = load_texts(csv_path)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model.removeprefix("bundled:")).strip("-")
    path = cache / f"financial-qa-10k.{slug}.npz"
    if path.is_file():
        got = np.load(path)
        if got["contexts"].shape[0] == len(contexts) and got["questions"].shape[0] == len(questions):
            print(f"embeddings: cached {path}")
            return got["contexts"], got["questions"]
    from job.models import load_model

    st = load_model(model)
    start = time.perf_counter()
    c = st.encode_document(contexts, batch_size=64, convert_to_numpy=True, show_progress_bar=True).astype(np.float32)
    q = st.encode_query(questions, batch_size=64, convert_to_numpy=True, show_progress_bar=True).astype(np.float32)
    print(
        f"embeddings: encoded {len(contexts)} contexts and {len(questions)} questions "
        f"in {time.perf_counter() - start:.0f} s"
    )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, contexts=c, questions=q)
    tmp.replace(path)
    return c, q


def tile_with_jitter(base: np.ndarray, n: int, jitter: float, seed: int) -> np.ndarray:
    """n unit vectors: ``base`` repeated, every copy after the first moved by noise of norm ``jitter``."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    for s in range(0, n, 100_000):  # in slices: the same vectors whatever n, without a second n x dim copy
        idx = np.arange(s, min(n, s + 100_000))
        part = unit[idx % len(base)].astype(np.float32)
        copies = idx >= len(base)
        noise = rng.standard_normal((int(copies.sum()), base.shape[1])).astype(np.float32)
        noise *= jitter / np.linalg.norm(noise, axis=1, keepdims=True)
        part[copies] += noise
        out[idx] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def du(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (its peak) of a process and its children, in bytes (from /proc)."""
    out = {"rss": 0, "peak": 0}
    todo = [pid]
    while todo:
        p = todo.pop()
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines() if ":" in line)
        out["rss"] += int(fields["VmRSS"].split()[0]) * 1024
        out["peak"] += int(fields["VmHWM"].split()[0]) * 1024
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return out


# --- the server ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process: SIGTERM it when this script dies, even by SIGKILL (Linux prctl PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_leftover(data: Path) -> None:
    """A server a killed run left on this data folder (its PID in data/server.pid): stopped by that PID."""
    pidfile = data / "server.pid"
    if not pidfile.is_file():
        return
    pid = int(pidfile.read_text().split()[0])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if str(data).encode() in cmdline:
        import signal

        print(f"stopping the server pid {pid} a killed run left on {data}")
        os.kill(pid, signal.SIGTERM)
        for _ in range(600):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    pidfile.unlink(missing_ok=True)


def start_server(data: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    exe = Path(sys.executable).with_name("chroma")
    exe = exe if exe.exists() else shutil.which("chroma")
    stop_leftover(data)
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = log_path.open("a")
    proc = subprocess.Popen(
        [str(exe), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(data)],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
    )  # fmt: skip
    (data / "server.pid").write_text(f"{proc.pid}\n")
    import chromadb
    from chromadb.config import Settings

    deadline = time.monotonic() + 120
    while True:
        try:
            chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False)).heartbeat()
            return proc, port
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"chroma server did not start; see {log_path}")
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen, data: Path) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    (data / "server.pid").unlink(missing_ok=True)


# --- measuring -----------------------------------------------------------------------------------
def exact_top10(corpus: np.ndarray, queries: np.ndarray, ids: list[str]) -> list[list[str]]:
    out = []
    for s in range(0, len(queries), 50):
        out += metrics.exact_search(queries[s : s + 50], corpus, ids, 10)
    return out


def exact_reference(corpus: np.ndarray, queries: np.ndarray, batch: int, work: Path, n: int = 200) -> dict:
    """The same-run reference for the store's times: exact search in numpy over the same vectors. Its "build" is
    writing the float32 matrix to an .npy file and reading it back (all an exact store needs before its first
    query); its queries are one matrix-vector product and a partial sort for top 10, single and in batches."""
    path = work / "exact-reference.npy"
    t = time.perf_counter()
    np.save(path, np.ascontiguousarray(corpus, dtype=np.float32))
    loaded = np.load(path)
    build_s = time.perf_counter() - t
    path.unlink()

    def top10(scores: np.ndarray) -> np.ndarray:
        idx = np.argpartition(-scores, 10, axis=-1)[..., :10]
        return np.take_along_axis(idx, np.argsort(-np.take_along_axis(scores, idx, -1), -1), -1)

    single, batched = [], []
    for v in queries[:n]:
        t = time.perf_counter()
        top10(loaded @ v)
        single.append((time.perf_counter() - t) * 1000)
    for s in range(0, min(len(queries), n) - batch + 1, batch):
        t = time.perf_counter()
        top10(queries[s : s + batch] @ loaded.T)
        batched.append((time.perf_counter() - t) * 1000)
    pct = metrics.percentile
    return {"exact_build_s": build_s, "exact_p50_ms": pct(single, 50), "exact_p95_ms": pct(single, 95),
            "exact_batch_p50_ms": pct(batched, 50) if batched else None}  # fmt: skip


def context_recall(approx: list[list[str]], exact: list[list[str]], unique: int) -> float:
    """Recall@10 counted in contexts, not copies: the share of the contexts in the exact top 10 whose copy (any
    copy) is in the approximate top 10. Tells a miss of the right passage from a pick among its noisy copies."""
    ctx = [[int(i[1:]) % unique for i in ids] for ids in (*approx, *exact)]
    a, e = ctx[: len(approx)], ctx[len(approx) :]
    return float(np.mean([len(set(x) & set(y)) / len(set(y)) for x, y in zip(a, e)]))


def query_stats(index, queries: np.ndarray, exact: list[list[str]], batch: int, unique: int = 0) -> dict:
    """Single top-10 queries (every question) and batches of ``batch``, through rag_eval's ChromaIndex.query."""
    index.query(queries[:1], 10)  # warm-up
    single, approx = [], []
    for v in queries:
        t = time.perf_counter()
        hits = index.query(v[None, :], 10)[0]
        single.append((time.perf_counter() - t) * 1000)
        approx.append([h.id for h in hits])
    batched = []
    for s in range(0, len(queries) - batch + 1, batch):
        t = time.perf_counter()
        index.query(queries[s : s + batch], 10)
        batched.append((time.perf_counter() - t) * 1000)
    pct = metrics.percentile
    return {
        "recall@10": metrics.mean_overlap_at_k(approx, exact, 10),
        "context_recall@10": context_recall(approx, exact, unique) if unique else None,
        "p50_ms": pct(single, 50), "p95_ms": pct(single, 95), "p99_ms": pct(single, 99),
        "batch_size": batch, "batch_p50_ms": pct(batched, 50), "batch_p95_ms": pct(batched, 95),
        "batch_p99_ms": pct(batched, 99), "batch_ms_per_query_p50": pct(batched, 50) / batch,
    }  # fmt: skip


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def bench_dim(args, corpus_full, queries_full, dim: int, settings: HnswSettings, key: str, state: dict) -> dict:
    data = args.work / f"server-{key}-d{dim}"
    proc, port = start_server(data, args.work / f"server-{key}-d{dim}.log")
    print(f"dim {dim}: chroma server pid {proc.pid} on 127.0.0.1:{port}, data {data}", flush=True)
    try:
        vs = store.connect(store.StoreTarget(host="127.0.0.1", port=port))
        corpus = truncate_normalise(corpus_full, dim)
        queries = truncate_normalise(queries_full, dim)
        ids = [f"p{i:07d}" for i in range(len(corpus))]
        meta = store.build_metadata(
            model=args.model, model_key=f"bench:{args.model}", model_fingerprint=key, model_dim=corpus_full.shape[1],
            dim=dim, corpus_fingerprint=key, corpus_size=len(ids), data_source=f"financial-qa-10k tiled: {key}",
            settings=settings, query_prompt=None, passage_prompt=None,
        )  # fmt: skip
        name = store.collection_name("bench", f"bench:{args.model}", dim)
        sessions = state.setdefault(str(dim), {"build_s": [], "written": 0})
        session_start = time.perf_counter()
        sessions["build_s"].append(0.0)
        last_save = [time.monotonic()]

        def progress(k: int) -> None:  # the build time of this session, saved every 10 s: a kill loses little
            sessions["written"] += k
            sessions["build_s"][-1] = time.perf_counter() - session_start
            if time.monotonic() - last_save[0] > 10:
                save_json(args.work / f"progress-{key}.json", state)
                last_save[0] = time.monotonic()
                done = vs.open(name + store.STAGING_SUFFIX)
                print(f"dim {dim}: {done.count() if done else '?'} of {len(ids)} stored", flush=True)

        result = write_vectors(vs, name, ids, corpus, None, meta, settings, write_batch=args.write_batch,
                               progress=progress)  # fmt: skip
        if result.action != "kept":
            sessions["build_s"][-1] = result.seconds
        else:
            sessions["build_s"].pop()
        save_json(args.work / f"progress-{key}.json", state)
        build_s = sum(sessions["build_s"])
        print(f"dim {dim}: {result.action} {name} ({result.note or 'one session'}), build {build_s:.0f} s", flush=True)
        index = vs.open(name)
        t = time.perf_counter()
        index.query(queries[:1], 10)
        first_query_s = time.perf_counter() - t  # what a reader waits for right after the build (index loading)
        t = time.perf_counter()
        exact = exact_top10(corpus, queries, ids)
        exact_s = time.perf_counter() - t
        row = {
            "dim": dim,
            "vectors": index.count(),
            "build_s": build_s,
            "vectors_per_s": len(ids) / build_s if build_s else None,
            "build_sessions": len(sessions["build_s"]),
            "resumed_vectors": result.resumed,
            "write_batch": args.write_batch or vs.client.get_max_batch_size(),
            **query_stats(index, queries, exact, args.batch_queries, args.unique),
            "exact_search_s": exact_s,  # the recall reference (ties broken by id: slow at 1M), not a latency
            "first_query_s": first_query_s,
            **exact_reference(corpus, queries, args.batch_queries, args.work),
        }
        row["query_p50_vs_exact"] = row["p50_ms"] / row["exact_p50_ms"]
        row["build_vs_exact"] = build_s / row["exact_build_s"]
        mem = rss(proc.pid)
        row |= {"disk_bytes": du(data), "server_rss_bytes": mem["rss"], "server_peak_rss_bytes": mem["peak"]}
        row["bytes_per_vector_disk"] = row["disk_bytes"] / len(ids)
        sweep = []
        for ef in args.ef_sweep:  # a changed ef_search reaches the search only when the server loads the index again
            index.collection.modify(configuration={"hnsw": {"ef_search": ef}})
            stop_server(proc, data)
            proc, port = start_server(data, args.work / f"server-{key}-d{dim}.log")
            index = store.connect(store.StoreTarget(host="127.0.0.1", port=port)).open(name)
            t = time.perf_counter()
            index.query(queries[:1], 10)
            load_s = time.perf_counter() - t
            got = query_stats(index, queries, exact, args.batch_queries, args.unique)
            keep = ("recall@10", "context_recall@10", "p50_ms", "p95_ms", "p99_ms", "batch_p50_ms")
            sweep.append({"ef_search": ef, "first_query_after_restart_s": load_s, **{k: got[k] for k in keep}})
            print(f"dim {dim}: ef_search {ef}: recall@10 {got['recall@10']:.4f}, p95 {got['p95_ms']:.2f} ms")
        if sweep:
            index.collection.modify(configuration={"hnsw": {"ef_search": settings.ef_search}})
        row["ef_search_sweep"] = sweep
        return row
    finally:
        stop_server(proc, data)
        print(f"dim {dim}: server pid {proc.pid} stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    defaults = HnswSettings()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1_000_000, help="passages in the index")
    p.add_argument("--dims", default="384,128,64")
    p.add_argument("--queries", type=int, default=1000, help="real questions timed and checked against exact search")
    p.add_argument("--batch-queries", type=int, default=32, help="questions per batched query call")
    p.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--jitter", type=float, default=0.3, help="noise norm added to every repeated copy")
    p.add_argument("--ef-construction", type=int, default=defaults.ef_construction)
    p.add_argument("--ef-search", type=int, default=defaults.ef_search)
    p.add_argument("--max-neighbors", type=int, default=defaults.max_neighbors)
    p.add_argument("--ef-sweep", default="100,800,1600,3200", help="ef_search values measured after the build")
    p.add_argument("--write-batch", type=int, default=None, help="vectors per add call (default: the server's max)")
    p.add_argument("--work", type=Path, default=ROOT / ".bench" / "chroma_scale", help="cache, server data, logs")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chroma_scale_1m.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean", action="store_true", help="delete this configuration's server data first")
    p.add_argument("--show", action="store_true", help="print --out's table (Markdown) and stop")
    args = p.parse_args(argv)
    if args.show:
        payload = load_json(args.out)
        print_table(payload["rows"])
        for r in payload["rows"]:
            print(f"\ndim {r['dim']}: ef_search sweep (server restarted per value)")
            print("| ef_search | recall@10 | context recall@10 | p50 ms | p95 ms | p99 ms | batch of 32 p50 ms |")
            print("|---:|---:|---:|---:|---:|---:|---:|")
            for x in r["ef_search_sweep"]:
                ctx = "-" if x.get("context_recall@10") is None else f"{x['context_recall@10']:.4f}"
                print(f"| {x['ef_search']} | {x['recall@10']:.4f} | {ctx} | {x['p50_ms']:.2f} | {x['p95_ms']:.2f} "
                      f"| {x['p99_ms']:.2f} | {x['batch_p50_ms']:.1f} |")  # fmt: skip
        return
    args.ef_sweep = [int(v) for v in args.ef_sweep.split(",") if v.strip()]
    args.work.mkdir(parents=True, exist_ok=True)

    settings = HnswSettings(args.ef_construction, args.ef_search, args.max_neighbors)
    contexts, questions = embeddings(args.model, args.csv, args.work)
    args.unique = len(contexts)
    protocol = {
        "n": args.n, "model": args.model, "jitter": args.jitter, "seed": args.seed, "unique_contexts": len(contexts),
        "hnsw": {"ef_construction": settings.ef_construction, "ef_search": settings.ef_search,
                 "max_neighbors": settings.max_neighbors},
    }  # fmt: skip
    key = f"n{args.n}-{fingerprint_digest(protocol)[:8]}"
    if args.clean:
        for d in args.work.glob(f"server-{key}-d*"):
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink()
        (args.work / f"progress-{key}.json").unlink(missing_ok=True)
    corpus = tile_with_jitter(contexts, args.n, args.jitter, args.seed)
    pick = np.random.default_rng(args.seed + 1).choice(
        len(questions), size=min(args.queries, len(questions)), replace=False
    )
    queries = questions[np.sort(pick)]
    import chromadb

    print(
        f"corpus: {args.n} passages ({len(contexts)} unique contexts, repeats jittered by {args.jitter}); "
        f"{len(queries)} questions; HNSW ef_construction {settings.ef_construction} / ef_search {settings.ef_search} "
        f"/ max_neighbors {settings.max_neighbors}; chromadb {chromadb.__version__} server; {os.cpu_count()} CPU cores",
        flush=True,
    )
    state = load_json(args.work / f"progress-{key}.json")
    previous = load_json(args.out)
    rows = {r["dim"]: r for r in previous.get("rows", [])} if previous.get("protocol") == protocol else {}
    for dim in [int(d) for d in args.dims.split(",")]:
        rows[dim] = bench_dim(args, corpus, queries, dim, settings, key, state)
        payload = {
            "server": True, "n": args.n, "protocol": protocol, "chromadb": chromadb.__version__,
            "cpu_cores": os.cpu_count(), "load_average": os.getloadavg(), "goal": GOAL, "machine": machine(),
            "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
            "rows": sorted(rows.values(), key=lambda r: -r["dim"]),
        }  # fmt: skip
        save_json(args.out, payload)
        print(f"dim {dim}: results -> {args.out}", flush=True)
    print_table(sorted(rows.values(), key=lambda r: -r["dim"]))


def print_table(rows: list[dict]) -> None:
    print(
        "| dim | vectors | build s | vectors/s | disk MiB | server RSS MiB | p50 ms | p95 ms | p99 ms "
        "| batch p50 ms | batch p95 ms | recall@10 | context recall@10 | exact numpy p50 ms | p50 / exact "
        "| build / exact |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    nan = float("nan")
    for r in rows:
        print(
            f"| {r['dim']} | {r['vectors']:,} | {r['build_s']:.0f} | {r['vectors_per_s']:.0f} "
            f"| {r['disk_bytes'] / 2**20:.0f} | {r['server_rss_bytes'] / 2**20:.0f} | {r['p50_ms']:.2f} "
            f"| {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['batch_p50_ms']:.1f} | {r['batch_p95_ms']:.1f} "
            f"| {r['recall@10']:.4f} | {r.get('context_recall@10') or nan:.4f} | {r.get('exact_p50_ms', nan):.2f} "
            f"| {r.get('query_p50_vs_exact', nan):.2f}x | {r.get('build_vs_exact', nan):.0f}x |"
        )


if __name__ == "__main__":
    main()
