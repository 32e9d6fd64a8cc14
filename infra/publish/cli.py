"""``job push``: publish a finished run to S3 and/or the Hugging Face Hub.

Registered on the main group with ``cli.add_command(push)`` in :mod:`job.cli`; errors are
JobErrors, which ``job.cli.main`` prints as one paragraph with exit code 2.
"""

from __future__ import annotations

import click

from job.errors import JobError


def check_destinations(s3_uri: str | None, hub_repo: str | None, endpoint_url: str | None = None, client=None):
    """Fail fast, before any training or upload: every destination these settings name is checked (the
    Hub token's write access and offline mode; the bucket, endpoint and credentials). Makes no request to
    the Hub; one ListObjectsV2 to S3."""
    from infra.publish.destinations import check_all, destinations

    check_all(destinations(s3_uri, hub_repo, endpoint_url=endpoint_url, client=client))


def push_run(
    run_dir,
    s3_uri: str | None = None,
    hub_repo: str | None = None,
    hub_private: bool = True,
    endpoint_url: str | None = None,
    echo=click.echo,
    progress: bool = False,
) -> str:
    """Check every destination first, then publish; return the one-line summary (also echoed)."""
    from infra.publish.bundle import run_root
    from infra.publish.destinations import destinations, publish_all

    dests = destinations(s3_uri, hub_repo, hub_private, endpoint_url)
    if not dests:
        raise JobError("Nothing to publish to.", "pass --s3-uri s3://BUCKET/PREFIX and/or --hub-repo NAMESPACE/NAME.")
    return publish_all(run_root(run_dir), dests, echo=echo, progress=progress)


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
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
def push(
    run_dir: str, s3_uri: str | None, hub_repo: str | None, hub_private: bool, endpoint_url: str | None, debug: bool
) -> None:
    """Publish a finished run: model, report and manifest to S3; the model with its card to the Hub.

    Credentials come from the environment only: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or an
    AWS profile) for S3, HF_TOKEN or the token file (HF_TOKEN_PATH, `hf auth login`) for the Hub.
    Both destinations are checked before anything is uploaded.
    """
    push_run(run_dir, s3_uri, hub_repo, hub_private, endpoint_url, echo=click.echo, progress=True)
