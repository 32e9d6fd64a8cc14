"""The pipeline's steps as objects: one :class:`Step` per step, in the order they run.

A step is its name, the done record it writes (its presence means the step finished; :mod:`job.layout`'s
``DONE_FILES``), the configuration fields its outputs depend on (its fingerprint: a changed field re-runs it),
the earlier steps whose records it reads, its body, and whether the other machines of a multi-machine job run
it too. `job run` (skip a step whose record matches, resume, re-run what follows a re-run step), the `job NAME`
commands and the SageMaker container (:mod:`infra.container.entry`) all go through :func:`steps`; a new step is
one :func:`register` call beside its body (tests/test_steps.py adds one in a test).

The four built-in steps are registered at the end of this module. Their bodies live in :mod:`job.pipeline` and
are named here as ``"module:function"``, imported when a step runs: `job --help` does not load torch, and the
pipeline (which reads this list) and its steps do not import each other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from job import layout, progress
from job.config import EVALUATE_FIELDS, MODEL_FIELDS, TRAIN_FIELDS
from job.errors import JobError

if TYPE_CHECKING:
    from job.config import JobConfig
    from job.layout import RunDir

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Run:
    """What a step's body is given."""

    cfg: JobConfig
    rd: RunDir
    echo: Echo
    force: bool = False  # `job run --force`: redo, do not resume
    inputs_changed: bool = False  # the local input files changed since prepare: every step runs again
    train_step: Callable[[bool], dict[str, Any]] | None = None  # the container's own training call
    alone: bool = False  # run as `job NAME` (not inside `job run`)


@dataclass(frozen=True)
class Step:
    name: str
    summary: str  # one line: the `job NAME` command's help
    done_file: str  # its done record, relative to the run directory
    body: Callable[[Run], dict[str, Any]] | str  # runs the step, returns its done record ("module:function": late)
    fields: tuple[str, ...] | Callable[[JobConfig], tuple[str, ...]] = ()  # the config fields of its fingerprint
    needs: tuple[str, ...] = ("prepare",)  # steps whose done records it reads (prepare's data digest joins it)
    fingerprint: Callable[[JobConfig, RunDir], dict[str, Any]] | str | None = None  # instead of fields + needs
    worker: bool = False  # the other machines of a multi-machine job run it too (they prepare and train)
    command: bool = True  # a generic `job NAME` command (False: the CLI defines its own, with its options)

    def fields_for(self, cfg: JobConfig) -> tuple[str, ...]:
        return tuple(self.fields(cfg) if callable(self.fields) else self.fields)

    def run(self, r: Run) -> dict[str, Any]:
        return _resolve(self.body)(r)

    def own_fingerprint(self, cfg: JobConfig, rd: RunDir) -> dict[str, Any] | None:
        """The step's own fingerprint, when it has one (else: its fields and what it needs)."""
        return None if self.fingerprint is None else _resolve(self.fingerprint)(cfg, rd)


def _resolve(ref: Callable | str) -> Callable:
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


_STEPS: dict[str, Step] = {}


def register(step: Step, *, before: str | None = None) -> Step:
    """Add ``step`` (at the end, or before the step named ``before``); its done record joins ``DONE_FILES``.
    Registering a name again replaces that step in its place."""
    if before is not None and before not in _STEPS:
        raise ValueError(f"no step named {before!r} to register {step.name!r} before")
    unknown = [n for n in step.needs if n not in _STEPS and n != step.name]
    if unknown:
        raise ValueError(f"step {step.name!r} needs unregistered step(s) {', '.join(unknown)}")
    if step.name in _STEPS and before is None:
        _STEPS[step.name] = step  # (a dict keeps the place)
    else:
        items = [(n, s) for n, s in _STEPS.items() if n != step.name]
        at = next((i for i, (n, _) in enumerate(items) if n == before), len(items))
        items.insert(at, (step.name, step))
        _STEPS.clear()
        _STEPS.update(items)
    layout.DONE_FILES[step.name] = step.done_file
    progress.PHASES.add(step.name)  # its messages carry it as their phase in --log-format json
    return step


def unregister(name: str) -> None:
    """Remove a registered step, its done record and its phase (tests)."""
    _STEPS.pop(name, None)
    layout.DONE_FILES.pop(name, None)
    progress.PHASES.discard(name)


def steps() -> list[Step]:
    """Every step, in the order `job run` runs them."""
    return list(_STEPS.values())


def names() -> tuple[str, ...]:
    return tuple(_STEPS)


def get(name: str) -> Step:
    if name not in _STEPS:
        raise JobError(f"There is no step named {name!r}.", f"use one of: {', '.join(_STEPS)}.")
    return _STEPS[name]


def worker_steps() -> tuple[str, ...]:
    """What the other machines of a multi-machine job run (the first machine runs every step)."""
    return tuple(s.name for s in _STEPS.values() if s.worker)


# --- the built-in steps, in order (bodies in job/pipeline.py) ----------------------------------------------
def _train_fields(cfg: JobConfig) -> tuple[str, ...]:
    if cfg.merge_base == "auto":  # the guard set chooses alpha: it shapes the saved model
        return tuple(TRAIN_FIELDS) + ("guard_data", "guard_split", "guard_max_drop")
    return tuple(TRAIN_FIELDS)


register(Step(
    "prepare", "Load, validate, de-duplicate and split the pairs; build the evaluation corpus.",
    layout.DONE_FILES["prepare"], "job.pipeline:prepare_in_run", needs=(),
    fingerprint="job.pipeline:prepare_fingerprint", worker=True,
))  # fmt: skip
register(Step(
    "baseline", "Score the base model on the test split at every Matryoshka dim.", layout.DONE_FILES["baseline"],
    "job.pipeline:baseline_in_run", fields=MODEL_FIELDS,
))  # fmt: skip
register(Step(
    "train", "Fine-tune with MatryoshkaLoss(MNRL); keep the best checkpoint by validation NDCG@10.",
    layout.DONE_FILES["train"], "job.pipeline:train_in_run", fields=_train_fields, worker=True,
    command=False,  # `job train` has its own command: --resume / --force, and the torchrun ranks' errors
))  # fmt: skip
register(Step(
    "evaluate", "Score base and fine-tuned models on the test split; write the report (Markdown, JSON, PNG).",
    layout.DONE_FILES["evaluate"], "job.pipeline:evaluate_in_run", fields=EVALUATE_FIELDS,
))  # fmt: skip
