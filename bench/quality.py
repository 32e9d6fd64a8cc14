"""Quality benchmark: the job's recipes on a (question, context) dataset under a fixed protocol.

Protocol (issue "Beat the blog recipe"): shuffle row indices 0..n-1 with random.Random(42).shuffle;
the first 10 % are the test set, the next --val-rows validation, the rest training. Evaluation
corpus: every context of every row. Queries: the test questions. Metric: InformationRetrievalEvaluator
NDCG@10 at every Matryoshka dim, plain (each row's context is its own corpus entry, so an identical
context of another row counts as a miss) and duplicate-aware (identical contexts share one id).

    python bench/quality.py --data ../shared/data/financial-qa-10k/Financial-QA-10k.csv \
        --presets base,blog,default [--train-limit 1000] [--epochs 1] [--max-seq-length 128]

Reduced protocols (--train-limit, --epochs, --max-seq-length, --test-limit) apply identically to
every row and are printed with the results.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from job.config import MODEL_FIELDS, PUBLISH_FIELDS, JobConfig, fields_where, fingerprint_digest, resolve_config  # noqa: E402
from job.data import prepare as data  # noqa: E402
from job.evaluate.retrieval import evaluate_model, evaluation_options, per_dim_metrics  # noqa: E402
from job.layout import write_json  # noqa: E402
from job.models import load_model, resolve_best_dim, resolve_dims  # noqa: E402
from job.train.finetune import VALIDATION, last_checkpoint, train_model  # noqa: E402


def protocol_split(pairs: list[data.Pair], seed: int, val_rows: int, test_fraction: float = 0.1):
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = round(len(pairs) * test_fraction)
    test = order[:n_test]
    val = order[n_test : n_test + val_rows]
    train = order[n_test + val_rows :]
    return train, val, test


def ir_sets(pairs: list[data.Pair], test: list[int], test_limit: int | None):
    test = test[:test_limit] if test_limit else test
    plain = data.IRData(
        corpus={f"c{i}": p.passage for i, p in enumerate(pairs) if p.passage},
        queries={f"q{i}": pairs[i].question for i in test},
        qrels={f"q{i}": {f"c{i}": 1} for i in test},
    )
    corpus, ids = data.build_ir_corpus({"train": [p for p in pairs if p.passage]})
    dedup = data.IRData(corpus, plain.queries, {f"q{i}": {ids[pairs[i].passage]: 1} for i in test})
    return plain, dedup, ids


def load_protocol(path: str, seed: int, val_rows: int, train_limit: int | None = None, test_limit: int | None = None):
    """The protocol's sets from a (question, context) file: training pairs, validation (duplicate-aware
    corpus), the plain and the duplicate-aware test sets, and the protocol's sizes."""
    records = data.load_records(path)
    q_col, p_col = data.detect_columns(list(records.rows[0]), None, None, records.source)
    # Row indices stay those of the file (the protocol shuffles 0..n-1); rows with an empty
    # question or context (two in financial-qa-10k) are left out of whichever split they fall in.
    pairs = [data.Pair(str(r[q_col] or "").strip(), str(r[p_col] or "").strip()) for r in records.rows]
    valid = [bool(p.question and p.passage) for p in pairs]
    train_idx, val_idx, test_idx = ([i for i in split if valid[i]] for split in protocol_split(pairs, seed, val_rows))
    train_pairs = [pairs[i] for i in train_idx][:train_limit]
    plain, dedup, ids = ir_sets(pairs, test_idx, test_limit)
    val_queries, val_qrels = data.build_ir_queries([pairs[i] for i in val_idx], ids, "v")
    validation = data.IRData(dedup.corpus, val_queries, val_qrels)
    protocol = {
        "data": path,
        "rows": len(pairs),
        "train_rows": len(train_pairs),
        "validation_questions": len(val_idx),
        "test_questions": len(plain.queries),
        "corpus": len(plain.corpus),
        "corpus_dedup": len(dedup.corpus),
    }
    return train_pairs, validation, plain, dedup, protocol


def parse_settings(text: str) -> dict[str, str]:
    """ "a=1,b=2,3" -> {"a": "1", "b": "2,3"}: a piece without "=" continues the previous (list) value."""
    out: dict[str, str] = {}
    last = None
    for piece in text.split(","):
        if "=" in piece:
            last, value = piece.split("=", 1)
            out[last] = value
        elif last is not None and piece:
            out[last] += "," + piece
    return out


def validation_at_best(summary: dict) -> dict[int, float]:
    """Validation NDCG@10 at every dim, from the evaluation of the checkpoint that was kept (or of the
    checkpoint average, when that was kept instead)."""
    averaged = summary.get("checkpoint_average") or {}
    if averaged.get("kept"):
        return {d: m["ndcg@10"] for d, m in per_dim_metrics(averaged["validation_scores"], VALIDATION).items()}
    if not summary["best_checkpoint"]:
        return {}
    step = int(Path(summary["best_checkpoint"]).name.rsplit("-", 1)[1])
    for entry in summary["log_history"]:
        if entry.get("step") == step:
            found = per_dim_metrics(entry, VALIDATION)
            if found:
                return {d: m["ndcg@10"] for d, m in found.items()}
    return {}


# Publishing destinations and this machine's settings change no measured number. The ones that rows recorded
# before 2026-12-07 hold in their fingerprints stay in (so those rows still match); any added since are left
# out, so a new option (--publish-dir was the first) re-measures nothing.
_NEUTRAL_IN_OLD_ROWS = ("s3_uri", "hub_repo", "hub_private", "run_dir", "log_format", "progress_seconds")
NOT_SCORED = tuple(n for n in PUBLISH_FIELDS + fields_where(group="local") if n not in _NEUTRAL_IN_OLD_ROWS)


def scored_config(cfg: JobConfig) -> dict:
    """The configuration as a row's fingerprint holds it: every field a measured number may depend on."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NOT_SCORED}


def row_fingerprint(protocol: dict, cfg_dict: dict) -> str:
    """What a row's numbers depend on: the protocol (machine aside) and the full configuration."""
    return fingerprint_digest({"protocol": {k: v for k, v in protocol.items() if k != "machine"}, "config": cfg_dict})


def resolve_row(name: str, cli: dict, protocol: dict, done: dict[str, dict], where, log):
    """A named row's configuration: ``(cfg, its values that differ from the defaults, fingerprint, the row
    already measured in ``done`` under the same fingerprint or None)``."""
    cfg = resolve_config(cli=cli, environ={})
    defaults = JobConfig().to_dict()
    config = {k: v for k, v in cfg.to_dict().items() if v != defaults[k]}
    fingerprint = row_fingerprint(protocol, {"row": name, **scored_config(cfg)})
    kept = done.get(name) if done.get(name, {}).get("fingerprint") == fingerprint else None
    log(f"{name}: already measured in {where}, kept" if kept else f"{name}: start ({config})")
    return cfg, config, fingerprint, kept


class _ElapsedOnSave:
    """Trainer callback: training seconds so far, written next to the checkpoints at every save, so a
    resumed row reports the whole training time (time between saves that was lost is not counted)."""

    def __init__(self, path: Path, before: float) -> None:
        self.path, self.before, self.start = path, before, time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def on_save(self, args, state, control, **kwargs):
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        saved[f"checkpoint-{state.global_step}"] = round(self.seconds(), 1)
        write_json(self.path, saved)


def train_row(cfg, model, dims, train_pairs, validation, row_dir: Path, fingerprint: str, log) -> dict:
    """Train one row in ``row_dir``, continuing from its last complete checkpoint when one of the
    same row fingerprint is there (a run cut short, e.g. by the end of a session)."""
    from transformers import TrainerCallback

    checkpoints = row_dir / "checkpoints"
    marker = row_dir / "row.json"
    old = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
    if old != fingerprint and row_dir.exists():
        shutil.rmtree(row_dir)  # another configuration's leftovers: never resume those
    row_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": fingerprint})
    resume_from = last_checkpoint(checkpoints)
    elapsed_file = row_dir / "elapsed.json"
    before = 0.0
    if resume_from:
        before = (
            json.loads(elapsed_file.read_text()).get(Path(resume_from).name, 0.0) if elapsed_file.is_file() else 0.0
        )
        log(f"continuing from {resume_from} ({before:.0f} s of training already done)")
    clock = _ElapsedOnSave(elapsed_file, before)
    callback = type("ElapsedOnSave", (TrainerCallback,), {"on_save": lambda self, *a, **k: clock.on_save(*a, **k)})()
    result = train_model(
        cfg, model, dims, resolve_best_dim(cfg, dims), train_pairs, validation, checkpoints,
        resume=resume_from is not None, callbacks=[callback],
    )  # fmt: skip
    return {"result": result, "train_seconds": round(clock.seconds(), 1), "resumed_from": resume_from}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="the (question, context) file (required unless --show)")
    ap.add_argument("--show", metavar="RESULTS_JSON", help="print the tables of a results file and exit (no run)")
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--presets", default="base,blog,default", help="comma list of: base, default, or a preset name")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--val-rows", type=int, default=300, help="validation questions taken after the test rows")
    ap.add_argument("--train-limit", type=int, default=None, help="train on the first N training rows only")
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test questions")
    ap.add_argument("--epochs", type=float, default=None, help="override every preset's epochs")
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="extra config KEY=VALUE for every trained row")
    ap.add_argument(
        "--variant", action="append", default=[],
        help="an extra row NAME:KEY=VALUE[,KEY=VALUE...] on top of the default recipe, e.g. hn1:hard_negatives=1 "
        "or w:matryoshka_weights=1,1,1,2,2",
    )  # fmt: skip
    ap.add_argument("--out", default=None, help="write the results as JSON here (after every row)")
    ap.add_argument(
        "--work-dir", default=None,
        help="checkpoints of the rows being trained (default .bench/quality/<out file stem>); a rerun of the same "
        "command skips rows already in --out and continues a row from its last checkpoint",
    )  # fmt: skip
    args = ap.parse_args()
    if args.show:
        shown = json.loads(Path(args.show).read_text())
        print("protocol:", json.dumps(shown["protocol"]))
        print_tables(shown["results"])
        return
    if not args.data:
        ap.error("--data is required (or --show RESULTS_JSON to print a results file)")
    work = Path(args.work_dir or Path(".bench/quality") / (Path(args.out).stem if args.out else "run"))

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    train_pairs, validation, plain, dedup, protocol = load_protocol(
        args.data, args.seed, args.val_rows, args.train_limit, args.test_limit
    )
    protocol.update(
        epochs_override=args.epochs,
        max_seq_length=args.max_seq_length,
        reduced=bool(args.train_limit or args.test_limit or args.epochs is not None or args.max_seq_length),
        machine=f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip(),
        cpu_threads=torch_threads(),
    )
    print("protocol:", json.dumps(protocol), flush=True)

    variants = {}
    for spec in args.variant:
        name, _, settings = spec.partition(":")
        variants[name] = parse_settings(settings)
    names = [p for p in args.presets.split(",") if p] + list(variants)
    previous = json.loads(Path(args.out).read_text()) if args.out and Path(args.out).is_file() else {}
    previous = check_same_protocol(previous, protocol, names, args.out)
    done = {r["name"]: r for r in previous.get("results", []) if "fingerprint" in r}
    results = []
    defaults = JobConfig().to_dict()
    for name in names:
        extra = dict(kv.split("=", 1) for kv in args.set) if name not in ("base",) else {}
        extra.update(variants.get(name, {}))
        cli = {"model": args.model, "max_seq_length": args.max_seq_length, "seed": args.seed, **extra}
        if name not in ("base", "default") and name not in variants:
            cli["preset"] = name
        if args.epochs is not None and name != "base":
            cli["epochs"] = args.epochs
        cfg = resolve_config(cli=cli, environ={})
        config = {k: v for k, v in cfg.to_dict().items() if v != defaults[k]}
        # a base row depends on the model and how it is evaluated; a trained row on everything
        scored = cfg.fingerprint(MODEL_FIELDS + ("eval_batch_size",)) if name == "base" else scored_config(cfg)
        fingerprint = row_fingerprint(protocol, {"trained": name != "base", **scored})
        if name in done and done[name]["fingerprint"] == fingerprint:
            log(f"{name}: already measured in {args.out}, kept")
            results.append(done[name])
            continue
        log(f"{name}: start ({config})")
        row = measure_row(name, cfg, config, fingerprint, train_pairs, validation, plain, dedup, work, log)
        results.append(row)
        log(f"{name}: done")
        print("result:", json.dumps(row), flush=True)
        if args.out:  # after every row, so a run cut short keeps what it finished
            write_json(Path(args.out), {"protocol": protocol, "results": merge_rows(previous, results)})
    print_tables(merge_rows(previous, results))


def measure_row(name, cfg, config, fingerprint, train_pairs, validation, plain, dedup, work: Path, log) -> dict:
    """One row: the base model scored (``name == "base"``) or the recipe ``cfg`` trained on ``train_pairs``
    (resuming from ``work/name``), then validation and both test sets scored at every dim."""
    model = load_model(cfg.model, max_seq_length=cfg.max_seq_length, train=name != "base")
    dims = resolve_dims(cfg, model)
    kw = evaluation_options(cfg)
    row = {"name": name, "config": config, "is_default": name == "default", "fingerprint": fingerprint}
    if name != "base":
        trained = train_row(cfg, model, dims, train_pairs, validation, work / name, fingerprint, log)
        summary = trained["result"].summary
        row["train_seconds"] = trained["train_seconds"]
        row["resumed_from"] = Path(trained["resumed_from"]).name if trained["resumed_from"] else None
        row["pairs_per_second"] = summary["pairs_per_second"]
        row["global_steps"] = summary["global_steps"]
        row["best_checkpoint"] = Path(summary["best_checkpoint"] or "").name or None
        if summary.get("checkpoint_average"):
            row["checkpoint_average"] = {
                k: v for k, v in summary["checkpoint_average"].items() if k != "validation_scores"
            }
        row["hard_negatives"] = summary["hard_negatives"]
        # what a recipe choice may look at: validation NDCG@10 of the kept checkpoint
        row["validation_ndcg@10"] = validation_at_best(summary)
    else:  # the reference the validation gains are read against
        row["validation_ndcg@10"] = {
            d: m["ndcg@10"] for d, m in evaluate_model(model, validation, dims, "validation", **kw).items()
        }
    row["test_ndcg@10"] = {d: m["ndcg@10"] for d, m in evaluate_model(model, plain, dims, "plain", **kw).items()}
    row["test_ndcg@10_dedup"] = {d: m["ndcg@10"] for d, m in evaluate_model(model, dedup, dims, "dedup", **kw).items()}
    row["peak_host_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if name != "base":
        shutil.rmtree(work / name, ignore_errors=True)
    del model
    gc.collect()
    return row


def check_same_protocol(previous: dict, protocol: dict, names: list[str], out: str | None) -> dict:
    """Rows of --out that this run does not name are kept in it (merge_rows): only under the same protocol.
    Returns the file's contents to build on: ``{}`` when its protocol differs and every row it holds is
    named again (measured afresh)."""
    if previous.get("protocol") == protocol:
        return previous
    others = [r["name"] for r in previous.get("results", []) if r["name"] not in names]
    if others:
        changed = sorted(k for k in set(protocol) | set(previous.get("protocol", {}))
                         if protocol.get(k) != previous.get("protocol", {}).get(k))  # fmt: skip
        print(
            f"error: {out} holds rows ({', '.join(others)}) measured under another protocol (differs in: "
            f"{', '.join(changed)}); the two cannot share one file. Fix: pass a new --out, or the same protocol.",
            file=sys.stderr,
        )
        sys.exit(2)
    return {}


def merge_rows(previous: dict, results: list[dict]) -> list[dict]:
    """The rows of --out in their order, those measured now in their place, new ones at the end: a run
    that names only some rows never drops the others."""
    fresh = {r["name"]: r for r in results}
    rows = [fresh.pop(r["name"], r) for r in previous.get("results", [])]
    return rows + [r for r in results if r["name"] in fresh]


def print_tables(results: list[dict]) -> None:
    dims = [int(d) for d in results[0]["test_ndcg@10"]]
    print()
    print("test NDCG@10, plain corpus (duplicate-aware in brackets)")
    print("| recipe | train s | pairs/s | " + " | ".join(str(d) for d in dims) + " |")
    print("|---|---:|---:|" + "---:|" * len(dims))
    for r in results:
        test, dedup = _by_dim(r["test_ndcg@10"]), _by_dim(r["test_ndcg@10_dedup"])
        cells = " | ".join(f"{test[d]:.3f} ({dedup[d]:.3f})" for d in dims)
        print(f"| {r['name']} | {r.get('train_seconds', '-')} | {r.get('pairs_per_second', '-')} | {cells} |")
    print()
    print("validation NDCG@10 (of the kept checkpoint; what a recipe choice may look at)")
    print("| recipe | " + " | ".join(str(d) for d in dims) + " |")
    print("|---|" + "---:|" * len(dims))
    for r in results:
        val = _by_dim(r.get("validation_ndcg@10") or {})
        print(f"| {r['name']} | " + " | ".join(f"{val[d]:.3f}" if d in val else "-" for d in dims) + " |")
    print(f"peak host memory: {max(r['peak_host_memory_mib'] for r in results)} MiB")


def _by_dim(values: dict) -> dict[int, float]:
    return {int(d): v for d, v in values.items()}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
