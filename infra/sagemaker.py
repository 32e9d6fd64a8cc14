"""Run the job as a SageMaker training job (SageMaker Python SDK v3: ``ModelTrainer``), and follow it up.

:func:`launch` turns a :class:`~job.config.JobConfig` and a :class:`LaunchSpec` into one
CreateTrainingJob request:

* local ``data`` / ``eval_data`` / ``model`` are uploaded (with :mod:`infra.s3`) under
  ``s3://BUCKET/PREFIX/inputs/<channel>-<content digest>/`` - the same data is uploaded once and
  reused; ``s3://`` URIs are used as they are; a Hub id or ``embedded`` travels as a hyperparameter;
* every other configuration value that differs from its default becomes a hyperparameter (a
  string, as SageMaker passes them; the container converts them back with the job's own rules);
* the image is our own (an ECR URI; SageMaker runs ``IMAGE train``), or ``huggingface``: the
  Hugging Face PyTorch training image plus this repository's ``job``/``infra`` packages as source
  code, which runs the same entrypoint;
* metric definitions match the container's ``METRIC`` lines (NDCG@10 per dim);
* spot training sets the checkpoint S3 URI and the maximum wait; on an instance with several GPUs
  the ``nproc`` hyperparameter makes the container train under torchrun, one process per GPU.

``dry_run`` builds the request through the same ModelTrainer code path but stops it before it is
sent: nothing is uploaded and no AWS endpoint is called. :func:`status` and :func:`fetch` read a job
back; ``fetch`` unpacks model.tar.gz and output.tar.gz into a run directory (the layout of
``job run``: model/, report/, ir/, data/, baseline/), which ``job evaluate`` and rag_eval read.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from infra import container as K
from infra import s3 as S3
from job import config as C
from job.errors import JobError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"
DEFAULT_PREFIX = "rag-embed-finetune"
DEFAULT_BASE_JOB_NAME = "rag-embed-finetune"
DEFAULT_MAX_RUN_S = 4 * 3600
HUGGINGFACE = "huggingface"
# The newest Hugging Face training image the SDK knows offline (transformers 5, PyTorch 2.9, py312).
HF_TRANSFORMERS_VERSION = "5.3.0"
HF_PYTORCH_VERSION = "pytorch2.9.0"
HF_PY_VERSION = "py312"
ROLE_ENV = "SAGEMAKER_ROLE"
BUCKET_ENV = "SAGEMAKER_BUCKET"
CONTAINER_CHECKPOINTS = "/opt/ml/checkpoints"
CHANNEL_FIELDS = {"data": K.TRAIN, "eval_data": K.EVAL, "model": K.BASE_MODEL}
NOT_SENT = ("run_dir", "s3_uri", "hub_repo", "hub_private")  # local-only: see container.CONTAINER_FIELDS
# On-demand list prices, USD per instance-hour, SageMaker training, us-east-1 (check
# https://aws.amazon.com/sagemaker/pricing/ for yours; spot is billed lower). --price overrides.
ON_DEMAND_USD_PER_HOUR = {
    "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515,
    "ml.g5.4xlarge": 2.03,
    "ml.g5.8xlarge": 3.06,
    "ml.g5.12xlarge": 7.09,
    "ml.g5.24xlarge": 10.18,
    "ml.g5.48xlarge": 20.36,
}
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


# --- checks that come before any upload ----------------------------------------------------------
def resolve_region(region: str | None) -> str:
    if region:
        return region
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            return os.environ[name]
    import boto3

    found = boto3.session.Session().region_name
    if not found:
        raise JobError(
            "No AWS region is set for the SageMaker job.",
            "pass --region (e.g. --region us-east-1) or set AWS_REGION / AWS_DEFAULT_REGION.",
        )
    return found


def check_spec(spec: LaunchSpec) -> LaunchSpec:
    """Fill defaults from the environment and refuse what cannot work - before anything is uploaded."""
    spec = copy.deepcopy(spec)
    spec.role = spec.role or os.environ.get(ROLE_ENV) or None
    if not spec.role:
        raise JobError(
            "No IAM role is given for the SageMaker job.",
            f"pass --role arn:aws:iam::ACCOUNT:role/NAME (or set {ROLE_ENV}): a role SageMaker can assume, with "
            "read/write access to the bucket (e.g. the AmazonSageMaker-ExecutionRole the console creates).",
        )
    if not _ROLE_ARN.match(spec.role):
        raise JobError(
            f"The role {spec.role!r} is not an IAM role ARN.",
            "pass the full ARN, e.g. --role arn:aws:iam::123456789012:role/SageMakerExecution.",
        )
    spec.region = resolve_region(spec.region)
    spec.bucket = spec.bucket or os.environ.get(BUCKET_ENV) or None
    if not spec.bucket and spec.output_path:
        spec.bucket = S3.parse_s3_uri(spec.output_path)[0]
    if not spec.bucket:
        raise JobError(
            "No S3 bucket is given for the job's inputs and outputs.",
            f"pass --bucket NAME (or set {BUCKET_ENV}, or give --output-path s3://BUCKET/PREFIX); the bucket must be in "
            f"{spec.region} and the role must be able to read and write it.",
        )
    if spec.output_path:
        S3.parse_s3_uri(spec.output_path)
    if spec.checkpoint_s3_uri:
        S3.parse_s3_uri(spec.checkpoint_s3_uri)
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
    if spec.instance_count != 1:
        raise JobError(
            f"--instance-count {spec.instance_count}: the job trains on one instance (with all of its GPUs).",
            "use --instance-count 1 with a multi-GPU instance type such as ml.g5.12xlarge (4 x A10G) for more GPUs.",
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


def gpus_per_instance(instance_type: str, region: str) -> int | None:
    from sagemaker.core import instance_types_gpu_info

    info = instance_types_gpu_info.retrieve(region).get(instance_type)
    return int(info["Count"]) if info else None


# --- inputs --------------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    """A short content digest of a file or folder tree (names and bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() if p != path else p.name.encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


@dataclass
class InputPlan:
    channels: dict[str, str]  # channel -> s3 URI
    uploads: list[tuple[Path, str]]  # local path -> s3 URI (a prefix for folders, the object for files)
    hyperparameters: dict[str, Any]  # data/eval_data/model values that go as hyperparameters


def plan_inputs(cfg: C.JobConfig, spec: LaunchSpec) -> InputPlan:
    """Which of data / eval_data / model become channels (uploaded or S3) and which travel as hyperparameters."""
    plan = InputPlan({}, [], {})
    for name, channel in CHANNEL_FIELDS.items():
        value = getattr(cfg, name)
        if value is None or (name == "model" and value == C.AUTO_MODEL):
            continue  # no eval set / the container's own default model
        if value.startswith("s3://"):
            S3.parse_s3_uri(value)
            plan.channels[channel] = value
            if name == "data" and Path(value).suffix.lower() in _data_suffixes():
                plan.hyperparameters["data"] = value.rstrip("/").rsplit("/", 1)[-1]
            continue
        local = Path(value).expanduser()
        if local.is_file() and name == "data" and local.suffix.lower() not in _data_suffixes():
            raise JobError(
                f"Cannot tell the format of {local} from its extension '{local.suffix}'.",
                f"use one of {', '.join(sorted(_data_suffixes()))}.",
            )
        if local.exists():
            prefix = f"s3://{spec.bucket}/{S3.join_key(spec.prefix, 'inputs', f'{channel}-{_digest(local)}')}/"
            plan.channels[channel] = prefix
            plan.uploads.append((local, prefix))
            if local.is_file() and name == "data":
                plan.hyperparameters["data"] = local.name
            continue
        if name == "eval_data":
            raise JobError(f"--eval-data {value} does not exist.", "pass a local BEIR folder or an s3:// URI.")
        if name == "model" and (value.startswith(("/", ".", "~")) or value.count("/") > 1):
            raise JobError(
                f"Model path {value} does not exist.", "pass a local model folder, an s3:// URI or a Hub id."
            )
        if name == "data" and Path(value).suffix.lower() in _data_suffixes():
            raise JobError(
                f"Data file {value} does not exist.", "check the path given to --data, or pass an s3:// URI."
            )
        plan.hyperparameters[name] = value  # a Hub id (or 'embedded' / 'bundled:...'), resolved in the container
    return plan


def _data_suffixes() -> set[str]:
    from job.data import LOCAL_SUFFIXES

    return set(LOCAL_SUFFIXES)


def upload_inputs(plan: InputPlan, echo: Echo, client=None) -> None:
    """Upload what the plan names; a prefix that already holds the same files (same digest) is reused."""
    client = client or S3.s3_client()
    for local, uri in plan.uploads:
        bucket, prefix = S3.parse_s3_uri(uri)
        have = {o["Key"]: o["Size"] for o in S3.iter_objects(client, bucket, prefix)} if _bucket_ok(uri, client) else {}
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        want = {
            S3.join_key(prefix, p.name if p == local else p.relative_to(local).as_posix()): p.stat().st_size
            for p in files
        }
        if want and all(have.get(k) == size for k, size in want.items()):
            echo(f"launch: {local} is already at {uri} (same content), not uploading again")
            continue
        written = S3.upload_path(local, uri, client)
        echo(f"launch: uploaded {local} -> {uri} ({len(written)} file{'s' if len(written) != 1 else ''})")


def _bucket_ok(uri: str, client) -> bool:
    S3.check_bucket(uri, client)  # a clear error for a missing bucket or bad credentials
    return True


# --- hyperparameters -----------------------------------------------------------------------------
def _as_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_as_string(v) for v in value)
    if value is None:
        return "None"
    return str(value)


def hyperparameters_for(cfg: C.JobConfig, plan: InputPlan, spec: LaunchSpec | None = None) -> dict[str, str]:
    """The configuration as SageMaker hyperparameters: every value that differs from its default,
    except the channels and the local-only fields, as strings. On an instance with several GPUs,
    ``nproc`` says how many training processes torchrun starts (one per GPU) unless it is set."""
    out: dict[str, str] = {}
    gpus = gpus_per_instance(spec.instance_type, spec.region or "us-east-1") if spec else None
    if gpus and gpus > 1 and cfg.nproc == C.FIELDS["nproc"].default:
        out["nproc"] = str(gpus)
    defaults = C.JobConfig()
    for name in C.FIELDS:
        if name in NOT_SENT or name in CHANNEL_FIELDS:
            continue
        value = getattr(cfg, name)
        if value != getattr(defaults, name):
            out[name] = _as_string(value)
    out.update({k: _as_string(v) for k, v in plan.hyperparameters.items()})
    for key, value in out.items():
        if len(value) > 256:
            raise JobError(
                f"The value of '{key}' is {len(value)} characters; SageMaker allows 256 per hyperparameter.",
                "shorten it.",
            )
    return dict(sorted(out.items()))


# --- the request ---------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from a botocore hook: a dry run ends before the request leaves this machine."""


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


class _NoRegionWarning(logging.Filter):
    """The SDK warns "No region provided" when it builds a client from our session, which has one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No region provided" not in record.getMessage()


def _quiet_sdk_logs() -> None:
    """The SDK's INFO chatter off (warnings stay), unless the job runs with --debug."""
    if logging.getLogger().level <= logging.DEBUG:
        return
    names = [n for n in logging.root.manager.loggerDict if n == "sagemaker" or n.startswith("sagemaker.")]
    for name in ["sagemaker", "sagemaker.config", *names]:  # sagemaker.config sets INFO itself if unset
        log = logging.getLogger(name)
        log.setLevel(max(log.level, logging.WARNING))
    utils = logging.getLogger("sagemaker.core.utils.utils")
    if not any(isinstance(f, _NoRegionWarning) for f in utils.filters):
        utils.addFilter(_NoRegionWarning())


def _require_sdk() -> None:
    try:
        import boto3  # noqa: F401
        import sagemaker.train  # noqa: F401
    except ImportError as exc:
        raise JobError(
            f"The SageMaker SDK is not installed ({exc.name} is missing).",
            "pip install 'rag-embed-finetune[aws]' (boto3 and sagemaker-train, the v3 SDK).",
        ) from None


def _session(region: str, dry_run: bool, bucket: str, prefix: str, uploads: list[tuple[str, str]], captured: dict):
    """A SageMaker Session whose boto3 calls are recorded (CreateTrainingJob) or, in a dry run, stopped."""
    import boto3
    from sagemaker.core.helper.session_helper import Session

    boto_session = boto3.session.Session(region_name=region)

    def capture(params, **kwargs):
        captured["CreateTrainingJob"] = copy.deepcopy(params)

    boto_session.events.register("before-parameter-build.sagemaker.CreateTrainingJob", capture)
    if dry_run:

        def stop(model, **kwargs):
            raise _Stop(model.name)

        boto_session.events.register("before-call", stop)

    class LaunchSession(Session):
        """Uploads go through infra.s3 (or, in a dry run, are only recorded); the staging bucket is ours."""

        def default_bucket(self):
            return bucket

        def upload_data(self, path, bucket=None, key_prefix="data", callback=None, extra_args=None):
            target = f"s3://{bucket or self.default_bucket()}/{key_prefix}"
            local = Path(path)
            uri = f"{target}/{local.name}" if local.is_file() else target
            uploads.append((str(local), uri))
            if not dry_run:
                S3.upload_path(local, uri if local.is_file() else target + "/", extra_args=extra_args)
            return uri

    # The SDK's usage telemetry is an HTTP request of its own: off, so that nothing but our requests leave.
    no_telemetry = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
    return LaunchSession(
        boto_session=boto_session, default_bucket=bucket, default_bucket_prefix=prefix, sagemaker_config=no_telemetry
    )


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_trainer(spec: LaunchSpec, cfg: C.JobConfig, plan: InputPlan, session, workdir: Path):
    """The ModelTrainer for this launch (nothing is sent until ``train()``)."""
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        OutputDataConfig,
        SourceCode,
        StoppingCondition,
        Tag,
    )
    from sagemaker.train import ModelTrainer

    source_code = None
    image = spec.image
    if spec.image == HUGGINGFACE:
        from sagemaker.core import image_uris

        image = image_uris.retrieve(
            "huggingface", region=spec.region, version=HF_TRANSFORMERS_VERSION, base_framework_version=HF_PYTORCH_VERSION,
            py_version=HF_PY_VERSION, instance_type=spec.instance_type, image_scope="training",
        )  # fmt: skip
        source_code = SourceCode(
            source_dir=str(_source_bundle(spec, workdir)),
            requirements="requirements.txt",
            command="python -m infra.container train",
        )
    environment = dict(spec.environment)
    output_path = spec.output_path or f"s3://{spec.bucket}/{S3.join_key(spec.prefix, 'output')}/"
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
            enable_managed_spot_training=spec.spot or None,
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=spec.max_run_s, max_wait_time_in_seconds=spec.max_wait_s if spec.spot else None
        ),
        output_data_config=OutputDataConfig(s3_output_path=output_path, compression_type="GZIP"),
        input_data_config=[InputData(channel_name=ch, data_source=uri) for ch, uri in sorted(plan.channels.items())],
        hyperparameters=hyperparameters_for(cfg, plan, spec),
        environment=environment,
        tags=[Tag(key=k, value=v) for k, v in sorted(spec.tags.items())] or None,
    )
    if spec.spot or spec.checkpoint_s3_uri:
        # Without a URI the SDK uses s3://BUCKET/PREFIX/BASE_JOB_NAME/JOB_NAME/checkpoints: one per job, so a
        # new job never picks up another's checkpoints; a spot restart of the same job does.
        trainer = trainer.with_checkpoint_config(
            CheckpointConfig(s3_uri=spec.checkpoint_s3_uri, local_path=CONTAINER_CHECKPOINTS)
        )
    return trainer.with_metric_definitions(_metric_definitions(cfg))


def _metric_definitions(cfg: C.JobConfig):
    from sagemaker.core.training.configs import MetricDefinition

    return [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in K.metric_definitions(cfg.matryoshka_dims)]


def launch(
    cfg: C.JobConfig,
    spec: LaunchSpec,
    *,
    dry_run: bool = False,
    wait: bool = False,
    echo: Echo = print,
    poll_s: float = 30,
) -> LaunchResult:
    """Check, upload (unless ``dry_run``), create the training job; return the exact CreateTrainingJob request."""
    _require_sdk()
    _quiet_sdk_logs()
    spec = check_spec(spec)
    plan = plan_inputs(cfg, spec)
    hps = hyperparameters_for(cfg, plan, spec)  # fails here, before any upload, on a value SageMaker would refuse
    uploads = [(str(p), uri) for p, uri in plan.uploads]
    if not dry_run:
        upload_inputs(plan, echo)
    captured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="job-launch-") as tmp:
        session = _session(spec.region, dry_run, spec.bucket, spec.prefix, uploads, captured)
        # A dry run calls nothing, so the role cannot be checked against IAM (a real launch checks it).
        with _env(SAGEMAKER_VALIDATE_ROLE="false") if dry_run else contextlib.nullcontext():
            trainer = build_trainer(spec, cfg, plan, session, Path(tmp))
            try:
                trainer.train(wait=False, logs=False)
            except _Stop:
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
                    f"Training job {name} ended {final['TrainingJobStatus']}: {final.get('FailureReason', 'no reason given')}",
                    f"see `job launch status {name}` and the job's CloudWatch logs.",
                )
            echo(f"launch: {name} completed; `job launch fetch {name}` downloads the model and report")
    return result


# --- following a job up --------------------------------------------------------------------------
def sagemaker_client(region: str | None = None):
    _require_sdk()
    import boto3

    return boto3.session.Session(region_name=resolve_region(region)).client("sagemaker")


def describe(name: str, region: str | None = None, client=None) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or sagemaker_client(region)
    try:
        return client.describe_training_job(TrainingJobName=name)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        # AWS answers "Requested resource not found."; moto "Could not find training job ..."
        if code in ("ValidationException", "ResourceNotFound") and re.search(
            r"not found|could not find|does not exist", message, re.I
        ):
            raise JobError(
                f"There is no training job named {name} in {client.meta.region_name}.", "check the name and --region."
            ) from None
        raise JobError(
            f"DescribeTrainingJob {name} failed: {code} {message}".strip(), "check the credentials and --region."
        ) from None
    except BotoCoreError as exc:
        raise JobError(
            f"Could not reach SageMaker to describe {name}: {exc}.", "check the network, credentials and --region."
        ) from None


def wait_for(name: str, region: str | None, echo: Echo, poll_s: float = 30, client=None) -> dict[str, Any]:
    client = client or sagemaker_client(region)
    last = None
    while True:
        desc = describe(name, client=client)
        now = (desc["TrainingJobStatus"], desc.get("SecondaryStatus"))
        if now != last:
            echo(f"launch: {name}: {now[0]} / {now[1]}")
            last = now
        if now[0] in ("Completed", "Failed", "Stopped"):
            return desc
        time.sleep(poll_s)


def job_cost(desc: dict[str, Any], price_per_hour: float | None = None) -> tuple[float | None, str]:
    """(USD, how it was computed): billable seconds x instances x the on-demand hourly price."""
    rc = desc.get("ResourceConfig", {})
    itype, count = rc.get("InstanceType"), rc.get("InstanceCount", 1)
    seconds = desc.get("BillableTimeInSeconds")
    price = price_per_hour if price_per_hour is not None else ON_DEMAND_USD_PER_HOUR.get(itype)
    if seconds is None:
        return None, "no billable time yet"
    if price is None:
        return None, f"{seconds} billable s; no price known for {itype} (pass --price USD_PER_HOUR)"
    usd = seconds * count * price / 3600
    basis = "--price" if price_per_hour is not None else "us-east-1 on-demand list price"
    return usd, f"{seconds} s x {count} x {itype} ${price:.3f}/h ({basis})"


def status_lines(desc: dict[str, Any], price_per_hour: float | None = None) -> list[str]:
    rc = desc.get("ResourceConfig", {})
    lines = [
        f"job:       {desc['TrainingJobName']}",
        f"status:    {desc['TrainingJobStatus']} / {desc.get('SecondaryStatus', '-')}",
        f"instance:  {rc.get('InstanceCount', 1)} x {rc.get('InstanceType', '?')}"
        + (" (spot)" if desc.get("EnableManagedSpotTraining") else ""),
    ]
    if desc.get("FailureReason"):
        lines.append(f"failure:   {desc['FailureReason']}")
    train_s, bill_s = desc.get("TrainingTimeInSeconds"), desc.get("BillableTimeInSeconds")
    if train_s is not None:
        saved = (
            f", spot saved {1 - bill_s / train_s:.0%}"
            if desc.get("EnableManagedSpotTraining") and bill_s and train_s
            else ""
        )
        lines.append(f"time:      {train_s} s training, {bill_s} s billable{saved}")
    usd, basis = job_cost(desc, price_per_hour)
    lines.append(f"cost:      {'$%.2f' % usd if usd is not None else 'unknown'} ({basis})")
    metrics = {m["MetricName"]: m["Value"] for m in desc.get("FinalMetricDataList", [])}
    if metrics:
        lines.append("metrics:")
        lines += [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items(), key=lambda kv: _metric_order(kv[0]))]
    artifacts = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if artifacts:
        lines.append(f"model:     {artifacts}")
    return lines


def _metric_order(name: str) -> tuple:
    m = re.match(r"(\w+)_ndcg@10_dim(\d+)$", name)
    kinds = {"test": 0, "baseline": 1, "val": 2}
    return (kinds.get(m.group(1), 3), -int(m.group(2))) if m else (9, 0, name)


def status(
    name: str, region: str | None = None, echo: Echo = print, price_per_hour: float | None = None, client=None
) -> dict[str, Any]:
    desc = describe(name, region, client)
    for line in status_lines(desc, price_per_hour):
        echo(line)
    return desc


def output_uris(desc: dict[str, Any]) -> tuple[str, str]:
    """(model.tar.gz, output.tar.gz) S3 URIs of a job."""
    name = desc["TrainingJobName"]
    model = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    base = desc["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return model or f"{base}/{name}/output/model.tar.gz", f"{base}/{name}/output/output.tar.gz"


def _extract(tarball: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tarball) as tf:
            tf.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise JobError(
            f"{tarball.name} could not be unpacked: {exc}.", "download it again; check that the job completed."
        ) from None


def fetch(
    name: str,
    run_dir: Path | None = None,
    region: str | None = None,
    *,
    force: bool = False,
    echo: Echo = print,
    client=None,
    s3=None,
) -> Path:
    """Download model.tar.gz and output.tar.gz of a completed job and unpack them into a run directory."""
    desc = describe(name, region, client)
    if desc["TrainingJobStatus"] != "Completed":
        raise JobError(
            f"Training job {name} is {desc['TrainingJobStatus']}; only a completed job has a model to fetch.",
            f"wait for it (`job launch status {name}`)"
            + (f"; it failed: {desc['FailureReason']}" if desc.get("FailureReason") else "."),
        )
    run_dir = Path(run_dir or Path("runs") / name)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise JobError(
                f"{run_dir} already exists and is not empty.", "pass --force to replace it, or another --run-dir."
            )
        shutil.rmtree(run_dir)
    model_uri, output_uri = output_uris(desc)
    s3 = s3 or S3.s3_client()
    with tempfile.TemporaryDirectory(prefix="job-fetch-") as tmp:
        stage = Path(tmp) / "run"
        (model_tgz,) = S3.download_prefix(model_uri, Path(tmp) / "model", s3)
        _extract(model_tgz, stage / "model")
        try:
            (output_tgz,) = S3.download_prefix(output_uri, Path(tmp) / "output", s3)
        except JobError:
            output_tgz = None
            echo(f"fetch: no {output_uri}; the run directory gets the model only")
        if output_tgz is not None:
            _extract(output_tgz, stage)
        if not (stage / "model" / "modules.json").is_file():
            raise JobError(
                f"{model_uri} holds no sentence-transformers model (no modules.json).",
                "check that the job used this project's image.",
            )
        (stage / "launch.json").write_text(
            json.dumps({"training_job": name, "model": model_uri, "output": output_uri}, indent=2)
        )
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(run_dir))
    report = run_dir / "report" / "report.md"
    echo(
        f"fetch: {name} -> {run_dir} (model/{', report/' if report.is_file() else ''}); load it with SentenceTransformer('{run_dir / 'model'}')"
    )
    training = run_dir / "model" / "training.json"
    base = json.loads(training.read_text()).get("base_model", "") if training.is_file() else ""
    if base.startswith(("/opt/ml/", tempfile.gettempdir())):
        echo(
            f"fetch: the base model came in through the job's model channel ({base}); give its local copy to rag_eval as --baseline"
        )
    return run_dir
