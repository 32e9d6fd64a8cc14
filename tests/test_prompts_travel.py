"""Prompts travel with the model (issue #33): a model trained with ``--query-prompt``/``--passage-prompt`` saves them in
``config_sentence_transformers.json`` (``prompts`` {"query", "document"}, no ``default_prompt_name``), so that plain
sentence-transformers elsewhere (a fresh interpreter that imports nothing of the project), our ONNX serve path and
rag-eval's encoders apply them without flags; the portable rewrite still loads; the card's snippet shows
``encode_query``/``encode_document``, ``truncate_dim`` and normalisation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from job.cli import main

FAST = ("--batch-size", "8", "--matryoshka-dims", "32,16", "--hard-negatives", "0", "--max-steps", "2")
TEXTS = ["What was the order backlog at year end?", "The board raised the dividend."]

ELSEWHERE = """
import json, sys
import numpy as np
from sentence_transformers import SentenceTransformer

folder, texts = sys.argv[1], json.loads(sys.argv[2])
model = SentenceTransformer(folder, device="cpu")
q = model.encode_query(texts, normalize_embeddings=True)
d = model.encode_document(texts, normalize_embeddings=True)
q_by_hand = model.encode(["query: " + t for t in texts], normalize_embeddings=True)
d_by_hand = model.encode(["passage: " + t for t in texts], normalize_embeddings=True)
plain = model.encode(texts, normalize_embeddings=True)
print(json.dumps({
    "prompts": model.prompts, "default": model.default_prompt_name,
    "query_diff": float(np.abs(q - q_by_hand).max()), "document_diff": float(np.abs(d - d_by_hand).max()),
    "plain_vs_query": float(np.abs(q - plain).max()), "unit": float(np.abs(np.linalg.norm(q, axis=1) - 1).max()),
    "loaded": "sentence_transformers" in sys.modules and not any(m.split(".")[0] in ("job", "rag_eval")
                                                                 for m in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def prompted_run(tmp_path_factory, tiny_model_path):
    from conftest import make_pairs

    root = tmp_path_factory.mktemp("prompts")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(5)))
    run = root / "run"
    code = main(["run", "--run-dir", str(run), "--model", str(tiny_model_path), "--data", str(pairs), *FAST,
                 "--query-prompt", "query: ", "--passage-prompt", "passage: ", "--export", "onnx"])  # fmt: skip
    assert code == 0
    return run


def test_prompts_are_saved_with_the_model(prompted_run):
    config = json.loads((prompted_run / "model" / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == {"query": "query: ", "document": "passage: "}
    assert config.get("default_prompt_name") is None  # plain encode() adds nothing: each side has its own prompt


def test_plain_sentence_transformers_elsewhere_applies_them(prompted_run):
    out = subprocess.run(
        [sys.executable, "-c", ELSEWHERE, str(prompted_run / "model"), json.dumps(TEXTS)],
        capture_output=True, text=True, timeout=300, cwd=str(prompted_run),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] and got["default"] is None
    assert got["prompts"]["query"] == "query: " and got["prompts"]["document"] == "passage: "
    assert got["query_diff"] < 1e-6 and got["document_diff"] < 1e-6  # equal to encode with the prompt prepended
    assert got["plain_vs_query"] > 1e-4  # and the prompt does change the vectors
    assert got["unit"] < 1e-5


def test_the_portable_save_still_loads(prompted_run):
    model_dir = prompted_run / "model"
    training = json.loads((model_dir / "training.json").read_text())
    assert training["portable"]["portable"] is True, training["portable"]
    modules = json.loads((model_dir / "modules.json").read_text())
    assert modules[0]["type"] == "sentence_transformers.models.Transformer"  # the old-format names older readers load
    # what vLLM's get_pooling_config reads (vllm/transformers_utils/config.py): the exact legacy type names, and
    # the pooling file's booleans, each true key parsed to a pooling type (include_prompt is skipped there)
    types = {m["type"] for m in modules}
    assert {"sentence_transformers.models.Pooling", "sentence_transformers.models.Normalize"} <= types
    pooling_dir = next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
    pooling = json.loads((model_dir / pooling_dir / "config.json").read_text())
    true_modes = [k for k, v in pooling.items() if v is True and k.startswith("pooling_mode_")]
    assert true_modes == ["pooling_mode_mean_tokens"]
    from job.export.portable import read_pipeline

    assert read_pipeline(model_dir).prompts == {"query": "query: ", "document": "passage: "}


def test_our_onnx_path_and_rag_eval_encoders_apply_them_without_flags(prompted_run):
    from sentence_transformers import SentenceTransformer

    from job.export.onnx import open_export
    from rag_eval.vectors import encode_passages, encode_queries

    model_dir = prompted_run / "model"
    torch_model = SentenceTransformer(str(model_dir), device="cpu")
    by_hand = torch_model.encode(["query: " + t for t in TEXTS], normalize_embeddings=True)
    exported = open_export(model_dir, "onnx")
    onnx_q = exported.encode_query(TEXTS, normalize_embeddings=True)
    assert np.abs(onnx_q - by_hand).max() < 1e-4
    # what rag-eval index/score/serve call, with no prompt given (a plain --model folder, no run's flags)
    rag_q = np.asarray(encode_queries(torch_model, TEXTS, None))
    rag_d = np.asarray(encode_passages(torch_model, TEXTS, None))
    rag_q /= np.linalg.norm(rag_q, axis=1, keepdims=True)
    rag_d /= np.linalg.norm(rag_d, axis=1, keepdims=True)
    assert np.abs(rag_q - by_hand).max() < 1e-5
    passages = torch_model.encode(["passage: " + t for t in TEXTS], normalize_embeddings=True)
    assert np.abs(rag_d - passages).max() < 1e-5


def test_the_card_shows_encode_query_truncate_dim_and_normalisation(prompted_run):
    card = (prompted_run / "model" / "README.md").read_text()
    usage = card.split("### Usage at a reduced dimension", 1)[1]
    assert "truncate_dim=" in usage and "encode_query(" in usage and "encode_document(" in usage
    assert usage.count("normalize_embeddings=True") == 2 and "'query: '" in usage
