"""Push a finished run's model (with its evaluation card) to the Hugging Face Hub.

The token is huggingface_hub's own (:func:`huggingface_hub.get_token`): the ``HF_TOKEN``
environment variable, else the token file (``HF_TOKEN_PATH``, else ``$HF_HOME/token``, which
``hf auth login`` writes). It is never taken from the command line, never printed, and scrubbed from
every error message. Before any training, :func:`check_hub_token` proves the token can *write*
the repo (``HfApi.auth_check(write=True)`` for an existing repo, the token's role and organisations
for a new one), so a read-only token fails in seconds, not after the run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from job.errors import JobError
from job.layout import CARD_MARK
from job.models import hub_offline

_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


@dataclass
class HubPublication:
    repo_id: str
    url: str
    commit_url: str | None
    private: bool


def token_file() -> Path:
    """Where huggingface_hub reads the token file from (``HF_TOKEN_PATH`` or ``$HF_HOME/token``)."""
    from huggingface_hub import constants

    return Path(constants.HF_TOKEN_PATH)


def hub_token() -> str | None:
    """The Hub token as huggingface_hub finds it, or None."""
    from huggingface_hub import get_token

    explicit = os.environ.get("HF_TOKEN_PATH", "").strip()
    if explicit and not os.environ.get("HF_TOKEN", "").strip() and not Path(explicit).expanduser().is_file():
        raise JobError(
            f"HF_TOKEN_PATH points to {Path(explicit).expanduser()}, which is not a file.",
            "write the Hub token into that file (one line), or unset HF_TOKEN_PATH and set HF_TOKEN.",
        )
    return get_token()


def scrub(text: str, token: str | None = None) -> str:
    """``text`` with the token (and anything that looks like a Hub token) replaced by ``***``."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


def check_hub_token(repo_id: str | None = None, *, check_write: bool = True) -> None:
    """Fail fast, before training, when a Hub push is requested but cannot work: offline mode on, no
    token, a malformed repo id, or (one request to the Hub) a token that cannot write the repo."""
    if hub_offline():
        raise JobError(
            "Pushing to the Hugging Face Hub was requested, but offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) "
            "forbids network access.",
            "unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE (the offline demo sets HF_HUB_OFFLINE) or drop --hub-repo.",
        )
    token = hub_token()
    if not token:
        raise JobError(
            f"Pushing to the Hugging Face Hub was requested, but no token was found (HF_TOKEN is unset and "
            f"{token_file()} does not exist).",
            "create a write token at https://huggingface.co/settings/tokens and export HF_TOKEN, or store it with "
            "`hf auth login` (or in a file named by HF_TOKEN_PATH). Never pass it on the command line.",
        )
    if repo_id is not None:
        _validate_repo_id(repo_id)
        if check_write:
            check_write_access(repo_id, token)


def check_write_access(repo_id: str, token: str) -> None:
    """A JobError unless ``token`` may write ``repo_id`` (or create it, when it does not exist yet)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(token=token)
    try:
        api.auth_check(repo_id, repo_type="model", write=True)
        return
    except RepositoryNotFoundError:
        pass  # a new repo (or one this token cannot see): the namespace decides
    except Exception as exc:  # noqa: BLE001 - 401/403/network, with the token scrubbed
        raise _hub_error(exc, repo_id, token, "checking write access to") from None
    try:
        me = api.whoami()
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(exc, repo_id, token, "checking write access to") from None
    namespace = repo_id.split("/")[0] if "/" in repo_id else me.get("name")
    access = (me.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        raise JobError(
            f"The Hub token is read-only, so it cannot create {repo_id}.",
            "create a token with write access at https://huggingface.co/settings/tokens and use it (HF_TOKEN).",
        )
    orgs = {o.get("name"): o.get("roleInOrg") for o in me.get("orgs") or []}
    if namespace != me.get("name") and namespace not in orgs:
        raise JobError(
            f"The Hub token's user ({me.get('name')}) is not a member of '{namespace}', so it cannot create {repo_id}.",
            f"push to your own namespace ({me.get('name')}/NAME) or to an organisation you belong to.",
        )
    if orgs.get(namespace) == "read":
        raise JobError(
            f"The Hub token's user has read-only access to the organisation '{namespace}'.",
            "ask an organisation admin for write access, or push to your own namespace.",
        )
    if role == "fineGrained":
        scoped = (access.get("fineGrained") or {}).get("scoped") or []
        allowed = any(
            (s.get("entity") or {}).get("name") == namespace and "repo.write" in (s.get("permissions") or [])
            for s in scoped
        )
        if not allowed:
            raise JobError(
                f"The fine-grained Hub token has no 'repo.write' permission on '{namespace}', "
                f"so it cannot create {repo_id}.",
                "edit the token at https://huggingface.co/settings/tokens to allow writing repos in that namespace.",
            )


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise JobError(
            f"'{repo_id}' is not a valid Hub repo id ({exc}).", "use NAMESPACE/NAME, e.g. my-org/bge-finance."
        ) from None


def _model_files(model_dir: Path, repo_id: str) -> list:
    """One commit with every file of ``model/``; the card's usage snippets load the model from ``repo_id``
    (the run's own README.md is left as it is, so its S3 publication stays the same content)."""
    from huggingface_hub import CommitOperationAdd

    from job.evaluate.card import MODEL_ID_PLACEHOLDER

    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
    ops = []
    for p in files:
        rel = p.relative_to(model_dir).as_posix()
        if rel == "README.md":
            ops.append(CommitOperationAdd(rel, p.read_text().replace(MODEL_ID_PLACEHOLDER, repo_id).encode()))
        else:
            ops.append(CommitOperationAdd(rel, str(p)))
    return ops


def _hub_error(exc: Exception, repo_id: str, token: str, doing: str = "pushing to") -> JobError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, token)
    if status == 401:
        return JobError(
            f"The Hub rejected the token (401 Unauthorized) while {doing} {repo_id}.",
            "check HF_TOKEN / the token file: it must be a valid token with write access.",
        )
    if status == 403:
        return JobError(
            f"The token may not create or write {repo_id} (403 Forbidden): {detail}",
            "use a token with write access to that namespace (fine-grained tokens need repo write permission).",
        )
    return JobError(
        f"{doing.capitalize()} the Hub repo {repo_id} failed: {detail}.",
        "check the network connection to huggingface.co and retry: the run directory is kept, and "
        "`job push --run-dir RUN --hub-repo REPO` publishes it again.",
    )


def publish_hub(run_dir, repo_id: str, private: bool = True, *, commit_message: str | None = None) -> HubPublication:
    """Create the model repo (``private`` by default) and upload ``model/`` with its evaluation card.

    Refuses to push into an existing *public* repo when ``private`` is asked for.
    """
    from huggingface_hub import HfApi

    from infra.publish.bundle import run_id_for, run_root

    check_hub_token(repo_id, check_write=False)  # the upload itself is the proof now
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
        commit = api.create_commit(
            repo_id, operations=_model_files(model_dir, repo_id), commit_message=message, repo_type="model"
        )
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything from the Hub client, with the token scrubbed
        raise _hub_error(exc, repo_id, token) from None
    url = str(getattr(repo_url, "url", repo_url) or f"https://huggingface.co/{repo_id}")
    return HubPublication(repo_id, url, getattr(commit, "commit_url", None), private)
