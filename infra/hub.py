"""Push a finished run's model (with its evaluation card) to the Hugging Face Hub.

The token is read only from the ``HF_TOKEN`` environment variable or a secret file
(``HF_TOKEN_PATH``, else the standard ``$HF_HOME/token``, by default
``~/.cache/huggingface/token``, which ``hf auth login`` writes). It is never taken from the
command line, never printed, and scrubbed from every error message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from job.errors import JobError
from job.layout import CARD_MARK

_TRUE = {"1", "true", "yes", "on"}
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


@dataclass
class HubPublication:
    repo_id: str
    url: str
    commit_url: str | None
    private: bool


def _standard_token_file() -> Path:
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return Path(hf_home).expanduser() / "token"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface" / "token"


def _token_and_source() -> tuple[str | None, str]:
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env, "HF_TOKEN"
    explicit = os.environ.get("HF_TOKEN_PATH", "").strip()
    path = Path(explicit).expanduser() if explicit else _standard_token_file()
    if explicit and not path.is_file():
        raise JobError(
            f"HF_TOKEN_PATH points to {path}, which is not a file.",
            "write the Hub token into that file (one line), or unset HF_TOKEN_PATH and set HF_TOKEN.",
        )
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token, str(path)
        if explicit:
            raise JobError(f"The token file {path} (HF_TOKEN_PATH) is empty.", "write the Hub token into it.")
    return None, str(path)


def hub_token() -> str | None:
    """The Hub token from HF_TOKEN or the token file, or None."""
    return _token_and_source()[0]


def scrub(text: str, token: str | None = None) -> str:
    """``text`` with the token (and anything that looks like a Hub token) replaced by ``***``."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


def check_hub_token(repo_id: str | None = None) -> None:
    """Fail fast, before training, when a Hub push is requested but cannot work: no token, offline
    mode on, or a malformed repo id. Makes no network request."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        raise JobError(
            "Pushing to the Hugging Face Hub was requested, but HF_HUB_OFFLINE=1 forbids network access.",
            "unset HF_HUB_OFFLINE (the offline demo sets it) or drop --hub-repo.",
        )
    token, where = _token_and_source()
    if not token:
        raise JobError(
            "Pushing to the Hugging Face Hub was requested, but no token was found (HF_TOKEN is unset and "
            f"{where} does not exist).",
            "create a write token at https://huggingface.co/settings/tokens and export HF_TOKEN, or store it with "
            "`hf auth login` (or in a file named by HF_TOKEN_PATH). Never pass it on the command line.",
        )
    if repo_id is not None:
        _validate_repo_id(repo_id)


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise JobError(f"'{repo_id}' is not a valid Hub repo id ({exc}).", "use NAMESPACE/NAME, e.g. my-org/bge-finance.") from None


def _hub_error(exc: Exception, repo_id: str, token: str) -> JobError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, token)
    if status == 401:
        return JobError(
            f"The Hub rejected the token (401 Unauthorized) while pushing to {repo_id}.",
            "check HF_TOKEN / the token file: it must be a valid token with write access.",
        )
    if status == 403:
        return JobError(
            f"The token may not create or write {repo_id} (403 Forbidden): {detail}",
            "use a token with write access to that namespace (fine-grained tokens need repo write permission).",
        )
    return JobError(f"Pushing to the Hub repo {repo_id} failed: {detail}", "retry; re-run with --debug for details.")


def publish_hub(run_dir, repo_id: str, private: bool = True, *, commit_message: str | None = None) -> HubPublication:
    """Create the model repo (``private`` by default) and upload ``model/`` with its evaluation card.

    Refuses to push into an existing *public* repo when ``private`` is asked for.
    """
    from huggingface_hub import HfApi

    from infra.run_bundle import run_id_for, run_root

    check_hub_token(repo_id)
    root = run_root(run_dir)
    model_dir = root / "model"
    card = model_dir / "README.md"
    if not card.is_file() or CARD_MARK not in card.read_text(errors="replace"):
        raise JobError(
            f"{card} does not carry the evaluation table yet.",
            f"run `job evaluate --run-dir {root}` first (it adds the held-out results to the model card).",
        )
    token = hub_token()
    assert token  # check_hub_token guarantees it
    message = commit_message or f"Upload fine-tuned embedding model (run {run_id_for(root)})"
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if private:
            info = api.model_info(repo_id)
            if getattr(info, "private", None) is False:
                raise JobError(
                    f"The Hub repo {repo_id} already exists and is public, but a private push was asked for.",
                    "make the repo private on the Hub, push elsewhere, or pass --public to publish it openly.",
                )
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(model_dir), repo_type="model", commit_message=message, ignore_patterns=["*.tmp"]
        )
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything from the Hub client, with the token scrubbed
        raise _hub_error(exc, repo_id, token) from None
    url = str(getattr(repo_url, "url", repo_url) or f"https://huggingface.co/{repo_id}")
    return HubPublication(repo_id, url, getattr(commit, "commit_url", None), private)
