"""Run the job as a SageMaker training job (SageMaker Python SDK v3: ``ModelTrainer``).

:func:`launch` turns a :class:`~job.config.JobConfig` and a :class:`LaunchSpec` into one
CreateTrainingJob request:

* inputs and hyperparameters: :mod:`infra.sagemaker.inputs`;
* the image is our own (an ECR URI; SageMaker runs ``IMAGE train``), or ``huggingface``: the
  Hugging Face PyTorch training image plus this repository's ``job``/``infra`` packages as source
  code, which runs the same entrypoint;
* metric definitions match the container's ``METRIC`` lines (NDCG@10 per dim, :mod:`infra.container.contract`);
* spot training sets the checkpoint S3 URI and the maximum wait; on an instance with several GPUs
  the ``nproc`` hyperparameter makes the container train under torchrun, one process per GPU;
* ``instance_count`` N >= 2 starts one container per instance; they train together under torchrun
  across the instances (:mod:`infra.container.cluster`), checked first by :func:`check_instances`;
* the user's SageMaker SDK configuration (``config.yaml``) is kept, with telemetry turned off on top
  (:func:`infra.sagemaker.sdk.sdk_config`); its ``SageMaker.TrainingJob`` role, environment, tags,
  VPC, network isolation and KMS keys apply unless a flag says otherwise.

``dry_run`` builds the request through the same ModelTrainer code path but stops it before it is
sent: nothing is uploaded and no AWS endpoint is called. Following a job up: :mod:`infra.sagemaker.jobs`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.container import contract
from infra.publish import s3
from infra.sagemaker.inputs import InputPlan, hyperparameters_for, plan_inputs, upload_inputs
from infra.sagemaker.jobs import wait_for
from infra.sagemaker.sdk import (
    StopBeforeSend,
    env_vars,
    gpus_per_instance,
    launch_session,
    quiet_sdk_logs,
    require_sdk,
    resolve_region,
    sdk_config,
    training_job_defaults,
)
from job import config
from job.errors import JobError

REPO_ROOT = Path(__file__).resolve().parents[2]


DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"


DEFAULT_PREFIX = "rag-embed-finetune"


DEFAULT_BASE_JOB_NAME = "rag-embed-finetune"


DEFAULT_MAX_RUN_S = 4 * 3600


# SageMaker's limits for one training job (ResourceConfig's InstanceCount and VolumeSizeInGB).
MAX_INSTANCE_COUNT = 100


MAX_VOLUME_GB = 16384


HUGGINGFACE = "huggingface"


# The newest Hugging Face training image the SDK knows offline (transformers 5, PyTorch 2.9, py312).
HF_TRANSFORMERS_VERSION = "5.3.0"


HF_PYTORCH_VERSION = "pytorch2.9.0"


HF_PY_VERSION = "py312"


ROLE_ENV = "SAGEMAKER_ROLE"


BUCKET_ENV = "SAGEMAKER_BUCKET"


_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")


_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


Echo = Callable[[str], None]


@dataclass
class LaunchSpec:
    """Where and how the training job runs (the configuration says what it does)."""

    role: str | None = None
    region: str | None = None
    bucket: str | None = None
    prefix: str = DEFAULT_PREFIX
    image: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    volume_gb: int = 50
    max_run_s: int = DEFAULT_MAX_RUN_S
    spot: bool = False
    max_wait_s: int | None = None
    checkpoint_s3_uri: str | None = None
    tensorboard_s3_uri: str | None = None  # where SageMaker syncs the container's TensorBoard folder while it runs
    output_path: str | None = None
    base_job_name: str = DEFAULT_BASE_JOB_NAME
    tags: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    source_dir: Path = REPO_ROOT


@dataclass
class LaunchResult:
    job_name: str
    request: dict[str, Any]
    uploads: list[tuple[str, str]]  # (local path, s3 URI)
    hyperparameters: dict[str, str]
    dry_run: bool


def check_spec(spec: LaunchSpec, defaults: dict[str, Any] | None = None) -> LaunchSpec:
    """Fill defaults from the environment (then the SDK configuration's ``defaults``, see
    :func:`infra.sagemaker.sdk.training_job_defaults`) and refuse what cannot work - before anything is uploaded."""
    spec = copy.deepcopy(spec)
    check_count(spec.instance_count)  # before the role: the first error names the first thing to fix
    check_volume(spec.volume_gb)
    spec.role = spec.role or os.environ.get(ROLE_ENV) or (defaults or {}).get("role") or None
    if not spec.role:
        raise JobError(
            "No IAM role is given for the SageMaker job.",
            f"pass --role arn:aws:iam::ACCOUNT:role/NAME (or set {ROLE_ENV}, or SageMaker.TrainingJob.RoleArn in the "
            "SageMaker SDK's config.yaml): a role SageMaker can assume, with read/write access to the bucket (e.g. "
            "the AmazonSageMaker-ExecutionRole the console creates).",
        )
    if not _ROLE_ARN.match(spec.role):
        raise JobError(
            f"The role {spec.role!r} is not an IAM role ARN.",
            "pass the full ARN, e.g. --role arn:aws:iam::123456789012:role/SageMakerExecution.",
        )
    spec.region = resolve_region(spec.region)
    spec.bucket = spec.bucket or os.environ.get(BUCKET_ENV) or None
    if not spec.bucket and spec.output_path:
        spec.bucket = s3.parse_s3_uri(spec.output_path)[0]
    if not spec.bucket:
        raise JobError(
            "No S3 bucket is given for the job's inputs and outputs.",
            f"pass --bucket NAME (or set {BUCKET_ENV}, or give --output-path s3://BUCKET/PREFIX); "
            f"the bucket must be in {spec.region} and the role must be able to read and write it.",
        )
    if spec.output_path:
        s3.parse_s3_uri(spec.output_path)
    if spec.checkpoint_s3_uri:
        s3.parse_s3_uri(spec.checkpoint_s3_uri)
    if spec.tensorboard_s3_uri:
        s3.parse_s3_uri(spec.tensorboard_s3_uri)
    if not spec.image:
        raise JobError(
            "No training image is given.",
            f"pass --image with our image's ECR URI (see the README: docker build, push), or --image {HUGGINGFACE} "
            "for the Hugging Face training image plus this repository's code.",
        )
    if spec.image != HUGGINGFACE and ".dkr.ecr." not in spec.image:
        raise JobError(
            f"SageMaker pulls training images from Amazon ECR; {spec.image!r} is not an ECR image URI.",
            "push the image to ECR (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME:TAG) and pass that URI, or use "
            f"--image {HUGGINGFACE}.",
        )
    if not _JOB_NAME.match(spec.base_job_name) or len(spec.base_job_name) > 48:
        raise JobError(
            f"The base job name {spec.base_job_name!r} is not valid.",
            "use at most 48 letters, digits and hyphens (a timestamp is appended).",
        )
    if spec.max_run_s <= 0:
        raise JobError(f"--max-run is {spec.max_run_s} s.", "give a positive duration, e.g. 4h.")
    if spec.spot:
        spec.max_wait_s = spec.max_wait_s or 2 * spec.max_run_s
        if spec.max_wait_s < spec.max_run_s:
            raise JobError(
                f"--max-wait ({spec.max_wait_s} s) is shorter than --max-run ({spec.max_run_s} s).",
                "SageMaker needs max wait >= max run for spot training: raise --max-wait.",
            )
    elif spec.max_wait_s is not None:
        raise JobError("--max-wait only applies to spot training.", "add --spot, or drop --max-wait.")
    return spec


def check_count(instance_count: int) -> None:
    if instance_count < 1:
        raise JobError(
            f"--instance-count {instance_count}: a training job runs on at least one instance.",
            "pass --instance-count 1, or N >= 2 to train on N instances together (torchrun across them).",
        )
    if instance_count > MAX_INSTANCE_COUNT:
        raise JobError(
            f"--instance-count {instance_count}: a SageMaker training job runs on at most {MAX_INSTANCE_COUNT} "
            "instances (SageMaker's limit for one job; your account's quota for the instance type may be lower).",
            f"pass --instance-count from 1 to {MAX_INSTANCE_COUNT} (N >= 2 train together, torchrun across them).",
        )


def check_volume(volume_gb: int) -> None:
    """--volume-size within what SageMaker accepts (VolumeSizeInGB 1 to 16384), before anything is uploaded."""
    if not 1 <= volume_gb <= MAX_VOLUME_GB:
        raise JobError(
            f"--volume-size {volume_gb}: a SageMaker training job's storage volume is 1 to {MAX_VOLUME_GB} GB "
            "(SageMaker's limit on VolumeSizeInGB).",
            f"pass --volume-size in GB from 1 to {MAX_VOLUME_GB}, e.g. the default 50 (room for the model, the data "
            "and the checkpoints).",
        )


def check_instances(cfg: config.JobConfig, instance_count: int, gpus: int | None, instance: str) -> int:
    """Training processes per instance for ``instance_count`` instances of ``instance`` with ``gpus`` GPUs
    each (None: not a GPU type, or not known), checked before anything is uploaded or started: --nproc
    must fit the GPUs, and the global batch must split evenly over every process of every instance."""
    from job.train import distributed

    check_count(instance_count)
    if gpus and cfg.nproc > gpus:
        raise JobError(
            f"--nproc {cfg.nproc} asks for more training processes than {instance} has GPUs ({gpus}).",
            f"use --nproc {gpus}, or leave it at 0 (one process per GPU).",
        )
    nproc = cfg.nproc or gpus or 1
    distributed.check_batch_split(cfg.batch_size, instance_count, nproc)
    return nproc


def _source_bundle(spec: LaunchSpec, where: Path) -> Path:
    """job/ and infra/ plus a requirements.txt from pyproject.toml: the code for the Hugging Face image."""
    src = where / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("job", "infra"):
        shutil.copytree(spec.source_dir / pkg, src / pkg, ignore=ignore)
    deps = _project_dependencies(spec.source_dir / "pyproject.toml")
    (src / "requirements.txt").write_text("\n".join(deps) + "\n")
    return src


def _project_dependencies(pyproject: Path) -> list[str]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: the installed distribution's own requirements
        from importlib.metadata import requires

        return [r for r in requires("rag-embed-finetune") or [] if "extra ==" not in r]
    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def build_trainer(
    spec: LaunchSpec,
    cfg: config.JobConfig,
    plan: InputPlan,
    session,
    workdir: Path,
    defaults: dict[str, Any] | None = None,
):
    """The ModelTrainer for this launch (nothing is sent until ``train()``); ``defaults`` are the SDK
    configuration's training-job values (:func:`infra.sagemaker.sdk.training_job_defaults`), which
    flags override (``--env``/``--tag`` per key)."""
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        Networking,
        OutputDataConfig,
        SourceCode,
        StoppingCondition,
        Tag,
        TensorBoardOutputConfig,
    )
    from sagemaker.train import ModelTrainer

    source_code = None
    image = spec.image
    if spec.image == HUGGINGFACE:
        from sagemaker.core import image_uris

        image = image_uris.retrieve(
            "huggingface", region=spec.region, version=HF_TRANSFORMERS_VERSION,
            base_framework_version=HF_PYTORCH_VERSION, py_version=HF_PY_VERSION, instance_type=spec.instance_type,
            image_scope="training",
        )  # fmt: skip
        source_code = SourceCode(
            source_dir=str(_source_bundle(spec, workdir)),
            requirements="requirements.txt",
            command="python -m infra.container train",
        )
    defaults = defaults or {}
    environment = {**defaults.get("environment", {}), **spec.environment}
    tags = {**defaults.get("tags", {}), **spec.tags}
    network = {k: defaults.get(k) for k in NETWORK_FIELDS if defaults.get(k) is not None}
    output_path = spec.output_path or f"s3://{spec.bucket}/{s3.join_key(spec.prefix, 'output')}/"
    trainer = ModelTrainer(
        sagemaker_session=session,
        role=spec.role,
        base_job_name=spec.base_job_name,
        training_image=image,
        source_code=source_code,
        compute=Compute(
            instance_type=spec.instance_type,
            instance_count=spec.instance_count,
            volume_size_in_gb=spec.volume_gb,
            volume_kms_key_id=defaults.get("volume_kms_key_id"),
            enable_managed_spot_training=spec.spot or None,
        ),
        networking=Networking(**network) if network else None,
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=spec.max_run_s, max_wait_time_in_seconds=spec.max_wait_s if spec.spot else None
        ),
        output_data_config=OutputDataConfig(
            s3_output_path=output_path, compression_type="GZIP", kms_key_id=defaults.get("output_kms_key_id")
        ),
        input_data_config=[InputData(channel_name=ch, data_source=uri) for ch, uri in sorted(plan.channels.items())],
        hyperparameters=hyperparameters_for(cfg, plan, gpus_per_instance(spec.instance_type, spec.region or "")),
        environment=environment,
        tags=[Tag(key=k, value=v) for k, v in sorted(tags.items())] or None,
    )
    if spec.spot or spec.checkpoint_s3_uri:
        # Without a URI the SDK uses s3://BUCKET/PREFIX/BASE_JOB_NAME/JOB_NAME/checkpoints: one per job, so a
        # new job never picks up another's checkpoints; a spot restart of the same job does.
        trainer = trainer.with_checkpoint_config(
            CheckpointConfig(s3_uri=spec.checkpoint_s3_uri, local_path=contract.CHECKPOINTS)
        )
    if spec.tensorboard_s3_uri:
        # SageMaker syncs the container's TensorBoard folder (the contract's path, where the job's event files go
        # when it reports to TensorBoard) to this URI while the job runs: `tensorboard --logdir s3://...` or
        # SageMaker's TensorBoard app follow the training live.
        trainer = trainer.with_tensorboard_output_config(
            TensorBoardOutputConfig(s3_output_path=spec.tensorboard_s3_uri, local_path=contract.TENSORBOARD)
        )
    return trainer.with_metric_definitions(_metric_definitions(cfg))


NETWORK_FIELDS = (
    "subnets",
    "security_group_ids",
    "enable_network_isolation",
    "enable_inter_container_traffic_encryption",
)


def _metric_definitions(cfg: config.JobConfig):
    from sagemaker.core.training.configs import MetricDefinition

    return [
        MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in contract.metric_definitions(cfg.matryoshka_dims)
    ]


def launch(
    cfg: config.JobConfig,
    spec: LaunchSpec,
    *,
    dry_run: bool = False,
    wait: bool = False,
    echo: Echo = print,
    poll_s: float = 10,
) -> LaunchResult:
    """Check, upload (unless ``dry_run``), create the training job; return the exact CreateTrainingJob request."""
    require_sdk()
    quiet_sdk_logs()
    defaults = training_job_defaults(user_config := sdk_config())
    spec = check_spec(spec, defaults)
    assert spec.region is not None and spec.bucket is not None  # check_spec resolves both, or refuses
    gpus = gpus_per_instance(spec.instance_type, spec.region)
    nproc = check_instances(cfg, spec.instance_count, gpus, spec.instance_type)
    plan = plan_inputs(cfg, spec.bucket, spec.prefix)
    hps = hyperparameters_for(cfg, plan, gpus)  # fails here, before any upload, on a value SageMaker would refuse
    if spec.instance_count > 1:
        echo(
            f"launch: {spec.instance_count} x {spec.instance_type}, {nproc} training process(es) each: torchrun "
            f"across the instances, global batch {cfg.batch_size} ({cfg.batch_size // (nproc * spec.instance_count)} "
            "pairs per process), in-batch negatives gathered across all of them"
        )
    uploads = [(str(p), uri) for p, uri in plan.uploads]
    if not dry_run:
        upload_inputs(plan, echo)
    captured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="job-launch-") as tmp:
        session = launch_session(spec.region, dry_run, spec.bucket, spec.prefix, uploads, captured, user_config)
        # A dry run calls nothing, so the role cannot be checked against IAM (a real launch checks it).
        with env_vars(SAGEMAKER_VALIDATE_ROLE="false") if dry_run else contextlib.nullcontext():
            trainer = build_trainer(spec, cfg, plan, session, Path(tmp), defaults)
            try:
                trainer.train(wait=False, logs=False)
            except StopBeforeSend:
                if "CreateTrainingJob" not in captured:
                    raise
    request = captured["CreateTrainingJob"]
    name = request["TrainingJobName"]
    result = LaunchResult(name, request, uploads, hps, dry_run)
    if not dry_run:
        echo(f"launch: started training job {name} in {spec.region}; follow it with `job launch status {name}`")
        if wait:
            final = wait_for(name, spec.region, echo, poll_s=poll_s)
            if final["TrainingJobStatus"] != "Completed":
                raise JobError(
                    f"Training job {name} ended {final['TrainingJobStatus']}: "
                    f"{final.get('FailureReason', 'no reason given')}",
                    f"see `job launch status {name}` and the job's CloudWatch logs.",
                )
            echo(f"launch: {name} completed; `job launch fetch {name}` downloads the model and report")
    return result
