"""The loss the job builds from its configuration."""

from __future__ import annotations

import pytest
from sentence_transformers import SentenceTransformer

from job.config import resolve_config
from job.errors import JobError
from job.train import build_loss


def test_matryoshka_weights_reach_the_loss(tiny_model_path):
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    loss = build_loss(model, resolve_config(None, {"matryoshka_weights": "1,2,3"}, {}), [32, 16, 8])
    assert list(loss.matryoshka_dims) == [32, 16, 8]
    assert list(loss.matryoshka_weights) == [1.0, 2.0, 3.0]
    assert list(build_loss(model, resolve_config(None, {}, {}), [32, 16]).matryoshka_weights) == [1, 1]


def test_matryoshka_weights_must_match_the_derived_dims(tiny_model_path):
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    with pytest.raises(JobError, match=r"matryoshka_weights has 2 values for the 3 Matryoshka dims \[32, 16, 8\]"):
        build_loss(model, resolve_config(None, {"matryoshka_weights": "1,2"}, {}), [32, 16, 8])
