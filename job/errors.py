"""User-facing errors.

A :class:`JobError` is a problem with the user's input or environment that the user can fix.
The command line prints its message as one paragraph (no traceback unless ``--debug``) and exits
with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class JobError(Exception):
    """A problem the user can fix: the message names the problem and the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        problem = _sentence(self.problem)
        return f"{problem} Fix: {_sentence(self.fix)}" if self.fix else problem


def _sentence(text: str) -> str:
    """``text`` ending in exactly one full stop (or its own ``?``/``!``/``)``-closed sentence)."""
    text = text.strip()
    while text.endswith(".."):
        text = text[:-1]
    return text if text.endswith((".", "?", "!", ".)", ".'", '."')) else text + "."
