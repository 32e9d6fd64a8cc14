"""The container entrypoint: ``python -m infra.container``.

* ``train`` (what SageMaker runs: ``docker run IMAGE train``) fulfils the training-container
  contract (:mod:`infra.container.contract`): inputs from the channels and hyperparameters
  (:mod:`infra.container.inputs`), the job's steps with metric lines and a checkpoint on SIGTERM
  (:mod:`infra.container.hooks`), outputs exported to ``/opt/ml/model`` and ``/opt/ml/output/data``;
* anything else is the job's own command line: the process becomes ``python -m job ARGS`` (so
  ``docker run --gpus all IMAGE run --run-dir /runs/x --data /data/pairs.csv`` is ``job run ...``).

Every path is overridable (``--opt-ml DIR`` moves them all; one flag per path), so the same
entrypoint runs on a laptop against a folder laid out like ``/opt/ml``. With several GPUs (the
``nproc`` field: 0 = one process per visible GPU) the train step runs under torchrun, started here
so that every rank gets the SIGTERM and metric callbacks; the other steps run once. With several
hosts (``resourceconfig.json``) every host starts torchrun with its node rank; the first host runs
every step and exports, the others prepare and train (:mod:`infra.container.cluster`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from infra.container.cluster import Node, TrainingFailed
from infra.container.contract import EXIT_SIGTERM, FAILURE_LIMIT, OPT_ML, Cluster, ContainerPaths, emit
from infra.container.hooks import SIGTERM, Interrupted
from infra.container.hooks import callbacks as container_callbacks
from infra.container.inputs import read_cluster, resolve_container_config
from job import config, layout
from job.errors import JobError
from job.layout import RunDir
from job.train import distributed

Echo = Callable[[str], None]


# --- the job -------------------------------------------------------------------------------------
def run_steps(
    cfg: config.JobConfig, echo: Echo, nproc: int = 1, callbacks: list | None = None, node: Node | None = None
) -> dict[str, Any]:
    """``job run``'s steps and skip/refuse rules (``job.pipeline.run``); training resumes from the run's
    checkpoints (a spot restart), carries our callbacks, and runs under torchrun when ``nproc`` > 1 or
    the job has several hosts (``node``: this host's part; the hosts after the first run the worker steps only:
    prepare and train)."""
    from job import pipeline
    from job.steps import worker_steps

    node = node or Node(Cluster(), echo)

    rd = RunDir(Path(cfg.run_dir))
    fix = (
        "start the job with an empty checkpoint location (a new --checkpoint-s3-uri, or an empty checkpoints folder), "
        "or the original settings."
    )

    def train_step(resume: bool) -> dict[str, Any]:
        pipeline.check_checkpoints(rd, pipeline.step_fingerprint(cfg, rd, "train"), resume=resume, force=False, fix=fix)
        if nproc > 1 or node.cluster.size > 1:
            return _train_distributed(cfg, rd, nproc, resume, echo, node)
        return pipeline.train(cfg, rd, echo, resume=resume, callbacks=callbacks)

    steps = None if node.is_main else worker_steps()  # the first machine runs every step
    # strict_exports=False: a failed export costs only itself here; run_job names it after the outputs are copied
    return pipeline.run(cfg, rd, echo, on_step=_emit_step, train_step=train_step, mismatch_fix=fix, steps=steps,
                        strict_exports=False)  # fmt: skip


def _emit_step(step: str, result: dict[str, Any]) -> None:
    """METRIC lines for a step's result (also for a skipped step, so a restarted job reports them too)."""
    if step == "baseline":
        for dim, m in result["metrics"].items():
            emit(f"baseline_ndcg@10_dim{dim}", m["ndcg@10"])
    elif step == "evaluate":
        for dim, m in result["finetuned"].items():
            emit(f"test_ndcg@10_dim{dim}", m["ndcg@10"])


def _train_distributed(cfg: config.JobConfig, rd, nproc: int, resume: bool, echo: Echo, node: Node) -> dict[str, Any]:
    if not node.before_training():
        echo(f"train: {node.cluster.main_host} finished the job without training again; nothing to train here")
        return {"host": node.cluster.current_host}
    echo(f"train: {distributed.world_line(cfg, node.nodes, nproc)}; under torchrun (DDP)")

    def track(proc) -> None:
        SIGTERM.child = proc  # SIGTERM is passed on to torchrun, which passes it to every rank

    node.in_training = True
    try:
        code = distributed.launch_training(
            cfg, rd.root, nproc, resume=resume, nodes=node.nodes, entry=("infra.container", "_train-rank"),
            on_start=track, env=node.network_env(),
        )  # fmt: skip
    finally:
        SIGTERM.child = None
        node.in_training = False
    if SIGTERM.received:
        raise Interrupted(
            f"Stopped by SIGTERM during distributed training; the ranks saved a checkpoint in {rd.checkpoints}."
        )
    if code != 0:
        raise node.training_failed(code, distributed.rank_errors(rd.root))
    return rd.record("train") or {"host": node.cluster.current_host}  # the model is on the first host


def train_rank(cfg: config.JobConfig, resume: bool) -> None:
    """One torchrun rank of the train step: the job's own train step (rank 0 writes), plus our callbacks."""
    from job import pipeline

    quiet = lambda msg: None  # noqa: E731 - one rank speaks
    pipeline.train(
        cfg,
        RunDir(Path(cfg.run_dir)),
        echo if distributed.is_main_process() else quiet,
        resume=resume,
        callbacks=container_callbacks(distributed=True),
    )


def copy_contents(source: Path, target: Path) -> None:
    """Copy the files under ``source`` into ``target`` (created if missing): contents only, never
    permissions or ownership, so a platform-owned target folder (SageMaker's root-owned mounts) is
    written into without being changed."""
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.rglob("*")):
        dest = target / item.relative_to(source)
        if item.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, dest)


def export_outputs(cfg: config.JobConfig, paths: ContainerPaths, results: dict[str, Any]) -> None:
    """Model to ``model/``; data/, ir/, baseline/, report/, TensorBoard's event files (as logs/, where a run
    directory keeps them: `job launch fetch` puts them back there) and a flat metrics.json to ``output/data/``."""
    rd = RunDir(Path(cfg.run_dir))
    copy_contents(rd.model, paths.model)
    paths.output_data.mkdir(parents=True, exist_ok=True)
    for name in layout.OUTPUT_DIRS:
        if (rd.root / name).is_dir():
            copy_contents(rd.root / name, paths.output_data / name)
    if paths.tensorboard.is_dir() and any(p.is_file() for p in paths.tensorboard.rglob("*")):
        copy_contents(paths.tensorboard, paths.output_data / layout.LOGS)
    flat: dict[str, float] = {}
    for dim, m in results.get("baseline", {}).get("metrics", {}).items():
        flat[f"baseline_ndcg@10_dim{dim}"] = m["ndcg@10"]
    for dim, m in results.get("evaluate", {}).get("finetuned", {}).items():
        flat[f"test_ndcg@10_dim{dim}"] = m["ndcg@10"]
    training = results.get("train", {})
    for key in ("train_seconds", "pairs_per_second", "global_steps", "train_loss", "best_metric"):
        if isinstance(training.get(key), (int, float)):
            flat[key] = training[key]
    (paths.output_data / "metrics.json").write_text(json.dumps(flat, indent=2))


def write_failure(paths: ContainerPaths, reason: str) -> None:
    try:
        paths.failure.parent.mkdir(parents=True, exist_ok=True)
        paths.failure.write_text(reason[:FAILURE_LIMIT])
    except OSError as exc:  # still say why on stderr (CloudWatch)
        print(f"could not write {paths.failure}: {exc}", file=sys.stderr, flush=True)


def _check_writable(paths: ContainerPaths, cfg: config.JobConfig) -> None:
    tensorboard = (paths.tensorboard,) if cfg.report_to != "none" else ()
    for d in (paths.model, paths.output_data, paths.checkpoints, *tensorboard):
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test-{os.uname().nodename}-{os.getpid()}"  # several hosts may share a folder
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise JobError(
                f"{d} is not writable for user id {os.getuid()} ({exc.strerror}).",
                "start the container as root (the image's default: its entrypoint hands /opt/ml/model, output and "
                "checkpoints to the job's user, then drops root), or with `docker run --user $(id -u):$(id -g)` mount "
                "folders that user owns, or pass another folder with the matching --*-dir option.",
            ) from None


def echo(msg: str) -> None:
    print(msg, flush=True)


@contextlib.contextmanager
def tensorboard_dir(path: Path):
    """TensorBoard's event files go to ``path`` (SageMaker's TensorBoard output folder, synced to the job's
    TensorBoardOutputConfig) instead of RUN_DIR/logs, for the steps run here and the torchrun ranks started
    from here: transformers' TensorBoardCallback reads TENSORBOARD_LOGGING_DIR, which
    :func:`job.train.finetune.report_targets` keeps when it is set."""
    old = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old


def run_contract(
    paths: ContainerPaths, environ: Mapping[str, str] | None = None, callbacks: list | None = None
) -> dict[str, Any]:
    """The whole contract; raises on failure (see :func:`train_command` for the failure file)."""
    start = time.perf_counter()
    cluster = read_cluster(paths)
    cfg = resolve_container_config(paths, environ)
    _check_writable(paths, cfg)
    nproc = distributed.resolve_nproc(cfg, nodes=cluster.size)
    node = Node(cluster, echo, environ)
    echo(
        f"container: run dir {cfg.run_dir}, model {cfg.model}, data {cfg.data}, {nproc} process(es) for training"
        + node.describe()
    )
    # several hosts: the first publishes the job's result, the others wait for it
    with node, tensorboard_dir(paths.tensorboard):
        results = run_steps(cfg, echo, nproc=nproc, callbacks=(callbacks or []) + container_callbacks(), node=node)
        if not node.is_main:
            node.wait_for_main()
            echo(f"container: done in {time.perf_counter() - start:.0f} s; {cluster.main_host} exported the model")
            return results
        export_outputs(cfg, paths, results)
        _warn_failed_exports(cfg, results, echo)
    echo(
        f"container: done in {time.perf_counter() - start:.0f} s -> model {paths.model}, "
        f"report {paths.output_data / 'report'}"
    )
    return results


def _warn_failed_exports(cfg: config.JobConfig, results: dict[str, Any], echo: Echo) -> None:
    """A failed export does not fail the job (the model and the report it earned are in /opt/ml/model and the
    output): it is said here, and the report and the card list it with the reason."""
    from job import pipeline
    from job.export.onnx import ExportsFailed

    try:
        pipeline.check_exports(RunDir(Path(cfg.run_dir)), results.get("evaluate"))
    except ExportsFailed as exc:
        echo(f"container: warning: {exc.message}")


# --- command line --------------------------------------------------------------------------------
def _path_option(flag: str, help_text: str):
    return click.option(flag, type=click.Path(path_type=Path), default=None, help=help_text)


@click.command("train", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--opt-ml",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Root of the layout [default: $OPT_ML or {OPT_ML}].",
)
@_path_option("--train-dir", "Training-pairs channel [default: ROOT/input/data/train].")
@_path_option("--eval-dir", "Optional BEIR test-set channel [default: ROOT/input/data/eval].")
@_path_option("--base-model-dir", "Optional base-model channel [default: ROOT/input/data/model].")
@_path_option("--hyperparameters", "Hyperparameters JSON [default: ROOT/input/config/hyperparameters.json].")
@_path_option("--model-dir", "Where the fine-tuned model goes [default: ROOT/model].")
@_path_option("--output-data-dir", "Where reports and metrics go [default: ROOT/output/data].")
@_path_option("--checkpoint-dir", "Checkpoints and the run directory [default: ROOT/checkpoints].")
@_path_option("--failure-file", "Where the failure reason goes [default: ROOT/output/failure].")
@_path_option("--tensorboard-dir", "TensorBoard's event files, synced by SageMaker [default: ROOT/output/tensorboard].")
def train_command(**kw) -> None:
    """Run the job under the SageMaker training-container contract (what SageMaker calls as `train`)."""


def _paths_from_options(kw: dict[str, Any]) -> ContainerPaths:
    return ContainerPaths.create(
        kw.get("opt_ml"),
        train=kw.get("train_dir"),
        eval=kw.get("eval_dir"),
        base_model=kw.get("base_model_dir"),
        hyperparameters=kw.get("hyperparameters"),
        model=kw.get("model_dir"),
        output_data=kw.get("output_data_dir"),
        checkpoints=kw.get("checkpoint_dir"),
        failure=kw.get("failure_file"),
        tensorboard=kw.get("tensorboard_dir"),
    )


def contract_main(argv: list[str], callbacks: list | None = None) -> int:
    """``train [OPTIONS]``: every failure ends in the failure file and a non-zero exit code."""
    paths = ContainerPaths.create()
    old_handler = signal.getsignal(signal.SIGTERM)
    SIGTERM.reset()
    try:
        ctx = train_command.make_context("train", list(argv))
        paths = _paths_from_options(ctx.params)
        from job.cli_common import setup_logging

        setup_logging(debug=False)
        signal.signal(signal.SIGTERM, SIGTERM.handler)
        run_contract(paths, callbacks=callbacks)
        return 0
    except click.exceptions.Exit as exc:  # --help
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        write_failure(paths, f"Bad container arguments: {exc.format_message()}")
        return 2
    except JobError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        write_failure(paths, exc.message)
        return exc.exit_code
    except Interrupted as exc:
        print(str(exc), file=sys.stderr, flush=True)
        write_failure(
            paths, f"{exc} The job resumes from the checkpoint when it is restarted with the same checkpoint location."
        )
        return EXIT_SIGTERM
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        write_failure(paths, str(exc))
        return 1
    except BaseException as exc:  # noqa: BLE001 - the contract: every failure is reported
        traceback.print_exc()
        write_failure(paths, f"Unexpected {type(exc).__name__}: {exc}")
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        signal.signal(signal.SIGTERM, old_handler)


def _train_rank_main(argv: list[str]) -> int:
    """Internal: one torchrun rank of the train step (``_train-rank --config FILE [--resume]``)."""
    cfg_file = argv[argv.index("--config") + 1]
    signal.signal(signal.SIGTERM, SIGTERM.handler)
    cfg = config.resolve_config(cfg_file, environ={})
    try:
        train_rank(cfg, resume="--resume" in argv)
    except Interrupted as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_SIGTERM
    except JobError as exc:  # named in the failure reason by the process that started torchrun on this host
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        distributed.record_rank_error(Path(cfg.run_dir), exc.message)
        return exc.exit_code
    return 0


def sagemaker_started_us(root: str | os.PathLike | None = None) -> bool:
    """True when the SageMaker layout is present: the platform has written the job's configuration
    (``input/config/``). SageMaker itself passes ``train``; its SDK's local mode passes nothing."""
    config_dir = Path(root or os.environ.get("OPT_ML") or OPT_ML) / "input" / "config"
    return any(
        (config_dir / name).is_file()
        for name in ("hyperparameters.json", "inputdataconfig.json", "resourceconfig.json")
    )


def _become(module: str, argv: list[str]) -> None:
    """Replace this process by ``python -m MODULE ARGV`` (same PID, so signals still reach the job)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def main(argv: list[str] | None = None) -> int:
    """``train`` (or nothing, under SageMaker) -> the contract; ``serve``/``rag-eval`` -> rag-eval; else ``job``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv and sagemaker_started_us():
        argv = ["train"]
    if argv and argv[0] == "train":
        return contract_main(argv[1:])
    if argv and argv[0] == "_train-rank":
        return _train_rank_main(argv[1:])
    if argv and argv[0] == "serve":
        _become("rag_eval", argv)
    if argv and argv[0] == "rag-eval":
        _become("rag_eval", argv[1:])
    _become("job", argv or ["--help"])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
