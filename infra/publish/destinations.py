"""Where a finished run can be published, behind one small interface.

A :class:`Destination` has a name, a fast :meth:`~Destination.check` (credentials, bucket, token write
access: run before any training, so a bad destination fails in seconds) and :meth:`~Destination.publish`
(returns the one-line summary). `job push` and `job run --s3-uri/--hub-repo/--publish-dir` build the list with
:func:`destinations` from the publishing options (the ``group="publish"`` fields of :class:`job.config.JobConfig`)
and loop over it: every destination is checked before any is written to. A new destination (GCS, a model
registry, ...) is its module (its class: the configuration field that names it, the fields it also reads, how
it is made from them, ``check`` and ``publish``), one entry in :data:`DESTINATIONS`, and its option, a
``group="publish", destination=True`` field of :class:`job.config.JobConfig` (which is `job run`'s and `job push`'s
flag, JOB_* variable and YAML key); tests/test_structure.py ties the two lists, tests/test_publish_registry.py
adds a destination.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from job.errors import JobError

Echo = Callable[[str], None]


class Destination(Protocol):
    name: str
    option: ClassVar[str]  # the publishing field that names it (``s3_uri``): set means publish there
    example: ClassVar[str]  # that option as a user passes it, for messages
    reads: ClassVar[tuple[str, ...]]  # the other options it is made from (``hub_private``)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Destination:
        """Made from the publishing options (its own, ``reads``, and ``run_dir``/``endpoint_url``/``client``)."""
        ...

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
    option: ClassVar[str] = "s3_uri"
    example: ClassVar[str] = "--s3-uri s3://BUCKET/PREFIX"
    reads: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_options(cls, o: dict[str, Any]) -> S3Destination:
        return cls(o["s3_uri"], o.get("endpoint_url"), _client=o.get("client"))

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
    option: ClassVar[str] = "hub_repo"
    example: ClassVar[str] = "--hub-repo NAMESPACE/NAME"
    reads: ClassVar[tuple[str, ...]] = ("hub_private",)

    @classmethod
    def from_options(cls, o: dict[str, Any]) -> HubDestination:
        return cls(o["hub_repo"], o.get("hub_private", True))

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
    option: ClassVar[str] = "publish_dir"
    example: ClassVar[str] = "--publish-dir FOLDER"
    reads: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_options(cls, o: dict[str, Any]) -> FolderDestination:
        return cls(o["publish_dir"], run_dir=o.get("run_dir"))

    def check(self) -> None:
        from infra.publish.folder import check_folder

        check_folder(self.folder, self.run_dir)

    def publish(self, root: Path, *, echo: Echo, progress: bool) -> str:
        from infra.publish.folder import publish_folder

        pub = publish_folder(root, self.folder, echo=echo)
        return f"folder {pub.path} ({pub.status}: {pub.files} files, {pub.bytes / 1e6:.1f} MB, manifest last)"


# Every destination, in checking order: the cheap checks first (the Hub's makes no request, a folder's touches a
# local disk, S3's makes one request). A new one is one line here.
DESTINATIONS: list[type[Destination]] = [HubDestination, FolderDestination, S3Destination]
CONTEXT = ("endpoint_url", "client", "run_dir")  # what every destination may be given besides the options


def destinations(**options) -> list[Destination]:
    """The destinations these options name (each by its ``option``, made with its ``reads``); ``run_dir`` lets the
    checks compare sizes, ``endpoint_url`` and a test's ``client`` reach S3."""
    known = {name for d in DESTINATIONS for name in (d.option, *d.reads)} | set(CONTEXT)
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown publishing options: {sorted(unknown)}")
    return [d.from_options(options) for d in DESTINATIONS if options.get(d.option)]


def nothing_fix() -> str:
    """The fix when no destination is named: each destination's option, as a user passes it."""
    examples = [d.example for d in DESTINATIONS]
    return f"pass {', '.join(examples[:-1])} and/or {examples[-1]}."


def check_all(dests: list[Destination]) -> None:
    for d in dests:
        d.check()


def publish_all(root: Path, dests: list[Destination], *, echo: Echo, progress: bool = False) -> str:
    """Check every destination, then publish to each; the summary line is echoed and returned."""
    if not dests:
        raise JobError("Nothing to publish to.", nothing_fix())
    check_all(dests)
    done = [d.publish(root, echo=echo, progress=progress) for d in sorted(dests, key=lambda d: d.name != "S3")]
    line = f"push: {root} -> " + "; ".join(done)
    echo(line)
    return line
