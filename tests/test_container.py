"""The SageMaker container contract, run for real against temp folders laid out like /opt/ml.

The entrypoint (``python -m infra.container train``) reads channels and hyperparameters, runs the
whole job on the tiny random BERT, and writes the model, the report, metrics and - on failure - the
failure file. The SIGTERM test runs the entrypoint as its own process and stops it with a real
signal, as a spot interruption would, then restarts it on the same checkpoint folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import make_pairs

from infra.container import contract
from infra.container import entry as container
from infra.container import inputs as container_inputs
from job.errors import JobError

ROOT = Path(__file__).resolve().parents[1]

FAST = {
    "max_steps": "2",
    "batch_size": "8",
    "eval_batch_size": "16",
    "logging_steps": "1",
    "matryoshka_dims": "[32, 16]",
}


def layout(tmp_path: Path, model: Path | None, hps: dict | None = None, pairs: bool = True, promised=None) -> Path:
    """A folder shaped like /opt/ml: channels, hyperparameters.json, inputdataconfig.json."""
    root = tmp_path / "opt_ml"
    config = root / "input" / "config"
    config.mkdir(parents=True)
    channels = {}
    if pairs:
        train = root / "input" / "data" / "train"
        train.mkdir(parents=True)
        (train / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_pairs(5)))
        channels["train"] = {"TrainingInputMode": "File"}
    if model is not None:
        shutil.copytree(model, root / "input" / "data" / "model")
        channels["model"] = {"TrainingInputMode": "File"}
    (config / "hyperparameters.json").write_text(json.dumps(FAST if hps is None else hps))
    (config / "inputdataconfig.json").write_text(json.dumps(promised if promised is not None else channels))
    return root


def run_train(root: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = container.main(["train", "--opt-ml", str(root), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def failure(root: Path) -> str:
    return (root / "output" / "failure").read_text()


# --- the whole contract --------------------------------------------------------------------------
def test_contract_writes_model_report_and_metrics(tmp_path, tiny_model_path, capsys):
    root = layout(tmp_path, tiny_model_path)
    code, out, err = run_train(root, capsys)
    assert code == 0, err
    assert not (root / "output" / "failure").exists()
    # model: a loadable sentence-transformers folder with the evaluation in its card
    assert (root / "model" / "modules.json").is_file()
    assert "Held-out evaluation" in (root / "model" / "README.md").read_text()
    # output/data: a run directory minus the model, and a flat metrics.json
    data = root / "output" / "data"
    for rel in (
        "report/report.md",
        "report/metrics.json",
        "baseline/metrics.json",
        "data/prepare.json",
        "ir/test/corpus.jsonl",
    ):
        assert (data / rel).is_file(), rel
    flat = json.loads((data / "metrics.json").read_text())
    assert set(flat) >= {"test_ndcg@10_dim32", "test_ndcg@10_dim16", "baseline_ndcg@10_dim32", "train_seconds"}
    assert flat["global_steps"] == 2
    # the run directory lives in the checkpoint folder (SageMaker syncs it for spot restarts)
    assert (root / "checkpoints" / "run" / "model" / "training.json").is_file()
    # the channels and converted hyperparameters reached the job configuration
    prepare = json.loads((data / "data" / "prepare.json").read_text())
    assert prepare["source"] == str(root / "input" / "data" / "train" / "pairs.jsonl")
    report = json.loads((data / "report" / "metrics.json").read_text())
    assert report["dims"] == [32, 16]
    training = json.loads((root / "checkpoints" / "run" / "model" / "training.json").read_text())
    assert training["base_model"] == str(root / "input" / "data" / "model")
    assert report["base_model"] == "model"  # the report names no local path (a Hub id where one is known)

    # Every METRIC line is matched by exactly one of the launcher's metric definitions, with its value.
    defs = [(d["Name"], re.compile(d["Regex"])) for d in contract.metric_definitions([32, 16])]
    lines = [line for line in out.splitlines() if line.startswith("METRIC ")]
    names = set()
    for line in lines:
        hits = [(name, float(m.group(1))) for name, rx in defs if (m := rx.search(line))]
        assert len(hits) == 1, line
        name, value = hits[0]
        assert line == f"METRIC {name}={value:.6g}"
        names.add(name)
    assert names >= {
        "train_loss",
        "baseline_ndcg@10_dim32",
        "val_ndcg@10_dim16",
        "test_ndcg@10_dim32",
        "test_ndcg@10_dim16",
    }
    test_line = next(line for line in lines if line.startswith("METRIC test_ndcg@10_dim32="))
    assert float(test_line.split("=")[1]) == pytest.approx(flat["test_ndcg@10_dim32"], rel=1e-5)

    # A second start on the same folders (a restart after the job finished) skips every step.
    code, out, err = run_train(root, capsys)
    assert code == 0, err
    assert out.count("already done for this configuration") == 4
    assert "METRIC test_ndcg@10_dim32=" in out


def test_every_path_can_be_overridden(tmp_path, monkeypatch):
    """One root for all (--opt-ml / $OPT_ML), SageMaker toolkit variables, then one flag per path."""
    monkeypatch.setenv("OPT_ML", str(tmp_path / "env-root"))
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(tmp_path / "sm-train"))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "sm-model"))
    monkeypatch.delenv("SM_OUTPUT_DATA_DIR", raising=False)
    paths = contract.ContainerPaths.create()
    r = tmp_path / "env-root"
    assert paths.channels == {
        "train": tmp_path / "sm-train",
        "eval": r / "input/data/eval",
        "model": r / "input/data/model",
    }
    assert (paths.model, paths.output_data, paths.checkpoints, paths.run_dir) == (
        tmp_path / "sm-model",
        r / "output/data",
        r / "checkpoints",
        r / "checkpoints/run",
    )
    flags = {
        "--train-dir": "t", "--eval-dir": "e", "--base-model-dir": "b", "--hyperparameters": "h.json",
        "--model-dir": "m", "--output-data-dir": "o", "--checkpoint-dir": "c", "--failure-file": "f",
    }  # fmt: skip
    argv = ["--opt-ml", str(tmp_path / "flag-root")] + [x for k, v in flags.items() for x in (k, str(tmp_path / v))]
    paths = container._paths_from_options(container.train_command.make_context("train", argv).params)
    assert paths.root == tmp_path / "flag-root"
    assert paths.channels == {"train": tmp_path / "t", "eval": tmp_path / "e", "model": tmp_path / "b"}
    assert (paths.hyperparameters, paths.model, paths.output_data, paths.checkpoints, paths.failure) == tuple(
        tmp_path / v for v in ("h.json", "m", "o", "c", "f")
    )


def test_tensorboard_event_files_go_to_sagemakers_tensorboard_folder(tmp_path, tiny_model_path, capsys, monkeypatch):
    """--report-to tensorboard in the container: the event files go to ROOT/output/tensorboard (the folder a job's
    TensorBoardOutputConfig syncs to S3 while it runs, `job launch sagemaker --tensorboard-s3-uri`), a copy to
    output/data/logs (output.tar.gz: `job launch fetch` puts it in RUN_DIR/logs), none into the run directory in
    the checkpoint folder; TENSORBOARD_LOGGING_DIR is as before afterwards."""
    pytest.importorskip("tensorboard")  # in every lock (dev, runtime, image)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    root = layout(tmp_path, tiny_model_path, hps={**FAST, "report_to": "tensorboard"})
    code, out, err = run_train(root, capsys)
    assert code == 0, err
    events = sorted(str(p.relative_to(root).parent) for p in root.rglob("events.out.tfevents.*"))
    assert events == ["output/data/logs", "output/tensorboard"], events  # nothing in checkpoints/run/logs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(root / "output" / "tensorboard")).Reload().Tags()["scalars"]
    assert "train/loss" in scalars and any(s.startswith("eval/") and "ndcg@10" in s for s in scalars), scalars
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ

    # The folder follows --opt-ml and has a flag of its own, like every path of the contract.
    assert contract.ContainerPaths.create(tmp_path / "r").tensorboard == tmp_path / "r" / "output" / "tensorboard"
    assert contract.TENSORBOARD == "/opt/ml/output/tensorboard"
    argv = ["--opt-ml", str(tmp_path / "r"), "--tensorboard-dir", str(tmp_path / "tb")]
    paths = container._paths_from_options(container.train_command.make_context("train", argv).params)
    assert paths.tensorboard == tmp_path / "tb"


# --- hyperparameters -----------------------------------------------------------------------------
def test_hyperparameters_are_converted_to_the_field_types(tmp_path):
    path = tmp_path / "hyperparameters.json"
    path.write_text(
        json.dumps(
            {
                "epochs": "2",
                "learning_rate": "5e-05",
                "max_steps": "10",
                "matryoshka_dims": "[64, 32]",  # the SDK's JSON form of a list
                "check_column_order": "false",
                "split-by": "passage",
                "query_prompt": "query: ",
                "max_seq_length": "None",
                "sagemaker_program": "ignored.py",  # SageMaker's own keys are not configuration
                "_tuning_objective_metric": "test_ndcg@10_dim64",
            }
        )
    )
    assert container_inputs.read_hyperparameters(path) == {
        "epochs": 2.0,
        "learning_rate": 5e-05,
        "max_steps": 10,
        "matryoshka_dims": [64, 32],
        "check_column_order": False,
        "split_by": "passage",
        "query_prompt": "query: ",
        "max_seq_length": None,
    }
    path.write_text(json.dumps({"matryoshka_dims": "64,32"}))
    assert container_inputs.read_hyperparameters(path) == {"matryoshka_dims": [64, 32]}


@pytest.mark.parametrize(
    "hps, needles",
    [
        ({"epochz": "2"}, ["Unknown configuration key 'epochz'", "SageMaker hyperparameters"]),
        ({"epochs": "two"}, ["'epochs'", "'two'", "not a valid float"]),
        ({"max_steps": "2.5"}, ["'max_steps'", "'2.5'", "not a valid int"]),
        ({"loss": "triplet"}, ["'loss'", "mnrl, cached_mnrl"]),
        ({"run_dir": "/tmp/x"}, ["Hyperparameter 'run_dir'", "cannot be set in the container"]),
    ],
)
def test_bad_hyperparameter_is_named_in_the_failure_file(tmp_path, tiny_model_path, capsys, hps, needles):
    root = layout(tmp_path, tiny_model_path, hps={**FAST, **hps})
    code, _, err = run_train(root, capsys)
    assert code == 2
    reason = failure(root)
    for needle in needles:
        assert needle in reason, reason
    assert "Traceback" not in err
    assert not (root / "model").exists() and not (root / "checkpoints" / "run").exists()


# --- channels ------------------------------------------------------------------------------------
def test_missing_train_channel_is_named(tmp_path, tiny_model_path, capsys):
    root = layout(tmp_path, tiny_model_path, pairs=False)
    code, _, _ = run_train(root, capsys)
    assert code == 2
    assert failure(root).startswith(f"The 'train' channel is missing: {root}/input/data/train does not exist")


def test_promised_channel_that_is_missing_is_named(tmp_path, tiny_model_path, capsys):
    promised = {"train": {}, "model": {}, "eval": {"TrainingInputMode": "File"}}
    root = layout(tmp_path, tiny_model_path, promised=promised)
    code, _, _ = run_train(root, capsys)
    assert code == 2
    assert "The 'eval' channel is missing" in failure(root)
    assert "inputdataconfig.json lists it" in failure(root)


def test_train_channel_with_two_files_needs_the_data_hyperparameter(tmp_path, tiny_model_path):
    root = layout(tmp_path, tiny_model_path)
    train = root / "input" / "data" / "train"
    shutil.copy(train / "pairs.jsonl", train / "more.jsonl")
    paths = contract.ContainerPaths.create(root)
    with pytest.raises(JobError, match=r"holds 2 data files \(more.jsonl, pairs.jsonl\)"):
        container_inputs.channel_values(paths, {})
    assert container_inputs.channel_values(paths, {"data": "more.jsonl"})["data"] == str(train / "more.jsonl")
    with pytest.raises(JobError, match="has no such file"):
        container_inputs.channel_values(paths, {"data": "other.csv"})


def test_embedded_data_needs_no_train_channel_and_eval_channel_is_the_test_set(tmp_path, tiny_model_path):
    root = layout(tmp_path, tiny_model_path, pairs=False)
    beir = root / "input" / "data" / "eval"
    beir.mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    values = container_inputs.channel_values(contract.ContainerPaths.create(root), {"data": "embedded"})
    assert values == {"eval_data": str(beir), "model": str(root / "input" / "data" / "model")}


def test_base_model_channel_may_hold_a_model_tarball(tmp_path, tiny_model_path):
    """A previous job's model.tar.gz can be the next job's base model."""
    root = layout(tmp_path, None)
    channel = root / "input" / "data" / "model"
    channel.mkdir(parents=True)
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tf:
        for p in tiny_model_path.rglob("*"):
            tf.add(p, arcname=p.relative_to(tiny_model_path).as_posix(), recursive=False)
    model = Path(container_inputs.channel_values(contract.ContainerPaths.create(root), {})["model"])
    assert (model / "modules.json").is_file()
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(model)).get_sentence_embedding_dimension() == 32


def test_two_model_sources_are_refused(tmp_path, tiny_model_path):
    root = layout(tmp_path, tiny_model_path)
    with pytest.raises(JobError, match="give the base model one way"):
        container_inputs.channel_values(contract.ContainerPaths.create(root), {"model": "BAAI/bge-small-en-v1.5"})


# --- metrics -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.8194, 1e-05, 12.5, -0.25, 3.0, 123456789.0])
def test_metric_regexes_parse_every_printed_number(value):
    (rx,) = [re.compile(d["Regex"]) for d in contract.metric_definitions([384]) if d["Name"] == "test_ndcg@10_dim384"]
    line = contract.metric_line("test_ndcg@10_dim384", value)
    assert float(rx.search(line).group(1)) == pytest.approx(value, rel=1e-5)
    assert rx.search(contract.metric_line("test_ndcg@10_dim3840", value)) is None


def test_metric_definitions_fit_sagemakers_limit():
    defs = contract.metric_definitions()
    assert len(defs) == 1 + 3 * len(contract.COMMON_DIMS) <= 40  # SageMaker allows 40 per job
    assert len({d["Name"] for d in defs}) == len(defs)


# --- the other entry: the job's own commands -----------------------------------------------------
def _entrypoint(*args: str, opt_ml: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPT_ML": str(opt_ml or ROOT / "no-such-opt-ml")}
    return subprocess.run(
        [sys.executable, "-m", "infra.container", *args], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )


def test_anything_but_train_is_the_job_command_line():
    done = _entrypoint("config", "--epochs", "3")
    assert done.returncode == 0, done.stderr
    assert "epochs: 3.0" in done.stdout


def test_no_arguments_is_help_outside_sagemaker_and_train_inside(tmp_path):
    done = _entrypoint()
    assert done.returncode == 0 and "Usage: job" in done.stdout, done.stderr
    assert not container.sagemaker_started_us(tmp_path)
    # the SDK's local mode starts the image with no command, the platform's config in place
    root = tmp_path / "opt_ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text('{"bogus_key": "1"}')
    assert container.sagemaker_started_us(root)
    done = _entrypoint(opt_ml=root)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Unknown configuration key 'bogus_key'" in (root / "output" / "failure").read_text()


def test_serve_and_rag_eval_reach_rag_eval():
    for args in (("rag-eval", "--help"), ("serve", "--help")):
        done = _entrypoint(*args)
        assert "rag-eval" in done.stdout + done.stderr, (args, done.stdout, done.stderr)


# --- SIGTERM: save a checkpoint, exit non-zero, resume on restart ----------------------------------
class _SigtermAt:
    """Sends this process a real SIGTERM at the end of step ``n``, as SageMaker does on a spot interruption
    (the Docker smoke test sends it from outside, with `docker stop`)."""

    def __new__(cls, n):
        from transformers import TrainerCallback

        class SigtermAt(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == n:
                    os.kill(os.getpid(), signal.SIGTERM)

        return SigtermAt()


def test_sigterm_saves_a_checkpoint_and_the_restart_resumes(tmp_path, tiny_model_path, capsys):
    # eval_steps far away: the only checkpoint is the one SIGTERM forces
    hps = {**FAST, "max_steps": "6", "eval_steps": "1000"}
    root = layout(tmp_path, tiny_model_path, hps=hps)
    old_handler = signal.getsignal(signal.SIGTERM)
    code = container.contract_main(["--opt-ml", str(root)], callbacks=[_SigtermAt(3)])
    out, err = capsys.readouterr()
    assert code == contract.EXIT_SIGTERM == 143, err
    assert signal.getsignal(signal.SIGTERM) is old_handler  # the entrypoint restores the handler
    reason = failure(root)
    assert reason.startswith("Stopped by SIGTERM during training; a checkpoint of step 3 was saved in ")
    assert "resumes from the checkpoint when it is restarted" in reason
    ckpt = root / "checkpoints" / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (root / "model" / "modules.json").exists()

    # A restart with other training settings must not continue these checkpoints.
    (root / "output" / "failure").unlink()
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps({**hps, "learning_rate": "1e-3"}))
    code, _, _ = run_train(root, capsys)
    assert code == 2 and "holds checkpoints made with a different configuration (changed: learning_rate)" in failure(
        root
    )

    # The restart SageMaker makes (same settings, checkpoint folder restored) resumes from step 3.
    (root / "output" / "failure").unlink()
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hps))
    code, out, err = run_train(root, capsys)
    assert code == 0, err
    assert f"train: resuming from {ckpt}/checkpoint-3" in out
    assert "prepare: already done" in out and "baseline: already done" in out
    training = json.loads((root / "checkpoints" / "run" / "model" / "training.json").read_text())
    assert training["resumed_from"].endswith("checkpoint-3") and training["global_steps"] == 6
    assert (root / "model" / "modules.json").is_file() and not (root / "output" / "failure").exists()


# --- several GPUs: the train step under torchrun --------------------------------------------------
@pytest.mark.slow
def test_train_step_runs_under_torchrun_with_several_processes(tmp_path, tiny_model_path, capsys, monkeypatch):
    """Two CPU processes (gloo) stand in for GPUs: the code path of nproc 0 on a g5.12xlarge (4 GPUs, 4 ranks)."""
    root = layout(tmp_path, tiny_model_path, hps={**FAST, "max_steps": "4", "eval_steps": "2", "nproc": "2"})
    monkeypatch.chdir(ROOT)
    code, out, err = run_train(root, capsys)
    assert code == 0, err + out
    training = json.loads((root / "checkpoints" / "run" / "model" / "training.json").read_text())
    assert training["global_steps"] == 4
    # Both ranks took part: each saved its RNG state into the shared checkpoint (DDP over gloo).
    last = root / "checkpoints" / "run" / "checkpoints" / "checkpoint-4"
    assert (last / "rng_state_0.pth").is_file() and (last / "rng_state_1.pth").is_file()
    assert (root / "model" / "modules.json").is_file()
    assert (root / "output" / "data" / "report" / "metrics.json").is_file()
