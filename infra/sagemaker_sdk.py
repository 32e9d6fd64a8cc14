"""The SageMaker Python SDK v3 as this project uses it: an install check, quiet logs, and a Session
whose requests are recorded (or, in a dry run, stopped before they leave), with the SDK's
telemetry turned off on top of the user's own SageMaker configuration."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from infra import s3
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


def launch_session(region: str, dry_run: bool, bucket: str, prefix: str, uploads: list[tuple[str, str]], captured: dict):
    """A SageMaker Session whose boto3 calls are recorded (CreateTrainingJob) or, in a dry run, stopped."""
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
        """Uploads go through infra.s3 (or, in a dry run, are only recorded); the staging bucket is ours."""

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

    # The SDK's usage telemetry is an HTTP request of its own: off, so that nothing but our requests leave.
    no_telemetry = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
    return LaunchSession(
        boto_session=boto_session, default_bucket=bucket, default_bucket_prefix=prefix, sagemaker_config=no_telemetry
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
