"""Training that would not fit in the CPU's memory: the cached loss instead, or the fix before any work (#30).

The machine's free memory is the one thing faked (``job.train.memory.available_bytes``, at its boundary): a real
out-of-memory on the CPU is the OS killing the process, which no test should do to the machine it runs on.
"""

from __future__ import annotations

import json
import logging

import pytest

from job.cli import main
from job.config import resolve_config
from job.train import memory

MPNET = memory.Shape(params=109_486_464, hidden=768, intermediate=3072, layers=12, heads=12)
MINILM = memory.Shape(params=22_713_216, hidden=384, intermediate=1536, layers=6, heads=12)


def test_the_estimate_is_at_or_above_the_measured_peaks():
    # measured: all-mpnet-base-v2 10.2 GiB and all-MiniLM-L6-v2 3.2 GiB (batch 32, 128 tokens, one negative)
    assert 10.2 <= memory.step_bytes(MPNET, 32 * 3, 128) / 2**30 <= 11.5
    assert 3.2 <= memory.step_bytes(MINILM, 32 * 3, 128) / 2**30 <= 4.0


def _args(run_dir, model, data, *extra):
    flags = ("--batch-size", "8", "--matryoshka-dims", "32,16", "--hard-negatives", "0", "--max-steps", "2")
    return [str(a) for a in ("run", "--run-dir", run_dir, "--model", model, "--data", data, *flags, *extra)]


def test_a_plain_loss_that_would_not_fit_trains_with_the_cached_one(tmp_path, tiny_model_path, pairs_file,
                                                                     monkeypatch, caplog):  # fmt: skip
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    shape = memory.Shape.of(model)
    one_pair = memory.step_bytes(shape, 2, 64)
    # enough for 2 pairs at a time, not for the batch of 8
    monkeypatch.setattr(memory, "available_bytes", lambda: int(memory.step_bytes(shape, 2 * 2, 64) / 0.9) + 1)
    assert one_pair < memory.step_bytes(shape, 16, 64)
    with caplog.at_level(logging.WARNING, logger="job.train.memory"):
        assert main(_args(tmp_path / "run", tiny_model_path, pairs_file)) == 0
    assert "training with cached_mnrl instead" in caplog.text and "mini-batches of 2" in caplog.text
    assert json.loads((tmp_path / "run" / "model" / "training.json").read_text())["global_steps"] == 2


def test_training_that_cannot_fit_at_all_stops_before_any_work_with_the_fix(tmp_path, tiny_model_path, pairs_file,
                                                                             monkeypatch, capsys):  # fmt: skip
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    code = main(_args(tmp_path / "run", tiny_model_path, pairs_file))
    _, err = capsys.readouterr()
    assert code == 2 and "even one pair at a time" in err and "--max-seq-length" in err and "--no-memory-check" in err
    assert not list((tmp_path / "run").glob("checkpoints/checkpoint-*"))
    assert main(_args(tmp_path / "run", tiny_model_path, pairs_file, "--no-memory-check")) == 0


def test_the_check_is_skipped_where_memory_cannot_be_read(tiny_model_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    cfg = resolve_config(cli={"model": str(tiny_model_path)}, environ={})
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda: None)
    assert memory.fit_cpu_training(cfg, model, 32, 3) is cfg
    with pytest.raises(Exception, match="even one pair"):
        memory.fit_cpu_training(cfg, model, 32, 3, available=1)
