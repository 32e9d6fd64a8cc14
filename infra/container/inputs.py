"""The container's inputs: SageMaker hyperparameters and channels, turned into one JobConfig.

SageMaker passes every hyperparameter as a string; they are converted with the job's own type
rules (:func:`job.config.coerce`). An unknown key is an error naming the key (keys starting
``sagemaker_`` or ``_`` are SageMaker's own and ignored). Channels become the ``data``,
``eval_data`` and ``model`` values.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.container.contract import (
    BASE_MODEL,
    CHANNELS,
    CONTAINER_FIELDS,
    EVAL,
    RESERVED_PREFIXES,
    TRAIN,
    Cluster,
    ContainerPaths,
)
from job import config
from job.errors import JobError


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
        values[name] = config.coerce(name, _hp_value(value), source)
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
            f"give the job a '{name}' input channel (`job launch sagemaker` makes it from "
            f"--{'data' if name == TRAIN else 'eval-data' if name == EVAL else 'model'}), "
            f"or mount the data at {d}.",
        )
    return None


def _data_files(d: Path) -> list[Path]:
    from job.data.prepare import LOCAL_SUFFIXES

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
                    "name one of: "
                    f"{', '.join(p.relative_to(train).as_posix() for p in _data_files(train)) or '(no data files)'}, "
                    "or drop the hyperparameter to use the channel's only data file.",
                )
            out["data"] = str(inside)
        else:
            files = _data_files(train)
            if len(files) != 1:
                from job.data.prepare import LOCAL_SUFFIXES

                listed = ", ".join(p.relative_to(train).as_posix() for p in files[:10]) or "none"
                raise JobError(
                    f"The 'train' channel ({train}) holds {len(files)} data files ({listed}); one is needed.",
                    f"keep one {'/'.join(sorted(LOCAL_SUFFIXES))} file there, "
                    "or name it with the 'data' hyperparameter.",
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


def resolve_container_config(paths: ContainerPaths, environ: Mapping[str, str] | None = None) -> config.JobConfig:
    """Defaults < JOB_* environment < hyperparameters < channels, validated like the CLI's configuration."""
    hps = read_hyperparameters(paths.hyperparameters)
    values = {**hps, **channel_values(paths, hps), "run_dir": str(paths.run_dir)}
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k.startswith(config.ENV_PREFIX)}
    for name in CONTAINER_FIELDS:
        env.pop(config.ENV_PREFIX + name.upper(), None)
    return config.resolve_config(None, values, env)


def read_cluster(paths: ContainerPaths) -> Cluster:
    """The job's hosts from ``resourceconfig.json`` (one host when the file is not there)."""
    if not paths.resource_config.is_file():
        return Cluster()
    try:
        return Cluster.parse(json.loads(paths.resource_config.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise JobError(
            f"{paths.resource_config} cannot be read as SageMaker's resource configuration: {exc}.",
            'SageMaker writes it; when you lay out /opt/ml yourself, write {"current_host": "algo-1", '
            '"hosts": ["algo-1", "algo-2"]} (this host, and every host of the job in the same order on each).',
        ) from None
