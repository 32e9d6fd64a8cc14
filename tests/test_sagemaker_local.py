"""`job launch local`: the job through the SageMaker SDK's real local mode, on any machine.

Docker itself is replaced by a STAND-IN (tests/docker_standin.py): fake ``docker`` and
``docker-compose`` executables that run the compose file the SDK really wrote as a local process
(``python -m infra.container`` with no arguments, the SDK's bind mounts mapped onto an /opt/ml-shaped
folder). Everything else is real: the SDK's ModelTrainer in LOCAL_CONTAINER mode (config files,
compose file, artifact archives), our checks, staging and unpacking, and the job on the tiny model.
The daemon-unreachable case uses the real ``docker`` client when the machine has one. The image,
root-owned mounts and the network are checked against a real Docker daemon by
tests/test_docker_local_mode.py, which scripts/docker_smoke.sh runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import docker_standin
import pytest
import yaml
from conftest import make_pairs

from infra.sagemaker import cli as launch_cli
from infra.sagemaker import local as sagemaker_local
from infra.sagemaker.launch import LaunchSpec

IMAGE = "local/rag-embed-finetune:test"
FAST = ["--max-steps", "2", "--batch-size", "8", "--eval-batch-size", "16", "--matryoshka-dims", "32,16"]


@pytest.fixture()
def local_env(tmp_path, monkeypatch):
    """The stand-in on PATH, an isolated temp dir and SageMaker config, AWS credentials that must not leak."""
    log = tmp_path / "standin"
    docker_standin.install(tmp_path / "bin", log, (IMAGE,))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    empty = tmp_path / "sagemaker-config.yaml"
    empty.write_text("")
    for name in ("SAGEMAKER_USER_CONFIG_OVERRIDE", "SAGEMAKER_ADMIN_CONFIG_OVERRIDE"):
        monkeypatch.setenv(name, str(empty))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASHOULDNOTLEAK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "should-not-leak")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    return {"log": log, "tmp": tmp, "config": empty, "bin": tmp_path / "bin"}


def _pairs(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(5)))  # 60 pairs
    return path


def _run(*args: str) -> int:
    return launch_cli.main(["local", "--image", IMAGE, "--env", "HF_HUB_OFFLINE=1", *args])


def _started(log: Path) -> bool:
    calls = log / "calls.log"
    return calls.is_file() and "docker-compose -f" in calls.read_text()


# --- the whole run ---------------------------------------------------------------------------------
def test_local_run_makes_a_run_directory_that_rag_eval_reads(local_env, tmp_path, tiny_model_path, capsys, monkeypatch):
    sent = []
    monkeypatch.setattr(
        "sagemaker.core.telemetry.telemetry_logging._send_telemetry_request", lambda *a, **k: sent.append(a)
    )
    local_env["config"].write_text(
        "SchemaVersion: '1.0'\nSageMaker:\n  TrainingJob:\n    Environment:\n      TEAM_VAR: from-config\n"
    )
    run_dir = tmp_path / "runs" / "local-1"
    code = _run(
        "--data", str(_pairs(tmp_path / "pairs.jsonl")), "--model", str(tiny_model_path), "--run-dir", str(run_dir),
        "--role", "arn:aws:iam::123456789012:role/X", "--spot", *FAST,
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (
        "launch local: ignored here (they apply on SageMaker; a local run always waits): --role, --spot/--no-spot"
        in err
    )
    if os.geteuid() == 0:  # the tiny model's weights are 0600 (as transformers saves them): staged as a readable copy
        assert (
            "only root can read (e.g. model.safetensors); the job runs as uid 1000, "
            "so the 'model' channel is a readable copy" in err
        )
    # The container ran with no arguments (as the SDK starts it) and trained; its output streamed here.
    assert "METRIC test_ndcg@10_dim32=" in out and "container: done" in out
    # The run directory: `job launch fetch`'s layout.
    for rel in ("model/modules.json", "model/training.json", "report/report.md", "report/metrics.json",
                "ir/test/corpus.jsonl", "data/prepare.json", "baseline/metrics.json", "launch.json"):  # fmt: skip
        assert (run_dir / rel).is_file(), rel
    record = json.loads((run_dir / "launch.json").read_text())
    assert record["local_mode"] is True and record["image"] == IMAGE
    assert record["hyperparameters"] == {"batch_size": "8", "data": "pairs.jsonl", "eval_batch_size": "16",
                                         "matryoshka_dims": "32,16", "max_steps": "2"}  # fmt: skip
    assert f"launch local: {record['training_job']} -> {run_dir} (model/, report/)" in err
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(run_dir / "model")).encode(["revenue"]).shape == (1, 32)
    from rag_eval.sources import resolve_models

    sources = resolve_models(str(run_dir), with_baseline=False)
    assert sources.dims == [32, 16] and sources.models[0].ref == str(run_dir / "model")

    # What the SDK was told: the data FILE became a channel FOLDER; the configuration's environment
    # came along; no AWS credentials were copied into the container; telemetry stayed off.
    compose = yaml.safe_load((local_env["log"] / "compose.yaml").read_text())
    (service,) = compose["services"].values()
    assert service["image"] == IMAGE and "command" not in service
    assert "HF_HUB_OFFLINE=1" in service["environment"] and "TEAM_VAR=from-config" in service["environment"]
    assert not any(e.startswith("AWS_") for e in service["environment"])
    train = next(v for v in service["volumes"] if v.endswith(":/opt/ml/input/data/train"))
    assert train.split(":")[0].endswith("/channels/train")
    assert sent == []
    # The stopped container is removed (`compose down`), and the SDK's working root is gone.
    assert "docker-compose -f" in (calls := (local_env["log"] / "calls.log").read_text()) and " down\n" in calls
    assert list(local_env["tmp"].iterdir()) == []

    # A second run into the same folder needs --force.
    assert _run("--data", "embedded", "--run-dir", str(run_dir), *FAST) == 2
    assert "--force" in capsys.readouterr().err


def test_a_failing_container_shows_the_jobs_own_failure_reason(local_env, tmp_path, tiny_model_path, capsys):
    bad = tmp_path / "pairs.csv"
    bad.write_text("title,body\nRevenue,Revenue grew.\n")
    code = _run("--data", str(bad), "--model", str(tiny_model_path), "--run-dir", str(tmp_path / "run"), *FAST)
    _, err = capsys.readouterr()
    assert code == 2
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "error: The local training job rag-embed-finetune-" in line and " exited with code 2: " in line
    assert "pairs.csv" in line and "column" in line  # the container's failure file names the problem
    assert not (tmp_path / "run").exists()
    assert list(local_env["tmp"].iterdir()) == []


def test_an_image_that_does_not_train_is_a_failure_not_an_empty_success(
    tmp_path, tiny_model_path, capsys, monkeypatch, local_env
):
    """The old image's CMD ["--help"] under the SDK: exit 0, an empty /opt/ml/model (a 55-byte model.tar.gz)."""
    docker_standin.install(local_env["bin"], local_env["log"], (IMAGE,), run="help")
    code = _run("--data", "embedded", "--model", str(tiny_model_path), "--run-dir", str(tmp_path / "run"), *FAST)
    _, err = capsys.readouterr()
    assert code == 2
    assert "holds no sentence-transformers model (no modules.json): the job wrote no model." in err
    assert f"rebuild the image from this repository (`docker build -t {IMAGE} .`)" in err
    assert not (tmp_path / "run").exists()


# --- refused before anything starts --------------------------------------------------------------
@pytest.mark.parametrize(
    "setup, args, needles",
    [
        ("no-docker", [], ["Docker is not installed here (no `docker` command on PATH)",
                           "sudo apt-get install docker.io docker-compose"]),
        ("daemon-down", [], ["The Docker daemon is not reachable at unix://", "sudo systemctl start docker"]),
        ("no-compose", [], ["Docker Compose is not installed", "sudo apt-get install docker-compose"]),
        ("ok", ["--image", "local/never-built:1"], ["The image local/never-built:1 is not in this machine's Docker",
                                                    "docker build -t local/never-built:1 ."]),
        ("ok", ["--data", "/no/such/pairs.jsonl"], ["Data file /no/such/pairs.jsonl does not exist"]),
        ("ok", ["--model", "./no-such-model-dir"], ["Model path ./no-such-model-dir does not exist"]),
        ("ok", ["--eval-data", "/no/such/beir"], ["--eval-data /no/such/beir does not exist"]),
        ("ok", ["--data", "s3://bucket/pairs.jsonl"], ["a local run takes local files and folders, not s3:// URIs",
                                                       "aws s3 cp --recursive"]),
        ("ok", ["--image", "huggingface"], ["runs on SageMaker only"]),
        ("ok", ["--instance-count", "0"], ["--instance-count 0: a training job runs on at least one instance"]),
        ("ok", ["--instance-count", "2", "--gpus"], ["every local container would get all of this machine's GPUs",
                                                     "drop --gpus"]),
        ("ok", ["--instance-count", "2", "--batch-size", "33"], ["batch_size 33 does not split evenly over 2 nodes x "
                                                                 "1 process (2)"]),
    ],
)  # fmt: skip
def test_bad_setups_are_refused_before_anything_starts(local_env, tmp_path, monkeypatch, capsys, setup, args, needles):
    if setup == "no-docker":
        monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    elif setup == "daemon-down":
        real = shutil.which("docker", path=os.environ["PATH"].split(os.pathsep, 1)[1])
        if real:  # the real client, pointed at a socket nobody listens on
            (tmp_path / "real-bin").mkdir()
            (tmp_path / "real-bin" / "docker").symlink_to(real)
            monkeypatch.setenv("PATH", f"{tmp_path / 'real-bin'}{os.pathsep}{os.environ['PATH']}")
        else:
            docker_standin.install(local_env["bin"], local_env["log"], (IMAGE,), daemon=False)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    elif setup == "no-compose":
        (local_env["bin"] / "docker-compose").unlink()
        monkeypatch.setenv("PATH", str(local_env["bin"]))  # the stand-in docker only (it has no compose plugin)
    data = [] if any(a in args for a in ("--data",)) else ["--data", "embedded"]
    code = launch_cli.main(["local", "--image", IMAGE, *data, "--run-dir", str(tmp_path / "run"), *args])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one paragraph
    for needle in needles:
        assert needle in err, err
    assert not _started(local_env["log"])
    assert list(local_env["tmp"].iterdir()) == [] and not (tmp_path / "run").exists()


def test_dry_run_prints_what_would_run_and_starts_nothing(local_env, tmp_path, monkeypatch, capsys, tiny_model_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no Docker needed for a dry run
    pairs = _pairs(tmp_path / "pairs.jsonl")
    code = launch_cli.main(
        ["local", "--image", IMAGE, "--data", str(pairs), "--model", str(tiny_model_path), "--gpus", "--dry-run",
         "--run-dir", str(tmp_path / "run"), "--env", "A=1", "--epochs", "2"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out) == {
        "image": IMAGE,
        "instance_type": "local_gpu",
        "instance_count": 1,
        "channels": {"model": str(tiny_model_path.resolve()), "train": str(pairs.resolve())},
        "hyperparameters": {"data": "pairs.jsonl", "epochs": "2.0"},
        "environment": {"A": "1"},
        "run_dir": str(tmp_path / "run"),
    }
    assert list(local_env["tmp"].iterdir()) == []


def test_several_containers_dry_run(local_env, tmp_path, monkeypatch, capsys):
    """--instance-count 2 is used here (two containers, algo-1 and algo-2), not named as ignored."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code = launch_cli.main(["local", "--image", IMAGE, "--data", "embedded", "--instance-count", "2", "--dry-run",
                            "--run-dir", str(tmp_path / "run")])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["instance_count"] == 2 and "ignored" not in err
    assert sagemaker_local.hosts(2) == ["algo-1", "algo-2"]


def test_the_first_hosts_failure_reason_is_the_jobs(tmp_path):
    """The SDK merges every host's output folder (the last host wins): each host's own file is read."""
    for host, text in (("algo-1", "Training across 2 hosts stopped."), ("algo-2", "Stopped by SIGTERM.")):
        (tmp_path / host / "output").mkdir(parents=True)
        (tmp_path / host / "output" / "failure").write_text(text)
    (tmp_path / "artifacts" / "output").mkdir(parents=True)
    (tmp_path / "artifacts" / "output" / "failure").write_text("Stopped by SIGTERM.")
    assert sagemaker_local._failure(tmp_path, 2) == (
        "algo-1: Training across 2 hosts stopped. (algo-2: Stopped by SIGTERM.)"
    )
    assert sagemaker_local._failure(tmp_path, 1) == "Training across 2 hosts stopped."


def test_local_and_sagemaker_share_one_option_set():
    names = lambda cmd: {p.name for p in cmd.params}  # noqa: E731
    local, cloud = launch_cli.launch.commands["local"], launch_cli.launch.commands["sagemaker"]
    assert names(local) - names(cloud) == {"gpus", "force"}
    assert names(cloud) <= names(local)
    # the cloud-only settings a local run names as ignored are LaunchSpec fields
    assert set(sagemaker_local.CLOUD_ONLY) <= {f.name for f in dataclasses.fields(LaunchSpec)}
