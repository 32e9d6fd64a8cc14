"""The SageMaker Python SDK v3 as this project uses it: an install check, quiet logs, the user's own
SageMaker configuration with the SDK's telemetry turned off on top of it, and a Session whose
requests are recorded (or, in a dry run, stopped before they leave).

The user's configuration (the SDK's admin and user ``config.yaml``, or the files named by
``SAGEMAKER_ADMIN_CONFIG_OVERRIDE`` / ``SAGEMAKER_USER_CONFIG_OVERRIDE``) is loaded as the SDK
loads it; :func:`sdk_config` adds ``TelemetryOptOut`` to it and the Session carries the result.
:func:`training_job_defaults` reads the ``SageMaker.TrainingJob`` values the launcher applies itself
(the SDK drops them when a value is passed explicitly, or - VPC - always)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infra.publish import s3
from job.errors import JobError


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


# --- the request ---------------------------------------------------------------------------------
class StopBeforeSend(Exception):
    """Raised from a botocore hook: a dry run ends before the request leaves this machine."""


class _NoRegionWarning(logging.Filter):
    """The SDK warns "No region provided" when it builds a client from our session, which has one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No region provided" not in record.getMessage()


def quiet_sdk_logs() -> None:
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


def require_sdk() -> None:
    try:
        import boto3  # noqa: F401
        import sagemaker.train  # noqa: F401
    except ImportError as exc:
        raise JobError(
            f"The SageMaker SDK is not installed ({exc.name} is missing).",
            "pip install 'rag-embed-finetune[aws]' (boto3 and sagemaker-train, the v3 SDK).",
        ) from None


# --- the user's SageMaker configuration ----------------------------------------------------------
TELEMETRY_OPT_OUT = ("SageMaker", "PythonSDK", "Modules", "TelemetryOptOut")
CONFIG_ENV = ("SAGEMAKER_ADMIN_CONFIG_OVERRIDE", "SAGEMAKER_USER_CONFIG_OVERRIDE")


def sdk_config() -> dict[str, Any]:
    """The user's SageMaker SDK configuration, loaded as the SDK loads it, plus the telemetry opt-out
    (the SDK's usage telemetry is an HTTP request of its own: nothing but our requests may leave)."""
    from sagemaker.core.config import load_sagemaker_config

    try:
        config = copy.deepcopy(load_sagemaker_config() or {})
    except Exception as exc:  # noqa: BLE001 - jsonschema ValidationError, ValueError, RuntimeError (S3)
        named = ", ".join(f"{k}={os.environ[k]}" for k in CONFIG_ENV if os.environ.get(k)) or "the default locations"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JobError(
            f"The SageMaker SDK configuration ({named}) could not be loaded: {first}",
            "fix the config.yaml (see the SageMaker Python SDK's 'configuring and using defaults' guide), or point "
            "SAGEMAKER_USER_CONFIG_OVERRIDE at another file.",
        ) from None
    config.setdefault("SchemaVersion", "1.0")
    node = config
    for key in TELEMETRY_OPT_OUT[:-1]:
        node = node.setdefault(key, {})
    node[TELEMETRY_OPT_OUT[-1]] = True
    return config


def config_value(config: dict[str, Any], path: str, default: Any = None) -> Any:
    """``config_value(cfg, "SageMaker.TrainingJob.VpcConfig.Subnets")``, a copy, or ``default``."""
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return copy.deepcopy(node)


def training_job_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The ``SageMaker.TrainingJob`` values of the user's configuration that a launch applies itself:
    role, environment, tags, VPC, network isolation, traffic encryption and the KMS keys."""
    job = "SageMaker.TrainingJob."
    tags = config_value(config, job + "Tags", []) or []
    return {
        "role": config_value(config, job + "RoleArn"),
        "environment": {str(k): str(v) for k, v in (config_value(config, job + "Environment", {}) or {}).items()},
        "tags": {str(t["Key"]): str(t.get("Value", "")) for t in tags if isinstance(t, dict) and "Key" in t},
        "subnets": config_value(config, job + "VpcConfig.Subnets"),
        "security_group_ids": config_value(config, job + "VpcConfig.SecurityGroupIds"),
        "enable_network_isolation": config_value(config, job + "EnableNetworkIsolation"),
        "enable_inter_container_traffic_encryption": config_value(
            config, job + "EnableInterContainerTrafficEncryption"
        ),
        "output_kms_key_id": config_value(config, job + "OutputDataConfig.KmsKeyId"),
        "volume_kms_key_id": config_value(config, job + "ResourceConfig.VolumeKmsKeyId"),
    }


@contextlib.contextmanager
def config_files(config: dict[str, Any]) -> Iterator[Path]:
    """For SDK code that loads the configuration itself (local mode has no Session; its telemetry
    builds a default one): ``config`` in a temporary file that both override variables name."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="job-sagemaker-config-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        with env_vars(**{name: str(path) for name in CONFIG_ENV}):
            yield path


def launch_session(
    region: str, dry_run: bool, bucket: str, prefix: str, uploads: list[tuple[str, str]], captured: dict,
    config: dict[str, Any] | None = None,
):  # fmt: skip
    """A SageMaker Session whose boto3 calls are recorded (CreateTrainingJob) or, in a dry run, stopped;
    it carries ``config`` (default: :func:`sdk_config`, the user's configuration with telemetry off)."""
    import boto3
    from sagemaker.core.helper.session_helper import Session

    boto_session = boto3.session.Session(region_name=region)

    def capture(params, **kwargs):
        captured["CreateTrainingJob"] = copy.deepcopy(params)

    boto_session.events.register("before-parameter-build.sagemaker.CreateTrainingJob", capture)
    if dry_run:

        def stop(model, **kwargs):
            raise StopBeforeSend(model.name)

        boto_session.events.register("before-call", stop)

    class LaunchSession(Session):
        """Uploads go through infra.publish.s3 (or, in a dry run, are only recorded); the staging bucket is ours."""

        def default_bucket(self):
            return bucket

        def upload_data(self, path, bucket=None, key_prefix="data", callback=None, extra_args=None):
            target = f"s3://{bucket or self.default_bucket()}/{key_prefix}"
            local = Path(path)
            uri = f"{target}/{local.name}" if local.is_file() else target
            uploads.append((str(local), uri))
            if not dry_run:
                s3.upload_path(local, uri if local.is_file() else target + "/", extra_args=extra_args)
            return uri

    return LaunchSession(
        boto_session=boto_session,
        default_bucket=bucket,
        default_bucket_prefix=prefix,
        sagemaker_config=config if config is not None else sdk_config(),
    )


@contextlib.contextmanager
def env_vars(**values: str) -> Iterator[None]:
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


# --- following a job up --------------------------------------------------------------------------
def sagemaker_client(region: str | None = None):
    require_sdk()
    import boto3

    return boto3.session.Session(region_name=resolve_region(region)).client("sagemaker")


def gpus_per_instance(instance_type: str, region: str) -> int | None:
    from sagemaker.core import instance_types_gpu_info

    info = instance_types_gpu_info.retrieve(region).get(instance_type)
    return int(info["Count"]) if info else None
