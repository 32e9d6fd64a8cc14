"""The loss table (job/train/losses.py, issue #31 item 3): a loss is one registered entry; the configuration, the CPU
memory check and the out-of-memory retry read what they need from the entry, never from the loss's name."""

from __future__ import annotations

import pytest
from sentence_transformers import SentenceTransformer

from job.config import resolve_config
from job.errors import JobError
from job.train import losses, memory


@pytest.fixture
def registered():
    """Entries a test registers are gone after it (the table is process-wide)."""
    before = dict(losses.REGISTRY)
    yield losses.register
    losses.REGISTRY.clear()
    losses.REGISTRY.update(before)


def test_a_loss_added_in_one_place_is_a_valid_choice_and_trains(tmp_path, tiny_model_path, registered):
    from conftest import make_pairs
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesSymmetricRankingLoss

    from job.data.prepare import Pair
    from job.train.finetune import build_loss, train_model

    built = []

    def symmetric(model, cfg, guide, gather):
        built.append((cfg.loss, guide, gather))
        return MultipleNegativesSymmetricRankingLoss(model, scale=cfg.loss_scale)

    registered(losses.Loss("symmetric", symmetric, "MNRL both ways"))
    cfg = resolve_config(None, {"loss": "symmetric", "max_steps": 2, "batch_size": 4, "hard_negatives": 0}, {})
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    before = [p.detach().clone() for p in model.parameters()]
    result = train_model(cfg, model, [32, 16], 32, [Pair(r["question"], r["context"]) for r in make_pairs(2)], None,
                         tmp_path / "ckpt")  # fmt: skip
    assert result.summary["global_steps"] == 2 and built[0] == ("symmetric", None, False)
    assert any((a != b).any() for a, b in zip(before, model.parameters()))
    assert type(build_loss(model, cfg, [32, 16]).loss) is MultipleNegativesSymmetricRankingLoss


def test_what_the_configuration_checks_comes_from_the_entry(registered):
    with pytest.raises(JobError) as bad:
        resolve_config(None, {"loss": "triplet"}, {})
    assert "mnrl" in bad.value.fix and "cached_gist" in bad.value.fix
    registered(losses.Loss("plain", lambda *a: None, "no options"))
    with pytest.raises(JobError, match="loss_directions applies to mnrl, cached_mnrl, not to plain"):
        resolve_config(None, {"loss": "plain", "loss_directions": "query_to_doc,doc_to_query"}, {})
    with pytest.raises(JobError, match="only gist, cached_gist use a guide"):
        resolve_config(None, {"loss": "plain", "guide_model": "x"}, {})
    with pytest.raises(JobError, match="Unknown loss 'nope'"):
        losses.get("nope")


def test_a_twin_must_exist_before_the_loss_that_names_it(registered):
    with pytest.raises(ValueError, match="cached twin 'cached_plain' is not registered"):
        registered(losses.Loss("plain", lambda *a: None, "x", cached_twin="cached_plain"))
    assert "plain" not in losses.REGISTRY


def test_the_memory_check_falls_back_to_the_entry_s_cached_twin(tiny_model_path, registered, monkeypatch):
    """The fallback was a dict keyed by the built-in names: a new loss with a twin now gets it too, and a loss
    without one is an error with the fix."""
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    shape = memory.Shape.of(model)
    room = int(memory.step_bytes(shape, 2 * 2, 64) / 0.9) + 1  # two pairs at a time, not a batch of 8
    registered(losses.Loss("mine", lambda *a: None, "x", cached_twin="cached_mnrl"))
    registered(losses.Loss("lonely", lambda *a: None, "x"))
    cfg = resolve_config(None, {"loss": "mine", "max_seq_length": 64}, {})
    assert memory.fit_cpu_training(cfg, model, 8, 2, available=room).loss == "cached_mnrl"
    with pytest.raises(JobError, match="lonely has no cached .GradCache. twin") as no_twin:
        memory.fit_cpu_training(resolve_config(None, {"loss": "lonely", "max_seq_length": 64}, {}), model, 8, 2,
                                available=room)  # fmt: skip
    assert "--batch-size 2 or less" in no_twin.value.fix
