"""Checkpoint averaging ("model soup") on the quality protocol, from the checkpoints of a row that was
already trained: each single checkpoint's validation NDCG@10 (from the trainer's own log), then the
uniform average of the last k checkpoints for each k, scored on validation; the average that wins on
validation is then scored on the test split (plain and duplicate-aware), as bench/quality.py scores rows.

    python bench/soup.py --data ../shared/data/financial-qa-10k/Financial-QA-10k.csv \
        --checkpoints .bench/soup_ckpts --last 2,3,4 --out bench/results/soup_full_cpu.json

The checkpoints must be complete (``job_checkpoint_complete.json``) and of one training run; the
protocol flags (--seed, --val-rows, --max-seq-length) must be those the row was trained under.
`job train --average-checkpoints N` does the same inside the job.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import load_protocol, torch_threads  # noqa: E402

from job.evaluate.retrieval import VALIDATION, evaluate_model, per_dim_metrics  # noqa: E402
from job.layout import write_json  # noqa: E402
from job.models import load_model  # noqa: E402
from job.train import soup  # noqa: E402


def logged_validation(checkpoint: Path) -> dict[int, dict[int, float]]:
    """Validation NDCG@10 by dim of every evaluated step, from the newest checkpoint's trainer state."""
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    out = {}
    for entry in history:
        found = per_dim_metrics(entry, VALIDATION)
        if found:
            out[entry["step"]] = {d: m["ndcg@10"] for d, m in found.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--checkpoints", required=True, help="folder holding the row's checkpoint-N folders")
    ap.add_argument("--last", default="2,3,4", help="average the last k checkpoints, for each k listed")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--val-rows", type=int, default=300)
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    _, validation, plain, dedup, protocol = load_protocol(args.data, args.seed, args.val_rows)
    protocol.update(max_seq_length=args.max_seq_length, cpu_threads=torch_threads())
    complete = soup.candidates(Path(args.checkpoints), 10**6)
    if len(complete) < 2:
        raise SystemExit(f"{args.checkpoints} holds {len(complete)} complete checkpoint(s); averaging needs 2 or more")
    singles = logged_validation(complete[-1])
    print("single checkpoints, validation NDCG@10 (trainer log):")
    for step, scores in singles.items():
        print(f"  checkpoint-{step}: " + ", ".join(f"{d}: {v:.4f}" for d, v in scores.items()))
    model = load_model(str(complete[-1]), max_seq_length=args.max_seq_length)
    dims = sorted(next(iter(singles.values())), reverse=True)
    states = {p.name: soup.checkpoint_weights(p) for p in complete}
    averages = []
    for k in [int(x) for x in args.last.split(",")]:
        names = [p.name for p in complete[-k:]]
        if len(names) < k:
            continue
        model.load_state_dict(soup.average([states[n] for n in names]))
        start = time.perf_counter()
        val = {d: m["ndcg@10"] for d, m in evaluate_model(model, validation, dims, "validation").items()}
        print(
            f"average of last {k} ({', '.join(names)}): validation "
            + ", ".join(f"{d}: {v:.4f}" for d, v in val.items())
        )
        averages.append(
            {
                "last": k,
                "checkpoints": names,
                "validation_ndcg@10": val,
                "eval_seconds": round(time.perf_counter() - start),
            }
        )
    best_single_step = max(singles, key=lambda s: singles[s][dims[0]])
    chosen = max(averages, key=lambda a: a["validation_ndcg@10"][dims[0]])
    chosen["chosen_on_validation"] = True
    model.load_state_dict(soup.average([states[n] for n in chosen["checkpoints"]]))
    chosen["test_ndcg@10"] = {d: m["ndcg@10"] for d, m in evaluate_model(model, plain, dims, "plain").items()}
    chosen["test_ndcg@10_dedup"] = {d: m["ndcg@10"] for d, m in evaluate_model(model, dedup, dims, "dedup").items()}
    result = {
        "protocol": protocol,
        "single_checkpoints_validation_ndcg@10": {f"checkpoint-{s}": v for s, v in singles.items()},
        "best_single_checkpoint": f"checkpoint-{best_single_step}",
        "averages": averages,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
