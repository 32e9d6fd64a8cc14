"""What synthetic pairs are worth: `job synthesize` on the training contexts only, then the default recipe
trained on them, scored on the REAL held-out test questions.

Protocol: bench/quality.py's (seed-42 shuffle of financial-qa-10k's rows; first 10 % test, the next 300
validation, the rest training; corpus = every context). The generator sees only the contexts of the
training split (never its questions); validation and test questions are the real ones. Rows:

- ``base``: the base model, no training;
- ``synthetic``: trained on the synthetic pairs that pass every filter, round-trip consistency included;
- ``synthetic_unfiltered``: the same answers with the consistency filter off (the rule filters stay:
  a line that is not a question cannot be trained on);
- ``real``: trained on the real training pairs (the reference).

    python bench/synthetic.py --data ../shared/data/financial-qa-10k/Financial-QA-10k.csv \\
        --llm-base-url http://127.0.0.1:8089/v1 --llm-model SmolLM2-135M-Instruct-Q4_1 \\
        --epochs 1 --max-seq-length 128 --out bench/results/synthetic_cpu.json

Resumable: answers are cached by `job synthesize` (rerun asks only for what is missing), a row in --out
with the same fingerprint is kept, and a row being trained continues from its last checkpoint.
``--generate-only`` stops after the pairs are written (to start training later).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import load_protocol, measure_row, merge_rows, print_tables, row_fingerprint, scored_config, torch_threads

from job import data
from job.config import JobConfig, fingerprint_digest, resolve_config
from job.layout import write_json
from job.synthesize import side_files, synthesize

ROWS = ("base", "synthetic", "synthetic_unfiltered", "real")


def contexts_file(train_pairs: list[data.Pair], path: Path) -> int:
    """The training split's distinct contexts, one JSON document per line (the generator's only input)."""
    seen: dict[str, None] = {}
    for p in train_pairs:
        seen.setdefault(p.passage, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    data.write_jsonl(path, ({"text": t} for t in seen))
    return len(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--llm-base-url", required=True)
    ap.add_argument("--llm-model", required=True)
    ap.add_argument("--llm-concurrency", type=int, default=1, help="1 on a one-slot local server: times add up")
    ap.add_argument("--consistency-top-k", type=int, default=None, help="default: the job's default")
    ap.add_argument("--questions-per-chunk", type=int, default=1)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--val-rows", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--limit-chunks", type=int, default=None, help="generate for the first N contexts only (trials)")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--out", default="bench/results/synthetic_cpu.json")
    ap.add_argument("--work-dir", default=".bench/synthetic")
    args = ap.parse_args()
    work = Path(args.work_dir)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    train_pairs, validation, plain, dedup, protocol = load_protocol(args.data, 42, args.val_rows)
    protocol.update(
        epochs_override=args.epochs,
        max_seq_length=args.max_seq_length,
        reduced=bool(args.epochs is not None or args.max_seq_length),
        machine=f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip(),
        cpu_threads=torch_threads(),
    )
    # --limit-chunks: the generator sees the first N training pairs' contexts, and the real row trains on those
    # same N pairs, so synthetic and real pairs come from the same passages
    source = train_pairs[: args.limit_chunks] if args.limit_chunks else train_pairs
    protocol["train_pairs_source"] = len(source)
    docs = work / "train_contexts.jsonl"
    n_contexts = contexts_file(source, docs)
    log(f"{n_contexts} distinct training contexts -> {docs} (the generator's only input)")

    synth_cli = {
        "model": args.model, "docs": str(docs), "llm_base_url": args.llm_base_url, "llm_model": args.llm_model,
        "llm_concurrency": args.llm_concurrency, "questions_per_chunk": args.questions_per_chunk,
    }  # fmt: skip
    if args.consistency_top_k is not None:
        synth_cli["consistency_top_k"] = args.consistency_top_k
    filtered_cfg = resolve_config(cli=synth_cli, environ={})
    outputs = {"synthetic": work / "synthetic.jsonl", "synthetic_unfiltered": work / "synthetic_unfiltered.jsonl"}
    summaries = {"synthetic": synthesize(filtered_cfg, [str(docs)], outputs["synthetic"], log)}
    # the same answers, the consistency filter off: the cache is copied, nothing is asked again
    shutil.copyfile(side_files(outputs["synthetic"])["answers"], side_files(outputs["synthetic_unfiltered"])["answers"])
    unfiltered_cfg = resolve_config(cli={**synth_cli, "consistency_top_k": 0}, environ={})
    summaries["synthetic_unfiltered"] = synthesize(unfiltered_cfg, [str(docs)], outputs["synthetic_unfiltered"], log)
    s = summaries["synthetic"]
    generator = {
        **s["generator"],
        "contexts": n_contexts,
        "chunks": s["chunks"]["count"],
        "generation_seconds": s["generation_seconds_all_answers"],
        "seconds_per_1000_chunks": round(1000 * s["generation_seconds_all_answers"] / max(1, s["chunks"]["count"]), 1),
        "tokens_in_per_1000_chunks": s["tokens"]["per_1000_chunks_in"],
        "tokens_out_per_1000_chunks": s["tokens"]["per_1000_chunks_out"],
        "concurrency": args.llm_concurrency,
        "kept": {name: summaries[name]["questions"]["kept"] for name in summaries},
        "dropped": {name: summaries[name]["questions"]["dropped"] for name in summaries},
        "consistency_top_k": s["consistency"]["top_k"],
        "own_chunk_rank_histogram": s["consistency"]["own_chunk_rank_histogram"],
    }
    log(f"generator: {json.dumps(generator)}")
    if args.generate_only:
        return

    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    done = {r["name"]: r for r in previous.get("rows", [])}
    rows = []
    defaults = JobConfig().to_dict()
    for name in [r for r in args.rows.split(",") if r]:
        if name not in ROWS:
            sys.exit(f"error: unknown row {name!r}; rows are {', '.join(ROWS)}")
        pairs = source
        if name in outputs:
            pairs = [data.Pair(r["question"], r["passage"]) for r in data.read_jsonl(outputs[name])]
        cli = {"model": args.model, "max_seq_length": args.max_seq_length, "seed": 42}
        if args.epochs is not None and name != "base":
            cli["epochs"] = args.epochs
        cfg = resolve_config(cli=cli, environ={})
        config = {k: v for k, v in cfg.to_dict().items() if v != defaults[k]}
        trained = name != "base"
        what = {"trained": trained, **scored_config(cfg), "pairs": fingerprint_digest({"p": [(p.question, p.passage)
                for p in pairs]}) if trained else None}  # fmt: skip
        fingerprint = row_fingerprint(protocol, what)
        if name in done and done[name].get("fingerprint") == fingerprint:
            log(f"{name}: already measured in {out}, kept")
            rows.append(done[name])
            continue
        log(f"{name}: start, {len(pairs) if trained else 0} training pairs ({config})")
        row = measure_row(
            "base" if name == "base" else name, cfg, config, fingerprint, pairs, validation, plain, dedup, work, log
        )
        row["train_pairs"] = len(pairs) if trained else 0
        rows.append(row)
        log(f"{name}: done")
        write_json(out, {"protocol": protocol, "generator": generator,
                         "rows": merge_rows({"results": previous.get("rows", [])}, rows)})  # fmt: skip
    final = merge_rows({"results": previous.get("rows", [])}, rows)
    write_json(out, {"protocol": protocol, "generator": generator, "rows": final})
    print_tables(final)


if __name__ == "__main__":
    main()
