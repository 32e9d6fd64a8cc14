"""``job launch``: run the job on SageMaker and follow it up.

    job launch sagemaker --role ARN --bucket B --image ECR_URI|huggingface [job flags] [--spot] [--dry-run]
    job launch status NAME
    job launch fetch NAME [--run-dir DIR]

The group is registered on the job's command line (``job launch ...``); ``python -m infra.launch_cli``
runs it on its own with the same error handling.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from job import config as C
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
    """Run the job as a SageMaker training job; follow it up and fetch its result."""


@launch.command("sagemaker")
@config_options
@click.option("--role", default=None, help="IAM role ARN SageMaker assumes  [env SAGEMAKER_ROLE]")
@click.option("--region", default=None, help="AWS region  [default: AWS_REGION / AWS_DEFAULT_REGION / your AWS config]")
@click.option("--bucket", default=None, help="S3 bucket for inputs, outputs and checkpoints  [env SAGEMAKER_BUCKET]")
@click.option("--prefix", default="rag-embed-finetune", show_default=True, help="Key prefix in the bucket.")
@click.option(
    "--image", default=None, help="Our image's ECR URI, or 'huggingface' (the Hugging Face training image + this code)."
)
@click.option(
    "--instance-type",
    default="ml.g5.2xlarge",
    show_default=True,
    help="Several GPUs (e.g. ml.g5.12xlarge) train under torchrun.",
)
@click.option("--instance-count", type=int, default=1, show_default=True, help="Instances (the job trains on one).")
@click.option("--volume-size", type=int, default=50, show_default=True, help="Storage volume, GB.")
@click.option("--max-run", default="4h", show_default=True, help="Stop the job after this long (3600, 90m, 4h).")
@click.option(
    "--spot/--no-spot", default=False, show_default=True, help="Managed spot training (checkpoints resume it)."
)
@click.option(
    "--max-wait", default=None, help="Spot: give up after this long, waiting included  [default: 2 x --max-run]"
)
@click.option(
    "--checkpoint-s3-uri",
    default=None,
    help="Where checkpoints are synced  [default with --spot: per job, under the bucket]",
)
@click.option(
    "--output-path", default=None, help="S3 URI for model.tar.gz / output.tar.gz  [default: s3://BUCKET/PREFIX/output/]"
)
@click.option("--base-job-name", default="rag-embed-finetune", show_default=True, help="Job name before the timestamp.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Tag for the job (repeatable).")
@click.option(
    "--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable in the container (repeatable)."
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the job ends.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the complete CreateTrainingJob request; upload nothing, call no AWS endpoint.",
)
@click.option(
    "--poll", type=float, default=30, show_default=True, hidden=True, help="Seconds between status checks with --wait."
)
def sagemaker_cmd(cfg, role, region, bucket, prefix, image, instance_type, instance_count, volume_size, max_run, spot,
                  max_wait, checkpoint_s3_uri, output_path, base_job_name, tags, env, wait, dry_run, poll) -> None:  # fmt: skip
    """Start the job on SageMaker with this configuration (flags, --config, JOB_* as for `job run`).

    Local --data / --eval-data / --model are uploaded to the bucket (once per content); s3:// URIs
    are used as they are; a Hub id or 'embedded' is passed on. The configuration travels as
    hyperparameters; the job's metrics (NDCG@10 per dim) show in the SageMaker console.
    """
    from infra import sagemaker_launch

    spec = sagemaker_launch.LaunchSpec(
        role=role, region=region, bucket=bucket, prefix=prefix, image=image, instance_type=instance_type,
        instance_count=instance_count, volume_gb=volume_size, max_run_s=parse_duration(max_run, "--max-run"), spot=spot,
        max_wait_s=parse_duration(max_wait, "--max-wait"), checkpoint_s3_uri=checkpoint_s3_uri, output_path=output_path,
        base_job_name=base_job_name, tags=_pairs(tags, "--tag"), environment=_pairs(env, "--env"),
    )  # fmt: skip
    not_sent = [n for n in C.PUBLISH_FIELDS if getattr(cfg, n) and getattr(cfg, n) != C.FIELDS[n].default]
    if not_sent:
        _echo_err(f"launch: not sent to the job: {', '.join(not_sent)} (publish after `job launch fetch`)")
    result = sagemaker_launch.launch(cfg, spec, dry_run=dry_run, wait=wait, echo=_echo_err, poll_s=poll)
    if dry_run:
        for local, uri in result.uploads:
            _echo_err(f"launch (dry run): would upload {local} -> {uri}")
        click.echo(json.dumps(result.request, indent=2, sort_keys=False))


@launch.command("status")
@click.argument("name")
@click.option("--region", default=None, help="AWS region of the job.")
@click.option(
    "--price", type=float, default=None, help="USD per instance-hour for the cost line  [default: on-demand list price]"
)
def status_cmd(name, region, price) -> None:
    """Show a training job's status, times, cost and final metrics (NDCG@10 per dim)."""
    from infra import sagemaker_jobs

    sagemaker_jobs.status(name, region, echo=click.echo, price_per_hour=price)


@launch.command("fetch")
@click.argument("name")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="Where to unpack  [default: runs/NAME]")
@click.option("--region", default=None, help="AWS region of the job.")
@click.option("--force", is_flag=True, help="Replace an existing run directory.")
def fetch_cmd(name, run_dir, region, force) -> None:
    """Download a completed job's model and report into a run directory (model/, report/, ir/, data/)."""
    from infra import sagemaker_jobs

    sagemaker_jobs.fetch(name, run_dir, region, force=force, echo=click.echo)


def main(argv: list[str] | None = None) -> int:
    """``launch ...`` on its own, with the job's error contract (one paragraph, exit code 2)."""
    return run_cli(launch, argv, "job launch", "a started training job keeps running; see `job launch status NAME`")


if __name__ == "__main__":
    sys.exit(main())
