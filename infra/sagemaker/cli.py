"""``job launch``: run the job as a SageMaker training job - on this machine's Docker or on SageMaker -
and follow it up.

    job launch local --image TAG [job flags] [--gpus] [--run-dir DIR]        (the SDK's local mode)
    job launch sagemaker --role ARN --bucket B --image ECR_URI|huggingface [job flags] [--spot] [--dry-run]
    job launch status NAME
    job launch fetch NAME [--run-dir DIR]

The group is added to the job's command line (``job launch ...``) through the ``job.commands`` entry point
(pyproject.toml; :mod:`job.plugins`); ``python -m infra.sagemaker.cli``
runs it on its own with the same error handling.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from job import config
from job.cli_common import config_options, run_cli
from job.errors import JobError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: str | int | None, flag: str) -> int | None:
    """``3600``, ``90m``, ``4h``, ``1d`` -> seconds."""
    if value is None or isinstance(value, int):
        return value
    m = _DURATION.match(str(value))
    if not m:
        raise JobError(
            f"{flag} {value!r} is not a duration.", f"write it as seconds or with a unit: {flag} 4h, 90m, 3600."
        )
    return int(float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobError(f"{flag} {item!r} is not KEY=VALUE.", f"write it as {flag} team=search.")
        out[key] = value
    return out


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


@click.group("launch")
def launch() -> None:
    """Run the job as a SageMaker training job (locally first, then in the cloud); follow it up and fetch its result."""


# One option set for `job launch sagemaker` and `job launch local`: the same command line runs either.
_LAUNCH_OPTIONS = [
    click.option("--role", default=None, help="IAM role ARN SageMaker assumes  [env SAGEMAKER_ROLE]"),
    click.option(
        "--region", default=None, help="AWS region  [default: AWS_REGION / AWS_DEFAULT_REGION / your AWS config]"
    ),
    click.option(
        "--bucket", default=None, help="S3 bucket for inputs, outputs and checkpoints  [env SAGEMAKER_BUCKET]"
    ),
    click.option("--prefix", default="rag-embed-finetune", show_default=True, help="Key prefix in the bucket."),
    click.option(
        "--image", default=None,
        help="Our image (an ECR URI for SageMaker, a local tag for `local`), or 'huggingface' (SageMaker only: the "
        "Hugging Face training image + this code).",
    ),
    click.option(
        "--instance-type", default="ml.g5.2xlarge", show_default=True,
        help="Several GPUs (e.g. ml.g5.12xlarge) train under torchrun.",
    ),
    click.option(
        "--instance-count", type=int, default=1, show_default=True,
        help="Instances training together (torchrun across them; `local`: one container each).",
    ),
    click.option("--volume-size", type=int, default=50, show_default=True, help="Storage volume, GB."),
    click.option("--max-run", default="4h", show_default=True, help="Stop the job after this long (3600, 90m, 4h)."),
    click.option(
        "--spot/--no-spot", default=False, show_default=True, help="Managed spot training (checkpoints resume it)."
    ),
    click.option(
        "--max-wait", default=None, help="Spot: give up after this long, waiting included  [default: 2 x --max-run]"
    ),
    click.option(
        "--checkpoint-s3-uri", default=None,
        help="Where checkpoints are synced  [default with --spot: per job, under the bucket]",
    ),
    click.option(
        "--tensorboard-s3-uri", default=None,
        help="Where SageMaker syncs the job's TensorBoard event files while it runs (its TensorBoardOutputConfig; "
        "the job reports to TensorBoard unless --report-to none)  [default: not synced; output.tar.gz holds them]",
    ),
    click.option(
        "--output-path", default=None, help="S3 URI for model.tar.gz / output.tar.gz  [default: s3://BUCKET/PREFIX/output/]"
    ),
    click.option(
        "--base-job-name", default="rag-embed-finetune", show_default=True, help="Job name before the timestamp."
    ),
    click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Tag for the job (repeatable)."),
    click.option(
        "--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable in the container (repeatable)."
    ),
    click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the job ends, showing its log."),
    click.option(
        "--dry-run", is_flag=True,
        help="Print what would be started; upload nothing, start nothing, call no AWS endpoint.",
    ),
    click.option(
        "--poll", type=float, default=10, show_default=True, hidden=True,
        help="Seconds between status and log checks with --wait.",
    ),
]  # fmt: skip
# LaunchSpec field <- option name, where they differ.
_SPEC_FIELDS = {"volume_gb": "volume_size", "max_run_s": "max_run", "max_wait_s": "max_wait"}


def launch_options(func):
    """The job's configuration flags (as for `job run`) and the launch options above."""
    for option in reversed(_LAUNCH_OPTIONS):
        func = option(func)
    return config_options(func)


if TYPE_CHECKING:
    from infra.sagemaker.launch import LaunchSpec


def _spec(opts: dict) -> LaunchSpec:  # (imported lazily: the SDK is optional)
    from infra.sagemaker import launch as sagemaker_launch

    return sagemaker_launch.LaunchSpec(
        role=opts["role"], region=opts["region"], bucket=opts["bucket"], prefix=opts["prefix"], image=opts["image"],
        instance_type=opts["instance_type"], instance_count=opts["instance_count"], volume_gb=opts["volume_size"],
        max_run_s=parse_duration(opts["max_run"], "--max-run") or sagemaker_launch.DEFAULT_MAX_RUN_S, spot=opts["spot"],
        max_wait_s=parse_duration(opts["max_wait"], "--max-wait"), checkpoint_s3_uri=opts["checkpoint_s3_uri"],
        tensorboard_s3_uri=opts["tensorboard_s3_uri"], output_path=opts["output_path"],
        base_job_name=opts["base_job_name"], tags=_pairs(opts["tags"], "--tag"),
        environment=_pairs(opts["env"], "--env"),
    )  # fmt: skip


def _given_flags(names) -> list[str]:
    """The flags of those of ``names`` (parameter names) set on the command line or through their environment
    variable."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    params = {p.name: p for p in ctx.command.params}
    return ["/".join(params[n].opts + params[n].secondary_opts) for n in names if ctx.get_parameter_source(n) in given]


def _not_sent(cfg) -> None:
    if cfg.docs:
        raise JobError(
            "--docs: a SageMaker job does not synthesize pairs (the documents and the LLM endpoint are here).",
            "run `job synthesize --docs ... --out pairs.jsonl` on this machine, then launch with --data pairs.jsonl.",
        )
    not_sent = [n for n in config.PUBLISH_FIELDS if getattr(cfg, n) and getattr(cfg, n) != config.FIELDS[n].default]
    if not_sent:
        _echo_err(f"launch: not sent to the job: {', '.join(not_sent)} (publish after `job launch fetch`)")


@launch.command("sagemaker")
@launch_options
def sagemaker_cmd(cfg, **opts) -> None:
    """Start the job on SageMaker with this configuration (flags, --config, JOB_* as for `job run`).

    Local --data / --eval-data / --model are uploaded to the bucket (once per content); s3:// URIs
    are used as they are; a Hub id or 'embedded' is passed on. The configuration travels as
    hyperparameters; the job's metrics (NDCG@10 per dim) show in the SageMaker console. With
    --wait (the default) the job's log streams here until it ends. Try it first with `job launch
    local`: the same command line, run on this machine's Docker.
    """
    from infra.sagemaker import launch as sagemaker_launch

    spec = _spec(opts)
    _not_sent(cfg)
    result = sagemaker_launch.launch(
        cfg, spec, dry_run=opts["dry_run"], wait=opts["wait"], echo=_echo_err, poll_s=opts["poll"]
    )
    if opts["dry_run"]:
        for local, uri in result.uploads:
            _echo_err(f"launch (dry run): would upload {local} -> {uri}")
        click.echo(json.dumps(result.request, indent=2, sort_keys=False))


@launch.command("local")
@launch_options
@click.option(
    "--gpus",
    is_flag=True,
    help="Give the container every GPU (the SDK's local_gpu; needs the NVIDIA container toolkit).",
)
@click.option("--force", is_flag=True, help="Replace a non-empty --run-dir when the job has finished.")
def local_cmd(cfg, gpus, force, **opts) -> None:
    """Run the job as a SageMaker training job on this machine's Docker (the SageMaker SDK's local mode).

    The same flags as `job launch sagemaker`; --image is our image, built here (`docker build -t
    rag-embed-finetune .`). Local --data / --eval-data / --model become the job's channels (a file
    is staged as a channel folder); the container's output streams here; its model.tar.gz and
    output.tar.gz are unpacked into --run-dir (the layout of `job launch fetch`), ready for rag-eval.
    Needs Docker and Docker Compose; no AWS account, credentials or network. The cloud-only
    settings (role, bucket, instance, spot, ...) are accepted and ignored, and named.
    """
    from infra.sagemaker import local as sagemaker_local

    spec = _spec(opts)
    ignored = _given_flags([_SPEC_FIELDS.get(n, n) for n in sagemaker_local.CLOUD_ONLY] + ["wait"])
    if ignored:
        _echo_err(
            f"launch local: ignored here (they apply on SageMaker; a local run always waits): {', '.join(ignored)}"
        )
    _not_sent(cfg)
    result = sagemaker_local.launch_local(cfg, spec, gpus=gpus, force=force, dry_run=opts["dry_run"], echo=_echo_err)
    if opts["dry_run"]:
        click.echo(json.dumps(result.request, indent=2))


@launch.command("status")
@click.argument("name")
@click.option("--region", default=None, help="AWS region of the job.")
@click.option(
    "--price", type=float, default=None, help="USD per instance-hour for the cost line  [default: on-demand list price]"
)
def status_cmd(name, region, price) -> None:
    """Show a training job's status, times, cost and final metrics (NDCG@10 per dim)."""
    from infra.sagemaker import jobs as sagemaker_jobs

    sagemaker_jobs.status(name, region, echo=click.echo, price_per_hour=price)


@launch.command("fetch")
@click.argument("name")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="Where to unpack  [default: runs/NAME]")
@click.option("--region", default=None, help="AWS region of the job.")
@click.option("--force", is_flag=True, help="Replace an existing run directory.")
def fetch_cmd(name, run_dir, region, force) -> None:
    """Download a completed job's model and report into a run directory (model/, report/, ir/, data/)."""
    from infra.sagemaker import jobs as sagemaker_jobs

    sagemaker_jobs.fetch(name, run_dir, region, force=force, echo=click.echo)


def main(argv: list[str] | None = None) -> int:
    """``launch ...`` on its own, with the job's error contract (one paragraph, exit code 2)."""
    return run_cli(launch, argv, "job launch", "a started training job keeps running; see `job launch status NAME`")


if __name__ == "__main__":
    sys.exit(main())
