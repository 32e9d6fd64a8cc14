"""The exported ONNX graph pools and normalises inside (issue #33): ONNX Runtime alone embeds texts like
``SentenceTransformer.encode(normalize_embeddings=True)``.

Nothing from the project encodes here: the graph is run by ``onnxruntime.InferenceSession`` with the model's own
tokenizer (``transformers.AutoTokenizer`` on the saved folder, truncated at ``sentence_bert_config.json``'s
``max_seq_length``), reading the ``sentence_embedding`` output, as another runtime would. Per text: cosine >= 0.9999
for float32, and >= the int8 export's own probe limit (``job.export.onnx.INT8_MIN_COSINE``) for int8. Mean pooling (tiny
BERT like all-MiniLM), CLS pooling (like bge) and last-token pooling of a decoder with LEFT padding (like
Qwen3-Embedding, also run with right padding: the graph finds the last kept token from the attention mask).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from architectures import build  # noqa: E402
from conftest import make_pairs  # noqa: E402

from job.export import onnx as job_export  # noqa: E402

TEXTS = [
    "What was the order backlog at year end?",
    "The board declared a quarterly dividend of $0.25 per share, payable in March.",
    "OK",
    " ".join(["Revenue grew in every segment while operating costs fell."] * 40),  # over the token limit
    "Wie hoch war der Umsatz im letzten Quartal?",
    "query: How many employees does the company have?",
]


def ort_embed(folder: Path, file_name: str, texts: list[str], padding_side: str | None = None) -> np.ndarray:
    """What a consumer with ONNX Runtime and a tokenizer does: tokenize, run, read ``sentence_embedding``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if padding_side:
        tokenizer.padding_side = padding_side
    limit = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    session = ort.InferenceSession(str(folder / file_name), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    batch = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="np")
    feed = {k: v.astype(np.int64) for k, v in batch.items() if k in wanted}
    return session.run(["sentence_embedding"], feed)[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    rows = make_pairs(5)
    texts = [r["question"] for r in rows] + [r["context"] for r in rows]
    root = tmp_path_factory.mktemp("pooled")
    out = {}
    for name in ("bert-mean", "bert-cls", "qwen3-last"):
        folder = build(name, root, texts)
        job_export.export_model(folder, ["onnx", "onnx-int8"], echo=lambda m: None)
        out[name] = folder
    return out


def _reference(folder: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(TEXTS, normalize_embeddings=True)


@pytest.mark.parametrize("name", ["bert-mean", "bert-cls", "qwen3-last"])
def test_onnx_runtime_alone_gives_the_sentence_transformers_vectors(models, name):
    folder = models[name]
    ref = _reference(folder)
    got = ort_embed(folder, "onnx/model.onnx", TEXTS)
    assert got.shape == ref.shape
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # unit vectors: cosine is the dot product
    cosines = (ref * got).sum(1)
    assert cosines.min() >= 0.9999, cosines
    int8 = ort_embed(folder, "onnx/model_qint8.onnx", TEXTS)
    assert (ref * int8).sum(1).min() >= job_export.INT8_MIN_COSINE


def test_last_token_pooling_follows_the_mask_with_either_padding_side(models):
    folder = models["qwen3-last"]
    ref = _reference(folder)
    for side in ("left", "right"):
        got = ort_embed(folder, "onnx/model.onnx", TEXTS, padding_side=side)
        assert (ref * got).sum(1).min() >= 0.9999, side


@pytest.mark.parametrize("name", ["bert-mean", "bert-cls"])
def test_graph_names_and_the_int8_recipe_are_unchanged(models, name):
    import onnx

    folder = models[name]
    graph = onnx.load(str(folder / "onnx" / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["sentence_embedding", "last_hidden_state"]  # TEI/Optimum pool themselves
    inputs = {i.name for i in graph.input}  # token_type_ids only where the tokenizer gives them
    assert {"input_ids", "attention_mask"} <= inputs <= {"input_ids", "attention_mask", "token_type_ids"}
    manifest = job_export.read_manifest(folder)
    entry = manifest["exports"]["onnx"]
    assert entry["graph"]["pooling"] == ("cls" if name == "bert-cls" else "mean")
    assert entry["graph"]["opset"] == job_export.ONNX_OPSET
    quant = manifest["exports"]["onnx-int8"]["quantization"]
    assert quant["recipe"] == "ffn-output-float" and len(quant["float_nodes"]) == 2  # one FFN output per layer
    # our own serve path reads the pooled output and passes the probe check where it loads
    for export in ("onnx", "onnx-int8"):
        exported = job_export.open_export(folder, export)
        assert exported.pooled_in_graph and exported.probe["min_cosine"] >= job_export.min_cosine_limit(export)


def test_an_older_graph_without_the_pooled_output_is_still_served(models, tmp_path):
    """Exports made before issue #33 output ``last_hidden_state`` only: our path pools them in Python."""
    import onnx

    from job.export.runtime import ExportedModel

    folder = models["bert-mean"]
    model = onnx.load(str(folder / "onnx" / "model.onnx"))
    keep = [o for o in model.graph.output if o.name == "last_hidden_state"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    exported = ExportedModel(folder, str(old))
    assert not exported.pooled_in_graph
    got = exported.encode(TEXTS, normalize_embeddings=True)
    assert (_reference(folder) * got).sum(1).min() >= 0.9999
