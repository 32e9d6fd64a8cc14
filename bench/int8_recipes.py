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

**Another CPU class** (``--emulate-cpu Haswell``): every export is made here, then its vectors are computed under
``qemu-x86_64 -cpu Haswell`` (bench/encode_export.py; Debian's ``qemu-user``), an AVX2-only CPU: no AVX-512, no
VNNI. ONNX Runtime picks its int8 kernels from the CPUID the emulator reports (recorded: numpy's CPUID probe inside
the emulator), so the u8s8 path that can saturate without VNNI is the one that runs; the reference vectors are
PyTorch's, here. Emulation is ~100x slower than native: ``--cosine-only`` skips NDCG (probe and real texts only).

    .venv/bin/python bench/int8_recipes.py --model runs/demo/model --recipes old,excl-down-reduce \
        --emulate-cpu Haswell --out bench/results/int8_recipes_demo_avx2_emulated.json
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
    ap.add_argument("--emulate-cpu", default=None, help="encode under qemu-x86_64 -cpu NAME (e.g. Haswell: AVX2 only)")
    ap.add_argument("--qemu", default="qemu-x86_64")
    ap.add_argument("--cosine-only", action="store_true", help="no NDCG (emulation: probe and real texts only)")
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
    if args.emulate_cpu:
        out["emulated_cpu"] = {"qemu": args.qemu, "cpu": args.emulate_cpu, "reference": "PyTorch, natively"}
    if args.cosine_only:
        out["ndcg_on"] = None
    for name in wanted:
        kw = recipes[name]
        f = fp32 if kw is None else work / "onnx" / f"{name}.onnx"
        if kw is not None:
            quantize_dynamic(str(fp32 if name == "old" else pre), str(f), extra_options={"MatMulConstBOnly": True},
                             **kw)  # fmt: skip
        m = ExportedModel(work.resolve(), str(f.resolve()))
        if args.emulate_cpu:
            m = emulated(m, work, f, probes + real, None if args.cosine_only else (ir, dims), args, out)
        cp = (ref_p * m.encode(probes, normalize_embeddings=True)).sum(1)
        cr = (ref_r * m.encode(real, normalize_embeddings=True)).sum(1)
        m.encode(real[:32], batch_size=32)
        t = time.perf_counter()
        m.encode(real[:64], batch_size=32)
        speed = None if args.emulate_cpu else round(64 / (time.perf_counter() - t), 1)  # emulated: not a speed
        nd = {} if args.cosine_only else evaluate_model(m, ir, dims, "t", batch_size=32)
        out["recipes"][name] = {
            "probe_min": round(float(np.min(cp)), 4), "probe_mean": round(float(np.mean(cp)), 4),
            "real_min": round(float(np.min(cr)), 4), "real_mean": round(float(np.mean(cr)), 4),
            "texts_per_s": speed, "MiB": round(f.stat().st_size / 2**20, 1),
            "ndcg@10": {d: round(v["ndcg@10"], 4) for d, v in nd.items()},
        }  # fmt: skip
        print(name, json.dumps(out["recipes"][name]), flush=True)
    if args.out:
        write_json(Path(args.out), out)


class _Recording(ExportedModel):
    """Encodes natively and notes every text the ONNX session is given (prompts included)."""

    def _run(self, texts: list[str]) -> np.ndarray:
        self.seen.update(texts)
        return super()._run(texts)


class _Stored(ExportedModel):
    """Answers from vectors computed elsewhere (under the emulator), for exactly the texts it was asked for."""

    def _run(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def emulated(m: ExportedModel, work: Path, f: Path, texts: list[str], ir_dims, args, out) -> ExportedModel:
    """The same export, its vectors computed under ``qemu -cpu args.emulate_cpu``: a native dry run lists every text
    the measurements give the session, the emulator encodes them, and the model answers from those vectors."""
    import subprocess

    rec = _Recording(work.resolve(), str(f.resolve()))
    rec.seen = set()
    rec.encode(texts)
    if ir_dims is not None:
        evaluate_model(rec, ir_dims[0], ir_dims[1], "t", batch_size=32)
    listed = sorted(rec.seen)
    texts_file, vectors_file = work / f"{f.stem}.texts.json", work / f"{f.stem}.{args.emulate_cpu}.npy"
    texts_file.write_text(json.dumps(listed))
    cmd = [args.qemu, "-cpu", args.emulate_cpu, sys.executable, str(REPO / "bench" / "encode_export.py"),
           "--folder", str(work), "--onnx", str(f), "--texts", str(texts_file), "--out", str(vectors_file)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the emulated encode failed ({done.returncode}): {done.stderr[-2000:]}")
    facts = json.loads(Path(str(vectors_file) + ".cpu.json").read_text())
    out["emulated_cpu"]["cpu_features"] = facts["cpu_features"]  # what CPUID says inside the emulator
    print(f"{f.name}: {facts['texts']} texts under {args.qemu} -cpu {args.emulate_cpu} in {facts['seconds']} s "
          f"({facts['cpu_features']})", flush=True)  # fmt: skip
    stored = _Stored(work.resolve(), str(f.resolve()))
    stored.vectors = dict(zip(listed, np.load(vectors_file)))
    return stored


if __name__ == "__main__":
    main()
