"""``job push``: publish a finished run to S3, the Hugging Face Hub and/or a folder.

Registered on the main group with ``cli.add_command(push)`` in :mod:`job.cli`; errors are
JobErrors, which ``job.cli.main`` prints as one paragraph with exit code 2.
"""

from __future__ import annotations

import click

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
    from infra.publish.destinations import NOTHING_FIX, destinations, publish_all

    root = run_root(run_dir)
    dests = destinations(run_dir=root, **options)
    if not dests:
        raise JobError("Nothing to publish to.", NOTHING_FIX)
    return publish_all(root, dests, echo=echo, progress=progress)


@click.command("push")
@click.option(
    "--run-dir", required=True, type=click.Path(file_okay=False), help="A finished run directory (after `job run`)."
)
@click.option(
    "--s3-uri", envvar="JOB_S3_URI", default=None, help="Publish under s3://BUCKET/PREFIX/<run-id>/.  [env JOB_S3_URI]"
)
@click.option(
    "--hub-repo",
    envvar="JOB_HUB_REPO",
    default=None,
    help="Push the model to this Hub repo (NAMESPACE/NAME).  [env JOB_HUB_REPO]",
)
@click.option(
    "--hub-private/--public", "hub_private", envvar="JOB_HUB_PRIVATE", default=True,
    help="Create the Hub repo as private (default) or public.  [env JOB_HUB_PRIVATE]",
)  # fmt: skip
@click.option(
    "--endpoint-url", envvar="AWS_ENDPOINT_URL_S3", default=None,
    help="S3-compatible endpoint (MinIO, SeaweedFS...).  [env AWS_ENDPOINT_URL_S3]",
)  # fmt: skip
@click.option(
    "--publish-dir", envvar="JOB_PUBLISH_DIR", default=None, type=click.Path(file_okay=False),
    help="Copy the run into this folder (a mounted volume, NFS) under <run-id>/, verified, manifest last.  "
    "[env JOB_PUBLISH_DIR]",
)  # fmt: skip
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
def push(
    run_dir: str, s3_uri: str | None, hub_repo: str | None, hub_private: bool, endpoint_url: str | None,
    publish_dir: str | None, debug: bool,
) -> None:  # fmt: skip
    """Publish a finished run: model, report and manifest to S3 or a folder; the model with its card to the Hub.

    Credentials come from the environment only: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or an
    AWS profile) for S3, HF_TOKEN or the token file (HF_TOKEN_PATH, `hf auth login`) for the Hub.
    Both destinations are checked before anything is uploaded.
    """
    push_run(run_dir, echo=click.echo, progress=True, s3_uri=s3_uri, hub_repo=hub_repo, hub_private=hub_private,
             endpoint_url=endpoint_url, publish_dir=publish_dir)  # fmt: skip
