"""Command line: ``job prepare|baseline|train|evaluate|run|config|presets`` (also ``python -m job``).

Every configuration field is a flag (``--epochs``), an environment variable (``JOB_EPOCHS``) and a
YAML key (``epochs:``); see :mod:`job.config` for the precedence.
"""

from __future__ import annotations

import sys

import click

from infra.launch_cli import launch  # `job launch` (SageMaker) lives with the cloud code
from infra.push_cli import push  # `job push` lives with the publishing code
from job import config, storage
from job.cli_common import SectionedCommand, StepOrderGroup, config_options, echo, run_cli
from job.errors import JobError


def _rd(cfg):
    """The run directory, checked to be writable before any model is loaded."""
    from job.layout import RunDir

    rd = RunDir(cfg.run_dir)
    storage.probe_writable(rd.root)
    return rd


@click.group(cls=StepOrderGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="rag-embed-finetune", prog_name="job")
def cli() -> None:
    """Fine-tune an embedding model for RAG retrieval on your (question, passage) pairs.

    Steps: prepare -> baseline -> train -> evaluate; `job run` does them all and resumes.
    Configuration precedence: defaults < --preset < --config YAML < JOB_* environment < flags.
    """


@cli.command("config", cls=SectionedCommand)
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
    for name, values in config.PRESETS.items():
        click.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@cli.command("prepare", cls=SectionedCommand)
@config_options
def prepare_cmd(cfg) -> None:
    """Load, validate, de-duplicate and split the pairs; build the evaluation corpus."""
    from job.models import load_model
    from job.pipeline import prepare

    rd = _rd(cfg)
    with storage.storage_errors(rd.root, "the prepare step's outputs"):
        prepare(cfg, rd, echo, model=load_model(cfg.model, max_seq_length=cfg.max_seq_length))


@cli.command("baseline", cls=SectionedCommand)
@config_options
def baseline_cmd(cfg) -> None:
    """Score the base model on the test split at every Matryoshka dim."""
    from job.pipeline import baseline

    rd = _rd(cfg)
    with storage.storage_errors(rd.root, "the baseline step's outputs"):
        baseline(cfg, rd, echo)


@cli.command("train", cls=SectionedCommand)
@config_options
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the run directory.")
@click.option("--force", is_flag=True, help="Discard checkpoints of an earlier unfinished run.")
def train_cmd(cfg, resume: bool, force: bool) -> None:
    """Fine-tune with MatryoshkaLoss(MNRL); keep the best checkpoint by validation NDCG@10."""
    from job.pipeline import train

    rd = _rd(cfg)
    with storage.storage_errors(rd.root, "the train step's outputs"):
        train(cfg, rd, echo, resume=resume, force=force)


@cli.command("evaluate", cls=SectionedCommand)
@config_options
def evaluate_cmd(cfg) -> None:
    """Score base and fine-tuned models on the test split; write the report (Markdown, JSON, PNG)."""
    from job.pipeline import evaluate

    rd = _rd(cfg)
    with storage.storage_errors(rd.root, "the evaluate step's outputs"):
        evaluate(cfg, rd, echo)


@cli.command("run", cls=SectionedCommand)
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


cli.add_command(push)
cli.add_command(launch)
cli.order = ("prepare", "baseline", "train", "evaluate", "run", "push", "launch", "config", "presets")


def main(argv: list[str] | None = None) -> int:
    return run_cli(cli, argv, "job", "`job run` resumes from the last checkpoint")


def entrypoint() -> None:
    sys.exit(main())
