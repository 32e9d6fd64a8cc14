"""The recipe on a second domain (issue #30 item 5): SciFact, base model vs `--preset blog` vs the job's default.

Protocol: a BEIR folder (../shared/data/scifact, read in place). Training pairs: its TRAIN qrels (claim, the
title + abstract it cites), less a seeded 10 % of the train claims kept as the validation set (model selection
only, scored against the whole corpus); test: its TEST qrels (300 claims, disjoint from train) against the whole
corpus (5,183 abstracts). NDCG@10 at every Matryoshka dim with sentence-transformers' InformationRetrievalEvaluator,
the same code as bench/quality.py (its ``measure_row``: training resumes from the last complete checkpoint of a row
cut short; rows already in --out with the same fingerprint are kept).

    HF_HUB_OFFLINE=1 python bench/second_domain.py --data ../shared/data/scifact --rows base,blog,default \\
        --max-seq-length 128 --out bench/results/scifact_cpu.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine
from quality import measure_row, merge_rows, resolve_row, torch_threads

from job.data import prepare as data
from job.layout import write_json

ROWS = {"base": None, "blog": {"preset": "blog"}, "default": {}}


def load_scifact(folder: str, seed: int = 42, val_fraction: float = 0.1):
    """(training pairs, validation IRData, test IRData, protocol) from a BEIR folder with train and test qrels."""
    train = data.load_beir(folder, "train", option="--data")
    test = data.load_beir(folder, "test", option="--data")
    relevant = train.relevant_docs()
    claims = sorted(relevant)
    random.Random(seed).shuffle(claims)
    n_val = max(1, round(len(claims) * val_fraction))
    held, kept = set(claims[:n_val]), claims[n_val:]
    overlap = held.union(kept) & set(test.relevant_docs())
    if overlap:
        raise SystemExit(f"error: {len(overlap)} claims are in both the train and the test qrels")
    pairs = [data.Pair(train.queries[q], train.corpus[d]) for q in kept for d in sorted(relevant[q])]
    validation = data.IRData(train.corpus, {q: train.queries[q] for q in held}, {q: train.qrels[q] for q in held})
    protocol = {
        "data": str(folder), "seed": seed, "val_fraction": val_fraction, "train_pairs": len(pairs),
        "train_claims": len(kept), "validation_claims": len(held), "test_claims": len(test.relevant_docs()),
        "corpus": len(test.corpus),
    }  # fmt: skip
    return pairs, validation, test, protocol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a BEIR folder with qrels/train.tsv and qrels/test.tsv")
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--rows", default="base,blog,default")
    ap.add_argument("--epochs", type=float, default=None, help="override every recipe's epochs")
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--out", default="bench/results/scifact_cpu.json")
    ap.add_argument("--work-dir", default=".bench/second_domain")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    pairs, validation, test, protocol = load_scifact(args.data)
    protocol.update(epochs_override=args.epochs, max_seq_length=args.max_seq_length, cpu_threads=torch_threads(),
                    machine=machine())  # fmt: skip
    log(f"protocol: {json.dumps({k: v for k, v in protocol.items() if k != 'machine'})}")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    done = {r["name"]: r for r in previous.get("rows", [])}
    rows = []
    for name in [r for r in args.rows.split(",") if r]:
        if name not in ROWS:
            raise SystemExit(f"error: unknown row {name!r}; rows are {', '.join(ROWS)}")
        cli = {"model": args.model, "max_seq_length": args.max_seq_length, "seed": 42}
        if ROWS[name] is not None:
            cli.update(ROWS[name])
            if args.epochs is not None:
                cli["epochs"] = args.epochs
        cfg, config, fingerprint, kept = resolve_row(name, cli, protocol, done, out, log)
        if kept:
            rows.append(kept)
            continue
        row = measure_row(name, cfg, config, fingerprint, pairs, validation, test, test, Path(args.work_dir), log)
        row.pop("test_ndcg@10_dedup", None)  # SciFact's corpus has no duplicate texts to merge: the same numbers
        rows.append(row)
        log(f"{name}: test NDCG@10 {row['test_ndcg@10']}")
        write_json(out, {"protocol": protocol, "rows": merge_rows({"results": previous.get("rows", [])}, rows)})
    final = merge_rows({"results": previous.get("rows", [])}, rows)
    write_json(out, {"protocol": protocol, "rows": final})
    print_table(final)


def print_table(rows: list[dict]) -> None:
    dims = [int(d) for d in rows[0]["test_ndcg@10"]]
    base = next((r for r in rows if r["name"] == "base"), None)
    b = {int(d): v for d, v in base["test_ndcg@10"].items()} if base else {}
    print("\n| recipe | optimizer steps | " + " | ".join(map(str, dims)) + " |")
    print("|---|---:|" + "---:|" * len(dims))
    for r in rows:
        t = {int(d): v for d, v in r["test_ndcg@10"].items()}
        cells = []
        for d in dims:
            gain = f" ({(t[d] - b[d]) * 100:+.1f})" if b and r is not base else ""
            cells.append(f"{t[d]:.3f}{gain}")
        print(f"| {r['name']} | {r.get('global_steps', '-')} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
