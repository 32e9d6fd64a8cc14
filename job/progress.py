"""What the job prints while it works: progress bars, and the JSON event stream (``--log-format json``).

**One progress bar per long phase.** The library bars that would nest inside or repeat beside ours are silenced:
sentence-transformers' ``mine_hard_negatives`` always shows its encoding and scoring bars, and the trainer's
model-card callback shows "Computing widget examples"; tqdm reads its ``TQDM_DISABLE`` setting once, at import,
so :func:`silenced` turns tqdm off for the duration of a block instead (every bar created inside is disabled).

**Bars where nobody watches a terminal.** A tqdm bar redraws itself with carriage returns, several times a
second; in a file, ``docker logs``, CI or CloudWatch (a SageMaker job's stdout and stderr) that is one
unreadable line or hundreds of frames. :func:`install` changes every tqdm bar whose output is not a terminal
(ours, sentence-transformers', transformers', datasets', the Hub's: they all are :class:`tqdm.std.tqdm`) into
plain lines: one every ``JOB_PROGRESS_SECONDS`` (default 30; 0: none) while it runs, and one when it ends.
A bar drawn on a terminal stays a bar.

**JSON.** With ``--log-format json`` (``JOB_LOG_FORMAT=json``) every line the job writes on stdout is one JSON
object with an ``event`` and a ``time``: ``message`` (each line the text format prints), ``train_step`` (the
trainer's loss every ``--logging-steps``), ``validation`` (NDCG@10 by dim during training), ``train_end``,
``phase`` (a step's duration and its main numbers), ``progress`` (the bars, as above), ``log`` (warnings) and
``error`` (the problem and its fix, with the exit code). Nothing is drawn.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import sys
import threading
import time
import types
from collections.abc import Iterator, Mapping
from functools import partialmethod
from typing import Any

import click

FORMATS = ("text", "json")
SECONDS_ENV = "JOB_PROGRESS_SECONDS"
FORMAT_ENV = "JOB_LOG_FORMAT"
DEFAULT_SECONDS = 30.0
# What a message may be about (its "phase" in JSON logs): the pipeline's steps (job/steps.py adds each one it
# registers), synthesize and export.
PHASES = {"synthesize", "prepare", "baseline", "train", "evaluate", "export"}


_state: dict[str, Any] = {"format": "text", "seconds": None, "clock": None, "installed": None, "handlers": None}
_lock = threading.Lock()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No tqdm bar created inside this block is shown (the job prints its own line for the phase).

    Calls :func:`install` first (bars as plain lines where no terminal shows them): every process that builds
    a trainer or mines negatives passes here, the SageMaker container's torchrun ranks included, which set up
    no logging of their own."""
    install()
    from tqdm import std

    original = std.tqdm.__init__
    std.tqdm.__init__ = partialmethod(original, disable=True)
    try:
        yield
    finally:
        std.tqdm.__init__ = original


# --- settings ------------------------------------------------------------------------------------------------
def is_json() -> bool:
    return _state["format"] == "json"


def interval() -> float:
    """Seconds between two lines of a running bar: the configured value, else JOB_PROGRESS_SECONDS, else 30."""
    if _state["seconds"] is not None:
        return _state["seconds"]
    raw = os.environ.get(SECONDS_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS
    return value if value >= 0 and math.isfinite(value) else DEFAULT_SECONDS


def json_requested(argv: list[str], environ: Mapping[str, str] | None = None, env: str | None = FORMAT_ENV) -> bool:
    """Whether the command line (or ``env``) asks for JSON, before the configuration is resolved: so that an
    error found while resolving it is JSON too."""
    if is_json() or "--log-format=json" in argv:
        return True
    if any(a == "--log-format" and b == "json" for a, b in zip(argv, argv[1:])):
        return True
    environ = os.environ if environ is None else environ
    return env is not None and environ.get(env, "").strip() == "json"


def configure(log_format: str = "text", seconds: float | None = None) -> None:
    """Set the output format and the bars' interval (None: JOB_PROGRESS_SECONDS or 30) for this process. The
    clock of the ``phase`` events starts now."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {FORMATS}")
    _state.update(format=log_format, seconds=seconds, clock=time.perf_counter())
    install()
    _json_logging(log_format == "json")
    _json_trainer_events(log_format == "json")


def reset() -> None:
    """Back to text output with the default interval (after a command: tests run several in one process)."""
    _state.update(format="text", seconds=None, clock=None)
    _json_logging(False)
    _json_trainer_events(False)


# --- events --------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (strict parsers refuse them), keys become strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # numpy and torch scalars
        return _plain(value.item())
    return str(value)


def emit(event: str, **fields: Any) -> None:
    """One JSON object on stdout: ``{"time": ..., "event": event, ...fields}``."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    line = json.dumps(_plain({"time": now, "event": event, **fields}), ensure_ascii=False)
    with _lock:
        click.echo(line)


def say(msg: str) -> None:
    """A line of the job's own output: printed as it is, or as a ``message`` event (with the step it is about)."""
    if not is_json():
        click.echo(msg)
        return
    head = msg.split(":", 1)[0] if ":" in msg.split("\n", 1)[0] else ""
    emit("message", **({"phase": head} if head in PHASES else {}), message=msg)


def error(problem: str, fix: str | None, message: str, exit_code: int) -> None:
    """The ``error`` event (JSON only; the text format prints ``error: ...`` on stderr)."""
    emit("error", message=message, problem=problem, fix=fix, exit_code=exit_code)


def phase_done(phase: str, record: Mapping[str, Any] | None) -> None:
    """The ``phase`` event of a finished (or skipped) step: its wall time since the previous one (or since the
    command started) and its main numbers. Nothing in the text format, whose step lines say the same."""
    now = time.perf_counter()
    start, _state["clock"] = _state["clock"] or now, now
    if not is_json():
        return
    emit("phase", phase=phase, seconds=round(now - start, 2), **phase_numbers(phase, record or {}))


def phase_numbers(phase: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers worth a collector's dashboard from a step's record (its done file)."""
    if phase == "prepare":
        return {k: record.get(k) for k in ("pairs", "splits", "corpus_size", "test_queries")}
    if phase == "baseline":
        metrics = record.get("metrics") or {}
        return {"ndcg@10": {d: m.get("ndcg@10") for d, m in metrics.items()}, "queries": record.get("queries")}
    if phase == "train":
        keys = ("global_steps", "train_loss", "train_seconds", "pairs_per_second", "best_metric", "best_metric_name")
        out = {k: record.get(k) for k in keys}
        out["validation_ndcg@10"] = record.get("validation_saved_model")
        out["mixed_precision"] = record.get("mixed_precision")
        return out
    if phase in ("evaluate", "export"):
        base, tuned = record.get("baseline") or {}, record.get("finetuned") or {}
        return {
            "ndcg@10": {
                d: {"baseline": (base.get(d) or {}).get("ndcg@10"), "fine_tuned": m.get("ndcg@10")}
                for d, m in tuned.items()
            },
            "test_queries": record.get("test_queries"),
        }
    return {}


# --- progress bars as lines ----------------------------------------------------------------------------------
def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _count(value: float, scaled: bool, divisor: int, digits: int = 12) -> str:
    from tqdm import std

    return std.tqdm.format_sizeof(value, divisor=divisor) if scaled else f"{value:.{digits}g}"


class _Lines:
    """The file a bar writes its frames to when nobody watches: the frames are dropped, and the bar's state is
    written as one plain line every :func:`interval` seconds (checked when the bar redraws) and when it closes."""

    def __init__(self, bar, target, label: str):
        self.bar, self.target, self.label = bar, target, label
        self.last = time.monotonic()
        self.done = False

    # the file interface tqdm uses
    def write(self, _frame: str) -> None:
        every = interval()
        finishing = self.bar.total is not None and self.bar.n >= self.bar.total  # the closing line says it
        if (
            not self.done
            and not finishing
            and not getattr(self.bar, "disable", False)
            and every > 0
            and time.monotonic() - self.last >= every
        ):
            self.line(final=False)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def line(self, final: bool) -> None:
        self.last, bar = time.monotonic(), self.bar
        n, total = bar.n, bar.total
        elapsed = max(time.time() - getattr(bar, "start_t", time.time()), 0.0)
        rate = n / elapsed if elapsed > 0 else None
        scaled, divisor = bool(bar.unit_scale), getattr(bar, "unit_divisor", 1000)
        if is_json():
            emit(
                "progress", phase=self.label, n=n, total=total, unit=bar.unit, elapsed_seconds=round(elapsed, 1),
                rate=round(rate, 3) if rate else None, done=final,
            )  # fmt: skip
            return
        from tqdm import std

        text = f"{self.label}: {_count(n, scaled, divisor)}"
        if total:
            text += f"/{_count(total, scaled, divisor)} {bar.unit} ({100 * n / total:.0f}%)"
        else:
            text += f" {bar.unit}"
        text += f" {'in' if final else 'after'} {std.tqdm.format_interval(elapsed)}"
        if rate:
            text += f", {_count(rate, scaled, divisor, 3)} {bar.unit}/s"
            if total and not final and n < total:
                text += f", about {std.tqdm.format_interval((total - n) / rate)} left"
        try:
            print(text, file=self.target or sys.stderr, flush=True)
        except (OSError, ValueError):  # a closed stream: the line is lost, the work goes on
            pass

    def close(self) -> None:
        if not self.done:
            self.done = True
            self.line(final=True)


_CALLERS = {"transformers.trainer_callback": "training steps", "huggingface_hub": "download"}


def _label(desc: str | None) -> str:
    """The bar's name: its description, else what created it (the trainer's bar has none)."""
    if desc:
        return desc.rstrip(": ")
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None and (
        frame.f_globals.get("__name__") == __name__ or frame.f_globals.get("__name__", "").split(".")[0] == "tqdm"
    ):
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    for prefix, name in _CALLERS.items():
        if module.startswith(prefix):
            return name
    return module.split(".")[0] or "progress"


def install() -> None:
    """Make every tqdm bar that does not draw on a terminal (or every bar, with JSON) write lines instead of
    frames (idempotent; :func:`uninstall` undoes it)."""
    from tqdm import std

    if _state["installed"] is not None:
        return
    original_init, original_close, original_write = std.tqdm.__init__, std.tqdm.close, std.tqdm.__dict__["write"]

    def __init__(self, *args, **kwargs):
        if kwargs.get("disable") is True or len(args) > 4:  # disabled, or the file passed by position
            return original_init(self, *args, **kwargs)
        target = kwargs.get("file") or sys.stderr
        if is_json() or not _isatty(target):
            kwargs["file"] = self._job_lines = _Lines(
                self, target, _label(kwargs.get("desc") or (args[1:2] or [None])[0])
            )
        return original_init(self, *args, **kwargs)

    def close(self):
        lines = getattr(self, "_job_lines", None)
        was_open = not getattr(self, "disable", True)
        original_close(self)
        if lines is not None and was_open:
            lines.close()

    def write(cls, s, file=None, end="\n", nolock=False):
        """``tqdm.write`` (how the trainer's bar prints its log lines): a ``message`` event with JSON."""
        if is_json() and file in (None, sys.stdout):
            return say(str(s))
        return original_write.__func__(cls, s, file=file, end=end, nolock=nolock)

    std.tqdm.__init__, std.tqdm.close, std.tqdm.write = __init__, close, classmethod(write)
    _state["installed"] = (original_init, original_close, original_write)


def uninstall() -> None:
    from tqdm import std

    if _state["installed"] is not None:
        std.tqdm.__init__, std.tqdm.close, std.tqdm.write = _state["installed"]
        _state["installed"] = None


# --- JSON: logging and the trainer's logs --------------------------------------------------------------------
class _JsonLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            emit("log", level=record.levelname, logger=record.name, message=record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never fail the job
            self.handleError(record)


def _json_logging(on: bool) -> None:
    """With JSON, log records become ``log`` events on stdout instead of text lines on stderr."""
    root = logging.getLogger()
    if on and _state["handlers"] is None:
        plain = [h for h in root.handlers if type(h) is logging.StreamHandler]  # basicConfig's, not pytest's
        for old in plain:
            root.removeHandler(old)
        handler = _JsonLogHandler()
        root.addHandler(handler)
        _state["handlers"] = (plain, handler)
    elif not on and _state["handlers"] is not None:
        plain, handler = _state["handlers"]
        root.removeHandler(handler)
        for h in plain:
            root.addHandler(h)
        _state["handlers"] = None


def trainer_events():
    """A transformers callback: each of the trainer's logs as a ``train_step``, ``validation`` or ``train_end``
    event (on the first process only)."""
    from transformers import TrainerCallback

    class JsonEvents(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or not is_json():
                return
            from job.evaluate.retrieval import VALIDATION, per_dim_metrics

            where = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch}
            scores = per_dim_metrics(logs, VALIDATION)
            if scores:
                selection = args.metric_for_best_model
                current = logs.get(selection) if selection else None
                best = max(v for v in (state.best_metric, current) if v is not None) if current is not None else None
                emit(
                    "validation", **where, **{"ndcg@10": {d: m.get("ndcg@10") for d, m in scores.items()}},
                    selection_metric=selection, selection=current, best=best,
                )  # fmt: skip
            elif "loss" in logs:
                extra = {k: logs[k] for k in ("learning_rate", "grad_norm") if k in logs}
                emit("train_step", **where, loss=logs["loss"], **extra)
            elif "train_runtime" in logs:
                keys = ("train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second")
                emit("train_end", **where, **{k: logs.get(k) for k in keys})

    return JsonEvents


def _json_trainer_events(on: bool) -> None:
    """Every trainer this process builds gets the JSON callback (transformers' own default-callback list, so that
    the train step, `job run` and torchrun ranks all have it without passing it along)."""
    if not on and "transformers.trainer" not in sys.modules:
        return  # never added: importing the trainer takes seconds
    from transformers import trainer

    present = [c for c in trainer.DEFAULT_CALLBACKS if getattr(c, "__name__", "") == "JsonEvents"]
    if on and not present:
        trainer.DEFAULT_CALLBACKS.append(trainer_events())
    elif not on:
        for callback in present:
            trainer.DEFAULT_CALLBACKS.remove(callback)
