"""Peak host memory of each phase of a run, on a SciFact-shaped task (long passages, a large test corpus).

    python bench/memory.py [--docs 5183] [--pairs 823] [--words 230] [--set KEY=VALUE ...] [--out FILE]

The public SciFact set cannot be downloaded here, so its shape is rebuilt from financial-qa-10k text:
``--docs`` test documents of about ``--words`` words (SciFact abstracts: about 300 tokens), ``--pairs``
training pairs whose passages are documents of that corpus. Phases, each with its own peak
resident memory (Linux: the peak is reset between phases through /proc/self/clear_refs):

  load      the base model
  mine      hard-negative mining over the training passages
  train     a few training steps (batch, sequence length and loss from the job's configuration)
  evaluate  scoring the test corpus at every Matryoshka dim (as the evaluate step does)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from job.config import resolve_config  # noqa: E402
from job.data import prepare as data  # noqa: E402
from job.evaluate.retrieval import evaluate_model, evaluation_options  # noqa: E402
from job.models import load_model, resolve_dims  # noqa: E402


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def phase(name: str, fn, results: dict):
    reset_peak()
    before = _status("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    results[name] = {
        "seconds": round(time.perf_counter() - t0, 1),
        "rss_before_mib": round(before / 2**20),
        "peak_mib": round(_status("VmHWM") / 2**20),
        "rss_after_mib": round(_status("VmRSS") / 2**20),
    }
    print(f"{name}: {json.dumps(results[name])}", flush=True)
    return out


def scifact_shaped(source: str, docs: int, pairs: int, words: int, seed: int = 0):
    records = data.load_records(source)
    q, p = data.detect_columns(list(records.rows[0]), None, None, records.source)
    rows = [(str(r[q] or ""), str(r[p] or "")) for r in records.rows if r[q] and r[p]]
    rng = random.Random(seed)
    words_pool = " ".join(c for _, c in rows).split()
    corpus = {}
    for i in range(docs):
        start = rng.randrange(len(words_pool) - words)
        corpus[f"d{i}"] = " ".join(words_pool[start : start + words])
    ids = list(corpus)
    train = [data.Pair(rows[i % len(rows)][0], corpus[ids[i]]) for i in range(pairs)]
    queries = {f"q{i}": rows[(pairs + i) % len(rows)][0] for i in range(300)}
    qrels = {qid: {ids[pairs + i]: 1} for i, qid in enumerate(queries)}
    return train, data.IRData(corpus, queries, qrels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/financial-qa-10k/Financial-QA-10k.csv")
    )
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--docs", type=int, default=5183)
    ap.add_argument("--pairs", type=int, default=823)
    ap.add_argument("--words", type=int, default=230)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="config KEY=VALUE")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from job.train.finetune import train_model

    extra = dict(kv.split("=", 1) for kv in args.set)
    cfg = resolve_config(cli={"model": args.model, "max_steps": args.steps, **extra}, environ={})
    train, test = scifact_shaped(args.data, args.docs, args.pairs, args.words)
    results: dict = {
        "setup": {
            "machine": platform.machine(),
            "docs": args.docs,
            "pairs": args.pairs,
            "words": args.words,
            "config": extra,
        }
    }
    model = phase("load", lambda: load_model(cfg.model, max_seq_length=cfg.max_seq_length, train=True), results)
    dims = resolve_dims(cfg, model)
    if cfg.hard_negatives:
        from job.train.negatives import add_hard_negatives

        phase(
            "mine",
            lambda: add_hard_negatives(train, model, cfg.hard_negatives, batch_size=cfg.eval_batch_size),
            results,
        )
    with tempfile.TemporaryDirectory() as tmp:
        phase("train", lambda: train_model(cfg, model, dims, dims[0], train, None, Path(tmp) / "checkpoints"), results)
    phase("evaluate", lambda: evaluate_model(model, test, dims, "test", **evaluation_options(cfg)), results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
