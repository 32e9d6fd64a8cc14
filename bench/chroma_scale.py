"""Scale benchmark for rag_eval's Chroma settings (not a test): 100k passages at 64 and 384 dims.

Data: the 6,757 unique contexts and 7,000 questions of ../shared/data/financial-qa-10k, embedded
once with the model (cached under .bench/chroma_scale, so reruns skip the encoding). The corpus of
--n passages repeats each context embedding about n / 6,757 times; every copy after the first gets
isotropic Gaussian jitter of norm --jitter and is re-normalised, so copies are near-duplicates
(cosine about 0.96 to their original at the default 0.3), never identical vectors. Near-duplicate
clusters make approximate search harder than a corpus of unrelated passages would.

Per dim: truncate + re-normalise (as rag-eval index does), write one collection into a fresh
embedded store with rag_eval's default HNSW settings, then print

    index time, disk size of the store, p50/p95 latency of single top-10 queries (real questions,
    embedding excluded), and recall@10 against exact (brute-force) search.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/chroma_scale.py                 # 100k, dims 384 and 64
    HF_HUB_OFFLINE=1 .venv/bin/python bench/chroma_scale.py --n 20000 --dims 64 --queries 200
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_eval import metrics  # noqa: E402
from rag_eval.store import HnswSettings  # noqa: E402
from rag_eval.vectors import truncate_normalise  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "financial-qa-10k" / "Financial-QA-10k.csv"


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
    np.savez(path, contexts=c, questions=q)
    return c, q


def tile_with_jitter(base: np.ndarray, n: int, jitter: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = np.arange(n) % len(base)
    out = base[idx].astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    copies = np.arange(n) >= len(base)
    noise = rng.standard_normal((int(copies.sum()), base.shape[1])).astype(np.float32)
    noise *= jitter / np.linalg.norm(noise, axis=1, keepdims=True)
    out[copies] += noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def du(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def bench_dim(corpus: np.ndarray, queries: np.ndarray, dim: int, settings: HnswSettings, store: Path) -> dict:
    import chromadb
    from chromadb.config import Settings

    c, q = truncate_normalise(corpus, dim), truncate_normalise(queries, dim)
    ids = [f"p{i}" for i in range(len(c))]
    shutil.rmtree(store, ignore_errors=True)
    client = chromadb.PersistentClient(path=str(store), settings=Settings(anonymized_telemetry=False))
    col = client.create_collection(f"scale-d{dim}", configuration=settings.configuration(), embedding_function=None)
    batch = client.get_max_batch_size()
    start = time.perf_counter()
    for s in range(0, len(ids), batch):
        col.add(ids=ids[s : s + batch], embeddings=c[s : s + batch])
    index_s = time.perf_counter() - start
    assert col.count() == len(ids)
    col.query(query_embeddings=q[:1], n_results=10, include=["distances"])  # warm-up
    latency, approx = [], []
    for v in q:
        t = time.perf_counter()
        got = col.query(query_embeddings=v[None, :], n_results=10, include=["distances"])
        latency.append((time.perf_counter() - t) * 1000)
        approx.append(metrics.rank_hits(zip(got["ids"][0], (1 - d for d in got["distances"][0]))))
    exact = []
    for s in range(0, len(q), 100):
        exact += metrics.exact_search(q[s : s + 100], c, ids, 10)
    return {
        "dim": dim,
        "vectors": len(ids),
        "index_s": index_s,
        "disk_bytes": du(store),
        "p50_ms": metrics.percentile(latency, 50),
        "p95_ms": metrics.percentile(latency, 95),
        "recall@10": metrics.mean_overlap_at_k(approx, exact, 10),
    }


def main(argv: list[str] | None = None) -> None:
    defaults = HnswSettings()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=100_000, help="passages in the index")
    p.add_argument("--dims", default="384,64")
    p.add_argument("--queries", type=int, default=500, help="questions timed and checked against exact search")
    p.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--jitter", type=float, default=0.3, help="noise norm added to every repeated copy")
    p.add_argument("--ef-construction", type=int, default=defaults.ef_construction)
    p.add_argument("--ef-search", type=int, default=defaults.ef_search)
    p.add_argument("--max-neighbors", type=int, default=defaults.max_neighbors)
    p.add_argument("--work", type=Path, default=ROOT / ".bench" / "chroma_scale", help="cache and scratch stores")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    settings = HnswSettings(args.ef_construction, args.ef_search, args.max_neighbors)
    contexts, questions = embeddings(args.model, args.csv, args.work)
    corpus = tile_with_jitter(contexts, args.n, args.jitter, args.seed)
    pick = np.random.default_rng(args.seed + 1).choice(
        len(questions), size=min(args.queries, len(questions)), replace=False
    )
    queries = questions[np.sort(pick)]
    print(
        f"corpus: {args.n} passages ({len(contexts)} unique contexts, repeats jittered by {args.jitter}); "
        f"{len(queries)} questions; HNSW ef_construction {settings.ef_construction} / ef_search {settings.ef_search} / "
        f"max_neighbors {settings.max_neighbors}; {os.cpu_count()} CPU cores"
    )
    rows = []
    for dim in [int(d) for d in args.dims.split(",")]:
        row = bench_dim(corpus, queries, dim, settings, args.work / f"store-d{dim}")
        rows.append(row)
        print(f"dim {dim}: indexed in {row['index_s']:.0f} s", flush=True)
        shutil.rmtree(args.work / f"store-d{dim}", ignore_errors=True)
    print()
    print(
        "| dim | vectors | index time s | vectors/s | disk MiB | bytes/vector | p50 ms | p95 ms | recall@10 vs exact |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['dim']} | {r['vectors']} | {r['index_s']:.1f} | {r['vectors'] / r['index_s']:.0f} "
            f"| {r['disk_bytes'] / 2**20:.1f} "
            f"| {r['disk_bytes'] / r['vectors']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['recall@10']:.4f} |"
        )


if __name__ == "__main__":
    main()
