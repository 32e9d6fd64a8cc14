"""A pipeline step is one registration (job/steps.py): a toy step added in a test runs inside `job run` in its
place, is skipped when its record matches, runs again when a field of its fingerprint changes (refused without
--force, as every step), is re-run alone after a crash that left no record, gets its own `job NAME` command, and
is left to the first machine of a multi-machine job unless it says otherwise."""

from __future__ import annotations

import json

import pytest

from job import layout, steps
from job.cli import main
from job.config import resolve_config
from job.errors import JobError
from job.layout import RunDir, write_json
from job.pipeline import run


def _cfg(tmp_path, model, data, **extra):
    values = {
        "run_dir": str(tmp_path / "run"), "model": str(model), "data": str(data), "batch_size": 8, "epochs": 1,
        "eval_batch_size": 16, "matryoshka_dims": [32, 8], **extra,
    }  # fmt: skip
    return resolve_config(cli=values, environ={})


@pytest.fixture()
def toy_step():
    """A step between train and evaluate that counts the passages of the test corpus; the seed is its field."""
    calls: list[str] = []

    def body(r: steps.Run) -> dict:
        from job.pipeline import step_fingerprint

        calls.append(r.rd.root.name)
        corpus = (r.rd.ir("test") / "corpus.jsonl").read_text().splitlines()
        record = {"passages": len(corpus), "fingerprint": step_fingerprint(r.cfg, r.rd, "toy")}
        write_json(r.rd.done_file("toy"), record)
        return record

    steps.register(
        steps.Step("toy", "Count the test passages.", "toy/record.json", body, fields=("seed",)), before="evaluate"
    )
    yield calls
    steps.unregister("toy")
    assert "toy" not in layout.DONE_FILES


def test_a_registered_step_runs_in_place_skips_reruns_and_recovers(tmp_path, tiny_model_path, pairs_file, toy_step):
    assert steps.names() == ("prepare", "baseline", "train", "toy", "evaluate")
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file)
    rd = RunDir(cfg.run_dir)
    lines: list[str] = []
    order: list[str] = []
    results = run(cfg, rd, echo=lines.append, on_step=lambda name, _: order.append(name))
    assert order == ["prepare", "baseline", "train", "toy", "evaluate"]
    assert toy_step == ["run"] and results["toy"]["passages"] > 0
    assert json.loads(rd.done_file("toy").read_text())["passages"] == results["toy"]["passages"]

    lines.clear()
    run(cfg, rd, echo=lines.append)  # every record matches: all five skipped
    assert len(lines) == 5 and all("skipping" in line for line in lines) and toy_step == ["run"]

    changed = _cfg(tmp_path, tiny_model_path, pairs_file, seed=7)  # the seed also shapes prepare: refused
    with pytest.raises(JobError, match="seed"):
        run(changed, rd, echo=lines.append)

    # a crash inside the step: no record, so the next run does the toy step (and what follows) again
    rd.done_file("toy").unlink()
    run(cfg, rd, echo=lines.append)
    assert toy_step == ["run", "run"] and rd.done_file("toy").is_file()


def test_a_run_of_the_first_steps_only_is_continued_by_the_next(tmp_path, tiny_model_path, pairs_file, toy_step):
    cfg = _cfg(tmp_path, tiny_model_path, pairs_file)
    rd = RunDir(cfg.run_dir)
    run(cfg, rd, echo=lambda m: None, steps=("prepare", "baseline", "train"))
    assert not rd.done_file("toy").exists() and rd.done_file("train").is_file()
    lines: list[str] = []
    run(cfg, rd, echo=lines.append)  # the first three are skipped, the toy step and evaluate run
    assert sum("skipping" in line for line in lines) == 3 and toy_step == ["run"]
    assert rd.done_file("evaluate").is_file()


def test_the_step_gets_a_command_and_stays_on_the_first_machine(toy_step, capsys):
    from job import cli

    cli._step_command(steps.get("toy"))  # (the CLI adds commands for the steps registered when it loads)
    assert main(["toy", "--help"]) == 0
    assert "Count the test passages." in capsys.readouterr().out
    assert "toy" not in steps.worker_steps() and steps.worker_steps() == ("prepare", "train")
    cli.cli.commands.pop("toy", None)


def test_the_step_s_messages_carry_its_phase_in_json_logs(toy_step, monkeypatch, capsys):
    from job import progress

    monkeypatch.setitem(progress._state, "format", "json")
    progress.say("toy: 8 passages")
    assert json.loads(capsys.readouterr().out)["phase"] == "toy"
