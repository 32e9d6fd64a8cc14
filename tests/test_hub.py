"""Hub publishing (infra.publish.hub).

The Hub cannot be reached here, so the upload itself is tested with a local fake at the HfApi
boundary only: ``HfApi.create_repo``, ``HfApi.model_info`` and ``HfApi.upload_folder`` are
monkeypatched to record their calls. Token discovery, the fail-fast checks, the model-card check
and the scrubbing of the token from errors are the real code.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from infra.publish import hub as H
from job.errors import JobError

TOKEN = "hf_FakeTokenForTests0123456789abcdef"


@pytest.fixture()
def hub_env(monkeypatch, tmp_path):
    """Online mode, no token anywhere (HF_HOME points to an empty folder)."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf-home"
    # huggingface_hub resolves its token file once, at import (from HF_TOKEN_PATH / HF_HOME): point it here
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    return home


@pytest.fixture()
def fake_hub(monkeypatch):
    """Record HfApi calls instead of making HTTP requests; ``state`` steers the answers."""
    from huggingface_hub import HfApi

    state = SimpleNamespace(
        calls=[], public_repo=False, fail_with=None, repo_exists=False, auth_error=None,
        whoami={"name": "me", "orgs": [{"name": "my-org", "roleInOrg": "write"}],
                "auth": {"accessToken": {"role": "write"}}},
    )  # fmt: skip

    def auth_check(self, repo_id, **kw):
        import httpx
        from huggingface_hub.errors import RepositoryNotFoundError

        state.calls.append(("auth_check", self.token, repo_id, kw))
        if state.auth_error is not None:
            raise state.auth_error
        if not state.repo_exists:
            request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}/auth-check")
            raise RepositoryNotFoundError(f"{repo_id} not found", response=httpx.Response(404, request=request))

    def whoami(self, **kw):
        state.calls.append(("whoami", self.token, None, kw))
        return state.whoami

    def create_repo(self, repo_id, **kw):
        state.calls.append(("create_repo", self.token, repo_id, kw))
        return SimpleNamespace(url=f"https://huggingface.co/{repo_id}")

    def model_info(self, repo_id, **kw):
        state.calls.append(("model_info", self.token, repo_id, kw))
        return SimpleNamespace(private=not state.public_repo)

    def create_commit(self, repo_id, operations, **kw):
        state.calls.append(("create_commit", self.token, repo_id, {**kw, "operations": operations}))
        if state.fail_with is not None:
            raise state.fail_with
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123")

    monkeypatch.setattr(HfApi, "auth_check", auth_check)
    monkeypatch.setattr(HfApi, "whoami", whoami)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "model_info", model_info)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return state


# --- token discovery -----------------------------------------------------------------------------
def test_no_token_fails_fast(hub_env):
    with pytest.raises(JobError) as info:
        H.check_hub_token("me/model")
    msg = info.value.message
    assert "no token was found" in msg and str(hub_env / "token") in msg
    assert "export HF_TOKEN" in msg and "Never pass it on the command line" in msg


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_fails_fast(hub_env, monkeypatch, variable):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(JobError, match="offline mode"):
        H.check_hub_token()


def test_token_sources(hub_env, monkeypatch, fake_hub):
    hub_env.mkdir()
    (hub_env / "token").write_text(TOKEN + "-file\n")
    assert H.hub_token() == TOKEN + "-file"  # huggingface_hub's token file
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert H.hub_token() == TOKEN  # the environment variable beats it
    H.check_hub_token("me/model")
    assert [c[0] for c in fake_hub.calls] == ["auth_check", "whoami"]  # a new repo: the namespace decides


@pytest.mark.parametrize(
    "whoami, repo, problem",
    [
        ({"name": "me", "orgs": [], "auth": {"accessToken": {"role": "read"}}}, "me/model", "read-only"),
        ({"name": "me", "orgs": [], "auth": {"accessToken": {"role": "write"}}}, "other-org/model",
         "not a member of 'other-org'"),
        ({"name": "me", "orgs": [{"name": "org", "roleInOrg": "read"}], "auth": {"accessToken": {"role": "write"}}},
         "org/m", "read-only access to the organisation"),
        (
            {"name": "me", "orgs": [], "auth": {"accessToken": {"role": "fineGrained", "fineGrained": {"scoped": [
                {"entity": {"name": "me"}, "permissions": ["repo.content.read"]}]}}}},
            "me/model", "no 'repo.write' permission",
        ),
    ],
)  # fmt: skip
def test_token_that_cannot_write_is_refused_before_training(hub_env, monkeypatch, fake_hub, whoami, repo, problem):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.whoami = whoami
    with pytest.raises(JobError, match=problem):
        H.check_hub_token(repo)


def test_existing_repo_is_checked_with_auth_check(hub_env, monkeypatch, fake_hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.repo_exists = True
    H.check_hub_token("me/model")
    assert fake_hub.calls[0][0] == "auth_check" and fake_hub.calls[0][3]["write"] is True
    assert "whoami" not in [c[0] for c in fake_hub.calls]
    fake_hub.auth_error = _http_error(403, f"403 Forbidden: token {TOKEN} cannot write")
    with pytest.raises(JobError, match="403 Forbidden") as info:
        H.check_hub_token("me/model")
    assert TOKEN not in info.value.message


def test_network_error_message_reads_as_sentences(hub_env, monkeypatch, fake_run_dir, fake_hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.fail_with = RuntimeError("[Errno -2] Name or service not known")
    with pytest.raises(JobError) as info:
        H.publish_hub(fake_run_dir, "me/tiny-embed")
    msg = info.value.message
    assert "not known. Fix: check the network" in msg and ".." not in msg and "--debug" not in msg


def test_token_path_that_does_not_exist(hub_env, monkeypatch, tmp_path):  # checked by us: the library just finds none
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(JobError, match=r"HF_TOKEN_PATH points to .*missing, which is not a file"):
        H.check_hub_token()


def test_bad_repo_id(hub_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(JobError, match="is not a valid Hub repo id"):
        H.check_hub_token("not a/valid//id")


def test_scrub():
    assert H.scrub(f"Bearer {TOKEN} failed", TOKEN) == "Bearer *** failed"
    assert H.scrub("leaked hf_abcdefghijklmnop here") == "leaked hf_*** here"


# --- publishing (fake HfApi) ---------------------------------------------------------------------
def test_publish_hub_uploads_model_folder(hub_env, monkeypatch, fake_run_dir, fake_hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    pub = H.publish_hub(fake_run_dir, "me/tiny-embed")
    assert pub.url == "https://huggingface.co/me/tiny-embed" and pub.private is True
    assert pub.commit_url.endswith("/commit/abc123")
    names = [c[0] for c in fake_hub.calls]
    assert names == ["create_repo", "model_info", "create_commit"]
    assert all(c[1] == TOKEN for c in fake_hub.calls)  # the token goes to the client, nowhere else
    create = fake_hub.calls[0][3]
    assert create["private"] is True and create["exist_ok"] is True and create["repo_type"] == "model"
    upload = fake_hub.calls[2][3]
    sent = {op.path_in_repo: op for op in upload["operations"]}
    local = {
        p.relative_to(fake_run_dir / "model").as_posix() for p in (fake_run_dir / "model").rglob("*") if p.is_file()
    }
    assert set(sent) == local
    assert "(run run-a-" in upload["commit_message"]


def test_exports_are_published_with_the_model(hub_env, monkeypatch, fake_run_dir, fake_hub):
    """`job export` writes into model/, so the Hub gets the files `backend="onnx"` loads by name."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    (fake_run_dir / "model" / "onnx").mkdir()
    for name in ("onnx/model.onnx", "onnx/model_qint8_avx512_vnni.onnx", "exports.json"):
        (fake_run_dir / "model" / name).write_bytes(b"stand-in")
    H.publish_hub(fake_run_dir, "me/tiny-embed")
    sent = {op.path_in_repo for op in fake_hub.calls[2][3]["operations"]}
    assert {"onnx/model.onnx", "onnx/model_qint8_avx512_vnni.onnx", "exports.json"} <= sent


def test_publish_hub_public(hub_env, monkeypatch, fake_run_dir, fake_hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.public_repo = True
    assert H.publish_hub(fake_run_dir, "me/open", private=False).private is False
    assert [c[0] for c in fake_hub.calls] == ["create_repo", "create_commit"]
    assert fake_hub.calls[0][3]["private"] is False


def test_private_push_into_an_existing_public_repo_is_refused(hub_env, monkeypatch, fake_run_dir, fake_hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.public_repo = True
    with pytest.raises(JobError, match="already exists and is public"):
        H.publish_hub(fake_run_dir, "me/open")
    assert "create_commit" not in [c[0] for c in fake_hub.calls]


def test_missing_token_stops_before_any_hub_call(hub_env, fake_run_dir, fake_hub):
    with pytest.raises(JobError, match="no token was found"):
        H.publish_hub(fake_run_dir, "me/tiny-embed")
    assert fake_hub.calls == []


def test_card_without_evaluation_is_refused(hub_env, monkeypatch, fake_run_dir, fake_hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    (fake_run_dir / "model" / "README.md").write_text("# a card without results\n")
    with pytest.raises(JobError, match="does not carry the evaluation table.*job evaluate"):
        H.publish_hub(fake_run_dir, "me/tiny-embed")
    assert fake_hub.calls == []


def _http_error(status: int, message: str):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx.Request(
        "POST", "https://huggingface.co/api/repos/create", headers={"authorization": f"Bearer {TOKEN}"}
    )
    return HfHubHTTPError(message, response=httpx.Response(status, request=request))


@pytest.mark.parametrize(
    "error, expected",
    [
        (lambda: _http_error(401, f"401 Unauthorized for token {TOKEN}"), "rejected the token (401 Unauthorized)"),
        (lambda: _http_error(403, f"403 Forbidden: token {TOKEN} cannot write"), "403 Forbidden"),
        (
            lambda: RuntimeError(f"connection reset while sending Authorization: Bearer {TOKEN}"),
            "failed: connection reset",
        ),
    ],
)
def test_token_never_appears_in_errors(hub_env, monkeypatch, fake_run_dir, fake_hub, error, expected):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.fail_with = error()
    with pytest.raises(JobError) as info:
        H.publish_hub(fake_run_dir, "me/tiny-embed")
    assert expected in info.value.message
    assert TOKEN not in info.value.message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no traceback chain holding it


def test_push_command_hub(hub_env, monkeypatch, fake_run_dir, fake_hub, capsys):
    """`job push --hub-repo`: the token comes from the environment, never appears in the output."""
    from infra.publish.cli import push
    from job import cli

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setitem(cli.cli.commands, "push", push)
    assert cli.main(["push", "--run-dir", str(fake_run_dir), "--hub-repo", "me/tiny-embed"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == f"push: {fake_run_dir} -> Hub https://huggingface.co/me/tiny-embed (private)"
    assert TOKEN not in out + err
    fake_hub.fail_with = _http_error(401, f"bad token {TOKEN}")
    assert cli.main(["push", "--run-dir", str(fake_run_dir), "--hub-repo", "me/tiny-embed", "--public"]) == 2
    out, err = capsys.readouterr()
    assert "error: The Hub rejected the token" in err and TOKEN not in out + err


def test_pushed_card_loads_the_model_from_its_repo(hub_env, monkeypatch, fake_run_dir, fake_hub):
    from job.evaluate.card import MODEL_ID_PLACEHOLDER

    card = fake_run_dir / "model" / "README.md"
    card.write_text(card.read_text() + f'\nmodel = SentenceTransformer("{MODEL_ID_PLACEHOLDER}", truncate_dim=16)\n')
    before = card.read_text()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    H.publish_hub(fake_run_dir, "me/tiny-embed")
    readme = next(op for op in fake_hub.calls[-1][3]["operations"] if op.path_in_repo == "README.md")
    sent = (
        readme.path_or_fileobj.read().decode()
        if hasattr(readme.path_or_fileobj, "read")
        else readme.path_or_fileobj.decode()
    )
    assert 'SentenceTransformer("me/tiny-embed", truncate_dim=16)' in sent and MODEL_ID_PLACEHOLDER not in sent
    assert card.read_text() == before  # the run's own card is unchanged (its S3 publication stays the same)
