"""What a SageMaker job is given: channels (local inputs uploaded once per content, ``s3://`` URIs as
they are) and hyperparameters (every configuration value that differs from its default, as strings).

Local ``data`` / ``eval_data`` / ``model`` go to ``s3://BUCKET/PREFIX/inputs/<channel>-<content digest>/``
(:func:`plan_inputs`), or, for the SDK's local mode, are the channel folders themselves
(:func:`plan_local_inputs`); a Hub id or ``embedded`` travels as a hyperparameter and is resolved in
the container."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.container import contract
from infra.publish import s3
from job import config
from job.errors import JobError

Echo = Callable[[str], None]


CHANNEL_FIELDS = {"data": contract.TRAIN, "eval_data": contract.EVAL, "model": contract.BASE_MODEL}


# --- inputs --------------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    """A short content digest of a file or folder tree (names and bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() if p != path else p.name.encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


@dataclass
class InputPlan:
    channels: dict[str, str]  # channel -> s3 URI (a SageMaker job) or local folder (local mode)
    uploads: list[tuple[Path, str]]  # local path -> s3 URI (a prefix for folders, the object for files)
    hyperparameters: dict[str, Any]  # data/eval_data/model values that go as hyperparameters
    local: dict[str, Path] = field(default_factory=dict)  # channel -> the local file or folder it comes from


@dataclass
class Input:
    """One of data / eval_data / model: a local path, an s3:// URI, or a value the container resolves."""

    name: str
    channel: str
    kind: str  # "local", "s3" or "value"
    value: str
    path: Path | None = None


def classify_inputs(cfg: config.JobConfig) -> list[Input]:
    """data / eval_data / model, checked: a missing local path or an unknown data format is an error."""
    out: list[Input] = []
    for name, channel in CHANNEL_FIELDS.items():
        value = getattr(cfg, name)
        if value is None or (name == "model" and value == config.AUTO_MODEL):
            continue  # no eval set / the container's own default model
        if value.startswith("s3://"):
            s3.parse_s3_uri(value)
            out.append(Input(name, channel, "s3", value))
            continue
        local = Path(value).expanduser()
        if local.is_file() and name == "data" and local.suffix.lower() not in _data_suffixes():
            raise JobError(
                f"Cannot tell the format of {local} from its extension '{local.suffix}'.",
                f"use one of {', '.join(sorted(_data_suffixes()))}.",
            )
        if local.exists():
            out.append(Input(name, channel, "local", value, local))
            continue
        if name == "eval_data":
            raise JobError(f"--eval-data {value} does not exist.", "pass a local BEIR folder or an s3:// URI.")
        if name == "model" and (value.startswith(("/", ".", "~")) or value.count("/") > 1):
            raise JobError(
                f"Model path {value} does not exist.", "pass a local model folder, an s3:// URI or a Hub id."
            )
        if name == "data" and Path(value).suffix.lower() in _data_suffixes():
            raise JobError(
                f"Data file {value} does not exist.", "check the path given to --data, or pass an s3:// URI."
            )
        out.append(Input(name, channel, "value", value))  # a Hub id (or 'embedded' / 'bundled:...')
    return out


def plan_inputs(cfg: config.JobConfig, bucket: str, prefix: str) -> InputPlan:
    """Which of data / eval_data / model become channels (uploaded or S3) and which travel as hyperparameters."""
    plan = InputPlan({}, [], {})
    for item in classify_inputs(cfg):
        if item.kind == "s3":
            plan.channels[item.channel] = item.value
            if item.name == "data" and Path(item.value).suffix.lower() in _data_suffixes():
                plan.hyperparameters["data"] = item.value.rstrip("/").rsplit("/", 1)[-1]
        elif item.kind == "local":
            assert item.path is not None  # classify_inputs sets it for every local input
            local = item.path
            uri = f"s3://{bucket}/{s3.join_key(prefix, 'inputs', f'{item.channel}-{_digest(local)}')}/"
            plan.channels[item.channel] = uri
            plan.uploads.append((local, uri))
            plan.local[item.channel] = local
            if local.is_file() and item.name == "data":
                plan.hyperparameters["data"] = local.name
        else:
            plan.hyperparameters[item.name] = item.value  # resolved in the container
    return plan


def plan_local_inputs(cfg: config.JobConfig, stage: Path | None = None) -> InputPlan:
    """The same plan for the SDK's local mode: channels are local folders. A data FILE becomes a
    channel folder holding a copy of it, staged under ``stage`` (with ``stage`` None nothing is
    written and the channel names the file itself). s3:// inputs are refused: local mode would
    download them with your AWS credentials, which this launcher keeps out of the local run."""
    plan = InputPlan({}, [], {})
    for item in classify_inputs(cfg):
        if item.kind == "s3":
            flag = {"data": "--data", "eval_data": "--eval-data", "model": "--model"}[item.name]
            raise JobError(
                f"{flag} {item.value}: a local run takes local files and folders, not s3:// URIs.",
                f"download it first (aws s3 cp --recursive {item.value} DIR) and pass DIR, or run it on SageMaker "
                "(`job launch sagemaker`).",
            )
        if item.kind == "value":
            plan.hyperparameters[item.name] = item.value
            continue
        assert item.path is not None  # classify_inputs sets it for every local input
        local = item.path.resolve()
        plan.local[item.channel] = local
        folder = local
        if local.is_file() and stage is not None:
            folder = stage / item.channel
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, folder / local.name)  # a copy: readable by the container's user
        if local.is_file() and item.name == "data":
            plan.hyperparameters["data"] = local.name
        plan.channels[item.channel] = str(folder)
    return plan


def _data_suffixes() -> set[str]:
    from job.data.prepare import LOCAL_SUFFIXES

    return set(LOCAL_SUFFIXES)


def upload_inputs(plan: InputPlan, echo: Echo, client=None) -> None:
    """Upload what the plan names; a prefix that already holds the same files (same digest) is reused."""
    client = client or s3.s3_client()
    for local, uri in plan.uploads:
        bucket, prefix = s3.parse_s3_uri(uri)
        have = {o["Key"]: o["Size"] for o in s3.iter_objects(client, bucket, prefix)} if _bucket_ok(uri, client) else {}
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        want = {
            s3.join_key(prefix, p.name if p == local else p.relative_to(local).as_posix()): p.stat().st_size
            for p in files
        }
        if want and all(have.get(k) == size for k, size in want.items()):
            echo(f"launch: {local} is already at {uri} (same content), not uploading again")
            continue
        written = s3.upload_path(local, uri, client)
        echo(f"launch: uploaded {local} -> {uri} ({len(written)} file{'s' if len(written) != 1 else ''})")


def _bucket_ok(uri: str, client) -> bool:
    s3.check_bucket(uri, client)  # a clear error for a missing bucket or bad credentials
    return True


# --- hyperparameters -----------------------------------------------------------------------------
def _as_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_as_string(v) for v in value)
    if value is None:
        return "None"
    return str(value)


def hyperparameters_for(cfg: config.JobConfig, plan: InputPlan, gpus: int | None = None) -> dict[str, str]:
    """The configuration as SageMaker hyperparameters: every value that differs from its default,
    except the channels and the local-only fields, as strings. On an instance with several GPUs,
    ``nproc`` says how many training processes torchrun starts (one per GPU) unless it is set."""
    out: dict[str, str] = {}
    if gpus and gpus > 1 and cfg.nproc == config.FIELDS["nproc"].default:
        out["nproc"] = str(gpus)
    defaults = config.JobConfig()
    for name in config.FIELDS:
        if name in config.LOCAL_FIELDS or name in CHANNEL_FIELDS:
            continue
        value = getattr(cfg, name)
        if value != getattr(defaults, name):
            out[name] = _as_string(value)
    out.update({k: _as_string(v) for k, v in plan.hyperparameters.items()})
    for key, value in out.items():
        if len(value) > 256:
            raise JobError(
                f"The value of '{key}' is {len(value)} characters; SageMaker allows 256 per hyperparameter.",
                "shorten it.",
            )
    return dict(sorted(out.items()))
