"""The image through the real SageMaker SDK local mode, on a real Docker daemon: no stand-ins.

scripts/docker_smoke.sh runs this file after it has built the image, with a Docker daemon in a
network namespace of its own (nothing the containers do reaches any network) and
``JOB_DOCKER_IMAGE`` / ``DOCKER_HOST`` set; everywhere else it is skipped. It runs as root (the
smoke script needs root), so every folder the launcher and the SDK create is root-owned, mode
0755 - SageMaker's situation in the cloud, which the image's entrypoint must handle.

* `job launch local` on 60 pairs, 2 steps (the tiny model as the base-model channel): the run
  directory holds a loadable model and the report, and rag-eval indexes it and serves it from
  the image (`IMAGE rag-eval index`, `IMAGE serve`, under `--user`);
* the SDK alone, as a new user would call it (ModelTrainer in LOCAL_CONTAINER mode, no launcher,
  hyperparameters as Python values, Docker creating the mount folders): the image trains with
  no command; the job writes the model as uid 1000, never root, and model.tar.gz holds it;
* a job that fails in the container: the error carries its failure file;
* an image that is not there: refused before anything starts;
* two instances: `job launch local --instance-count 2` - the SDK's two containers algo-1 and algo-2
  on its `sagemaker-local` network train one model together (torchrun across them, gloo); and the
  same two containers started the way SageMaker starts them (one /opt/ml each, with its own
  resourceconfig.json naming both hosts): one killed mid-training makes the other fail on its own
  with the reason written, and a relaunch on the checkpoints restored to both resumes and finishes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import make_pairs

from infra.sagemaker import cli as launch_cli
from infra.sagemaker import local as sagemaker_local

IMAGE = os.environ.get("JOB_DOCKER_IMAGE")
pytestmark = pytest.mark.skipif(
    not IMAGE, reason="runs in scripts/docker_smoke.sh (JOB_DOCKER_IMAGE: a built image on a real Docker daemon)"
)
FAST = ["--max-steps", "2", "--batch-size", "8", "--eval-batch-size", "16", "--matryoshka-dims", "32,16"]


@pytest.fixture()
def no_telemetry_config(tmp_path, monkeypatch):
    empty = tmp_path / "sagemaker-config.yaml"
    empty.write_text("")
    for name in ("SAGEMAKER_USER_CONFIG_OVERRIDE", "SAGEMAKER_ADMIN_CONFIG_OVERRIDE"):
        monkeypatch.setenv(name, str(empty))


def _pairs(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(5)))  # 60 pairs
    return path


def _docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stdout}{done.stderr}")
    return done


def test_launch_local_trains_in_the_image_on_root_owned_folders(
    tmp_path, tiny_model_path, capsys, monkeypatch, no_telemetry_config
):
    seen = {}
    real = sagemaker_local._prepare_root

    def prepare(root, plan, *rest):  # what the container meets: every mount folder root-owned, 0755
        real(root, plan, *rest)
        for rel in ("model", "algo-1/output", "algo-1/output/data", "algo-1/input/data/train"):
            st = (root / rel).stat()
            seen[rel] = (st.st_uid, oct(st.st_mode & 0o777))

    monkeypatch.setattr(sagemaker_local, "_prepare_root", prepare)
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    code = launch_cli.main([
        "local", "--image", IMAGE, "--data", str(_pairs(tmp_path / "pairs.jsonl")), "--model", str(tiny_model_path),
        "--run-dir", str(run_dir), "--env", "HF_HUB_OFFLINE=1", *FAST,
    ])  # fmt: skip
    out, err = capsys.readouterr()
    print(f"[docker test] job launch local: {time.perf_counter() - start:.0f} s")
    assert code == 0, err[-3000:]
    assert seen and all(v == (0, "0o755") for v in seen.values()), seen
    # transformers saves weights 0600: the root-only model folder went in as a readable copy
    assert "so the 'model' channel is a readable copy" in err
    assert f"give its local copy to rag_eval as --baseline (--baseline {tiny_model_path.resolve()})" in err
    assert "METRIC test_ndcg@10_dim32=" in out
    for rel in ("model/modules.json", "model/model.safetensors", "report/report.md", "report/metrics.json",
                "ir/test/corpus.jsonl", "baseline/metrics.json", "launch.json"):  # fmt: skip
        assert (run_dir / rel).is_file(), rel
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(run_dir / "model")).encode(["revenue"]).shape == (1, 32)
    assert _docker("ps", "-aq", "--filter", "name=job-launch-local").stdout.strip() == ""  # `compose down` removed it

    # rag-eval in the image, as the README shows it: your folder, `--user` you (uid 4321 here, a user the
    # image does not know): index the run, then serve it.
    subprocess.run(["chown", "-R", "4321:4321", str(run_dir)], check=True)
    mount = ["-v", f"{run_dir}:/runs/mine", "--user", "4321:4321"]
    start = time.perf_counter()
    _docker(
        "run", "--rm", "--network", "none", *mount, IMAGE, "rag-eval", "index", "--model", "/runs/mine", "--no-baseline"
    )
    print(f"[docker test] rag-eval index in the image: {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    name = f"serve-{os.getpid()}"
    _docker("run", "-d", "--name", name, "--network", "none", *mount, IMAGE, "serve", "--model", "/runs/mine",
            "--no-baseline", "--host", "0.0.0.0", "--port", "7860")  # fmt: skip
    try:
        probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:7860/healthz', timeout=5).status)"
        for _ in range(180):
            done = _docker("exec", "-u", "4321", name, "python", "-c", probe, check=False)
            if done.returncode == 0 and done.stdout.strip() == "200":
                break
            if _docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() != "true":
                raise AssertionError("serve stopped: " + _docker("logs", name, check=False).stderr[-3000:])
            time.sleep(1)
        else:
            raise AssertionError("serve did not answer /healthz: " + _docker("logs", name, check=False).stderr[-3000:])
        uid = _docker("exec", name, "sh", "-c", "ps -o uid= -p 1 2>/dev/null || stat -c %u /proc/1").stdout.split()
        assert uid and uid[0] == "4321", uid  # the server runs as --user says, not root
    finally:
        _docker("rm", "-f", name, check=False)
    print(f"[docker test] serve answered in the image: {time.perf_counter() - start:.0f} s")


def test_the_sdk_alone_runs_the_image_with_no_command(tmp_path, tiny_model_path, no_telemetry_config):
    """As a new user would run it: the SDK's ModelTrainer, our image, plain local folders; Docker makes
    the mount folders (root-owned); hyperparameters as Python values, which the SDK turns into strings."""
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    from infra.sagemaker.sdk import config_files, sdk_config

    train = tmp_path / "train"
    train.mkdir()
    _pairs(train / "pairs.jsonl")
    model = tmp_path / "base-model"  # a model folder anyone may read (transformers saves weights 0600)
    shutil.copytree(tiny_model_path, model)
    subprocess.run(["chmod", "-R", "a+rX", str(model)], check=True)
    root = tmp_path / "sdk-root"
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=IMAGE,
        compute=Compute(instance_type="local_cpu", instance_count=1),
        input_data_config=[
            InputData(channel_name="train", data_source=str(train)),
            InputData(channel_name="model", data_source=str(model)),
        ],  # fmt: skip
        hyperparameters={
            "max_steps": 2,
            "batch_size": 8,
            "eval_batch_size": 16,
            "matryoshka_dims": [32, 16],
            "check_column_order": True,
            "matryoshka_weights": None,
        },  # fmt: skip
        environment={"HF_HUB_OFFLINE": "1"},
        local_container_root=str(root),
    )
    start = time.perf_counter()
    with config_files(sdk_config()):
        trainer.train()
    print(f"[docker test] SDK alone: {time.perf_counter() - start:.0f} s")
    assert "command" not in (root / "docker-compose.yaml").read_text()
    # The job wrote the model into the mounted folder (which Docker created root-owned) as uid 1000.
    assert (root / "model").stat().st_uid == 1000 and (root / "model" / "modules.json").stat().st_uid == 1000
    model_tgz = root / "compressed_artifacts" / "model.tar.gz"  # the SDK's archive (its own copy, made as root)
    with tarfile.open(model_tgz) as tf:
        names = set(tf.getnames())
        assert {"modules.json", "model.safetensors", "training.json"} <= names, sorted(names)
        tf.extractall(tmp_path / "model", filter="data")
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(tmp_path / "model")).encode(["revenue"]).shape == (1, 32)
    with tarfile.open(root / "compressed_artifacts" / "output.tar.gz") as tf:
        names = set(tf.getnames())
    assert "data/report/report.md" in names and "data/metrics.json" in names and "failure" not in names


def test_a_failing_job_in_the_image_is_reported_with_its_failure_file(
    tmp_path, tiny_model_path, capsys, no_telemetry_config
):
    bad = tmp_path / "pairs.csv"
    bad.write_text("title,body\nRevenue,Revenue grew.\n")
    code = launch_cli.main(["local", "--image", IMAGE, "--data", str(bad), "--model", str(tiny_model_path),
                            "--run-dir", str(tmp_path / "run"), "--env", "HF_HUB_OFFLINE=1", *FAST])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 2, err[-3000:]
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "The local training job rag-embed-finetune-" in line and "pairs.csv" in line and "column" in line, line
    assert not (tmp_path / "run").exists()


def test_an_image_that_is_not_there_is_refused_before_anything_starts(tmp_path, capsys, no_telemetry_config):
    code = launch_cli.main(
        ["local", "--image", "local/never-built:0", "--data", "embedded", "--run-dir", str(tmp_path / "run")]
    )
    _, err = capsys.readouterr()
    assert code == 2 and "The image local/never-built:0 is not in this machine's Docker" in err, err


# --- two instances ------------------------------------------------------------------------------
def test_launch_local_on_two_containers_trains_one_model(tmp_path, tiny_model_path, capsys, no_telemetry_config):
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    code = launch_cli.main([
        "local", "--image", IMAGE, "--instance-count", "2", "--data", str(_pairs(tmp_path / "pairs.jsonl")),
        "--model", str(tiny_model_path), "--run-dir", str(run_dir), "--env", "HF_HUB_OFFLINE=1", *FAST,
        "--max-steps", "4",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    print(f"\n[docker test] job launch local --instance-count 2: {time.perf_counter() - start:.0f} s")
    assert code == 0, err[-3000:] + out[-3000:]
    assert "(local_cpu x 2 containers (algo-1, algo-2: torchrun across them)" in err
    assert "2 nodes x 1 process = 2 processes, this is node 0, rendezvous algo-1:29500" in out
    assert "this is node 1, rendezvous algo-1:29500" in out and "waiting for algo-1 to evaluate and export" in out
    training = json.loads((run_dir / "model" / "training.json").read_text())
    assert training["world_size"] == 2 and training["global_steps"] == 4
    assert len(set(training["rank_param_checksums"])) == 1
    assert (run_dir / "report" / "metrics.json").is_file()
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(run_dir / "model")).encode(["revenue"]).shape == (1, 32)
    line = next(x for x in out.splitlines() if "train: 2 nodes x 1 process" in x and "node 0" in x)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line.split("|", 1)[-1]).strip()  # compose's colours off
    print(f"[docker test]   {plain}")


HOSTS = ("algo-1", "algo-2")


def _sagemaker_host(root: Path, host: str, train: Path, model: Path, hps: dict) -> Path:
    """One instance's /opt/ml as SageMaker lays it out: channels, hyperparameters, resourceconfig."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    shutil.copytree(train, root / "input" / "data" / "train")
    shutil.copytree(model, root / "input" / "data" / "model")
    subprocess.run(["chmod", "-R", "a+rX", str(root / "input")], check=True)
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "File"},
                                                             "model": {"TrainingInputMode": "File"}}))  # fmt: skip
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": host, "hosts": list(HOSTS), "network_interface_name": "eth0"}))  # fmt: skip
    return root


def test_two_containers_as_sagemaker_starts_them_fail_together_and_resume(tmp_path, tiny_model_path):
    """`docker run IMAGE train` per host on one network, as SageMaker runs a two-instance job (its SDK's
    local mode cannot kill one host alone: compose stops every container when one exits)."""
    train = tmp_path / "train"
    train.mkdir()
    _pairs(train / "pairs.jsonl")
    hps = {"max_steps": "40", "eval_steps": "4", "batch_size": "8", "eval_batch_size": "16", "logging_steps": "1",
           "matryoshka_dims": "[32, 16]"}  # fmt: skip
    roots = [_sagemaker_host(tmp_path / h, h, train, tiny_model_path, hps) for h in HOSTS]
    net, tag = f"two-hosts-{os.getpid()}", f"-{os.getpid()}"
    _docker("network", "create", net)

    def start() -> list[str]:
        return [
            _docker("run", "-d", "--name", h + tag, "--hostname", h, "--network", net, "--network-alias", h,
                    "-e", "HF_HUB_OFFLINE=1", "-v", f"{r}:/opt/ml", IMAGE, "train").stdout.strip()
            for h, r in zip(HOSTS, roots)
        ]  # fmt: skip

    def wait(cid: str, timeout: float) -> int:
        return int(_docker("wait", cid, timeout=timeout).stdout.strip())

    ids: list[str] = []
    try:
        start_t = time.perf_counter()
        ids = start()
        mark = roots[0] / "checkpoints" / "run" / "checkpoints" / "checkpoint-4" / "job_checkpoint_complete.json"
        for _ in range(900):
            if mark.is_file():
                break
            assert _docker("inspect", "-f", "{{.State.Running}}", ids[0]).stdout.strip() == "true", _logs(ids[0])
            time.sleep(0.5)
        _docker("kill", ids[1])  # the second instance is lost
        killed = time.perf_counter()
        assert wait(ids[0], timeout=300) == 1, _logs(ids[0])
        print(f"\n[docker test] two hosts, algo-2 killed at step 4+: algo-1 stopped on its own, "
              f"{time.perf_counter() - killed:.0f} s later, exit code 1")  # fmt: skip
        reason = (roots[0] / "output" / "failure").read_text()
        assert "Training across 2 hosts (algo-1, algo-2) stopped: torchrun on algo-1 exited with code" in reason
        print(f"[docker test]   failure reason: {reason[:300]}")
        for cid in ids:
            _docker("rm", "-f", cid)

        # Relaunch: SageMaker restores the checkpoint S3 prefix on every instance.
        ckpts = [r / "checkpoints" / "run" / "checkpoints" for r in roots]
        for a, b in ((ckpts[0], ckpts[1]), (ckpts[1], ckpts[0])):
            for c in a.glob("checkpoint-*"):
                shutil.copytree(c, b / c.name, dirs_exist_ok=True)
        (roots[0] / "output" / "failure").unlink()
        ids = start()
        codes = [wait(cid, timeout=900) for cid in ids]
        logs = [_logs(cid) for cid in ids]
        assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
        resumed = [next(x for x in log.splitlines() if "train: resuming from" in x) for log in logs]
        assert resumed[0] == resumed[1] and "/opt/ml/checkpoints/run/checkpoints/checkpoint-" in resumed[0]
        training = json.loads((roots[0] / "model" / "training.json").read_text())
        assert training["global_steps"] == 40 and training["world_size"] == 2
        assert not (roots[1] / "model" / "modules.json").exists()  # one model, from the first host
        print(f"[docker test] relaunch: both hosts {resumed[0].strip()}; done in {time.perf_counter() - start_t:.0f} s")
    finally:
        for cid in ids:
            _docker("rm", "-f", cid, check=False)
        _docker("network", "rm", net, check=False)


def _logs(cid: str) -> str:
    done = _docker("logs", cid, check=False)
    return done.stdout + done.stderr
