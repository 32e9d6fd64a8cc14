"""What synthetic pairs are worth: `job synthesize` on the training contexts only, then the default recipe
trained on them, scored on the REAL held-out test questions.

Protocol: bench/quality.py's (seed-42 shuffle of financial-qa-10k's rows; first 10 % test, the next 300
validation, the rest training; corpus = every context). The generator sees only the contexts of the
training split (never its questions); validation and test questions are the real ones. Rows:

- ``base``: the base model, no training;
- ``synthetic``: trained on the synthetic pairs that pass every filter, round-trip consistency included;
- ``synthetic_unfiltered``: the same answers with the consistency filter off (the rule filters stay:
  a line that is not a question cannot be trained on);
- ``synthetic_nogrounding``: the same answers with the grounding filter off (the others on);
- ``real``: trained on the real training pairs (the reference);
- ``real_matched``: a seeded sample of the real training pairs, as many as the ``synthetic`` row kept: what the
  real pairs give at the synthetic set's size (quantity vs what each pair is).

    python bench/synthetic.py --data ../shared/data/financial-qa-10k/Financial-QA-10k.csv \\
        --llm-base-url http://127.0.0.1:8089/v1 --llm-model SmolLM2-135M-Instruct-Q4_1 \\
        --epochs 1 --max-seq-length 128 --out bench/results/synthetic_cpu.json

**Another domain** (``--beir DIR``, issue #32: SciFact): the generator sees a bounded, seeded sample of the
corpus's documents (``--limit-chunks`` of them, always including every document a test claim cites: a user
writes questions for the whole corpus; the generator never sees a claim). Rows: ``base``, ``synthetic`` (every
filter), ``synthetic_nogrounding`` (the grounding filter off, the rest on) and ``real`` (the folder's train
claims, as bench/second_domain.py); validation: a seeded tenth of the train claims; test: the folder's test
claims against the whole corpus. Written to its own file with ``"domain"`` on the protocol and every row.

    python bench/synthetic.py --beir ../shared/data/scifact --limit-chunks 1200 \
        --llm-base-url http://127.0.0.1:8089/v1 --llm-model SmolLM2-135M-Instruct-Q4_1 \
        --max-seq-length 128 --out bench/results/synthetic_scifact_cpu.json --work-dir .bench/synthetic_scifact

Resumable: answers are cached by `job synthesize` (rerun asks only for what is missing), a row in --out
with the same fingerprint is kept, and a row being trained continues from its last checkpoint.
``--generate-only`` stops after the pairs are written (to start training later).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import load_protocol, measure_row, merge_rows, print_tables, row_fingerprint, scored_config, torch_threads

from job.config import JobConfig, fingerprint_digest, resolve_config
from job.data import prepare as data
from job.layout import write_json
from job.synth.synthesize import side_files, synthesize

ROWS = ("base", "synthetic", "synthetic_unfiltered", "synthetic_nogrounding", "real", "real_matched")
BEIR_ROWS = ("base", "synthetic", "synthetic_nogrounding", "synthetic_unfiltered", "real", "real_matched")


def beir_documents(test: data.IRData, limit: int | None, seed: int, path: Path) -> int:
    """The generator's input for a BEIR corpus: every document a test claim cites, then a seeded sample of the
    others up to ``limit`` documents in all (None: every document); one JSON document per line."""
    import random

    cited = sorted({d for rel in test.relevant_docs().values() for d in rel})
    others = sorted(set(test.corpus) - set(cited))
    random.Random(seed).shuffle(others)
    chosen = cited + others[: max(0, (limit or len(test.corpus)) - len(cited))]
    path.parent.mkdir(parents=True, exist_ok=True)
    data.write_jsonl(path, ({"text": test.corpus[d]} for d in chosen))
    return len(chosen)


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
    ap.add_argument("--data", help="a (question, context) file: the financial protocol")
    ap.add_argument("--beir", help="a BEIR folder with train and test qrels (another domain: SciFact)")
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--llm-base-url", required=True)
    ap.add_argument("--llm-model", required=True)
    ap.add_argument("--llm-concurrency", type=int, default=1, help="1 on a one-slot local server: times add up")
    ap.add_argument("--consistency-top-k", type=int, default=None, help="default: the job's default")
    ap.add_argument("--questions-per-chunk", type=int, default=1)
    ap.add_argument("--query-form", default=None, help="question (the job's default) or statement (claims)")
    ap.add_argument("--rows", default=None, help=f"default: {','.join(ROWS)} ({','.join(BEIR_ROWS)} with --beir)")
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

    if bool(args.data) == bool(args.beir):
        sys.exit("error: pass --data (a pairs file) or --beir (a BEIR folder), one of them")
    if args.beir:
        from second_domain import load_scifact

        train_pairs, validation, plain, protocol = load_scifact(args.beir)
        dedup = plain  # a BEIR corpus has its own ids: no duplicate texts to merge
        protocol["domain"] = Path(args.beir).name
    else:
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
    source = train_pairs[: args.limit_chunks] if args.limit_chunks and not args.beir else train_pairs
    protocol["train_pairs_source"] = len(source)
    docs = work / ("corpus_sample.jsonl" if args.beir else "train_contexts.jsonl")
    if args.beir:
        n_contexts = beir_documents(plain, args.limit_chunks, 42, docs)
        protocol["generator_documents"] = n_contexts
        log(f"{n_contexts} corpus documents (every one a test claim cites, then a seeded sample) -> {docs}")
    else:
        n_contexts = contexts_file(source, docs)
        log(f"{n_contexts} distinct training contexts -> {docs} (the generator's only input)")

    synth_cli = {
        "model": args.model, "docs": str(docs), "llm_base_url": args.llm_base_url, "llm_model": args.llm_model,
        "llm_concurrency": args.llm_concurrency, "questions_per_chunk": args.questions_per_chunk,
    }  # fmt: skip
    if args.consistency_top_k is not None:
        synth_cli["consistency_top_k"] = args.consistency_top_k
    if args.query_form is not None:
        synth_cli["query_form"] = protocol["query_form"] = args.query_form
    filtered_cfg = resolve_config(cli=synth_cli, environ={})
    # the other sets: the same answers with one filter off (the consistency filter, the grounding filter): the
    # answer cache is copied, nothing is asked again
    offs = {"synthetic_unfiltered": {"consistency_top_k": 0}, "synthetic_nogrounding": {"grounding_filter": False}}
    outputs = {"synthetic": work / "synthetic.jsonl", **{name: work / f"{name}.jsonl" for name in offs}}
    summaries = {"synthetic": synthesize(filtered_cfg, [str(docs)], outputs["synthetic"], log)}
    for other, off in offs.items():
        shutil.copyfile(side_files(outputs["synthetic"])["answers"], side_files(outputs[other])["answers"])
        other_cfg = resolve_config(cli={**synth_cli, **off}, environ={})
        summaries[other] = synthesize(other_cfg, [str(docs)], outputs[other], log)
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
        "grounding": {name: summaries[name].get("grounding") for name in summaries},
    }
    log(f"generator: {json.dumps(generator)}")
    if args.generate_only:
        return

    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    done = {r["name"]: r for r in previous.get("rows", [])}
    rows = []
    defaults = JobConfig().to_dict()
    known = BEIR_ROWS if args.beir else ROWS
    for name in [r for r in (args.rows or ",".join(known)).split(",") if r]:
        if name not in known:
            sys.exit(f"error: unknown row {name!r}; rows are {', '.join(known)}")
        pairs = source
        if name in outputs:
            pairs = [data.Pair(r["question"], r["passage"]) for r in data.read_jsonl(outputs[name])]
        elif name == "real_matched":  # the real pairs, cut to the synthetic row's size (seeded)
            kept = sum(1 for _ in data.read_jsonl(outputs["synthetic"]))
            pairs = random.Random(42).sample(list(source), min(kept, len(source)))
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
        if args.beir:
            row.pop("test_ndcg@10_dedup", None)  # the same numbers: a BEIR corpus has nothing to merge
            row["domain"] = protocol["domain"]
        rows.append(row)
        log(f"{name}: done")
        write_json(out, {"protocol": protocol, "generator": generator,
                         "rows": merge_rows({"results": previous.get("rows", [])}, rows)})  # fmt: skip
    final = merge_rows({"results": previous.get("rows", [])}, rows)
    write_json(out, {"protocol": protocol, "generator": generator, "rows": final})
    print_tables(final)


if __name__ == "__main__":
    main()
