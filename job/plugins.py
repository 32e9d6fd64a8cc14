"""What other installed packages add to the `job` program, found through entry points: `job` imports none of them.

Two groups, declared in ``pyproject.toml`` (``[project.entry-points]``):

- ``job.commands``: click commands added to `job` under their own names (this project's ``infra`` adds
  ``push``, publishing a finished run, and ``launch``, the SageMaker job);
- ``job.publish``: ``check`` (every destination the publishing options name, before any step runs) and ``push``
  (publish a finished run), which `job run --s3-uri/--hub-repo/--publish-dir` calls.

Entry points are read from the installed package's metadata: a checkout is installed with ``make setup`` (``pip
install -e .``), the image with ``pip install``. A package of one's own adds a command the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from job.errors import JobError

COMMANDS = "job.commands"
PUBLISH = "job.publish"

log = logging.getLogger(__name__)


def commands() -> list[Any]:
    """The click commands other packages add, in name order. One that cannot be imported is left out with a
    warning naming it and why (a broken add-on must not take `job run` with it)."""
    found = []
    for ep in sorted(entry_points(group=COMMANDS), key=lambda ep: ep.name):
        try:
            found.append(ep.load())
        except Exception as exc:  # noqa: BLE001 - any import failure of an add-on is reported, not raised
            log.warning("`job %s` (%s) is left out: it cannot be loaded (%s: %s).", ep.name, ep.value,
                        type(exc).__name__, exc)  # fmt: skip
    return found


def publishing() -> tuple[Callable[..., None], Callable[..., str]]:
    """(check, push) of the installed publishing package."""
    from job.config import DESTINATION_FIELDS, flag

    flags = [flag(name) for name in DESTINATION_FIELDS]
    found = {ep.name: ep for ep in entry_points(group=PUBLISH)}
    if not {"check", "push"} <= set(found):
        raise JobError(
            "Publishing is not installed with this copy of the job (no 'job.publish' entry points).",
            "install the project (`make setup`, or `pip install -e .` in the checkout; the image has it), or run "
            f"without {'/'.join(flags)} and publish later with `job push`.",
        )
    return found["check"].load(), found["push"].load()
