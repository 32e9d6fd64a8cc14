"""Where a finished run can be published, behind one small interface.

A :class:`Destination` has a name, a fast :meth:`~Destination.check` (credentials, bucket, token write
access: run before any training, so a bad destination fails in seconds) and :meth:`~Destination.publish`
(returns the one-line summary). `job push` and `job run --s3-uri/--hub-repo` build the list with
:func:`destinations` and loop over it: every destination is checked before any is written to. A new
destination (GCS, a model registry, ...) is one class here and one flag.
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


def destinations(
    s3_uri: str | None = None,
    hub_repo: str | None = None,
    hub_private: bool = True,
    endpoint_url: str | None = None,
    client=None,
) -> list[Destination]:
    """The destinations these settings name (the Hub first: its check makes no request, S3's makes one)."""
    out: list[Destination] = []
    if hub_repo:
        out.append(HubDestination(hub_repo, hub_private))
    if s3_uri:
        out.append(S3Destination(s3_uri, endpoint_url, _client=client))
    return out


def check_all(dests: list[Destination]) -> None:
    for d in dests:
        d.check()


def publish_all(root: Path, dests: list[Destination], *, echo: Echo, progress: bool = False) -> str:
    """Check every destination, then publish to each; the summary line is echoed and returned."""
    if not dests:
        raise JobError("Nothing to publish to.", "pass --s3-uri s3://BUCKET/PREFIX and/or --hub-repo NAMESPACE/NAME.")
    check_all(dests)
    done = [d.publish(root, echo=echo, progress=progress) for d in sorted(dests, key=lambda d: d.name != "S3")]
    line = f"push: {root} -> " + "; ".join(done)
    echo(line)
    return line
