"""Command line: ``job synthesize|prepare|baseline|train|evaluate|export|run|config|presets`` (also ``python -m job``).

Every configuration field is a flag (``--epochs``), an environment variable (``JOB_EPOCHS``) and a
YAML key (``epochs:``); see :mod:`job.config` for the precedence.
"""

from __future__ import annotations

import sys

import click

from job import config, plugins, progress, steps, storage
from job.cli_common import SectionedCommand, StepOrderGroup, config_options, echo, run_cli
from job.errors import JobError


def _rd(cfg):
    """The run directory, checked to be writable before any model is loaded."""
    from job.layout import RunDir

    rd = RunDir(cfg.run_dir)
    storage.probe_writable(rd.root)
    return rd


def _hold(rd, command: str):
    """One writer per run directory (job.layout.run_lock). Under torchrun only each machine's first rank holds
    it (the ranks our launcher starts inherit its hold; a user's own `torchrun -m job train` starts several)."""
    import contextlib
    import os

    from job.layout import run_lock

    if os.environ.get("LOCAL_RANK", "0") != "0":
        return contextlib.nullcontext()
    return run_lock(rd.root, command)


def _check_precision(cfg) -> None:
    """An explicit --mixed-precision fp16/bf16 that this machine cannot train in is refused before any work
    (auto and no always resolve)."""
    if cfg.mixed_precision in ("fp16", "bf16"):
        from job.train.finetune import resolve_precision

        resolve_precision(cfg.mixed_precision)


def _step_cfg(cfg, rd):
    """A single step's configuration: with --docs, the data is the run's synthesized pairs."""
    from job.pipeline import require_synthesized

    return require_synthesized(cfg, rd)


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


@cli.command("synthesize", cls=SectionedCommand)
@config_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="The pairs file to write (JSONL; `job run --data` reads it). Default: RUN_DIR/synth/pairs.jsonl.",
)
def synthesize_cmd(cfg, out: str | None) -> None:
    """Turn documents into (question, passage) training pairs with an OpenAI-compatible LLM.

    Chunks the documents in the base model's tokens, asks the LLM for questions (in parallel, every answer
    kept on disk: the same command again continues), drops bad and inconsistent questions, and writes the
    pairs with a summary. The key comes from OPENAI_API_KEY (or --llm-api-key-env), never from a flag.
    """
    from pathlib import Path

    from job.layout import RunDir
    from job.synth.synthesize import synthesize

    if not cfg.docs:
        raise JobError("job synthesize needs documents.", "pass --docs FOLDER (or files, comma-separated).")
    target = Path(out).expanduser() if out else RunDir(cfg.run_dir).synth_pairs
    if target.is_dir():
        raise JobError(f"--out {target} is a folder.", "pass the pairs file to write, e.g. --out pairs.jsonl.")
    storage.probe_writable(target.parent, "the folder of --out")
    from job.layout import run_lock

    with run_lock(target.parent, "job synthesize"), storage.storage_errors(target.parent, "the synthesized pairs"):
        synthesize(cfg, cfg.docs, target, echo)


@cli.command("train", cls=SectionedCommand)
@config_options
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the run directory.")
@click.option("--force", is_flag=True, help="Discard checkpoints of an earlier unfinished run.")
def train_cmd(cfg, resume: bool, force: bool) -> None:
    """Fine-tune with MatryoshkaLoss(MNRL); keep the best checkpoint by validation NDCG@10."""
    from job.pipeline import train
    from job.train import distributed

    rd = _rd(cfg)
    cfg = _step_cfg(cfg, rd)
    _check_precision(cfg)
    try:
        with _hold(rd, "job train"), storage.storage_errors(rd.root, "the train step's outputs"):
            progress.phase_done("train", train(cfg, rd, echo, resume=resume, force=force))
    except JobError as exc:
        if distributed.inside_torchrun():  # for the process that started torchrun on this machine
            distributed.record_rank_error(rd.root, exc.message)
        raise


def _step_command(step: steps.Step) -> None:
    """`job NAME` for a registered step: its configuration, the run directory held, its outputs' storage errors
    named, its result shown as the phase's end."""

    @cli.command(step.name, cls=SectionedCommand, help=step.summary)
    @config_options
    def command(cfg) -> None:
        rd = _rd(cfg)
        cfg = _step_cfg(cfg, rd)
        with _hold(rd, f"job {step.name}"), storage.storage_errors(rd.root, f"the {step.name} step's outputs"):
            progress.phase_done(step.name, step.run(steps.Run(cfg, rd, echo, alone=True)))


for _step in steps.steps():  # prepare, baseline, evaluate and any step registered since (train has its own)
    if _step.command:
        _step_command(_step)


@cli.command("export", cls=SectionedCommand)
@config_options
@click.option("--force", is_flag=True, help="Make the exports again even when they match the model's weights.")
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Export a model folder that is not in a run directory (writes MODEL_DIR/onnx/...; nothing is scored).",
)
def export_cmd(cfg, force: bool, model_dir: str | None) -> None:
    """Export the fine-tuned model as ONNX (float32, int8) into model/onnx/, and score every export at every dim
    beside the PyTorch model: the evaluate step with --export (default: every export).

    The base model is exported too (RUN_DIR/baseline/model), so that `rag-eval serve --backend` runs both
    columns of the page on the same backend. The report and the model card get the export table; an export
    that loses more than --export-max-drop points at any dim is flagged.
    """
    import dataclasses
    from pathlib import Path

    from job.export.onnx import EXPORTS, export_model

    names = cfg.export or list(EXPORTS)
    if model_dir is not None:
        folder = Path(model_dir).expanduser()
        if not (folder / "modules.json").is_file():
            raise JobError(
                f"--model-dir {folder} is not a sentence-transformers model folder (no modules.json).",
                "pass the folder that holds modules.json and the weights, or --run-dir for a run's model.",
            )
        export_model(folder, names, force=force, echo=echo)
        return
    from job.models import load_model, resolve_model_name
    from job.pipeline import evaluate

    rd = _rd(cfg)
    cfg = dataclasses.replace(_step_cfg(cfg, rd), export=names)
    if rd.record("train") is None:
        raise JobError(
            f"{rd.root} has no fine-tuned model yet ({rd.done_file('train')} is missing).",
            f"run `job run --run-dir {rd.root} --export {','.join(names)}` (it trains, exports and scores).",
        )
    from job.config import fingerprints_match
    from job.pipeline import changed_fields, step_fingerprint

    trained, want = rd.record("train")["fingerprint"], step_fingerprint(cfg, rd, "train")
    if not fingerprints_match(trained, want):
        changed = ", ".join(changed_fields(trained, want))
        raise JobError(
            f"{rd.model} was trained with other settings than these (changed: {changed}).",
            "pass the settings the run was made with (the same flags, JOB_* variables or --config as for `job run`), "
            "so that the report and the card describe this model.",
        )
    with storage.storage_errors(rd.root, "the exports"):
        if force:  # a failed export is recorded and costs only itself: the evaluate step reports it, then exit 2
            export_model(rd.model, names, force=True, echo=echo, strict=False)
            base = load_model(cfg.model, max_seq_length=cfg.max_seq_length)
            base_name = resolve_model_name(cfg.model)
            export_model(base_name, names, model=base, out=rd.base_export, force=True, echo=echo, strict=False)
        progress.phase_done("export", evaluate(cfg, rd, echo))


@cli.command("run", cls=SectionedCommand)
@config_options
@click.option("--force", is_flag=True, help="Redo steps whose outputs already exist.")
def run_cmd(cfg, force: bool) -> None:
    """Run every step; finished steps are skipped, an interrupted training resumes.

    With --s3-uri, --hub-repo and/or --publish-dir the finished run is then published (as `job push` does);
    every destination is checked before any step runs.
    """
    options = {name: getattr(cfg, name) for name in config.PUBLISH_FIELDS}
    publish = any(getattr(cfg, name) for name in config.DESTINATION_FIELDS)
    if publish:
        check_destinations, push_run = plugins.publishing()
        check_destinations(**options)
    from job.pipeline import run  # after the checks: importing torch takes seconds

    rd = _rd(cfg)
    _check_precision(cfg)  # before any step: a precision this machine cannot train in is refused now
    with _hold(rd, "job run"):
        run(cfg, rd, echo, force=force, on_step=progress.phase_done)
    if publish:
        push_run(cfg.run_dir, echo=echo, progress=True, **options)


for command in plugins.commands():  # `job push` (publishing) and `job launch` (SageMaker), from infra
    cli.add_command(command)
cli.order = ("synthesize", *steps.names(), "run", "export", "push", "launch", "config", "presets")


def main(argv: list[str] | None = None) -> int:
    return run_cli(cli, argv, "job", "`job run` resumes from the last checkpoint", log_format_env=progress.FORMAT_ENV)


def entrypoint() -> None:
    sys.exit(main())
