"""Command line: ``job prepare|baseline|train|evaluate|run|config|presets`` (also ``python -m job``).

Every configuration field is a flag (``--epochs``), an environment variable (``JOB_EPOCHS``) and a
YAML key (``epochs:``); see :mod:`job.config` for the precedence.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback

import click

from job import config as C
from job.errors import JobError


def _field_option(name: str):
    f = C.FIELDS[name]
    base, is_list, _ = C.field_kind(name)
    flag = "--" + name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    default = f.default if f.default is not C.dataclasses.MISSING else (f.default_factory() if f.default_factory is not C.dataclasses.MISSING else None)
    help_text += f"  [default: {default}; env {C.ENV_PREFIX}{name.upper()}]"
    if base is bool and not is_list:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    if "choices" in f.metadata:
        ptype = click.Choice(f.metadata["choices"])
    elif is_list:
        ptype = str
    else:
        ptype = base
    return click.option(flag, name, type=ptype, default=None, help=help_text, metavar="LIST" if is_list else None)


def config_options(func):
    """Add --config FILE, --debug and one flag per configuration field."""
    for name in reversed(list(C.FIELDS)):
        func = _field_option(name)(func)
    func = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="YAML file with configuration values.")(func)
    func = click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")(func)

    @functools.wraps(func)
    def wrapper(*args, config_file=None, debug=False, **kwargs):
        cli_values = {k: kwargs.pop(k) for k in list(kwargs) if k in C.FIELDS}
        setup_logging(debug)
        cfg = C.resolve_config(config_file, cli_values)
        return func(*args, cfg=cfg, **kwargs)

    return wrapper


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "transformers", "datasets", "httpx", "urllib3", "filelock", "botocore", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.INFO if debug else logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not debug:  # weight loading/saving bars are noise; encoding and training keep theirs
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def echo(msg: str) -> None:
    click.echo(msg)


def _rd(cfg):
    from job.pipeline import RunDir

    return RunDir(cfg.run_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="rag-embed-finetune", prog_name="job")
def cli() -> None:
    """Fine-tune an embedding model for RAG retrieval on your (question, passage) pairs.

    Steps: prepare -> baseline -> train -> evaluate; `job run` does them all and resumes.
    Configuration precedence: defaults < --preset < --config YAML < JOB_* environment < flags.
    """


@cli.command("config")
@config_options
def config_cmd(cfg) -> None:
    """Print the resolved configuration as YAML."""
    from job.models import resolve_model_name

    click.echo(cfg.to_yaml().rstrip())
    try:
        click.echo(f"# model resolves to: {resolve_model_name(cfg.model)}")
    except JobError as exc:
        click.echo(f"# model does not resolve: {exc.message}")


@cli.command("presets")
def presets_cmd() -> None:
    """List the named recipes (--preset NAME) and what they set."""
    for name, values in C.PRESETS.items():
        click.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@cli.command("prepare")
@config_options
def prepare_cmd(cfg) -> None:
    """Load, validate, de-duplicate and split the pairs; build the evaluation corpus."""
    from job.models import load_model
    from job.pipeline import prepare

    prepare(cfg, _rd(cfg), echo, model=load_model(cfg.model, max_seq_length=cfg.max_seq_length))


@cli.command("baseline")
@config_options
def baseline_cmd(cfg) -> None:
    """Score the base model on the test split at every Matryoshka dim."""
    from job.pipeline import baseline

    baseline(cfg, _rd(cfg), echo)


@cli.command("train")
@config_options
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the run directory.")
@click.option("--force", is_flag=True, help="Discard checkpoints of an earlier unfinished run.")
def train_cmd(cfg, resume: bool, force: bool) -> None:
    """Fine-tune with MatryoshkaLoss(MNRL); keep the best checkpoint by validation NDCG@10."""
    from job.pipeline import train

    train(cfg, _rd(cfg), echo, resume=resume, force=force)


@cli.command("evaluate")
@config_options
def evaluate_cmd(cfg) -> None:
    """Score base and fine-tuned models on the test split; write the report (Markdown, JSON, PNG)."""
    from job.pipeline import evaluate

    evaluate(cfg, _rd(cfg), echo)


@cli.command("run")
@config_options
@click.option("--force", is_flag=True, help="Redo steps whose outputs already exist.")
def run_cmd(cfg, force: bool) -> None:
    """Run every step; finished steps are skipped, an interrupted training resumes.

    With --s3-uri and/or --hub-repo the finished run is then published (as `job push` does); both
    destinations are checked before any step runs.
    """
    from infra.push_cli import check_destinations, push_run

    publish = bool(cfg.s3_uri or cfg.hub_repo)
    if publish:
        check_destinations(cfg.s3_uri, cfg.hub_repo)
    from job.pipeline import run  # after the checks: importing torch takes seconds

    run(cfg, _rd(cfg), echo, force=force)
    if publish:
        push_run(cfg.run_dir, cfg.s3_uri, cfg.hub_repo, cfg.hub_private, echo=echo, progress=True)


from infra.launch_cli import launch  # noqa: E402 - `job launch` (SageMaker) lives with the cloud code
from infra.push_cli import push  # noqa: E402 - `job push` lives with the publishing code

cli.add_command(push)
cli.add_command(launch)


def run_cli(group: click.Group, argv: list[str] | None, prog_name: str, interrupted_hint: str, debug_env: str = "JOB_DEBUG") -> int:
    """Run a click group with the project's error contract: a JobError prints one `error:` paragraph
    and exits 2 (traceback only with --debug or DEBUG_ENV=1); anything unexpected exits 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(debug_env, "") not in ("", "0")
    try:
        group.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except JobError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc.message}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo(f"interrupted; {interrupted_hint}", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001
        if debug:
            raise
        click.echo(f"error: unexpected {type(exc).__name__}: {exc} (re-run with --debug for the traceback)", err=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(cli, argv, "job", "`job run` resumes from the last checkpoint")


def entrypoint() -> None:
    sys.exit(main())
