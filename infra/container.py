"""The container entrypoint and the SageMaker training-container contract.

The image's entrypoint is ``python -m infra.container``:

* ``train`` (what SageMaker runs: ``docker run IMAGE train``) follows the contract below;
* anything else is handed to the job's own command line, so ``docker run --gpus all IMAGE run
  --run-dir /runs/x --data /data/pairs.csv`` is ``job run ...`` inside the image.

The contract, every path overridable (``--opt-ml DIR`` moves them all; one flag per path), so the
same entrypoint runs on a laptop against a folder laid out like ``/opt/ml``:

=====================================  ==============================================================
``input/data/train/``                  the training pairs (one CSV/TSV/JSON/JSONL/Parquet file, or
                                       the one named by the ``data`` hyperparameter)
``input/data/eval/``                   optional: a BEIR folder used as the test set (``eval_data``)
``input/data/model/``                  optional: the base model (a folder, or a ``model.tar.gz``)
``input/config/hyperparameters.json``  configuration fields; SageMaker passes every value as a
                                       string, converted here with the job's own type rules; an
                                       unknown key is an error (keys starting ``sagemaker_`` or
                                       ``_`` are SageMaker's and ignored)
``input/config/inputdataconfig.json``  the channels SageMaker promised; a missing one is an error
``model/``                             the fine-tuned model (SageMaker uploads it as model.tar.gz)
``output/data/``                       data/, ir/, baseline/, report/ of the run and metrics.json
                                       (uploaded as output.tar.gz); with model/ a whole run dir
``output/failure``                     on failure: the reason (SageMaker's FailureReason)
``checkpoints/``                       the run directory itself (``checkpoints/run``), which SageMaker
                                       syncs to the checkpoint S3 URI: after a spot interruption
                                       the restarted job skips finished steps and resumes training
                                       from the last trainer checkpoint
=====================================  ==============================================================

On SIGTERM (spot interruption, StopTrainingJob, ``docker stop``) during training, the trainer saves
a checkpoint at the end of the current step and the process exits with 143. Metrics are printed
as ``METRIC <name>=<value>`` lines; :func:`metric_definitions` gives the matching regexes.
With several GPUs (the ``nproc`` field: 0 = one process per visible GPU) the train step runs under
torchrun, started here so that every rank gets the SIGTERM and metric callbacks; the other steps run once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from job import config as C
from job.errors import JobError

logger = logging.getLogger(__name__)

OPT_ML = "/opt/ml"
TRAIN, EVAL, BASE_MODEL = "train", "eval", "model"
CHANNELS = (TRAIN, EVAL, BASE_MODEL)
# Hyperparameter keys SageMaker (or the SDK) may add on its own; never configuration.
RESERVED_PREFIXES = ("sagemaker_", "_")
# Fields the container decides itself: where the run lives, and publishing (SageMaker uploads the
# model; `job launch fetch` brings it back, `job` publishing commands take it from there).
CONTAINER_FIELDS = ("run_dir", "s3_uri", "hub_repo")
# Dims that get a SageMaker metric definition when the configuration does not list its own.
COMMON_DIMS = (1024, 768, 512, 384, 256, 128, 64, 32)
FAILURE_LIMIT = 1024  # SageMaker keeps the first 1 KiB of output/failure as FailureReason
EXIT_SIGTERM = 143

Echo = Callable[[str], None]


# --- paths ---------------------------------------------------------------------------------------
@dataclass
class ContainerPaths:
    """Where the contract's inputs and outputs live (``/opt/ml`` by default)."""

    root: Path
    channels: dict[str, Path]
    hyperparameters: Path
    input_data_config: Path
    resource_config: Path
    model: Path
    output_data: Path
    failure: Path
    checkpoints: Path

    @classmethod
    def create(
        cls, root: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> "ContainerPaths":
        """Paths under ``root`` (default ``$OPT_ML`` or /opt/ml); ``SM_CHANNEL_<NAME>``, ``SM_MODEL_DIR``
        and ``SM_OUTPUT_DATA_DIR`` (set by SageMaker's training toolkit images) and then ``overrides``
        (``train=``, ``eval=``, ``base_model=``, ``hyperparameters=``, ``model=``, ...) win."""
        env = os.environ if environ is None else environ
        r = Path(root or env.get("OPT_ML") or OPT_ML)
        channels = {ch: Path(env.get(f"SM_CHANNEL_{ch.upper()}") or r / "input" / "data" / ch) for ch in CHANNELS}
        for ch, key in ((TRAIN, "train"), (EVAL, "eval"), (BASE_MODEL, "base_model")):
            if overrides.get(key):
                channels[ch] = Path(overrides[key])
        pick = lambda key, default: Path(overrides.get(key) or default)  # noqa: E731
        return cls(
            root=r,
            channels=channels,
            hyperparameters=pick("hyperparameters", r / "input" / "config" / "hyperparameters.json"),
            input_data_config=pick("input_data_config", r / "input" / "config" / "inputdataconfig.json"),
            resource_config=pick("resource_config", r / "input" / "config" / "resourceconfig.json"),
            model=pick("model", env.get("SM_MODEL_DIR") or r / "model"),
            output_data=pick("output_data", env.get("SM_OUTPUT_DATA_DIR") or r / "output" / "data"),
            failure=pick("failure", r / "output" / "failure"),
            checkpoints=pick("checkpoints", r / "checkpoints"),
        )

    @property
    def run_dir(self) -> Path:
        return self.checkpoints / "run"


# --- hyperparameters -----------------------------------------------------------------------------
def _hp_value(value: Any) -> Any:
    """SageMaker hands over strings; a JSON list (``"[384, 256]"``, as the SDK serialises lists) is a list."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list):
            return parsed
    return value


def read_hyperparameters(path: Path) -> dict[str, Any]:
    """The configuration values in ``hyperparameters.json``, converted to the fields' types.

    Raises a JobError naming the key for an unknown key, an ill-typed value or a container-owned field.
    """
    if not path.exists():
        return {}
    source = f"the SageMaker hyperparameters ({path})"
    try:
        raw = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as exc:
        raise JobError(
            f"{path} is not valid JSON ({exc}).", "pass hyperparameters as a JSON object of name: value."
        ) from None
    if not isinstance(raw, dict):
        raise JobError(
            f"{path} must hold a JSON object of name: value.", 'pass hyperparameters as {"epochs": "2", ...}.'
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith(RESERVED_PREFIXES):
            continue
        name = key.replace("-", "_")
        if name in CONTAINER_FIELDS:
            raise JobError(
                f"Hyperparameter '{key}' in {source} cannot be set in the container: the container places the run "
                "directory under the checkpoint folder, and SageMaker itself uploads the model and report.",
                "drop it; fetch the result with `job launch fetch JOB_NAME`, then publish from there.",
            )
        values[name] = C.coerce(name, _hp_value(value), source)
    return values


# --- channels ------------------------------------------------------------------------------------
def _promised_channels(paths: ContainerPaths) -> set[str]:
    if not paths.input_data_config.is_file():
        return set()
    try:
        return set(json.loads(paths.input_data_config.read_text()))
    except (json.JSONDecodeError, TypeError):
        return set()


def _channel(paths: ContainerPaths, name: str, required: bool, why: str) -> Path | None:
    d = paths.channels[name]
    present = d.is_dir() and any(d.iterdir())
    if present:
        return d
    if required:
        state = "is empty" if d.is_dir() else "does not exist"
        raise JobError(
            f"The '{name}' channel is missing: {d} {state} ({why}).",
            f"give the job a '{name}' input channel (`job launch sagemaker` makes it from --{'data' if name == TRAIN else 'eval-data' if name == EVAL else 'model'}), "
            f"or mount the data at {d}.",
        )
    return None


def _data_files(d: Path) -> list[Path]:
    from job.data import LOCAL_SUFFIXES

    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)


def _inside(channel: Path, value: str) -> Path | None:
    """``value`` as a path inside ``channel`` if it names something there."""
    candidate = channel / value
    return candidate if not Path(value).is_absolute() and candidate.exists() else None


def _unpack_model(channel: Path) -> Path:
    """The base-model channel as a model folder: the folder itself, its one sub-folder, or an unpacked tarball."""
    tarballs = [p for p in channel.iterdir() if p.name.endswith((".tar.gz", ".tgz"))]
    if len(tarballs) == 1 and not (channel / "modules.json").exists() and not (channel / "config.json").exists():
        # the same path on every start of this job (the run's fingerprint holds it), another for another channel
        tag = hashlib.sha256(str(channel.resolve()).encode()).hexdigest()[:8]
        target = Path(tempfile.gettempdir()) / f"job-base-model-{tag}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        with tarfile.open(tarballs[0]) as tf:
            tf.extractall(target, filter="data")
        channel = target
    entries = [p for p in channel.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return channel


def channel_values(paths: ContainerPaths, hps: dict[str, Any]) -> dict[str, Any]:
    """Configuration values for ``data``, ``eval_data`` and ``model`` taken from the channels."""
    promised = _promised_channels(paths)
    for name in sorted(promised & set(CHANNELS)):
        _channel(paths, name, required=True, why="SageMaker's inputdataconfig.json lists it")
    out: dict[str, Any] = {}

    # train: required unless the data hyperparameter names a dataset that needs no file.
    data_hp = hps.get("data")
    train = _channel(
        paths, TRAIN, required=data_hp is None, why="it holds the training pairs; no 'data' hyperparameter was given"
    )
    if train is not None:
        if data_hp is not None:
            inside = _inside(train, data_hp)
            if inside is None:
                raise JobError(
                    f"The 'data' hyperparameter is {data_hp!r}, but the 'train' channel ({train}) has no such file.",
                    f"name one of: {', '.join(p.relative_to(train).as_posix() for p in _data_files(train)) or '(no data files)'}, "
                    "or drop the hyperparameter to use the channel's only data file.",
                )
            out["data"] = str(inside)
        else:
            files = _data_files(train)
            if len(files) != 1:
                from job.data import LOCAL_SUFFIXES

                listed = ", ".join(p.relative_to(train).as_posix() for p in files[:10]) or "none"
                raise JobError(
                    f"The 'train' channel ({train}) holds {len(files)} data files ({listed}); one is needed.",
                    f"keep one {'/'.join(sorted(LOCAL_SUFFIXES))} file there, or name it with the 'data' hyperparameter.",
                )
            out["data"] = str(files[0])

    ev = _channel(paths, EVAL, required=False, why="")
    if ev is not None:
        eval_hp = hps.get("eval_data")
        inside = _inside(ev, eval_hp) if eval_hp else None
        if eval_hp and inside is None:
            raise JobError(
                f"The 'eval_data' hyperparameter is {eval_hp!r}, but the 'eval' channel ({ev}) has no such folder.",
                "drop the hyperparameter (the channel itself is the BEIR folder) or name a folder inside it.",
            )
        out["eval_data"] = str(inside or ev)

    mc = _channel(paths, BASE_MODEL, required=False, why="")
    if mc is not None:
        model_hp = hps.get("model")
        inside = _inside(mc, model_hp) if model_hp else None
        if model_hp and inside is None:
            raise JobError(
                f"Both a 'model' channel ({mc}) and the 'model' hyperparameter ({model_hp!r}) are given.",
                "give the base model one way: the channel, or the hyperparameter (a Hub id).",
            )
        out["model"] = str(inside or _unpack_model(mc))
    return out


def resolve_container_config(paths: ContainerPaths, environ: Mapping[str, str] | None = None) -> C.JobConfig:
    """Defaults < JOB_* environment < hyperparameters < channels, validated like the CLI's configuration."""
    hps = read_hyperparameters(paths.hyperparameters)
    values = {**hps, **channel_values(paths, hps), "run_dir": str(paths.run_dir)}
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k.startswith(C.ENV_PREFIX)}
    for name in CONTAINER_FIELDS:
        env.pop(C.ENV_PREFIX + name.upper(), None)
    return C.resolve_config(None, values, env)


def _check_single_node(paths: ContainerPaths) -> None:
    if not paths.resource_config.is_file():
        return
    try:
        hosts = json.loads(paths.resource_config.read_text()).get("hosts", [])
    except (json.JSONDecodeError, AttributeError):
        return
    if len(hosts) > 1:
        raise JobError(
            f"This job runs on {len(hosts)} instances ({', '.join(hosts)}); training runs on one instance (all its GPUs).",
            "launch with --instance-count 1 and a multi-GPU instance type such as ml.g5.12xlarge.",
        )


# --- metrics -------------------------------------------------------------------------------------
def metric_line(name: str, value: float) -> str:
    return f"METRIC {name}={value:.6g}"


def emit(name: str, value: float | None) -> None:
    if value is not None:
        print(metric_line(name, float(value)), flush=True)


_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def metric_definitions(dims: list[int] | None = None) -> list[dict[str, str]]:
    """SageMaker metric definitions matching the ``METRIC`` lines: NDCG@10 per dim for the base model,
    on validation during training and on test at the end, plus the training loss."""
    defs = [{"Name": "train_loss", "Regex": rf"METRIC train_loss={_NUMBER}"}]
    for kind in ("test", "baseline", "val"):
        for d in dims or COMMON_DIMS:
            name = f"{kind}_ndcg@10_dim{d}"
            defs.append({"Name": name, "Regex": rf"METRIC {name}={_NUMBER}"})
    return defs


def _callbacks(distributed: bool = False) -> list:
    """Trainer callbacks for the container: metric lines and the SIGTERM checkpoint."""
    from transformers import TrainerCallback

    from job.evaluation import per_dim_metrics

    class MetricLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                emit("train_loss", logs["loss"])

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if state.is_world_process_zero and metrics:
                for dim, m in per_dim_metrics(metrics, "validation").items():
                    emit(f"val_ndcg@10_dim{dim}", m.get("ndcg@10"))

    class SaveOnSigterm(TrainerCallback):
        """Turns a SIGTERM into: save a checkpoint at the end of this step, then stop with exit 143."""

        def __init__(self) -> None:
            self.stopping = False

        def on_train_begin(self, args, state, control, **kwargs):
            SIGTERM.training = True

        def on_train_end(self, args, state, control, **kwargs):
            SIGTERM.training = False

        def on_step_end(self, args, state, control, **kwargs):
            flag = SIGTERM.received
            if distributed:  # every rank must take the same decision, or the collectives hang
                import torch
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    t = torch.tensor([1 if flag else 0], device=args.device)
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    flag = bool(t.item())
            if flag and not self.stopping:
                self.stopping = True
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if self.stopping:
                raise Interrupted(
                    f"Stopped by SIGTERM during training; a checkpoint of step {state.global_step} was saved in "
                    f"{args.output_dir}."
                )

    return [MetricLines(), SaveOnSigterm()]


# --- SIGTERM -------------------------------------------------------------------------------------
class Interrupted(Exception):
    """The job was stopped by SIGTERM (spot interruption, StopTrainingJob, docker stop)."""


class _SigtermState:
    def __init__(self) -> None:
        self.received = False
        self.training = False
        self.child: subprocess.Popen | None = None

    def reset(self) -> None:
        self.__init__()

    def handler(self, signum, frame) -> None:
        self.received = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
            return
        if not self.training:
            raise Interrupted("Stopped by SIGTERM before training had started or after it had finished.")
        print("SIGTERM received: saving a checkpoint at the end of this step", file=sys.stderr, flush=True)


SIGTERM = _SigtermState()


# --- the job -------------------------------------------------------------------------------------
def run_steps(cfg: C.JobConfig, echo: Echo, nproc: int = 1, callbacks: list | None = None) -> dict[str, Any]:
    """``job run``'s steps and skip/refuse rules (``job.pipeline.run``); training resumes from the run's
    checkpoints (a spot restart), carries our callbacks, and runs under torchrun when ``nproc`` > 1."""
    from job import pipeline as P

    rd = P.RunDir(cfg.run_dir)
    fix = "start the job with an empty checkpoint location (a new --checkpoint-s3-uri, or an empty checkpoints folder), or the original settings."

    def train_step(resume: bool) -> dict[str, Any]:
        P.check_checkpoints(rd, P.step_fingerprint(cfg, rd, "train"), resume=resume, force=False, fix=fix)
        if nproc > 1:
            return _train_distributed(cfg, rd, nproc, resume, echo)
        return P.train(cfg, rd, echo, resume=resume, callbacks=callbacks)

    return P.run(cfg, rd, echo, on_step=_emit_step, train_step=train_step, mismatch_fix=fix)


def _emit_step(step: str, result: dict[str, Any]) -> None:
    """METRIC lines for a step's result (also for a skipped step, so a restarted job reports them too)."""
    if step == "baseline":
        for dim, m in result["metrics"].items():
            emit(f"baseline_ndcg@10_dim{dim}", m["ndcg@10"])
    elif step == "evaluate":
        for dim, m in result["finetuned"].items():
            emit(f"test_ndcg@10_dim{dim}", m["ndcg@10"])


def _train_distributed(cfg: C.JobConfig, rd, nproc: int, resume: bool, echo: Echo) -> dict[str, Any]:
    from job.distributed import launch_training

    echo(f"train: {nproc} processes under torchrun (DDP)")

    def track(proc) -> None:
        SIGTERM.child = proc  # SIGTERM is passed on to torchrun, which passes it to every rank

    try:
        code = launch_training(cfg, rd.root, nproc, resume=resume, entry=("infra.container", "_train-rank"), on_start=track)
    finally:
        SIGTERM.child = None
    if SIGTERM.received:
        raise Interrupted(
            f"Stopped by SIGTERM during distributed training; the ranks saved a checkpoint in {rd.checkpoints}."
        )
    if code != 0:
        raise RuntimeError(f"distributed training failed (torchrun exit code {code}); see the ranks' output above")
    return rd.record("train")


def train_rank(cfg: C.JobConfig, resume: bool) -> None:
    """One torchrun rank of the train step: the job's own train step (rank 0 writes), plus our callbacks."""
    from job import distributed
    from job import pipeline as P

    quiet = lambda msg: None  # noqa: E731 - one rank speaks
    P.train(
        cfg,
        P.RunDir(cfg.run_dir),
        echo if distributed.is_main_process() else quiet,
        resume=resume,
        callbacks=_callbacks(distributed=True),
    )


def export_outputs(cfg: C.JobConfig, paths: ContainerPaths, results: dict[str, Any]) -> None:
    """Model to ``model/``; data/, ir/, baseline/, report/ and a flat metrics.json to ``output/data/``."""
    from job.pipeline import RunDir

    rd = RunDir(cfg.run_dir)
    paths.model.mkdir(parents=True, exist_ok=True)
    shutil.copytree(rd.model, paths.model, dirs_exist_ok=True)
    paths.output_data.mkdir(parents=True, exist_ok=True)
    for name in ("data", "ir", "baseline", "report"):
        if (rd.root / name).is_dir():
            shutil.copytree(rd.root / name, paths.output_data / name, dirs_exist_ok=True)
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


def _check_writable(paths: ContainerPaths) -> None:
    for d in (paths.model, paths.output_data, paths.checkpoints):
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise JobError(
                f"{d} is not writable for user id {os.getuid()} ({exc.strerror}).",
                "mount it writable for this user (e.g. `docker run --user $(id -u):$(id -g)` with a folder you own), "
                "or pass another folder with the matching --*-dir option.",
            ) from None


def echo(msg: str) -> None:
    print(msg, flush=True)


def run_contract(
    paths: ContainerPaths, environ: Mapping[str, str] | None = None, callbacks: list | None = None
) -> dict[str, Any]:
    """The whole contract; raises on failure (see :func:`train_command` for the failure file)."""
    start = time.perf_counter()
    _check_single_node(paths)
    cfg = resolve_container_config(paths, environ)
    _check_writable(paths)
    from job import distributed

    nproc = distributed.resolve_nproc(cfg)
    echo(f"container: run dir {cfg.run_dir}, model {cfg.model}, data {cfg.data}, {nproc} process(es) for training")
    results = run_steps(cfg, echo, nproc=nproc, callbacks=(callbacks or []) + _callbacks())
    export_outputs(cfg, paths, results)
    echo(
        f"container: done in {time.perf_counter() - start:.0f} s -> model {paths.model}, report {paths.output_data / 'report'}"
    )
    return results


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
    try:
        train_rank(C.resolve_config(cfg_file, environ={}), resume="--resume" in argv)
    except Interrupted as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_SIGTERM
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return contract_main(argv[1:])
    if argv and argv[0] == "_train-rank":
        return _train_rank_main(argv[1:])
    from job.cli import main as job_main

    return job_main(argv)


if __name__ == "__main__":
    sys.exit(main())
