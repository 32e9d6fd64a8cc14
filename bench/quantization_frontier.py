"""The quality x storage frontier (every dim x float32 / int8 / binary, with and without rescoring) as measured by
`rag-eval score`, gathered into bench/results/quantization_frontier.json.

Two steps, so that the measuring is rag-eval's own:

1. ``--write-beir DIR``: the financial-qa-10k test set under bench/quality.py's protocol (seed-42 shuffle, first
   10 % of the rows are the test questions, corpus = every distinct context, duplicate-aware qrels) as a BEIR
   folder, read from ../shared/data in place (never copied into the repository).
2. ``rag-eval index`` + ``rag-eval score`` on it (and on the demo run), then ``--report NAME=metrics.json ...``
   turns each report's frontier into rows (benchmark, model, dim, precision, rescore, ndcg@10,
   bytes_per_vector, ms_per_query, ...) and writes --out; a benchmark named again replaces its rows.

    python bench/quantization_frontier.py --write-beir .bench/frontier/financial
    python bench/quantization_frontier.py --report demo=runs/demo/rag_eval/metrics.json \\
        --report financial-qa-10k=.bench/frontier/report/metrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "financial-qa-10k" / "Financial-QA-10k.csv"
FIELDS = ("model", "dim", "precision", "rescore", "ndcg@10", "bytes_per_vector", "ms_per_query")


def write_beir(out: Path, csv_path: Path) -> None:
    from quality import load_protocol

    from job.data.prepare import write_beir as write

    _, _, _, dedup, protocol = load_protocol(str(csv_path), 42, 0)
    write(out, dedup, "test")
    print(f"BEIR test set: {len(dedup.queries)} questions, {len(dedup.corpus)} passages -> {out} ({protocol})")


def rows_from_report(benchmark: str, path: Path) -> tuple[list[dict], dict]:
    report = json.loads(path.read_text())
    rows = []
    for label, model in report["models"].items():
        for r in model.get("frontier", []):
            rows.append({"benchmark": benchmark, **{k: r[k] for k in FIELDS}, "model_ref": model["model"],
                         "model_label": label, "rescore_multiplier": r.get("rescore_multiplier"),
                         "retained_vs_float32": r.get("retained_vs_float32"), "corpus": r.get("corpus")})  # fmt: skip
    recs = {label: m["recommendation"]["config"] for label, m in report["models"].items() if m.get("recommendation")}
    source = {"report": str(path), "queries": report["data"]["queries"], "corpus": report["data"]["corpus_size"],
              "recommendations": recs, "store": report.get("store")}  # fmt: skip
    return rows, source


VARIANTS = [("float32", None), ("int8", False), ("int8", True), ("binary", False), ("binary", True)]


def show(path: Path) -> None:
    """Per benchmark and model: one line per dim, NDCG@10 (share of float32 at that dim) per precision."""
    payload = json.loads(path.read_text())
    head = "| model | dim | bytes f32 / int8 / bin | float32 | int8 | int8 + rescoring | binary | binary + rescoring |"
    for bench, source in payload["sources"].items():
        rows = [r for r in payload["rows"] if r["benchmark"] == bench]
        print(f"\n{bench}: {source['queries']} questions, {source['corpus']} passages ({source['report']})\n")
        print(head + "\n|:---|---:|---:|---:|---:|---:|---:|---:|")
        for label in dict.fromkeys(r["model_label"] for r in rows):
            for dim in sorted({r["dim"] for r in rows if r["model_label"] == label}, reverse=True):
                got = {(r["precision"], r["rescore"]): r for r in rows if r["model_label"] == label and r["dim"] == dim}
                sizes = " / ".join(str(got[(p, None if p == "float32" else False)]["bytes_per_vector"])
                                   for p in ("float32", "int8", "binary") if (p, None if p == "float32" else False)
                                   in got)  # fmt: skip
                cells = [
                    f"{got[v]['ndcg@10']:.4f} ({100 * got[v]['retained_vs_float32']:.1f} %)" if v in got else "-"
                    for v in VARIANTS
                ]
                print(f"| {label} | {dim} | {sizes} | " + " | ".join(cells) + " |")
        for label, config in source["recommendations"].items():
            print(f"\nrecommendation ({label}): {config}")
        times = {(r["precision"], r["rescore"]): [] for r in rows}
        for r in rows:
            times[(r["precision"], r["rescore"])].append(r["ms_per_query"])
        print(
            "\nms per query (median over dims and models): "
            + ", ".join(
                f"{p}{' + rescoring' if rs else ''} {sorted(t)[len(t) // 2]:.3f}" for (p, rs), t in times.items()
            )
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write-beir", type=Path, default=None, metavar="DIR")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--report", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quantization_frontier.json")
    p.add_argument("--show", action="store_true", help="print --out's tables (Markdown) and stop")
    args = p.parse_args(argv)
    if args.show:
        show(args.out)
        return
    if args.write_beir:
        write_beir(args.write_beir, args.csv)
    if not args.report:
        return
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": [], "sources": {}}
    names = [spec.split("=", 1)[0] for spec in args.report]
    rows = [r for r in previous["rows"] if r["benchmark"] not in names]
    sources = {k: v for k, v in previous.get("sources", {}).items() if k not in names}
    for spec in args.report:
        name, path = spec.split("=", 1)
        got, source = rows_from_report(name, Path(path))
        rows += got
        sources[name] = {**source, "gathered": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "sources": sources}, indent=2) + "\n")
    print(f"{len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
