"""The export table of finished runs in one results file: NDCG@10 of every export at every dim, and its drop.

Reads RUN/report/metrics.json (`job export` / `job run --export` write its ``exports`` table) and writes
``rows`` of ``run, export, dim, ndcg@10, drop_points`` (plus the questions-only score, speed and the test set's
size) into --out, replacing the rows of the same --name and keeping every other run's rows (a row of a full
benchmark run, hours of CPU, is never lost by re-measuring the demo):

    .venv/bin/job export --run-dir runs/demo
    .venv/bin/python bench/export_quality.py --run runs/demo --name demo
    .venv/bin/python bench/export_quality.py --run runs/fin-full --name "financial-qa-10k test (full recipe)"
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "export_quality.json"


def rows_of(metrics: dict, name: str) -> list[dict]:
    table = metrics.get("exports")
    if not table:
        raise SystemExit("this run's report has no export table: run `job export --run-dir RUN` first")
    out = []
    for export, row in table["models"].items():
        if row.get("status", "ok") != "ok":  # a failed export (its reason is in the report): no scores to keep
            continue
        for dim, cell in row["dims"].items():
            out.append(
                {
                    "run": name,
                    "export": export,
                    "dim": int(dim),
                    "ndcg@10": round(cell["ndcg@10"], 4),
                    "drop_points": round(cell["drop_points"], 2),
                    "questions_only_ndcg@10": round(cell["questions_only_ndcg@10"], 4)
                    if "questions_only_ndcg@10" in cell
                    else None,
                    "flagged": bool(row.get("flagged", False)),
                    "texts_per_s": row.get("texts_per_s"),
                    "question_ms": row.get("question_ms"),
                    "test_queries": metrics.get("test_queries"),
                    "corpus_size": metrics.get("corpus_size"),
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run directory with an export table")
    ap.add_argument("--name", default=None, help="the run's name in the file (default: the folder's name)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    metrics = json.loads((args.run / "report" / "metrics.json").read_text())
    name = args.name or args.run.resolve().name
    new = rows_of(metrics, name)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    kept = [r for r in previous.get("rows", []) if r["run"] != name]
    runs = {**previous.get("runs", {}), name: {
        "measured": datetime.date.today().isoformat(), "max_drop_points": metrics["exports"]["max_drop_points"],
        "base_model": metrics.get("base_model"), "data": metrics.get("data"),
    }}  # fmt: skip
    payload = {
        "about": "NDCG@10 on each run's test split: PyTorch and each export (questions and passages encoded by it), "
        "drop_points = PyTorch minus export, in points; questions_only = export questions against PyTorch "
        "passages (rag-eval serve --backend over a PyTorch index); speed on the machine that ran `job export`.",
        "runs": runs,
        "rows": kept + new,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    dims = sorted({r["dim"] for r in new}, reverse=True)
    print(f"| {name} | " + " | ".join(str(d) for d in dims) + " | worst drop |")
    print("|:---|" + "---:|" * (len(dims) + 1))
    for export in dict.fromkeys(r["export"] for r in new):
        cells = {r["dim"]: r for r in new if r["export"] == export}
        worst = max(c["drop_points"] for c in cells.values())
        print(
            f"| {export} | "
            + " | ".join(f"{cells[d]['ndcg@10']:.4f} ({0.0 - cells[d]['drop_points']:+.1f})" for d in dims)
            + f" | {worst:.1f} |"
        )
    print(f"json: {args.out}")


if __name__ == "__main__":
    main()
