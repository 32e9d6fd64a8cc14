"""Where a finished run can be published, behind one small interface.

A :class:`Destination` has a name, a fast :meth:`~Destination.check` (credentials, bucket, token write
access: run before any training, so a bad destination fails in seconds) and :meth:`~Destination.publish`
(returns the one-line summary). `job push` and `job run --s3-uri/--hub-repo/--publish-dir` build the list with
:func:`destinations` from the publishing options (the ``group="publish"`` fields of :class:`job.config.JobConfig`)
and loop over it: every destination is checked before any is written to. A new destination (GCS, a model
registry, ...) is its module, one class here, one entry in :data:`KINDS` and its option (a publish field of the
configuration, and the flag of `job push`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from job.errors import JobError

Echo = Callable[[str], None]


class Destination(Protocol):
    name: str

    def check(self) -> None:
        """Raise a JobError naming the problem and the fix when publishing here cannot work."""

    def publish(self, root: Path, *, echo: Echo, progress: bool) -> str:
        """Publish the run at ``root``; return a one-line summary of where it went."""


@dataclass
class S3Destination:
    uri: str
    endpoint_url: str | None = None
    name: str = "S3"
    _client: object = field(default=None, repr=False)

    def client(self):
        if self._client is None:
            from infra.publish.s3 import s3_client

            self._client = s3_client(self.endpoint_url)
        return self._client

    def check(self) -> None:
        from infra.publish.s3_publish import check_s3_destination

        check_s3_destination(self.uri, self.client())

    def publish(self, root: Path, *, echo: Echo, progress: bool) -> str:
        from infra.publish.s3_publish import publish_s3

        pub = publish_s3(root, self.uri, client=self.client(), progress=progress, echo=echo)
        return f"S3 {pub.uri} ({pub.status}: {pub.files} files, {pub.bytes / 1e6:.1f} MB, manifest {pub.manifest_uri})"


@dataclass
class HubDestination:
    repo_id: str
    private: bool = True
    name: str = "Hub"

    def check(self) -> None:
        from infra.publish.hub import check_hub_token

        check_hub_token(self.repo_id)

    def publish(self, root: Path, *, echo: Echo, progress: bool) -> str:
        from infra.publish.hub import publish_hub

        hub = publish_hub(root, self.repo_id, private=self.private)
        return f"Hub {hub.url} ({'private' if hub.private else 'public'})"


@dataclass
class FolderDestination:
    folder: str
    name: str = "folder"
    run_dir: Path | None = None  # known before publishing: the check also compares the free space with its size

    def check(self) -> None:
        from infra.publish.folder import check_folder

        check_folder(self.folder, self.run_dir)

    def publish(self, root: Path, *, echo: Echo, progress: bool) -> str:
        from infra.publish.folder import publish_folder

        pub = publish_folder(root, self.folder, echo=echo)
        return f"folder {pub.path} ({pub.status}: {pub.files} files, {pub.bytes / 1e6:.1f} MB, manifest last)"


# The option that names each destination -> how its settings make it. In checking order: the cheap checks first
# (the Hub's makes no request, a folder's touches a local disk, S3's makes one request).
KINDS: dict[str, Callable[[dict], Destination]] = {
    "hub_repo": lambda o: HubDestination(o["hub_repo"], o.get("hub_private", True)),
    "publish_dir": lambda o: FolderDestination(o["publish_dir"], run_dir=o.get("run_dir")),
    "s3_uri": lambda o: S3Destination(o["s3_uri"], o.get("endpoint_url"), _client=o.get("client")),
}


def destinations(**options) -> list[Destination]:
    """The destinations these options name: ``hub_repo`` (with ``hub_private``), ``publish_dir``, ``s3_uri`` (with
    ``endpoint_url`` and a test's ``client``); ``run_dir`` lets the checks compare sizes."""
    unknown = set(options) - set(KINDS) - {"hub_private", "endpoint_url", "client", "run_dir"}
    if unknown:
        raise TypeError(f"unknown publishing options: {sorted(unknown)}")
    return [build(options) for key, build in KINDS.items() if options.get(key)]


NOTHING_FIX = "pass --s3-uri s3://BUCKET/PREFIX, --hub-repo NAMESPACE/NAME and/or --publish-dir FOLDER."


def check_all(dests: list[Destination]) -> None:
    for d in dests:
        d.check()


def publish_all(root: Path, dests: list[Destination], *, echo: Echo, progress: bool = False) -> str:
    """Check every destination, then publish to each; the summary line is echoed and returned."""
    if not dests:
        raise JobError("Nothing to publish to.", NOTHING_FIX)
    check_all(dests)
    done = [d.publish(root, echo=echo, progress=progress) for d in sorted(dests, key=lambda d: d.name != "S3")]
    line = f"push: {root} -> " + "; ".join(done)
    echo(line)
    return line
