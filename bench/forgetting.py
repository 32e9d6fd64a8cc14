"""Forgetting: does the fine-tune keep general retrieval? Financial test NDCG@10 beside SciFact test NDCG@10.

Protocol: bench/quality.py's (financial-qa-10k, seed-42 shuffle, first 10 % test, the next 300 validation, the
rest training; corpus = every context), with --epochs / --max-seq-length for the medium protocol. The guard
set (a BEIR folder, ../shared/data/scifact) is scored on its TEST qrels at every dim, at the run's max length.
`--merge-base auto` chooses alpha on the guard's TRAIN qrels and the financial validation split, never on
either test set. Rows:

- ``base``: the base model;
- ``default``: the default recipe (no interpolation);
- ``merge_auto``: the SAME trained checkpoints as ``default`` (its checkpoint folder is resumed: the run has
  ended, so nothing trains again), then ``--merge-base auto`` with the guard;
- ``merge_auto_noguard``: the same, choosing on in-domain validation alone;
- ``lr2e-5``: the blog's learning rate without gradient accumulation;
- ``VARIANT:key=value,...``: any other recipe (``--variant``).

Mixing general pairs into training is not measured: no general-domain training pairs are available offline
here (SciFact's train qrels are the guard's choice queries; training on them would turn the guard into
in-domain data).

    python bench/forgetting.py --data ../shared/data/financial-qa-10k/Financial-QA-10k.csv \\
        --guard ../shared/data/scifact --epochs 1 --max-seq-length 128 --out bench/results/forgetting_cpu.json

Resumable: rows in --out with the same fingerprint are kept; a row being trained continues from its last
complete checkpoint. The trained models stay in --work-dir (export and serve benchmarks reuse them).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import load_protocol, merge_rows, parse_settings, resolve_row, torch_threads, validation_at_best

from job.data import prepare as data
from job.evaluate.retrieval import evaluate_model, evaluation_options
from job.layout import write_json
from job.models import load_model, resolve_best_dim, resolve_dims
from job.train.finetune import last_checkpoint, train_model

ROWS = {
    "base": None,
    "default": {},
    "merge_auto": {"merge_base": "auto"},
    "merge_auto_noguard": {"merge_base": "auto"},
    "lr2e-5": {"learning_rate": 2e-5},
}
SHARES_TRAINING = {"merge_auto": "default", "merge_auto_noguard": "default"}  # same checkpoints, merged after


def ndcg(model, ir, dims, name, cfg) -> dict[int, float]:
    return {d: m["ndcg@10"] for d, m in evaluate_model(model, ir, dims, name, **evaluation_options(cfg)).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--guard", required=True, help="a BEIR folder with qrels/train.tsv (choice) and test.tsv (report)")
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--rows", default="base,default,merge_auto,merge_auto_noguard,lr2e-5")
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value[,key=value] on the default")
    ap.add_argument("--val-rows", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--out", default="bench/results/forgetting_cpu.json")
    ap.add_argument("--work-dir", default=".bench/forgetting")
    args = ap.parse_args()
    work = Path(args.work_dir)
    rows_wanted = [r for r in args.rows.split(",") if r]
    variants = {name: parse_settings(s) for name, _, s in (v.partition(":") for v in args.variant)}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    train_pairs, validation, plain, dedup, protocol = load_protocol(args.data, 42, args.val_rows)
    guard_test = data.load_beir(args.guard, "test")
    protocol.update(
        epochs_override=args.epochs, max_seq_length=args.max_seq_length, guard=args.guard,
        guard_test_queries=len(guard_test.relevant_docs()), guard_corpus=len(guard_test.corpus),
        reduced=bool(args.epochs is not None or args.max_seq_length),
        machine=f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip(),
        cpu_threads=torch_threads(),
    )  # fmt: skip
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    done = {r["name"]: r for r in previous.get("rows", [])}
    rows = []
    for name in rows_wanted + list(variants):
        recipe = variants.get(name, ROWS.get(name, "unknown"))
        if recipe == "unknown":
            sys.exit(f"error: unknown row {name!r}; rows are {', '.join(ROWS)} or --variant NAME:...")
        cli = {"model": args.model, "max_seq_length": args.max_seq_length, "seed": 42}
        if recipe is not None:
            cli.update(recipe)
            if args.epochs is not None:
                cli["epochs"] = args.epochs
            if name == "merge_auto":
                cli["guard_data"] = args.guard
        cfg, config, fingerprint, kept = resolve_row(name, cli, protocol, done, out, log)
        if kept:
            rows.append(kept)
            continue
        model = load_model(cfg.model, max_seq_length=cfg.max_seq_length, train=recipe is not None)
        dims = resolve_dims(cfg, model)
        row = {"name": name, "config": config, "fingerprint": fingerprint}
        if recipe is None:
            row["validation_ndcg@10"] = ndcg(model, validation, dims, "validation", cfg)
        else:
            ckpt = work / SHARES_TRAINING.get(name, name) / "checkpoints"
            resume = last_checkpoint(ckpt) is not None
            if name in SHARES_TRAINING and not resume:
                sys.exit(f"error: {name} merges the checkpoints of {SHARES_TRAINING[name]}: measure that row first")
            start = time.perf_counter()
            result = train_model(
                cfg, model, dims, resolve_best_dim(cfg, dims), train_pairs, validation, ckpt, resume=resume
            )
            summary = result.summary
            row.update(
                train_seconds=summary["train_seconds"], merge_seconds=round(time.perf_counter() - start, 1),
                global_steps=summary["global_steps"], best_checkpoint=Path(summary["best_checkpoint"] or "").name,
                pairs_per_second=summary.get("pairs_per_second"),
            )  # fmt: skip
            merged = summary.get("merge_base")
            if merged:
                row["alpha"] = merged["chosen"]
                row["merge"] = merged
            row["validation_ndcg@10"] = (
                {
                    int(d): v
                    for d, v in next(r for r in merged["alphas"] if r["alpha"] == merged["chosen"])[
                        "validation"
                    ].items()
                }
                if merged and merged.get("alphas")
                else validation_at_best(summary)
            )
            model.save(str(work / name / "model"))
        row["test_ndcg@10"] = ndcg(model, plain, dims, "plain", cfg)
        row["test_ndcg@10_dedup"] = ndcg(model, dedup, dims, "dedup", cfg)
        row["guard_ndcg@10"] = ndcg(model, guard_test, dims, "guard-test", cfg)
        # the process's peak resident memory so far (rows run in order: a trained row's peak is its training's)
        row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        rows.append(row)
        log(f"{name}: done: test {row['test_ndcg@10']}, guard {row['guard_ndcg@10']}")
        write_json(out, {"protocol": protocol, "general_pairs": "none available offline",
                         "rows": merge_rows({"results": previous.get("rows", [])}, rows)})  # fmt: skip
    final = merge_rows({"results": previous.get("rows", [])}, rows)
    write_json(out, {"protocol": protocol, "general_pairs": "none available offline", "rows": final})
    print_table(final)


def print_table(rows: list[dict]) -> None:
    dims = [int(d) for d in rows[0]["test_ndcg@10"]]
    base = next((r for r in rows if r["name"] == "base"), None)
    print("\n| recipe | alpha | financial test NDCG@10 " + " / ".join(map(str, dims)) + " | SciFact test "
          + " / ".join(map(str, dims)) + " | SciFact change vs base (points) |")  # fmt: skip
    print("|---|---:|---|---|---|")
    for r in rows:
        t = {int(d): v for d, v in r["test_ndcg@10"].items()}
        g = {int(d): v for d, v in r["guard_ndcg@10"].items()}
        change = ""
        if base:
            b = {int(d): v for d, v in base["guard_ndcg@10"].items()}
            change = " / ".join(f"{(g[d] - b[d]) * 100:+.1f}" for d in dims)
        print(f"| {r['name']} | {r.get('alpha', '-')} | " + " / ".join(f"{t[d]:.3f}" for d in dims) + " | "
              + " / ".join(f"{g[d]:.3f}" for d in dims) + f" | {change} |")  # fmt: skip


if __name__ == "__main__":
    main()
