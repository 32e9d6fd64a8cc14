"""``job launch local``: the job as a SageMaker training job on this machine's Docker, run by the
SageMaker Python SDK v3's own local mode (``ModelTrainer(training_mode=Mode.LOCAL_CONTAINER)``).

The same configuration, inputs and hyperparameters as ``job launch sagemaker``
(:mod:`infra.sagemaker.inputs`), so a job tried here runs the same way in the cloud:

* before anything starts: the image (ours, built locally), the inputs (local paths; a data FILE is
  staged as a channel FOLDER holding a copy of it), the Docker client, its daemon, Docker Compose
  (which the SDK runs the container with) and the image's presence are checked, each with its own
  :class:`~job.errors.JobError`;
* the SDK writes the job's ``/opt/ml`` layout under a temporary root, runs ``docker compose up``
  (the container's output streams to this terminal) and archives ``/opt/ml/model`` and
  ``/opt/ml/output`` as ``model.tar.gz`` / ``output.tar.gz``;
* those are unpacked into the run directory (:func:`infra.sagemaker.jobs.unpack_result`, the
  layout ``job launch fetch`` makes), which ``rag-eval`` reads. A container that fails is reported
  with its own failure reason (``/opt/ml/output/failure``); a result without a model is a failure.

No AWS credentials, region or network are needed or used: no SDK Session is given (with one, the
SDK would copy your AWS credentials into the container's environment), and the SDK's telemetry is
turned off through a copy of your SageMaker configuration (:func:`infra.sagemaker.sdk.config_files`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.container import contract
from infra.sagemaker.inputs import InputPlan, hyperparameters_for, plan_local_inputs
from infra.sagemaker.jobs import check_run_dir, result_lines, unpack_result
from infra.sagemaker.launch import HUGGINGFACE, LaunchSpec, check_instances
from infra.sagemaker.sdk import config_files, quiet_sdk_logs, require_sdk, sdk_config, training_job_defaults
from job import config
from job.errors import JobError

Echo = Callable[[str], None]

LOCAL_CPU, LOCAL_GPU = "local_cpu", "local_gpu"
HOST = "algo-1"  # the SDK's name for the first container (algo-1 .. algo-N, one per instance)
# What `job launch sagemaker` takes that has no meaning on this machine (LaunchSpec fields).
CLOUD_ONLY = (
    "role", "region", "bucket", "prefix", "instance_type", "volume_gb", "max_run_s", "spot",
    "max_wait_s", "checkpoint_s3_uri", "tensorboard_s3_uri", "output_path", "tags",
)  # fmt: skip


def hosts(count: int) -> list[str]:
    return [f"algo-{i}" for i in range(1, count + 1)]


INSTALL_DOCKER = (
    "install Docker with Docker Compose: `sudo apt-get install docker.io docker-compose` on Debian/Ubuntu (or Docker "
    "Engine with its docker-compose-plugin, see docs.docker.com/engine/install; or Docker Desktop), then check "
    "`docker version`"
)
DOCKER_TIMEOUT_S = 60


@dataclass
class LocalResult:
    job_name: str | None
    run_dir: Path
    request: dict[str, Any]  # what the ModelTrainer was given (image, compute, channels, hyperparameters, environment)
    dry_run: bool


# --- checks before anything starts ---------------------------------------------------------------
def _docker(*args: str, timeout: float = DOCKER_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise JobError(
            "Docker is not installed here (no `docker` command on PATH); `job launch local` runs the job in a "
            "container on this machine's Docker.",
            INSTALL_DOCKER + ".",
        ) from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(["docker", *args], 124, "", f"no answer within {timeout:.0f} s")


def _last_line(text: str) -> str:
    """The last line of a command's message, as the end of a sentence."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else "no message"
    return line if line.endswith((".", "?", "!")) else line + "."


def compose_command() -> list[str] | None:
    """Docker Compose as the SDK's local mode looks for it: ``docker compose`` (v2 or later), else
    ``docker-compose`` on PATH; None if neither is there."""
    done = _docker("compose", "version")
    m = re.search(r"version\s+v?(\d+)", done.stdout or "")
    if done.returncode == 0 and m and int(m.group(1)) >= 2:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def check_docker(image: str) -> str:
    """The Docker client, its daemon, Docker Compose and the image, in that order; returns the daemon's version."""
    version = _docker("version", "--format", "{{.Server.Version}}")
    if version.returncode != 0 or not version.stdout.strip():
        where = os.environ.get("DOCKER_HOST") or "its default socket"
        raise JobError(
            f"The Docker daemon is not reachable at {where}: {_last_line(version.stderr or version.stdout)}",
            "start it (`sudo systemctl start docker`, or Docker Desktop), check DOCKER_HOST, and that your user may "
            "use it (`sudo usermod -aG docker $USER`, then log in again).",
        )
    if compose_command() is None:
        raise JobError(
            "Docker Compose is not installed; the SageMaker SDK's local mode runs the container with it "
            "(`docker compose` v2, or `docker-compose`).",
            "install it: `sudo apt-get install docker-compose` (Debian/Ubuntu), or `sudo apt-get install "
            "docker-compose-plugin` from Docker's own apt repository; Docker Desktop includes it.",
        )
    inspect = _docker("image", "inspect", "--format", "{{.Id}}", image)
    if inspect.returncode != 0:
        raise JobError(
            f"The image {image} is not in this machine's Docker: {_last_line(inspect.stderr or inspect.stdout)}",
            f"build it from this repository: `docker build -t {image} .` (see the README's Docker section), or "
            f"`docker pull {image}`.",
        )
    return version.stdout.strip()


def check_image_name(image: str | None) -> str:
    if not image:
        raise JobError(
            "No training image is given.",
            "build this repository's image (`docker build -t rag-embed-finetune .`) "
            "and pass --image rag-embed-finetune.",
        )
    if image == HUGGINGFACE:
        raise JobError(
            f"--image {HUGGINGFACE} runs on SageMaker only "
            "(its image comes from AWS's registry, with your credentials).",
            "build this repository's image (`docker build -t rag-embed-finetune .`) "
            "and pass --image rag-embed-finetune.",
        )
    return image


# --- the run -------------------------------------------------------------------------------------
def _prepare_root(root: Path, plan: InputPlan, count: int = 1) -> None:
    """The folders Docker would otherwise create as root for the SDK's bind mounts, made by you: the
    container then works for you (its entrypoint runs the job as the owner of output/), and the
    SDK can remove them afterwards. One set per host; ``model`` is shared by all of them."""
    for rel in ["model"] + [
        f"{host}/{sub}" for host in hosts(count) for sub in ("output/data", "input/config", *(
            f"input/data/{ch}" for ch in plan.channels))
    ]:  # fmt: skip
        (root / rel).mkdir(parents=True, exist_ok=True)
    for ch in plan.channels:  # staged copies: readable by the container's user whatever your umask
        staged = root / "channels" / ch
        if staged.is_dir():
            _open_up(staged)


def _open_up(folder: Path) -> None:
    """Folders 0755, files 0644: readable by any user (the job's user in the container)."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def _unreadable_by_others(folder: Path) -> list[Path]:
    """Files and folders under ``folder`` that a user other than their owner cannot read (or enter)."""
    found = []
    for path in [folder, *folder.rglob("*")]:
        try:
            mode = path.stat().st_mode
        except OSError:  # a dangling link: the job will name it if it needs it
            continue
        need = 0o005 if path.is_dir() else 0o004
        if mode & need != need:
            found.append(path)
    return found


def _stage_readable_channels(plan: InputPlan, stage: Path, echo: Echo) -> None:
    """Run as root, the job's user in the container is uid 1000 (the entrypoint never runs the job as
    root), so a channel folder it cannot read - a model saved as root has 0600 weights - is staged as
    a readable copy. As any other user the container runs the job as you, and reads what you read."""
    if os.geteuid() != 0:
        return
    for ch, path in sorted(plan.channels.items()):
        folder = Path(path)
        if not folder.is_dir() or folder.is_relative_to(stage):
            continue
        unreadable = _unreadable_by_others(folder)
        if unreadable:
            echo(f"launch local: {folder} holds {len(unreadable)} entr{'y' if len(unreadable) == 1 else 'ies'} "
                 f"only root can read (e.g. {unreadable[0].name}); the job runs as uid 1000, "
                 f"so the '{ch}' channel is a readable copy")  # fmt: skip
            shutil.copytree(folder, stage / ch, symlinks=False)
            _open_up(stage / ch)
            plan.channels[ch] = str(stage / ch)


def _failure(root: Path, count: int = 1) -> str | None:
    """The job's own failure reason: /opt/ml/output/failure of the first host that wrote one (each host's
    own folder; the SDK's merged copy keeps only the last host's), else as the SDK gathered it."""
    found = []
    for host in hosts(count):
        path = root / host / "output" / "failure"
        if path.is_file():
            found.append((host, path.read_text(errors="replace").strip() or "(empty failure file)"))
    if found:
        first = found[0][1]
        return (
            first
            if count == 1
            else f"{found[0][0]}: {first}" + "".join(f" ({host}: {text})" for host, text in found[1:] if text != first)
        )
    merged = root / "artifacts" / "output" / "failure"
    return (merged.read_text(errors="replace").strip() or "(empty failure file)") if merged.is_file() else None


def _compose_down(root: Path) -> None:
    """Remove the job's stopped container (the SDK leaves it behind after `up --abort-on-container-exit`)."""
    compose_file = root / "docker-compose.yaml"
    command = compose_command() if compose_file.is_file() else None
    if command:
        try:
            subprocess.run(
                [*command, "-f", str(compose_file), "down"], capture_output=True, timeout=DOCKER_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            pass  # best effort: a leftover stopped container is harmless


def _job_name(root: Path) -> str | None:
    compose = root / "docker-compose.yaml"
    if not compose.is_file():
        return None
    m = re.search(r"TRAINING_JOB_NAME=([\w-]+)", compose.read_text())
    return m.group(1) if m else None


def build_local_trainer(spec: LaunchSpec, plan: InputPlan, hyperparameters: dict[str, str], environment: dict[str, str],
                        root: Path, gpus: bool):  # fmt: skip
    """The SDK's ModelTrainer in local-container mode (no Session: nothing reaches AWS)."""
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    return ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=spec.image,
        base_job_name=spec.base_job_name,
        compute=Compute(instance_type=LOCAL_GPU if gpus else LOCAL_CPU, instance_count=spec.instance_count),
        input_data_config=[InputData(channel_name=ch, data_source=path) for ch, path in sorted(plan.channels.items())],
        hyperparameters=hyperparameters,
        environment=environment or None,
        local_container_root=str(root),
    )


def launch_local(
    cfg: config.JobConfig,
    spec: LaunchSpec,
    *,
    gpus: bool = False,
    force: bool = False,
    dry_run: bool = False,
    echo: Echo = print,
) -> LocalResult:
    """Run the job through the SDK's local mode on this machine's Docker; its result lands in ``cfg.run_dir``."""
    require_sdk()
    quiet_sdk_logs()
    image = check_image_name(spec.image)
    run_dir = Path(cfg.run_dir).expanduser()
    check_run_dir(run_dir, force)
    user_config = sdk_config()
    count = spec.instance_count
    check_instances(cfg, count, None, "a local container")
    if gpus and count > 1:
        raise JobError(
            f"--gpus with --instance-count {count}: every local container would get all of this machine's GPUs.",
            "drop --gpus (the containers train on CPU, gloo), or use --instance-count 1 --gpus (one container, "
            "one process per GPU); several GPU instances train together on SageMaker.",
        )
    plan = plan_local_inputs(cfg)  # checks the inputs; nothing is written yet
    hps = hyperparameters_for(cfg, plan)
    environment = {**training_job_defaults(user_config)["environment"], **spec.environment}
    request = {
        "image": image,
        "instance_type": LOCAL_GPU if gpus else LOCAL_CPU,
        "instance_count": count,
        "channels": {ch: str(plan.local.get(ch, path)) for ch, path in sorted(plan.channels.items())},
        "hyperparameters": hps,
        "environment": environment,
        "run_dir": str(run_dir),
    }
    if dry_run:
        return LocalResult(None, run_dir, request, True)
    daemon = check_docker(image)
    where = f" x {count} containers ({', '.join(hosts(count))}: torchrun across them)" if count > 1 else ""
    echo(f"launch local: {image} on Docker {daemon} ({request['instance_type']}{where}), through the SageMaker SDK's "
         "local mode")  # fmt: skip

    root = Path(tempfile.mkdtemp(prefix="job-launch-local-"))
    try:
        plan = plan_local_inputs(cfg, stage=root / "channels")
        _stage_readable_channels(plan, root / "channels", echo)
        _prepare_root(root, plan, count)
        trainer = build_local_trainer(spec, plan, hps, environment, root, gpus)
        error: Exception | None = None
        with config_files(user_config):
            try:
                trainer.train(wait=True, logs=True)
            except RuntimeError as exc:  # the SDK: "Failed to run: [...]. Process exited with code: N"
                error = exc
            finally:
                _compose_down(root)
        name = _job_name(root)
        failure = _failure(root, count)
        if error is not None or failure is not None:
            code = re.search(r"exited with code:?\s*(\d+)", str(error or ""))
            how = f"exited with code {code.group(1)}" if code else ("failed" if error else "wrote a failure reason")
            # The failure reason is the job's own error paragraph, with its own fix when it has one.
            raise JobError(
                f"The local training job {name or ''} {how}: "
                + (failure or f"it wrote no failure reason ({error}); its output is above."),
                None
                if failure and " Fix: " in failure
                else "see the container's output above, fix what it names, and run it again.",
            )
        model_tgz = root / "compressed_artifacts" / "model.tar.gz"
        output_tgz = root / "compressed_artifacts" / "output.tar.gz"
        if not model_tgz.is_file():
            raise JobError(
                f"The SDK's local mode left no model.tar.gz under {root / 'compressed_artifacts'}.",
                "see the output above; check the SageMaker SDK version (`pip install 'rag-embed-finetune[aws]'`).",
            )
        record = {"training_job": name, "local_mode": True, "image": image, "hyperparameters": hps}
        unpack_result(
            model_tgz, output_tgz if output_tgz.is_file() else None, run_dir, record, output_root="data",
            source=f"The local job's model.tar.gz ({model_tgz.stat().st_size} bytes)",
            no_model_fix=f"rebuild the image from this repository (`docker build -t {image} .`): an image that does "
            "not train when the SDK starts it with no arguments exits 0 and leaves /opt/ml/model empty.",
        )  # fmt: skip
        for line in result_lines(name or "the local job", run_dir, plan.local.get(contract.BASE_MODEL)):
            echo(f"launch local: {line}")
        return LocalResult(name, run_dir, request, False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            echo(f"launch local: could not remove all of {root} (files the container's user owns); remove it with sudo")
