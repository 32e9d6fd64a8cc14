"""int8 recipes for `job export`, compared on one model: cosine to PyTorch (the 16 probe texts and real questions
and passages), NDCG@10 at every dim on the embedded Corvane pairs (or --eval-csv's test split), texts/s and file
size.

Recipes (ONNX Runtime dynamic quantization; activations are always uint8 there):

- ``old``: every MatMul/Gemm, per-channel 8-bit weights (the recipe before issue #30);
- ``matmul-only``: MatMuls with a constant weight, per-channel 8-bit;
- ``excl-down``: the same without the FFN down-projections (found by graph structure, job.export.onnx.find_ffn);
- ``excl-down-reduce``: the same with 7-bit weights (``reduce_range``: safe on CPUs without VNNI) -- the recipe
  `job export` uses now;
- ``excl-down-u8u8``: uint8 weights instead;
- ``excl-ffn-reduce``: the whole FFN kept in float32 (the fallback when the recipe above scores below the limit);
- ``all-matmul-reduce``: every MatMul with 7-bit weights (reduce_range alone does not help: the outliers are in the
  down-projection's input).

    .venv/bin/python bench/int8_recipes.py --model /path/to/all-mpnet-base-v2 --out bench/results/int8_recipes_cpu.json

The model folder is copied into --work-dir; nothing is downloaded. CPU flags matter (VNNI or not): the output
records them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from machine import cpu_facts  # bench/machine.py

from job.data.prepare import IRData
from job.evaluate.retrieval import evaluate_model
from job.export import onnx as E
from job.export.runtime import ExportedModel
from job.layout import write_json
from job.models import load_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--recipes", default="", help="comma list of recipe names (default: all)")
    ap.add_argument("--real", type=int, default=150, help="questions and passages each for the cosine on real text")
    ap.add_argument("--eval-csv", default=None, help="score NDCG@10 on this (question, context) CSV's test split "
                    "(bench/quality.py's protocol: seed-42 shuffle, first 10 %%, every context) instead of the "
                    "embedded pairs (which a model fine-tuned on them has seen)")  # fmt: skip
    ap.add_argument("--out", default=None)
    ap.add_argument("--work-dir", default=".bench/int8_recipes")
    args = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = Path(args.model)
    work = Path(args.work_dir) / src.name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    model = load_model(str(work), device="cpu")
    model.float()
    rows = [json.loads(x) for x in (REPO / "job" / "data" / "corvane_10k.jsonl").read_text().split("\n") if x]
    ctx = {c: f"d{i}" for i, c in enumerate(dict.fromkeys(r["context"] for r in rows))}
    ir = IRData({v: k for k, v in ctx.items()}, {f"q{i}": r["question"] for i, r in enumerate(rows)},
                {f"q{i}": {ctx[r["context"]]: 1} for i, r in enumerate(rows)})  # fmt: skip
    evaluated_on = "the embedded Corvane pairs (all of them)"
    if args.eval_csv:
        from quality import load_protocol

        _, _, ir, _, _ = load_protocol(args.eval_csv, 42, 300)
        evaluated_on = f"{args.eval_csv}: test split ({len(ir.queries)} questions, {len(ir.corpus)} passages)"
    probes = list(E.EXPORT_PROBE_TEXTS)
    real = [r["question"] for r in rows[: args.real]] + list(ctx)[: args.real]
    ref_p, ref_r = E.probe_vectors(model, probes), E.probe_vectors(model, real)
    full = model.get_embedding_dimension()
    dims = [d for d in (768, 384, 256, 128, 64, 32) if d <= full]
    fp32 = work / "onnx" / "model.onnx"
    E._onnx_graph(model, fp32)
    pre = work / "onnx" / "pre.onnx"
    graph = E._prepare_graph(fp32, pre)
    ffn = E.find_ffn(graph.graph, *E._transformer_sizes(model))
    down, up = list(ffn["down"]), list(ffn["up"])
    mm = {"op_types_to_quantize": ["MatMul"], "per_channel": True}
    recipes = {
        "fp32": None,
        "old": dict(per_channel=True, reduce_range=False),
        "matmul-only": dict(mm, reduce_range=False),
        "excl-down": dict(mm, reduce_range=False, nodes_to_exclude=down),
        "excl-down-reduce": dict(mm, reduce_range=True, nodes_to_exclude=down),
        "excl-down-u8u8": dict(mm, reduce_range=False, weight_type=QuantType.QUInt8, nodes_to_exclude=down),
        "excl-ffn-reduce": dict(mm, reduce_range=True, nodes_to_exclude=down + up),
        "all-matmul-reduce": dict(mm, reduce_range=True),
    }
    wanted = [r for r in args.recipes.split(",") if r] or list(recipes)
    out = {"model": src.name, "cpu": cpu_facts(), "ffn_down_projections": len(down), "ndcg_on": evaluated_on,
           "recipes": {}}  # fmt: skip
    for name in wanted:
        kw = recipes[name]
        f = fp32 if kw is None else work / "onnx" / f"{name}.onnx"
        if kw is not None:
            quantize_dynamic(str(fp32 if name == "old" else pre), str(f), extra_options={"MatMulConstBOnly": True},
                             **kw)  # fmt: skip
        m = ExportedModel(work.resolve(), str(f.resolve()))
        cp = (ref_p * m.encode(probes, normalize_embeddings=True)).sum(1)
        cr = (ref_r * m.encode(real, normalize_embeddings=True)).sum(1)
        m.encode(real[:32], batch_size=32)
        t = time.perf_counter()
        m.encode(real[:64], batch_size=32)
        nd = evaluate_model(m, ir, dims, "t", batch_size=32)
        out["recipes"][name] = {
            "probe_min": round(float(np.min(cp)), 4), "probe_mean": round(float(np.mean(cp)), 4),
            "real_min": round(float(np.min(cr)), 4), "real_mean": round(float(np.mean(cr)), 4),
            "texts_per_s": round(64 / (time.perf_counter() - t), 1), "MiB": round(f.stat().st_size / 2**20, 1),
            "ndcg@10": {d: round(v["ndcg@10"], 4) for d, v in nd.items()},
        }  # fmt: skip
        print(name, json.dumps(out["recipes"][name]), flush=True)
    if args.out:
        write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
