"""`job export`: the fine-tuned model as ONNX (float32 and int8) inside ``model/``, scored like the model.

Where each export goes, with the names sentence-transformers' own exporters give them, so that
``SentenceTransformer(path, backend="onnx", model_kwargs={"file_name": FILE})`` loads it wherever Optimum is
installed, and publishing (S3, the Hub) carries it with the model:

==============  ======================================  =====================================================
export          file in model/                          how
==============  ======================================  =====================================================
``onnx``        ``onnx/model.onnx``                     float32 graph (torch.onnx), the name TEI's ONNX backend
                                                        and ``backend="onnx"`` load by default
``onnx-int8``   ``onnx/model_qint8_avx512_vnni.onnx``   ONNX Runtime dynamic quantization: int8 weights per
                                                        channel, activations quantized at run time (what
                                                        ``export_dynamic_quantized_onnx_model(model,
                                                        "avx512_vnni")`` does)
==============  ======================================  =====================================================

sentence-transformers' ``export_optimized_onnx_model`` / ``export_dynamic_quantized_onnx_model`` /
``export_static_quantized_openvino_model`` need Optimum's ONNX Runtime and OpenVINO packages, and the newest of
those (optimum-onnx 0.1.0, optimum-intel 2.2.0) require transformers < 4.58 / < 5.6 and huggingface-hub < 1.22:
they cannot be installed beside this project's transformers 5. The same steps are done here with the tools those
functions call (torch.onnx for the graph, ``onnxruntime.quantization.quantize_dynamic`` with per-channel int8
weights), and :mod:`job.exported` runs the files. ``model/exports.json`` records each file's SHA-256 and the
digest of the weights it was made from: a file that no longer matches is named as damaged, an export of older
weights as stale, each with the fix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job.config import EXPORT_NAMES
from job.errors import JobError
from job.exported import ExportedModel, damaged, export_command

Echo = Callable[[str], None]
MANIFEST = "exports.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
FP32_TOLERANCE = 1e-4  # max |difference| per component, ONNX float32 vs PyTorch (unit vectors)
INT8_MIN_COSINE = 0.95  # an int8 export below this on the probe texts is broken, not merely approximate


@dataclass(frozen=True)
class Export:
    name: str
    file: str  # relative to the model folder
    what: str


EXPORTS = {
    "onnx": Export("onnx", "onnx/model.onnx", "ONNX float32"),
    "onnx-int8": Export("onnx-int8", "onnx/model_qint8_avx512_vnni.onnx", "ONNX int8 (dynamic, per-channel weights)"),
}
BACKENDS = ("torch", *EXPORTS)
assert tuple(EXPORTS) == EXPORT_NAMES


def check_names(names: list[str] | None) -> list[str]:
    names = list(dict.fromkeys(names or []))
    unknown = [n for n in names if n not in EXPORTS]
    if unknown:
        hint = (
            " (OpenVINO: its exporter, optimum-intel, cannot be installed beside transformers 5)"
            if "openvino" in unknown
            else ""
        )
        raise JobError(
            f"Unknown export {', '.join(unknown)}{hint}.",
            f"use one or more of: {', '.join(EXPORTS)} (comma-separated).",
        )
    return names


def check_installed() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise JobError(
            f"Exporting needs onnx and onnxruntime, and {exc.name} is not installed.",
            "install the export extra: pip install -e '.[export]' (`make` installs it with the dev extra).",
        ) from None


def weights_digest(folder: Path) -> str:
    """SHA-256 of the PyTorch weights an export is made from (first 16 hex digits)."""
    h = hashlib.sha256()
    files = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    for path in files:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16] if files else ""


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {"exports": {}}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {"exports": {}}


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(folder / MANIFEST)


def status(folder: Path, name: str, source: Path | None = None) -> str:
    """'ok', 'missing', 'stale' (made from other weights) or 'damaged' (the file no longer matches its digest)."""
    folder = Path(folder)
    entry = read_manifest(folder)["exports"].get(name)
    path = folder / EXPORTS[name].file
    if entry is None or not path.is_file():
        return "missing"
    if entry.get("source_weights") != weights_digest(source or folder):
        return "stale"
    if path.stat().st_size != entry.get("bytes") or file_digest(path) != entry.get("sha256"):
        return "damaged"
    return "ok"


def open_export(
    folder: Path, name: str, *, threads: int | None = None, source: Path | None = None, spin: bool = True
) -> ExportedModel:
    """An export, checked against its manifest first: a missing, stale or damaged one is a JobError with the fix."""
    folder = Path(folder)
    state = status(folder, name, source)
    path = folder / EXPORTS[name].file
    again = export_command(folder, name)
    if state == "missing":
        raise JobError(f"{folder} has no {name} export ({EXPORTS[name].file}).", f"make it with {again}.")
    if state == "stale":
        raise JobError(
            f"The {name} export in {folder} was made from other weights than the model's (retrained since).",
            f"make it again with {again} --force.",
        )
    if state == "damaged":
        raise damaged(path)
    return ExportedModel(folder, EXPORTS[name].file, threads=threads, name=name, spin=spin)


# --- exporting ----------------------------------------------------------------------------------------------------
def _onnx_graph(model, path: Path) -> None:
    import warnings

    import torch

    transformer = model[0].auto_model.eval()

    class Hidden(torch.nn.Module):  # the transformer alone, with optimum's input and output names
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.inner(**kwargs).last_hidden_state

    preprocess = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers 6 renamed it
    features = preprocess(["an example sentence", "another, longer example sentence to export with"])
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in features]
    args = tuple(features[n] for n in names)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in [*names, "last_hidden_state"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden(transformer), args, str(path), input_names=names, output_names=["last_hidden_state"],
            dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False,
        )  # fmt: skip


def _quantize(source: Path, target: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = target.with_name(target.stem + ".pre.onnx")
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # "consider pre-processing": done
    try:
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        # per-channel weights: per-tensor int8 moved MiniLM's vectors to a mean cosine of 0.96, per-channel 0.993
        quantize_dynamic(str(pre), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=False)
    finally:
        pre.unlink(missing_ok=True)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def agreement(model, exported: ExportedModel) -> dict[str, float]:
    """How close the export's vectors are to the PyTorch model's on the probe texts."""
    from job.portable import PROBE_TEXTS

    texts = list(PROBE_TEXTS)
    ref = np.asarray(model.encode(texts, convert_to_numpy=True, normalize_embeddings=True), dtype=np.float32)
    got = exported.encode(texts, normalize_embeddings=True)
    return {
        "max_abs_diff": float(np.abs(ref - got).max()),
        "min_cosine": float((ref * got).sum(1).min()),
    }


def export_model(
    folder: str | Path,
    names: list[str],
    *,
    model=None,
    out: str | Path | None = None,
    force: bool = False,
    echo: Echo = print,
) -> dict[str, Any]:
    """Write the named exports of the model in ``folder`` into ``out`` (default: the same folder) and record them
    in ``out/exports.json``. With ``out`` elsewhere (the base model of a run, which lives outside it), the small
    files an export needs to encode (tokenizer, configs) are copied there, not the weights. Exports that are
    already there for these weights are kept unless ``force``."""
    from job.models import load_model
    from job.portable import PROBE_TEXTS, make_portable

    check_installed()
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    names = check_names(names)
    states = {n: status(out, n, folder) for n in names}
    todo = [n for n in names if force or states[n] != "ok"]
    manifest = read_manifest(out)
    if not todo:
        return manifest
    for name in todo:
        if states[name] in ("stale", "damaged"):
            echo(f"export: the {name} export in {out} was {states[name]}; making it again")
    if model is None or not _cpu_float32(model):  # the graph is traced on the CPU in float32 (TEI loads float32)
        limit = getattr(model, "max_seq_length", None)
        model = load_model(str(folder), device="cpu", max_seq_length=limit)
        model.float()
    if out == folder:
        manifest["portable"] = make_portable(folder, model)
    else:
        _copy_small_files(model, out)
    stage = out.parent / f".{out.name}.export.tmp"  # beside the model: never published with it
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        fp32 = stage / EXPORTS["onnx"].file
        start = time.perf_counter()
        _onnx_graph(model, fp32)
        made = {"onnx": fp32}
        if "onnx-int8" in todo:
            int8 = stage / EXPORTS["onnx-int8"].file
            _quantize(fp32, int8)
            made["onnx-int8"] = int8
        source = weights_digest(folder)
        for name in todo:
            target = out / EXPORTS[name].file
            target.parent.mkdir(parents=True, exist_ok=True)
            made[name].replace(target)
            exported = ExportedModel(out, EXPORTS[name].file, name=name)
            close = agreement(model, exported)
            limit_ok = (
                close["max_abs_diff"] <= FP32_TOLERANCE if name == "onnx" else close["min_cosine"] >= INT8_MIN_COSINE
            )
            if not limit_ok:
                target.unlink()
                raise JobError(
                    f"The {name} export of {folder} does not reproduce the model's vectors ({close}).",
                    "report this with the model id; serve the model with --backend torch meanwhile.",
                )
            manifest["exports"][name] = {
                "file": EXPORTS[name].file, "what": EXPORTS[name].what, "bytes": target.stat().st_size,
                "sha256": file_digest(target), "source_weights": source, "agreement": close,
                "made_with": _versions(), "seconds": round(time.perf_counter() - start, 1),
            }  # fmt: skip
            echo(
                f"export: {name} -> {target} ({target.stat().st_size / 2**20:.1f} MiB; vs PyTorch on "
                f"{len(PROBE_TEXTS)} probe texts: max |diff| {close['max_abs_diff']:.1e}, min cosine "
                f"{close['min_cosine']:.4f})"
            )
        _write_manifest(out, manifest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _cpu_float32(model) -> bool:
    import torch

    return all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


SMALL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


def _copy_small_files(model, out: Path) -> None:
    """What an export of a model that lives elsewhere needs beside it: tokenizer and module configs, no weights."""
    import tempfile

    from job.portable import make_portable

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        model.save(tmp)
        make_portable(tmp, model, verify=False)
        for path in Path(tmp).rglob("*"):
            rel = path.relative_to(tmp)
            if path.is_file() and (rel.name in SMALL_FILES or rel.suffix == ".json") and rel.name != "README.md":
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out / rel)
