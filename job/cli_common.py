"""Command-line pieces shared by every program of the project (``job``, ``rag-eval``, ``job launch``,
the container): one flag per configuration field, logging set-up, and the error contract.

Kept apart from :mod:`job.cli` (the ``job`` program itself) so that ``infra`` and ``rag_eval`` can use
them without importing the job's command line, which registers their commands.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import traceback
from collections.abc import Iterable
from typing import Any

import click

from job import config, progress
from job.errors import JobError


def _field_option(name: str):
    f = config.FIELDS[name]
    base, is_list, _ = config.field_kind(name)
    flag = config.flag(name)
    help_text = f.metadata.get("help", "")
    default = (
        f.default
        if f.default is not dataclasses.MISSING
        else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    )
    help_text += f"  [default: {default}; env {config.ENV_PREFIX}{name.upper()}]"
    if name == "hub_private":  # as `job push`: private unless --public
        return click.option("--private/--public", name, default=None, help=help_text)
    if base is bool and not is_list:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    ptype: Any
    if "choices" in f.metadata:
        ptype = click.Choice(f.metadata["choices"])
    elif is_list:
        ptype = str
    else:
        ptype = base
    return click.option(flag, name, type=ptype, default=None, help=help_text, metavar="LIST" if is_list else None)


class SectionedCommand(click.Command):
    """A command whose --help lists the configuration flags in sections (Run, Data, Model, Recipe, ...),
    then the command's own options."""

    def format_options(self, ctx, formatter):
        by_section: dict[str, list] = {name: [] for name in config.HELP_SECTIONS}
        own = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.name in config.FIELDS:
                by_section[config.help_section(param.name)].append(record)
            else:
                own.append(record)
        if own:
            with formatter.section("Options"):
                formatter.write_dl(own)
        for section, records in by_section.items():
            if records:
                with formatter.section(section):
                    formatter.write_dl(records)


class StepOrderGroup(click.Group):
    """Commands listed in the order they are used (``order`` first, then the rest as added), not alphabetically."""

    order: tuple[str, ...] = ()

    def list_commands(self, ctx):
        first = [name for name in self.order if name in self.commands]
        return first + [name for name in self.commands if name not in first]


def field_options(names: Iterable[str]):
    """One flag per configuration field named (its help, default and JOB_* variable from the field itself): how a
    command that reads a few fields alone (`job push`: the publishing ones) offers them, declared once."""

    def decorate(func):
        for name in reversed(list(names)):
            func = _field_option(name)(func)
        return func

    return decorate


def config_options(func):
    """Add --config FILE, --debug and one flag per configuration field."""
    func = field_options(config.FIELDS)(func)
    func = click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML file with configuration values.",
    )(func)
    func = click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")(func)

    @functools.wraps(func)
    def wrapper(*args, config_file=None, debug=False, **kwargs):
        cli_values = {k: kwargs.pop(k) for k in list(kwargs) if k in config.FIELDS}
        setup_logging(debug)
        cfg = config.resolve_config(config_file, cli_values)
        progress.configure(cfg.log_format, cfg.progress_seconds)  # --log-format json: events on stdout from here
        return func(*args, cfg=cfg, **kwargs)

    return wrapper


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in (
        "sentence_transformers",
        "transformers",
        "datasets",
        "httpx",
        "httpx2",
        "openai",
        "urllib3",
        "filelock",
        "botocore",
        "boto3",
        "s3transfer",
    ):
        logging.getLogger(noisy).setLevel(logging.INFO if debug else logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not debug:  # weight loading/saving bars are noise; encoding and training keep theirs
        from huggingface_hub.utils import enable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        enable_progress_bars()  # transformers turned the Hub's off too: downloads and uploads keep theirs
        # texts longer than the model's limit are truncated on purpose; prepare counts and reports them
        logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    progress.install()  # progress bars that no terminal shows (CloudWatch, docker logs, CI) print lines, not frames


def echo(msg: str) -> None:
    """A line of the job's output (a ``message`` event with --log-format json)."""
    progress.say(msg)


def run_cli(
    group: click.Group,
    argv: list[str] | None,
    prog_name: str,
    interrupted_hint: str,
    debug_env: str = "JOB_DEBUG",
    log_format_env: str | None = None,
) -> int:
    """Run a click group with the project's error contract: a JobError prints one `error:` paragraph
    and exits 2 (traceback only with --debug or DEBUG_ENV=1); anything unexpected exits 1. With JSON
    output (--log-format json, or LOG_FORMAT_ENV=json) the error is also an ``error`` event on stdout."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(debug_env, "") not in ("", "0")

    def fail(text: str, code: int, problem: str | None = None, fix: str | None = None) -> int:
        click.echo(text, err=True)
        if progress.json_requested(argv, env=log_format_env):
            progress.error(problem or text.removeprefix("error: "), fix, text.removeprefix("error: "), code)
        return code

    try:
        group.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except JobError as exc:
        if debug:
            traceback.print_exc()
        return fail(f"error: {exc.message}", exc.exit_code, exc.problem, exc.fix)
    except click.exceptions.Abort:
        return fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        if progress.json_requested(argv, env=log_format_env):
            progress.error(exc.format_message(), "see --help.", exc.format_message(), exc.exit_code)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return fail(f"interrupted; {interrupted_hint}", 130)
    except Exception as exc:  # noqa: BLE001
        if debug:
            raise
        return fail(f"error: unexpected {type(exc).__name__}: {exc} (re-run with --debug for the traceback)", 1)
    finally:
        progress.reset()
    return 0
