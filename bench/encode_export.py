"""Encode texts with one exported model and save the vectors: the part of bench/int8_recipes.py that runs on the
CPU being checked, e.g. under ``qemu-x86_64 -cpu Haswell`` (an AVX2-only CPU: no AVX-512, no VNNI; ONNX Runtime
picks its int8 kernels from the CPUID the emulator reports). Needs numpy, onnxruntime and tokenizers, not torch.

    qemu-x86_64 -cpu Haswell .venv/bin/python bench/encode_export.py --folder MODEL --onnx FILE \\
        --texts texts.json --out vectors.npy

Also writes ``<out>.cpu.json``: the CPU features numpy detects through CPUID in this process (what the emulator
reports, not the host's /proc/cpuinfo).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from job.export.runtime import ExportedModel

FEATURES = ("SSE42", "AVX", "FMA3", "AVX2", "AVX512F", "AVX512_SKX", "AVX512VNNI", "AVX512_ICL", "AVX512_SPR")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--texts", required=True, help="a JSON list of texts, encoded exactly as given (no prompt added)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (1, no spinning: under an emulator "
                    "waiting threads spin on emulated instructions)")  # fmt: skip
    args = ap.parse_args()
    texts = json.loads(Path(args.texts).read_text())
    model = ExportedModel(Path(args.folder).resolve(), str(Path(args.onnx).resolve()), threads=args.threads, spin=False)
    start = time.perf_counter()
    np.save(args.out, model.encode(texts, batch_size=args.batch_size))  # no prompt: the texts exactly as listed
    from numpy._core._multiarray_umath import __cpu_features__ as seen  # numpy's CPUID probe

    facts = {"cpu_features": {k: bool(seen.get(k)) for k in FEATURES if k in seen},
             "texts": len(texts), "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    Path(args.out + ".cpu.json").write_text(json.dumps(facts))
    print(json.dumps(facts), flush=True)


if __name__ == "__main__":
    main()
