"""The loss the job builds from its configuration."""

from __future__ import annotations

import os

import pytest
from sentence_transformers import SentenceTransformer

from job.config import resolve_config
from job.errors import JobError
from job.train.finetune import build_loss


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


@pytest.mark.parametrize(
    "settings, inner",
    [
        ({}, "MultipleNegativesRankingLoss"),
        ({"loss": "cached_mnrl"}, "CachedMultipleNegativesRankingLoss"),
        ({"loss": "gist"}, "GISTEmbedLoss"),
        ({"loss": "cached_gist"}, "CachedGISTEmbedLoss"),
        ({"loss_directions": "query_to_doc,doc_to_query", "loss_scale": "30"}, "MultipleNegativesRankingLoss"),
    ],
)
def test_each_loss_trains_a_step(tmp_path, tiny_model_path, settings, inner):
    """Every loss the configuration offers builds, takes its options and trains (2 steps, tiny model)."""
    from conftest import make_pairs

    from job.data.prepare import Pair
    from job.train.finetune import train_model

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    cfg = resolve_config(
        None, {"max_steps": 2, "batch_size": 4, "hard_negatives": 1, "mini_batch_size": 2, **settings}, {}
    )
    pairs = [Pair(r["question"], r["context"]) for r in make_pairs(2)]
    before = [p.detach().clone() for p in model.parameters()]
    result = train_model(cfg, model, [32, 16], 32, pairs, None, tmp_path / "ckpt")
    assert result.summary["global_steps"] == 2
    assert any((a != b).any() for a, b in zip(before, model.parameters()))
    loss = build_loss(
        model, cfg, [32, 16], __import__("job.train.finetune", fromlist=["load_guide"]).load_guide(cfg, model)
    )
    assert type(loss.loss).__name__ == inner
    if "loss_directions" in settings:
        assert loss.loss.directions == ("query_to_doc", "doc_to_query") and loss.loss.scale == 30


def test_gist_guide_problems_are_named_before_training(tiny_model_path, tmp_path):
    from job.train.finetune import load_guide

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    with pytest.raises(JobError, match="The guide model could not be loaded: Model path .*nope does not exist"):
        load_guide(resolve_config(None, {"loss": "gist", "guide_model": str(tmp_path / "nope")}, {}), model)
    with pytest.raises(JobError, match="only gist, cached_gist use a guide"):
        resolve_config(None, {"guide_model": str(tiny_model_path)}, {})
    with pytest.raises(JobError, match="use one of: mnrl, cached_mnrl, gist, cached_gist"):
        resolve_config(None, {"loss": "triplet"}, {})
    guide = load_guide(resolve_config(None, {"loss": "gist"}, {}), model)
    assert guide is not model and not any(p.requires_grad for p in guide.parameters())


def test_report_to_auto_is_tensorboard_only_when_installed(tmp_path, monkeypatch):
    import importlib.util

    from job.train.finetune import report_targets

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    installed = (
        importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    )
    assert report_targets(resolve_config(None, {}, {}), tmp_path / "checkpoints") == (
        "tensorboard" if installed else "none"
    )
    assert (
        report_targets(resolve_config(None, {"report_to": "tensorboard"}, {}), tmp_path / "checkpoints")
        == "tensorboard"
    )
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "logs")  # RUN_DIR/logs, not inside checkpoints/
    with pytest.raises(JobError, match="use one of: auto, none, tensorboard"):
        resolve_config(None, {"report_to": "comet"}, {})


def test_attention_dropout_reaches_every_attention_layer(tiny_model_path):
    from job.train.finetune import set_attention_dropout

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    assert set_attention_dropout(model, None) == 0
    assert set_attention_dropout(model, 0.0) == 2  # the tiny BERT's two layers
    assert all(m.dropout.p == 0.0 for n, m in model.named_modules() if n.endswith("attention.self"))
    with pytest.raises(JobError, match=r"attention_dropout is 1.5; it must be in \[0, 1\)"):
        resolve_config(None, {"attention_dropout": "1.5"}, {})


def test_length_grouped_training_checkpoints_and_resumes(tmp_path, tiny_model_path, monkeypatch):
    """The grouped sampler is built by the trainer (its arguments, saved with each checkpoint, must pickle)."""
    from conftest import make_pairs

    from job.data.prepare import Pair
    from job.train import checkpoints, sampler
    from job.train.finetune import train_model

    built = []
    real_init = sampler.LengthGroupedBatchSampler.__init__

    def init(self, *args, **kwargs):
        built.append(kwargs)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(sampler.LengthGroupedBatchSampler, "__init__", init)
    pairs = [Pair(r["question"], r["context"]) for r in make_pairs(3)]
    settings = {"eval_steps": 2, "batch_size": 4, "length_grouping": 2, "hard_negatives": 1}
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    result = train_model(
        resolve_config(None, {**settings, "max_steps": 4}, {}), model, [32, 16], 32, pairs, None, tmp_path / "ckpt"
    )
    assert result.summary["global_steps"] == 4 and checkpoints.newest(tmp_path / "ckpt").endswith("checkpoint-4")
    assert built and built[0]["pool_batches"] == 2 and built[0]["text_lengths"] is not None  # token counts
    resumed = train_model(
        resolve_config(None, {**settings, "max_steps": 6}, {}),
        model,
        [32, 16],
        32,
        pairs,
        None,
        tmp_path / "ckpt",
        resume=True,
    )
    assert resumed.summary["resumed_from"].endswith("checkpoint-4") and resumed.summary["global_steps"] == 6


def test_checkpoint_average_is_kept_only_when_it_wins_on_validation(tmp_path, tiny_model_path):
    """--average-checkpoints N: the last N checkpoints stay on disk, their mean is scored on validation, and the
    model ends up holding exactly the average (it beat the best checkpoint) or exactly the best checkpoint."""
    import torch
    from conftest import TOPICS, make_pairs

    from job.data.prepare import IRData, Pair
    from job.train import checkpoints, soup
    from job.train.finetune import train_model

    pairs = [Pair(r["question"], r["context"]) for r in make_pairs(3)]
    validation = IRData(
        corpus={f"c{i}": passage for i, (_, passage) in enumerate(TOPICS)},
        queries={f"q{i}": f"What was the {topic}?" for i, (topic, _) in enumerate(TOPICS)},
        qrels={f"q{i}": {f"c{i}": 1} for i in range(len(TOPICS))},
    )
    cfg = resolve_config(
        None, {"max_steps": 6, "eval_steps": 2, "batch_size": 4, "hard_negatives": 0, "average_checkpoints": 2}, {}
    )
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    result = train_model(cfg, model, [32, 16], 32, pairs, validation, tmp_path / "ckpt")
    averaged = result.summary["checkpoint_average"]
    assert averaged["checkpoints"] == ["checkpoint-4", "checkpoint-6"]
    assert averaged["kept"] == (averaged["validation_score"] > averaged["best_single"])
    assert len(checkpoints.checkpoint_dirs(tmp_path / "ckpt")) == 3  # the two averaged and the best, at least
    expected = (
        soup.average([soup.checkpoint_weights(tmp_path / "ckpt" / c) for c in averaged["checkpoints"]])
        if averaged["kept"]
        else soup.checkpoint_weights(result.summary["best_checkpoint"])
    )
    state = model.state_dict()
    assert all(torch.allclose(state[k], v) for k, v in expected.items())


def test_checkpoint_average_mean_and_settings():
    import torch

    from job.train import soup

    states = [
        {"w": torch.tensor([1.0, 3.0]), "ids": torch.tensor([0, 1])},
        {"w": torch.tensor([3.0, 5.0]), "ids": torch.tensor([7, 8])},
    ]
    mean = soup.average(states)
    assert mean["w"].tolist() == [2.0, 4.0] and mean["ids"].tolist() == [7, 8]  # integer buffers: the newest
    with pytest.raises(JobError, match="do not hold the same weights"):
        soup.average([{"w": torch.ones(1)}, {"v": torch.ones(1)}])
    with pytest.raises(JobError, match="average_checkpoints is 1; it must be 0 .off. or at least 2"):
        resolve_config(None, {"average_checkpoints": "1"}, {})


def test_checkpoint_average_needs_two_checkpoints(tmp_path, tiny_model_path):
    from job.train import soup

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    model.save(str(tmp_path / "checkpoint-2"))
    out = soup.try_soup(model, tmp_path, 3, evaluator=None, selection_key="x", best_single=None)
    assert out == {"kept": False, "checkpoints": [], "why": "fewer than 2 complete checkpoints"}
