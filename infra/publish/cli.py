"""``job push``: publish a finished run to S3, the Hugging Face Hub and/or a folder.

Added to the `job` program through the ``job.commands`` entry point (pyproject.toml; :mod:`job.plugins`), and
``check_destinations`` / ``push_run`` are what `job run --s3-uri/--hub-repo/--publish-dir` calls, through the
``job.publish`` entry points. The publishing options are the configuration's ``group="publish"`` fields, declared once
in :mod:`job.config`. Errors are JobErrors, which ``job.cli.main`` prints as one paragraph with exit code 2.
"""

from __future__ import annotations

import click

from job import config
from job.cli_common import field_options
from job.errors import JobError


def check_destinations(**options) -> None:
    """Fail fast, before any training or upload: every destination the options name is checked (the Hub token's
    write access and offline mode; the folder made and written to; the bucket, endpoint and credentials). Makes
    no request to the Hub; one ListObjectsV2 to S3."""
    from infra.publish.destinations import check_all, destinations

    check_all(destinations(**options))


def push_run(run_dir, *, echo=click.echo, progress: bool = False, **options) -> str:
    """Check every destination the options name first, then publish; return the one-line summary (also echoed)."""
    from infra.publish.bundle import run_root
    from infra.publish.destinations import destinations, nothing_fix, publish_all

    root = run_root(run_dir)
    dests = destinations(run_dir=root, **options)
    if not dests:
        raise JobError("Nothing to publish to.", nothing_fix())
    return publish_all(root, dests, echo=echo, progress=progress)


@click.command("push")
@click.option(
    "--run-dir", required=True, type=click.Path(file_okay=False), help="A finished run directory (after `job run`)."
)
@field_options(config.PUBLISH_FIELDS)  # the same fields, flags and JOB_* variables as `job run`'s: declared once
@click.option(
    "--endpoint-url", envvar="AWS_ENDPOINT_URL_S3", default=None,
    help="S3-compatible endpoint (MinIO, SeaweedFS...).  [env AWS_ENDPOINT_URL_S3]",
)  # fmt: skip
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
def push(run_dir: str, endpoint_url: str | None, debug: bool, **cli_values) -> None:
    """Publish a finished run: model, report and manifest to S3 or a folder; the model with its card to the Hub.

    Credentials come from the environment only: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or an
    AWS profile) for S3, HF_TOKEN or the token file (HF_TOKEN_PATH, `hf auth login`) for the Hub.
    Every destination is checked before anything is uploaded.
    """
    options = config.resolve_fields(config.PUBLISH_FIELDS, cli_values)
    push_run(run_dir, echo=click.echo, progress=True, endpoint_url=endpoint_url, **options)
