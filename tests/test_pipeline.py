"""The steps over a run directory, on the tiny random BERT: outputs, skipping, resume, model selection."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from job.config import resolve_config
from job.errors import JobError
from job.pipeline import RunDir, baseline, evaluate, prepare, run, train


def _cfg(tmp_path, model, data, **extra):
    values = {
        "run_dir": str(tmp_path / "run"),
        "model": str(model),
        "data": str(data),
        "batch_size": 8,
        "epochs": 1,
        "eval_batch_size": 16,
        "logging_steps": 1,
        **extra,
    }
    return resolve_config(cli=values, environ={})


def test_prepare_writes_splits_corpus_and_reports(tmp_path, tiny_model_path, pairs_file):
    from sentence_transformers import SentenceTransformer

    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, val_fraction=0.2, test_fraction=0.2)
    rd = RunDir(cfg.run_dir)
    summary = prepare(cfg, rd, echo=lambda m: None, model=SentenceTransformer(str(tiny_model_path)))
    # 12 passages x 5 questions = 60 pairs; 20 % test, 20 % validation.
    assert summary["pairs"] == 60
    assert summary["splits"] == {"train": 36, "validation": 12, "test": 12}
    assert summary["corpus_size"] == 12  # every passage once, shared by its 5 questions
    assert summary["test_queries"] == 12
    assert summary["truncation"]["max_seq_length"] == 64
    assert summary["truncation"]["passages_truncated"] == 0
    for name in ("train", "validation", "test"):
        assert (rd.data / f"{name}.jsonl").is_file()
    assert (rd.ir("test") / "qrels" / "test.tsv").is_file()
    leak = json.loads((rd.data / "leakage.json").read_text())
    # with 5 questions per passage, a random pair split leaves most test passages also in train
    assert leak["test_pairs"] == 12
    assert 0 < leak["test_pairs_whose_passage_is_in_train"] <= 12


def test_split_by_passage_has_no_leakage(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, split_by="passage", val_fraction=0.2, test_fraction=0.2)
    summary = prepare(cfg, RunDir(cfg.run_dir), echo=lambda m: None)
    assert summary["leakage"]["test_pairs_whose_passage_is_in_train"] == 0


class _StopAt(TrainerCallback):
    """Simulates a crash (e.g. a spot interruption) after step ``n`` has been checkpointed."""

    def __init__(self, n):
        self.n = n

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.n:
            raise KeyboardInterrupt("simulated interruption")


def test_train_resume_continues_from_last_checkpoint(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, max_steps=4, eval_steps=2)
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, rd, echo=lambda m: None, callbacks=[_StopAt(3)])
    assert (rd.checkpoints / "checkpoint-2").is_dir()
    assert not rd.model.exists()
    # A fresh `job train` refuses to throw the checkpoints away silently.
    with pytest.raises(JobError, match="--force"):
        train(cfg, rd, echo=lambda m: None)
    record = train(cfg, rd, echo=lambda m: None, resume=True)
    assert record["resumed_from"].endswith("checkpoint-2")
    assert record["global_steps"] == 4
    assert (rd.model / "model.safetensors").is_file()
    assert (rd.model / "README.md").is_file()  # model card


def test_resume_refuses_checkpoints_of_another_config(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, max_steps=4, eval_steps=2)
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, rd, echo=lambda m: None, callbacks=[_StopAt(3)])
    other = _cfg(tmp_path, tiny_model_path, pairs_file, max_steps=4, eval_steps=2, learning_rate=3e-4)
    with pytest.raises(JobError, match="learning_rate"):
        train(other, rd, echo=lambda m: None, resume=True)


def test_best_checkpoint_is_chosen_on_validation_at_the_configured_dim(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(
        tmp_path, tiny_model_path, pairs_file, max_steps=4, eval_steps=2, matryoshka_dims=[32, 16], best_model_dim=16
    )
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    record = train(cfg, rd, echo=lambda m: None)
    assert record["best_metric_name"] == "eval_validation_dim16_cosine_ndcg@10"
    evals = [e for e in record["log_history"] if "eval_validation_dim16_cosine_ndcg@10" in e]
    assert [e["step"] for e in evals] == [2, 4]
    best = max(evals, key=lambda e: e["eval_validation_dim16_cosine_ndcg@10"])
    assert record["best_metric"] == pytest.approx(best["eval_validation_dim16_cosine_ndcg@10"])
    assert record["best_checkpoint"].endswith(f"checkpoint-{best['step']}")


def test_run_does_every_step_then_skips_them(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, matryoshka_dims=[32, 16, 8])
    rd = RunDir(cfg.run_dir)
    lines: list[str] = []
    results = run(cfg, rd, echo=lines.append)
    report = results["evaluate"]
    assert [row["dim"] for row in report["comparison"]] == [32, 16, 8]
    assert report["comparison"][0]["baseline_retention"] == pytest.approx(1.0)
    assert set(report["finetuned"]["8"]) >= {"ndcg@10", "mrr@10", "map@100", "recall@10", "accuracy@1"}
    for name in ("report.md", "metrics.json", "ndcg_by_dim.png"):
        assert (rd.report / name).is_file()
    assert (rd.report / "ndcg_by_dim.png").read_bytes()[:4] == b"\x89PNG"
    assert "Held-out evaluation" in (rd.model / "README.md").read_text()
    # the base model's test scores are reused from the baseline step, not recomputed
    base = json.loads(rd.done_file("baseline").read_text())["metrics"]
    assert report["baseline"] == base

    lines.clear()
    run(cfg, rd, echo=lines.append)
    assert len(lines) == 4 and all("skipping" in line for line in lines)

    changed = _cfg(tmp_path, tiny_model_path, pairs_file, matryoshka_dims=[32, 16, 8], learning_rate=5e-4)
    with pytest.raises(JobError, match="learning_rate"):
        run(changed, rd, echo=lines.append)


def test_steps_need_their_inputs(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file)
    with pytest.raises(JobError, match="job prepare"):
        baseline(cfg, RunDir(cfg.run_dir), echo=lambda m: None)
    prepare(cfg, RunDir(cfg.run_dir), echo=lambda m: None)
    with pytest.raises(JobError, match="job train"):
        evaluate(cfg, RunDir(cfg.run_dir), echo=lambda m: None)


def test_beir_eval_data_is_used_for_the_test(tmp_path, tiny_model_path, pairs_file):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(
        '{"_id": "a", "title": "Backlog", "text": "Backlog was 5.3 billion."}\n{"_id": "b", "text": "Dividend up."}\n'
    )
    (beir / "queries.jsonl").write_text(
        '{"_id": "1", "text": "what is the backlog"}\n{"_id": "2", "text": "dividend"}\n'
    )
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\ta\t2\n1\tb\t0\n2\tb\t1\n")
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, eval_data=str(beir))
    rd = RunDir(cfg.run_dir)
    summary = prepare(cfg, rd, echo=lambda m: None)
    assert summary["test_queries"] == 2 and summary["test_corpus_size"] == 2
    assert summary["test_graded_relevance"] is True
    assert summary["splits"]["test"] == 0  # every pair is used for training and validation
    record = baseline(cfg, rd, echo=lambda m: None)
    assert record["queries"] == 2 and record["corpus_size"] == 2


def test_hard_negatives_are_mined_and_trained_on(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, hard_negatives=2, max_steps=2)
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    record = train(cfg, rd, echo=lambda m: None)
    stats = record["hard_negatives"]
    assert stats["negatives_per_pair"] == 2
    assert stats["pairs_with_mined_negatives"] + stats["pairs_with_random_fallback"] == record["train_pairs"] == 48


def test_hard_negatives_never_use_the_positive_or_its_duplicates(tiny_model_path):
    from conftest import make_pairs
    from sentence_transformers import SentenceTransformer

    from job.data.prepare import Pair
    from job.train.negatives import add_hard_negatives

    pairs = [Pair(r["question"], r["context"]) for r in make_pairs(3)]  # each passage appears 3 times
    ds, stats = add_hard_negatives(pairs, SentenceTransformer(str(tiny_model_path)), 3, seed=1)
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert len(ds) == len(pairs)
    for row in ds:
        negatives = [row["negative_1"], row["negative_2"], row["negative_3"]]
        assert row["positive"] not in negatives
        assert len(set(negatives)) == 3


def test_hard_negative_depth_reaches_mining_and_fewer_pairs_fall_back(tiny_model_path, monkeypatch):
    """Looking deeper in each question's ranking finds margin-passing negatives for pairs whose top few
    passages all score too close to the positive (14 % of financial-qa-10k's pairs at the default depth)."""
    import sentence_transformers.util
    from conftest import make_pairs
    from sentence_transformers import SentenceTransformer

    from job.data.prepare import Pair
    from job.train.negatives import add_hard_negatives

    pairs = [Pair(r["question"], r["context"]) for r in make_pairs(3)]
    model = SentenceTransformer(str(tiny_model_path))
    fallback = {d: add_hard_negatives(pairs, model, 1, depth=d, seed=1)[1] for d in (2, 12)}
    assert fallback[2]["depth"] == 2 and fallback[12]["depth"] == 12
    assert fallback[2]["pairs_with_random_fallback"] >= fallback[12]["pairs_with_random_fallback"]
    seen = []
    mine = sentence_transformers.util.mine_hard_negatives
    monkeypatch.setattr(
        sentence_transformers.util, "mine_hard_negatives", lambda *a, **k: seen.append(k) or mine(*a, **k)
    )
    add_hard_negatives(pairs, model, 1, depth=7, seed=1)
    add_hard_negatives(pairs, model, 1, seed=1)
    assert [k["range_max"] for k in seen] == [7, None]  # None: the library's default depth


def test_too_few_passages_for_the_requested_negatives(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, hard_negatives=12, max_steps=1)
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    with pytest.raises(JobError, match=r"only 12 distinct passages.*at most 11"):
        train(cfg, rd, echo=lambda m: None)


class _OutOfMemoryOnFirstStep(TrainerCallback):
    """Raises the accelerator's out-of-memory error on the very first step (before any update)."""

    def __init__(self):
        self.calls = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.calls += 1
        if self.calls == 1:
            import torch

            raise torch.OutOfMemoryError("simulated: CUDA out of memory")


def test_out_of_memory_at_the_first_step_falls_back_to_the_cached_loss(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, max_steps=2)
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    record = train(cfg, rd, echo=lambda m: None, callbacks=[_OutOfMemoryOnFirstStep()])
    assert record["global_steps"] == 2
    assert record["loss"] == "cached_mnrl"


class _OutOfMemoryLater(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 1:
            import torch

            raise torch.OutOfMemoryError("simulated: CUDA out of memory")


def test_out_of_memory_after_updates_is_a_clear_error(tmp_path, tiny_model_path, pairs_file):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, max_steps=3)
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    with pytest.raises(JobError, match=r"out of accelerator memory at step 1 with batch size 8.*--resume"):
        train(cfg, rd, echo=lambda m: None, callbacks=[_OutOfMemoryLater()])


def test_two_process_ddp_on_cpu_stays_in_sync_and_saves_one_model(tmp_path, tiny_model_path, pairs_file):
    """A real 2-process torchrun (gloo) run of the training step."""
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file, max_steps=3, nproc=2, batch_size=8, val_fraction=0.0)
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    lines = []
    record = train(cfg, rd, echo=lines.append)
    assert lines[0] == "train: starting 2 processes (torchrun, DDP)"
    assert record["world_size"] == 2 and record["global_steps"] == 3
    checksums = record["rank_param_checksums"]
    assert len(checksums) == 2 and checksums[0] == pytest.approx(checksums[1], rel=1e-12)
    assert sorted(p.name for p in rd.root.iterdir() if p.name.startswith((".model", "model"))) == ["model"]
    assert (rd.model / "model.safetensors").is_file()


def test_more_processes_than_cores_is_a_clear_error(tmp_path, tiny_model_path, pairs_file):
    import os

    cfg = _cfg(
        tmp_path,
        tiny_model_path,
        pairs_file,
        nproc=(os.cpu_count() or 1) + 1,
        batch_size=8 * ((os.cpu_count() or 1) + 1),
    )
    rd = RunDir(cfg.run_dir)
    prepare(cfg, rd, echo=lambda m: None)
    with pytest.raises(JobError, match="more CPU training processes than there are cores"):
        train(cfg, rd, echo=lambda m: None)


@pytest.mark.parametrize("average_wins", [True, False])
def test_checkpoint_average_is_reported_and_saved_with_its_own_scores(
    tmp_path, tiny_model_path, pairs_file, monkeypatch, average_wins
):
    from job.evaluate import card
    from job.train import soup

    rescores = []
    rescore, try_soup = card.rescore_for_card, soup.try_soup
    monkeypatch.setattr(card, "rescore_for_card", lambda *a: rescores.append(1) or rescore(*a))
    # the tiny model's average wins or loses by chance: a best single score of -1 / 2 decides it
    monkeypatch.setattr(soup, "try_soup", lambda *a: try_soup(*a[:5], -1.0 if average_wins else 2.0))
    cfg = _cfg(
        tmp_path, tiny_model_path, pairs_file, max_steps=6, eval_steps=2, matryoshka_dims=[32, 16],
        average_checkpoints=3, hard_negatives=0,
    )  # fmt: skip
    rd = RunDir(cfg.run_dir)
    lines: list[str] = []
    run(cfg, rd, echo=lines.append)
    record = json.loads((rd.model / "training.json").read_text())
    averaged = record["checkpoint_average"]
    assert averaged["checkpoints"] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    train_line = next(line for line in lines if line.startswith("train: ") and "steps over" in line)
    assert f"average of 3 checkpoints {averaged['validation_score']:.4f}" in train_line
    assert averaged["kept"] is average_wins
    assert ("saved instead" if average_wins else "not kept") in train_line
    saved = record["validation_saved_model"]["32"]  # the saved weights, rescored: the average's or the best's
    if average_wins:
        assert saved == pytest.approx(averaged["validation_score"])
    assert len(rescores) == (1 if average_wins else 2)  # a kept average is not scored a second time
    card_data = (rd.model / "README.md").read_text()
    assert f"{saved:.4f}" in card_data  # the card's evaluation block: the saved weights' numbers
    report = (rd.report / "report.md").read_text()
    assert "Checkpoint average of checkpoint-2, checkpoint-4, checkpoint-6: validation" in report
    assert "General retrieval: not measured. No guard set was given" in report and "--guard-data DIR" in report


def test_a_crash_while_averaging_checkpoints_is_recovered_by_the_next_run(
    tmp_path, tiny_model_path, pairs_file, monkeypatch
):
    """Averaging writes nothing until the model is saved: a crash there leaves complete checkpoints, and
    `job run` resumes from the last one, finishes at once and averages."""
    from job.train import checkpoints, soup

    cfg = _cfg(
        tmp_path, tiny_model_path, pairs_file, epochs=2, matryoshka_dims=[32, 16], average_checkpoints=2,
        hard_negatives=0,
    )  # fmt: skip
    rd = RunDir(cfg.run_dir)
    real_average = soup.average

    def crash(states):
        raise KeyboardInterrupt("killed while averaging")

    monkeypatch.setattr(soup, "average", crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, rd, echo=lambda m: None)
    assert not rd.model.exists() and checkpoints.newest(rd.checkpoints).endswith("checkpoint-12")
    monkeypatch.setattr(soup, "average", real_average)
    lines: list[str] = []
    run(cfg, rd, echo=lines.append)
    record = json.loads((rd.model / "training.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-12") and record["global_steps"] == 12
    assert record["checkpoint_average"]["checkpoints"] == ["checkpoint-6", "checkpoint-12"]
    assert (rd.report / "report.md").is_file()
