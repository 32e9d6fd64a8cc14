"""A batch that cannot be built names its training pair, in the main process and in DataLoader workers."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from sentence_transformers import SentenceTransformer

from job.config import resolve_config
from job.errors import JobError
from job.pipeline import RunDir, prepare, train
from job.train.collate import BatchError, RowNamingCollator, raise_for_batch_failure


def _prepared(tmp_path, model, data, **extra):
    values = {
        "run_dir": str(tmp_path / "run"), "model": str(model), "data": str(data), "batch_size": 4,
        "epochs": 1, "eval_batch_size": 16, "val_fraction": 0.0, "hard_negatives": 0, **extra,
    }  # fmt: skip
    cfg = resolve_config(cli=values, environ={})
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    return cfg, rd


def _in_model_card_statistics() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_compute_column_stats":
            return True
        frame = frame.f_back
    return False


def _poison(monkeypatch, bad_text: str, action, in_model_card: bool = True) -> None:
    """Make the model's preprocessing fail on one text (as a broken tokenizer or bad row would).
    ``in_model_card=False`` spares the trainer's start-up statistics pass over the data, so that
    the failure reaches the training batches."""
    original = SentenceTransformer.preprocess

    def preprocess(self, inputs, *args, **kwargs):
        if bad_text in inputs and (in_model_card or not _in_model_card_statistics()):
            action()
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "preprocess", preprocess)


def _raise():
    raise ValueError("simulated tokenizer failure")


@pytest.mark.parametrize(("workers", "token_cache"), [(0, True), (1, True), (1, False)])
def test_a_failing_pair_is_named_by_its_line(tmp_path, tiny_model_path, pairs_file, monkeypatch, workers, token_cache):
    cfg, rd = _prepared(tmp_path, tiny_model_path, pairs_file, dataloader_workers=workers, token_cache=token_cache)
    lines = (rd.data / "train.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])["anchor"]
    _poison(monkeypatch, bad, _raise, in_model_card=False)
    with pytest.raises(JobError) as info:
        train(cfg, rd, echo=lambda m: None)
    message = str(info.value)
    assert message.startswith(f"Building a training batch failed on line 3 of {rd.data / 'train.jsonl'}")
    assert repr(bad) in message and "ValueError: simulated tokenizer failure" in message
    assert "Traceback" not in message and "--resume" in message
    assert (rd.data / "train.jsonl").read_text().splitlines() == lines  # nothing prepared was lost


def test_a_worker_that_dies_names_the_batch_it_was_building(tmp_path, tiny_model_path, pairs_file, monkeypatch):
    from torch.utils.data import get_worker_info

    cfg, rd = _prepared(tmp_path, tiny_model_path, pairs_file, dataloader_workers=1, token_cache=False)
    bad = json.loads((rd.data / "train.jsonl").read_text().splitlines()[4])["anchor"]

    def die():
        if get_worker_info() is not None:  # only in the worker, as a segfault or the OOM killer would
            os.kill(os.getpid(), signal.SIGKILL)

    _poison(monkeypatch, bad, die, in_model_card=False)
    with pytest.raises(JobError) as info:
        train(cfg, rd, echo=lambda m: None)
    message = str(info.value)
    assert "A DataLoader worker process died" in message
    held = message.split("building a batch of lines ", 1)[1].split(" of ", 1)[0].split(", ")
    assert "5" in held and len(held) <= cfg.batch_size
    assert "lower --dataloader-workers" in message


@pytest.mark.parametrize("hard_negatives", [0, 1])  # 1: hard-negative mining meets it first
def test_a_pair_that_fails_before_training_is_named(tmp_path, tiny_model_path, pairs_file, monkeypatch, hard_negatives):
    cfg, rd = _prepared(tmp_path, tiny_model_path, pairs_file, hard_negatives=hard_negatives)
    bad = json.loads((rd.data / "train.jsonl").read_text().splitlines()[6])["positive"]
    _poison(monkeypatch, bad, _raise)  # everywhere: the trainer's start-up tokenization meets it first
    with pytest.raises(
        JobError, match=r"Tokenizing the training data failed on line \d+ of .*train.jsonl.*simulated"
    ) as info:
        train(cfg, rd, echo=lambda m: None)
    line = int(str(info.value).split("failed on line ", 1)[1].split()[0])
    assert json.loads((rd.data / "train.jsonl").read_text().splitlines()[line - 1])["positive"] == bad


def test_a_failure_only_in_combination_names_the_whole_batch():
    def inner(features):
        if len(features) > 1:
            raise RuntimeError("batch too large")
        return {"ok": True}

    collator = RowNamingCollator(inner, {("q1", "p1"): 1, ("q2", "p2"): 2}, "train.jsonl")
    with pytest.raises(BatchError, match=r"their combination: lines 1, 2 of train.jsonl"):
        collator([{"anchor": "q1", "positive": "p1"}, {"anchor": "q2", "positive": "p2"}])


def test_other_errors_pass_through():
    raise_for_batch_failure(RuntimeError("something else"), None, "train.jsonl")  # returns: not ours


class _Inner:
    preprocess_fn = "fn"

    def __call__(self, features):
        return {}


def test_the_wrapper_exposes_the_inner_collator_attributes():
    collator = RowNamingCollator(_Inner(), {}, "x")
    assert collator.preprocess_fn == "fn"
    import pickle

    assert pickle.loads(pickle.dumps(collator)).preprocess_fn == "fn"  # spawn-started workers pickle it
