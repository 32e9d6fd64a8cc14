"""The SageMaker training-container contract: paths, channel names, metric lines.

Shared by the container (:mod:`infra.container.entry`, which fulfils it) and the launcher
(:mod:`infra.sagemaker.launch`, which builds jobs against it); importing it costs nothing (no
torch, no SDK). The layout, every path overridable (``--opt-ml DIR`` moves them all):

=====================================  ==============================================================
``input/data/train/``                  the training pairs (one CSV/TSV/JSON/JSONL/Parquet file, or
                                       the one named by the ``data`` hyperparameter)
``input/data/eval/``                   optional: a BEIR folder used as the test set (``eval_data``)
``input/data/model/``                  optional: the base model (a folder, or a ``model.tar.gz``)
``input/config/hyperparameters.json``  configuration fields, every value a string
``input/config/inputdataconfig.json``  the channels SageMaker promised; a missing one is an error
``model/``                             the fine-tuned model (SageMaker uploads it as model.tar.gz)
``output/data/``                       data/, ir/, baseline/, report/ of the run and metrics.json
                                       (uploaded as output.tar.gz); with model/ a whole run dir
``output/failure``                     on failure: the reason (SageMaker's FailureReason)
``output/tensorboard/``                TensorBoard's event files (``--report-to tensorboard``, or auto
                                       with tensorboard installed, as in the image): SageMaker syncs
                                       the folder to S3 while the job runs when the job has a
                                       TensorBoardOutputConfig (``job launch sagemaker
                                       --tensorboard-s3-uri``); a copy also goes to ``output/data/logs``
``input/config/resourceconfig.json``   the job's hosts (``hosts``, ``current_host``): several hosts
                                       train together (:class:`Cluster`)
``checkpoints/``                       the run directory itself (``checkpoints/run``), which SageMaker
                                       syncs to the checkpoint S3 URI (and restores on every host)
=====================================  ==============================================================

Several instances: the first of ``hosts`` is node 0 (global rank 0: it alone writes checkpoints, the
model and the report); torchrun's static rendezvous listens there on :data:`RENDEZVOUS_PORT`, and the
job's end is agreed on the port after it (:mod:`infra.container.cluster`). ``MASTER_PORT`` in the
container's environment moves both.

Metrics are printed as ``METRIC <name>=<value>`` lines; :func:`metric_definitions` gives the
matching regexes for the job's MetricDefinitions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import config

OPT_ML = "/opt/ml"
TRAIN, EVAL, BASE_MODEL = "train", "eval", "model"
CHANNELS = (TRAIN, EVAL, BASE_MODEL)
# Hyperparameter keys SageMaker (or the SDK) may add on its own; never configuration.
RESERVED_PREFIXES = ("sagemaker_", "_")
# Fields the container decides itself: where the run lives, and publishing (SageMaker uploads the
# model; `job launch fetch` brings it back, `job` publishing commands take it from there).
CONTAINER_FIELDS = config.LOCAL_FIELDS
CHECKPOINTS = f"{OPT_ML}/checkpoints"  # SageMaker syncs this folder with the checkpoint S3 URI
RUN_SUBDIR = "run"  # the run directory inside the checkpoints folder
# SageMaker syncs this folder with the TensorBoardOutputConfig's S3 path (its LocalPath; the SDK's default too)
TENSORBOARD = f"{OPT_ML}/output/tensorboard"
# Dims that get a SageMaker metric definition when the configuration does not list its own.
COMMON_DIMS = (1024, 768, 512, 384, 256, 128, 64, 32)
FAILURE_LIMIT = 1024  # SageMaker keeps the first 1 KiB of output/failure as FailureReason
EXIT_SIGTERM = 143
RENDEZVOUS_PORT = 29500  # torchrun's static rendezvous on the first host; the job-status store uses the next port


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
    tensorboard: Path

    @classmethod
    def create(
        cls, root: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ContainerPaths:
        """Paths under ``root`` (default ``$OPT_ML`` or /opt/ml); ``SM_CHANNEL_<NAME>``, ``SM_MODEL_DIR``
        and ``SM_OUTPUT_DATA_DIR`` (set by SageMaker's training toolkit images) and then ``overrides``
        (``train=``, ``eval=``, ``base_model=``, ``hyperparameters=``, ``model=``, ``tensorboard=``, ...) win."""
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
            tensorboard=pick("tensorboard", r / "output" / "tensorboard"),
        )

    @property
    def run_dir(self) -> Path:
        return self.checkpoints / RUN_SUBDIR


# --- hosts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    """The job's hosts as ``resourceconfig.json`` names them; one host when there is no such file."""

    hosts: tuple[str, ...] = ("algo-1",)
    current_host: str = "algo-1"
    interface: str | None = None  # network_interface_name: the NIC the hosts reach each other on

    @property
    def size(self) -> int:
        return len(self.hosts)

    @property
    def rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def main_host(self) -> str:
        return self.hosts[0]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def parse(cls, raw: Any) -> Cluster:
        """From the parsed JSON; ValueError says what is wrong with it."""
        if not isinstance(raw, dict):
            raise ValueError("it is not a JSON object")
        hosts, current = raw.get("hosts"), raw.get("current_host")
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
            raise ValueError(f"'hosts' is {hosts!r}, not a list of host names")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"'hosts' names a host twice ({', '.join(hosts)})")
        if current not in hosts:
            raise ValueError(f"'current_host' ({current!r}) is not one of 'hosts' ({', '.join(hosts)})")
        interface = raw.get("network_interface_name")
        return cls(tuple(hosts), str(current), interface if isinstance(interface, str) and interface else None)


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
