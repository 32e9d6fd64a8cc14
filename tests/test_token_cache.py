"""The token cache must hand the model exactly the tensors sentence-transformers' own preprocessing would."""

from __future__ import annotations

import pytest
import torch

from job.train.token_cache import TokenCache


def _batches():
    long = " ".join(["revenue grew strongly in every segment"] * 40)  # longer than max_seq_length: truncated
    return [
        ["What about revenue?", "dividend", long, "What about revenue?"],
        ["tax rate", long, "the plant in Monterrey added a second line", "x"],
        ["dividend", "tax rate"],
    ]


@pytest.mark.parametrize("prompt", [None, "query: "])
def test_cached_tensors_equal_preprocess(tiny_model_path, prompt):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    cache = TokenCache(model.preprocess, model.tokenizer)
    cache.warm([t for b in _batches() for t in b], prompt=prompt, task=None)
    for batch in _batches():
        want = model.preprocess(batch, prompt=prompt, task=None)
        got = cache(batch, prompt=prompt, task=None)
        assert list(got) == list(want) or set(got) == set(want)
        for key in want:
            if isinstance(want[key], torch.Tensor):
                assert got[key].dtype == want[key].dtype, key
                assert torch.equal(got[key], want[key]), key
            else:
                assert got[key] == want[key], key
    assert cache.misses == 0 and cache.hits == sum(len(b) for b in _batches())
    assert not cache.disabled


def test_cached_tensors_equal_preprocess_for_minilm(minilm_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    model.max_seq_length = 32
    cache = TokenCache(model.preprocess, model.tokenizer)
    for batch in _batches() * 2:  # cold, then warm
        want = model.preprocess(batch, task=None)
        got = cache(batch, task=None)
        as_lists = lambda d: {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in d.items()}  # noqa: E731
        assert as_lists(got) == as_lists(want)
    assert cache.hits > 0


def test_outputs_it_cannot_rebuild_fall_back_to_the_original():
    calls = []

    def preprocess(inputs, prompt=None, task=None):
        calls.append(list(inputs))
        return {
            "input_ids": torch.ones(len(inputs), 2, dtype=torch.long),
            "attention_mask": torch.ones(len(inputs), 2),
            "pixel_values": [0.5],
        }

    class Tok:
        pad_token_id = 0

    cache = TokenCache(preprocess, Tok())
    out = cache(["a", "b"])
    assert cache.disabled and out["pixel_values"] == [0.5]
    cache(["a", "b"])
    assert len(calls) == 3  # the probe, then the original function for both calls


def test_training_with_and_without_the_cache_is_identical(tmp_path, tiny_model_path, pairs_file):
    from job.config import resolve_config
    from job.data.prepare import load_records, validate_pairs
    from job.models import load_model
    from job.train.finetune import train_model

    records = load_records(str(pairs_file))
    pairs = validate_pairs(records, "question", "context").pairs
    losses = {}
    for flag in (True, False):
        cfg = resolve_config(
            cli={
                "model": str(tiny_model_path),
                "batch_size": 8,
                "max_steps": 4,
                "logging_steps": 1,
                "token_cache": flag,
            },
            environ={},
        )
        model = load_model(cfg.model, train=True)
        result = train_model(cfg, model, [32, 16], 32, pairs, None, tmp_path / str(flag))
        losses[flag] = [e["loss"] for e in result.summary["log_history"] if "loss" in e]
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)


def test_a_text_that_cannot_be_tokenized_is_left_out_of_the_cache_not_the_others():
    def preprocess(texts, prompt=None, task=None, **kwargs):
        if "bad" in texts:
            raise ValueError("cannot tokenize")
        ids = [torch.tensor([1, len(t)]) for t in texts]
        return {"input_ids": torch.stack(ids), "attention_mask": torch.ones(len(texts), 2, dtype=torch.long)}

    class Tok:
        pad_token_id = 0
        padding_side = "right"

    cache = TokenCache(preprocess, Tok(), chunk_size=8)
    texts = [f"text {i}" for i in range(6)] + ["bad"] + [f"more {i}" for i in range(5)]
    cache.warm(texts)
    assert not cache.disabled
    assert len(cache._rows) == len(texts) - 1  # every text but the bad one, though it shared chunks with them
    with pytest.raises(ValueError, match="cannot tokenize"):
        cache(["text 0", "bad"])  # the batch that holds it raises (the collator then names its pair)
