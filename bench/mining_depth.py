"""How many training pairs get a mined hard negative at each mining depth (``--hard-negative-depth``).

A pair whose top-ranked passages all score too close to its positive (the relative margin) gets a
random passage instead; looking deeper finds real negatives for more of them. Mines with the base
model on the quality protocol's training split (bench/quality.py) and prints the counts per depth.

    python bench/mining_depth.py --data ../shared/data/financial-qa-10k/Financial-QA-10k.csv --depths 0,30,100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import load_protocol  # noqa: E402

from job.models import load_model  # noqa: E402
from job.train.negatives import add_hard_negatives  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--depths", default="0,30,100", help="comma list; 0 is the library's default depth")
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    train, *_ = load_protocol(args.data, 42, 300)
    model = load_model(args.model, max_seq_length=None, train=True)
    for depth in (int(d) for d in args.depths.split(",")):
        start = time.perf_counter()
        _, stats = add_hard_negatives(train, model, args.negatives, margin=args.margin, depth=depth, seed=42)
        stats["seconds"] = round(time.perf_counter() - start)
        print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
