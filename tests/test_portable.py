"""The saved model in the format every reader understands (job/export/portable.py), and what TEI would read from it.

Loading in the other stacks for real (sentence-transformers 3.4.1 and 5.7, infinity-emb) is tests/test_compat.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from job.export import portable


@pytest.fixture()
def saved(tmp_path, tiny_model_path):
    """A model as sentence-transformers 6 saves it (the tiny fixture is saved by it)."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    return folder


def _load(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def test_sentence_transformers_6_files_are_unreadable_to_tei_and_older_releases(saved):
    modules = json.loads((saved / "modules.json").read_text())
    assert modules[0]["type"].startswith("sentence_transformers.base.")  # older releases have no such module
    problems = " ".join(portable.tei_problems(saved))
    assert "pooling_mode_cls_token" in problems and "max_seq_length" in problems


def test_make_portable_writes_the_old_format_and_reloads_with_the_same_vectors(saved):
    before = _load(saved).encode(list(portable.PROBE_TEXTS))
    record = portable.make_portable(saved, _load(saved))
    assert record["portable"] is True and record["reload_max_abs_diff"] == 0.0
    assert record["tei"] == {"pooling": "mean", "max_input_length": 64} and record["tei_problems"] == []
    types = [m["type"] for m in json.loads((saved / "modules.json").read_text())]
    assert types == ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                     "sentence_transformers.models.Normalize"]  # fmt: skip
    st_config = json.loads((saved / "sentence_bert_config.json").read_text())
    assert st_config == {"max_seq_length": 64, "do_lower_case": False}
    pooling = json.loads((saved / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_mean_tokens"] is True
    assert pooling["pooling_mode_cls_token"] is False and "pooling_mode" not in pooling
    after = _load(saved)
    assert after.max_seq_length == 64
    np.testing.assert_array_equal(after.encode(list(portable.PROBE_TEXTS)), before)
    # a second pass changes nothing
    assert portable.make_portable(saved, after)["portable"] is True


def test_the_models_own_token_limit_is_written(saved):
    model = _load(saved)
    model.max_seq_length = 32  # e.g. --max-seq-length 32
    assert portable.make_portable(saved, model)["tei"]["max_input_length"] == 32
    assert _load(saved).max_seq_length == 32


def test_tei_would_silently_use_cls_pooling_without_the_pooling_config(saved):
    portable.make_portable(saved, _load(saved))
    shutil.rmtree(saved / "1_Pooling")
    view = portable.tei_view(saved)
    assert view["pooling"] == "cls" and "CLS" in view["pooling_note"]
    (saved / "1_Pooling").mkdir()
    (saved / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean", "embedding_dimension": 32}))
    assert portable.tei_view(saved)["pooling"] is None  # TEI refuses it: better than wrong vectors


def test_a_model_the_old_format_cannot_express_keeps_its_files_and_says_why(saved):
    config = json.loads((saved / "1_Pooling" / "config.json").read_text())
    (saved / "1_Pooling" / "config.json").write_text(json.dumps({**config, "pooling_mode": ["cls", "mean"]}))
    original = (saved / "modules.json").read_text()
    record = portable.make_portable(saved, verify=False)
    assert record["portable"] is False and "several poolings" in record["why"]
    assert (saved / "modules.json").read_text() == original
    assert "not portable" in portable.describe(record)[0]


def test_a_rewrite_that_changes_the_vectors_is_undone(saved, monkeypatch):
    original = (saved / "modules.json").read_text()
    calls = iter([np.zeros((4, 32)), np.ones((4, 32))])  # before / after the rewrite differ
    monkeypatch.setattr(portable, "_probe", lambda model: next(calls))
    record = portable.make_portable(saved, _load(saved))
    assert record["portable"] is False and "other embeddings" in record["why"]
    assert (saved / "modules.json").read_text() == original


def test_read_pipeline_reads_both_formats(saved):
    new = portable.read_pipeline(saved)
    portable.make_portable(saved, _load(saved))
    old = portable.read_pipeline(saved)
    assert (new.pooling, new.normalize, new.dim) == (old.pooling, old.normalize, old.dim) == ("mean", True, 32)
    assert old.max_seq_length == 64


def test_a_tokenizer_only_transformers_5_names_is_saved_as_one_older_releases_have(saved):
    """A tokenizer built with the `tokenizers` library is saved by transformers 5 as ``TokenizersBackend``, which
    transformers 4 cannot import (every older stack failed on such a model: tests/test_compat.py loads one of each
    architecture there); the inputs it gives are written too (else transformers 4 adds token_type_ids)."""
    path = saved / portable.TOKENIZER_CONFIG
    config = {k: v for k, v in json.loads(path.read_text()).items() if k != "model_input_names"}
    path.write_text(json.dumps({**config, "tokenizer_class": "TokenizersBackend"}))
    record = portable.make_portable(saved, _load(saved))
    assert record["portable"] is True and record["reload_max_abs_diff"] == 0.0
    written = json.loads(path.read_text())
    assert written["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert written["model_input_names"] == _load(saved).tokenizer.model_input_names
    assert portable._legacy_tokenizer({"tokenizer_class": "BertTokenizer", "model_input_names": ["input_ids"]},
                                      ["input_ids", "attention_mask"]) is None  # fmt: skip
