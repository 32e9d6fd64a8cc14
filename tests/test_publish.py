"""Publishing a run directory to S3 (infra.publish.s3_publish), against a real SeaweedFS server on loopback.

Failures are real where they can be (wrong keys, missing bucket, an object rewritten behind our
back); "the network dies mid-upload" is simulated by making the third file upload raise.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from conftest import make_run_dir

from infra.publish import bundle as run_bundle
from infra.publish import s3
from infra.publish import s3_publish as publish
from job.errors import JobError

MiB = 1024 * 1024
EXPECTED_PATHS = [
    "baseline/metrics.json",
    "data/prepare.json",
    "model/1_Pooling/config.json",
    "model/README.md",
    "model/config.json",
    "model/model.safetensors",
    "model/training.json",
    "report/metrics.json",
    "report/report.md",
]


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in s3.iter_objects(client, bucket, prefix))


def _manifest(client, bucket: str, pub: publish.S3Publication) -> dict:
    _, key = s3.parse_s3_uri(pub.manifest_uri)
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


# --- the run (no server) -------------------------------------------------------------------------
def test_run_files_and_run_id(fake_run_dir, tmp_path):
    files = run_bundle.run_files(fake_run_dir)
    assert [f.path for f in files] == EXPECTED_PATHS  # no checkpoints, no training pairs
    weights = next(f for f in files if f.path == "model/model.safetensors")
    assert weights.sha256 == hashlib.sha256((fake_run_dir / "model/model.safetensors").read_bytes()).hexdigest()

    run_id = run_bundle.run_id_for(fake_run_dir)
    assert run_id.startswith("run-a-") and len(run_id) == len("run-a-") + 12
    assert run_bundle.run_id_for(fake_run_dir) == run_id  # deterministic
    other = make_run_dir(tmp_path / "elsewhere", ndcg=0.9)  # same name, different results
    assert run_bundle.run_id_for(other) != run_id


def test_unfinished_run_is_refused(fake_run_dir):
    (fake_run_dir / "report" / "metrics.json").unlink()
    with pytest.raises(JobError, match=r"is not a finished run: .*report/metrics.json is missing.*job evaluate"):
        run_bundle.run_files(fake_run_dir)


# --- publishing ----------------------------------------------------------------------------------
def test_publish_writes_files_and_manifest(s3_env, s3_bucket, fake_run_dir):
    client = s3.s3_client()
    pub = publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/models/", client=client)
    run_id = run_bundle.run_id_for(fake_run_dir)
    assert pub.run_id == run_id and pub.status == "published"
    assert pub.uri == f"s3://{s3_bucket}/models/{run_id}/"
    assert _keys(client, s3_bucket) == sorted(
        [f"models/{run_id}/{p}" for p in EXPECTED_PATHS] + [f"models/{run_id}/manifest.json"]
    )

    manifest = _manifest(client, s3_bucket, pub)
    assert manifest["run_id"] == run_id and manifest["file_count"] == len(EXPECTED_PATHS)
    for entry in manifest["files"]:
        body = client.get_object(Bucket=s3_bucket, Key=f"models/{run_id}/{entry['path']}")["Body"].read()
        assert entry["size"] == len(body)
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    assert manifest["metrics"]["ndcg@10"]["32"] == {
        "baseline": 0.7,
        "finetuned": 0.8,
        "improvement_pct": pytest.approx(100 / 7),
    }
    assert manifest["metrics"]["training"]["train_pairs"] == 40
    # SeaweedFS keeps the SHA-256 it checked on upload, so no object had to be downloaded
    assert manifest["checksum_verification"]["by_method"] == {"checksum-sha256": len(EXPECTED_PATHS)}
    assert manifest["created"].endswith("+00:00")


def test_republishing_the_same_run_is_idempotent(s3_env, s3_bucket, fake_run_dir):
    client = s3.s3_client()
    first = publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/m", client=client)
    manifest = _manifest(client, s3_bucket, first)
    again = publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/m", client=client)
    assert again.status == "already published" and again.uri == first.uri
    assert _manifest(client, s3_bucket, again) == manifest  # not rewritten (same created time)


def test_a_different_run_under_the_same_prefix_is_refused(s3_env, s3_bucket, tmp_path):
    client = s3.s3_client()
    first = make_run_dir(tmp_path / "one")
    pub = publish.publish_s3(first, f"s3://{s3_bucket}/m", client=client)
    before = {k: client.get_object(Bucket=s3_bucket, Key=k)["Body"].read() for k in _keys(client, s3_bucket)}

    # Same run name and records (so the same run-id), different weights: different content.
    second = make_run_dir(tmp_path / "two", weights=b"other weights")
    assert run_bundle.run_id_for(second) == pub.run_id
    with pytest.raises(JobError, match=r"already holds a different published run .* left untouched"):
        publish.publish_s3(second, f"s3://{s3_bucket}/m", client=client)
    # ...also when a run-id is forced onto a different run
    third = make_run_dir(tmp_path / "three", name="run-b", ndcg=0.9)
    with pytest.raises(JobError, match="already holds a different published run"):
        publish.publish_s3(third, f"s3://{s3_bucket}/m", client=client, run_id=pub.run_id)
    after = {k: client.get_object(Bucket=s3_bucket, Key=k)["Body"].read() for k in _keys(client, s3_bucket)}
    assert after == before


def test_failed_upload_leaves_no_manifest_and_can_be_resumed(s3_env, s3_bucket, fake_run_dir, monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    client = s3.s3_client()
    real_upload = s3.upload_file
    calls = []

    def flaky_upload(path, bucket, key, client, **kwargs):
        calls.append(key)
        if len(calls) == 3:
            exc = EndpointConnectionError(endpoint_url=s3_env.endpoint)
            raise s3.translate_error(exc, bucket, key, s3_env.endpoint, "upload to") from exc
        return real_upload(path, bucket, key, client, **kwargs)

    monkeypatch.setattr(s3, "upload_file", flaky_upload)
    with pytest.raises(JobError, match="Could not connect to the S3 endpoint"):
        publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/m", client=client)
    run_id = run_bundle.run_id_for(fake_run_dir)
    keys = _keys(client, s3_bucket)
    assert len(keys) == 2 and f"m/{run_id}/manifest.json" not in keys  # partial upload, not published
    # a stray object from an interrupted upload of other content under the same prefix
    client.put_object(Bucket=s3_bucket, Key=f"m/{run_id}/model/stale.bin", Body=b"stale")

    monkeypatch.setattr(s3, "upload_file", real_upload)
    messages = []
    pub = publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/m", client=client, echo=messages.append)
    assert pub.status == "published"
    assert any("holds objects but no manifest" in m for m in messages)
    assert _keys(client, s3_bucket) == sorted(
        [f"m/{run_id}/{p}" for p in EXPECTED_PATHS] + [f"m/{run_id}/manifest.json"]
    )


def test_checksum_verification_catches_a_corrupted_object(s3_env, s3_bucket, fake_run_dir, monkeypatch):
    """An object that changes between upload and verification: no manifest, a clear error."""
    client = s3.s3_client()
    real_upload = s3.upload_file
    run_id = run_bundle.run_id_for(fake_run_dir)
    size = (fake_run_dir / "model/model.safetensors").stat().st_size

    def upload_then_corrupt(path, bucket, key, client, **kwargs):
        uri = real_upload(path, bucket, key, client, **kwargs)
        if key.endswith("model.safetensors"):  # same size, other bytes, written with its own checksum
            client.put_object(Bucket=bucket, Key=key, Body=b"\0" * size, ChecksumAlgorithm="SHA256")
        return uri

    monkeypatch.setattr(s3, "upload_file", upload_then_corrupt)
    with pytest.raises(JobError, match=r"Checksum verification failed .*model/model.safetensors differ.*No manifest"):
        publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/m", client=client)
    assert f"m/{run_id}/manifest.json" not in _keys(client, s3_bucket)


def test_verify_object_by_checksum_and_by_download(s3_env, s3_bucket, fake_run_dir):
    client = s3.s3_client()
    pub = publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/m", client=client)
    key = f"m/{pub.run_id}/model/model.safetensors"
    f = next(f for f in run_bundle.run_files(fake_run_dir) if f.path == "model/model.safetensors")
    assert publish.verify_object(client, s3_bucket, key, f) == (True, "checksum-sha256")

    corrupt = bytearray((fake_run_dir / f.path).read_bytes())
    corrupt[100] ^= 0xFF  # one flipped byte
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(corrupt), ChecksumAlgorithm="SHA256")
    assert publish.verify_object(client, s3_bucket, key, f) == (False, "checksum-sha256")
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(corrupt))  # no SHA-256 stored: read it back
    assert publish.verify_object(client, s3_bucket, key, f) == (False, "download-sha256")

    # publishing again notices the damage under an existing manifest and repairs the run
    messages = []
    again = publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/m", client=client, echo=messages.append)
    assert again.status == "republished" and any("do not match the manifest" in m for m in messages)
    assert publish.verify_object(client, s3_bucket, key, f) == (True, "checksum-sha256")


def test_republishing_restores_a_deleted_object(s3_env, s3_bucket, fake_run_dir):
    client = s3.s3_client()
    pub = publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/m", client=client)
    key = f"m/{pub.run_id}/report/report.md"
    client.delete_object(Bucket=s3_bucket, Key=key)
    f = next(f for f in run_bundle.run_files(fake_run_dir) if f.path == "report/report.md")
    assert publish.verify_object(client, s3_bucket, key, f) == (False, "missing")
    assert publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/m", client=client).status == "republished"
    assert publish.verify_object(client, s3_bucket, key, f) == (True, "checksum-sha256")


def test_multipart_objects_verify_by_composite_checksum(s3_env, s3_bucket, tmp_path):
    run = make_run_dir(tmp_path, weights=os.urandom(9 * MiB))
    client = s3.s3_client()
    config = s3.transfer_config(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    pub = publish.publish_s3(run, f"s3://{s3_bucket}/m", client=client, config=config)
    head = client.head_object(Bucket=s3_bucket, Key=f"m/{pub.run_id}/model/model.safetensors", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].endswith("-2")  # 5 MiB + 4 MiB parts
    assert pub.verification == {"checksum-sha256": len(EXPECTED_PATHS) - 1, "checksum-sha256-composite": 1}


def test_missing_bucket_writes_nothing(s3_env, fake_run_dir):
    client = s3.s3_client()
    buckets = [b["Name"] for b in client.list_buckets()["Buckets"]]
    with pytest.raises(JobError, match=f"The bucket 'absent-bucket' does not exist at {s3_env.endpoint}"):
        publish.publish_s3(fake_run_dir, "s3://absent-bucket/models", client=client)
    assert [b["Name"] for b in client.list_buckets()["Buckets"]] == buckets


def test_wrong_credentials_write_nothing(s3_env, s3_bucket, fake_run_dir, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-5678")
    with pytest.raises(JobError) as info:
        publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/models")
    assert "rejected the AWS credentials (SignatureDoesNotMatch)" in info.value.message
    assert "not-the-secret-5678" not in info.value.message
    assert _keys(s3_env.client(), s3_bucket) == []


def test_check_s3_destination(s3_env, s3_bucket, monkeypatch):
    publish.check_s3_destination(f"s3://{s3_bucket}/models")  # fine: returns quietly
    with pytest.raises(JobError, match="is not an S3 URI"):
        publish.check_s3_destination("my-bucket/models")
    with pytest.raises(JobError, match="The bucket 'absent-bucket' does not exist"):
        publish.check_s3_destination("s3://absent-bucket/models")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(JobError, match=r"rejected the AWS credentials \(InvalidAccessKeyId\)"):
        publish.check_s3_destination(f"s3://{s3_bucket}/models")


# --- the command ---------------------------------------------------------------------------------
@pytest.fixture()
def job_cli(monkeypatch):
    """`job` with `push` registered, as the lead will do in job/cli.py."""
    from infra.publish.cli import push
    from job import cli

    monkeypatch.setitem(cli.cli.commands, "push", push)
    return cli


def test_push_command_to_s3(s3_env, s3_bucket, fake_run_dir, job_cli, capsys):
    rc = job_cli.main(["push", "--run-dir", str(fake_run_dir), "--s3-uri", f"s3://{s3_bucket}/models"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    run_id = run_bundle.run_id_for(fake_run_dir)
    assert out[-1].startswith(f"push: {fake_run_dir} -> S3 s3://{s3_bucket}/models/{run_id}/ (published: 9 files")
    rc = job_cli.main(["push", "--run-dir", str(fake_run_dir), "--s3-uri", f"s3://{s3_bucket}/models"])
    assert rc == 0 and "(already published:" in capsys.readouterr().out


def test_push_command_errors_exit_2(s3_env, s3_bucket, fake_run_dir, job_cli, capsys, monkeypatch, tmp_path):
    assert job_cli.main(["push", "--run-dir", str(fake_run_dir), "--s3-uri", "s3://absent-bucket/x"]) == 2
    assert "error: The bucket 'absent-bucket' does not exist" in capsys.readouterr().err
    assert job_cli.main(["push", "--run-dir", str(fake_run_dir)]) == 2
    assert "Nothing to publish to" in capsys.readouterr().err
    # Hub push requested without a token: refused before anything reaches S3
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    argv = ["push", "--run-dir", str(fake_run_dir), "--s3-uri", f"s3://{s3_bucket}/x", "--hub-repo", "me/model"]
    assert job_cli.main(argv) == 2
    assert "no token was found" in capsys.readouterr().err
    assert _keys(s3_env.client(), s3_bucket) == []


def test_job_run_checks_destinations_before_any_step(s3_env, tmp_path, capsys):
    """Once job/cli.py wires publishing into `job run` (see the lead's integration), a bad
    destination stops the run before any step: here nothing is even created in the run dir."""
    from job import cli

    if "push" not in cli.cli.commands:
        pytest.skip("job/cli.py does not register `job push` / publish after `job run` yet")
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--run-dir", str(run_dir), "--s3-uri", "s3://absent-bucket/x"]) == 2
    assert "The bucket 'absent-bucket' does not exist" in capsys.readouterr().err
    assert not run_dir.exists()


def test_server_gone_during_verification_is_a_clear_error_and_publishes_nothing(
    s3_env, s3_bucket, fake_run_dir, monkeypatch
):
    """The upload completes, then the endpoint stops answering (a real connection refused from botocore)."""
    import socket

    client = s3.s3_client()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    dead = s3.s3_client(f"http://127.0.0.1:{dead_port}")
    dead.meta.config.retries = {"max_attempts": 1}
    real_verify_all = publish._verify_all
    monkeypatch.setattr(publish, "_verify_all", lambda _client, *args: real_verify_all(dead, *args))
    with pytest.raises(JobError) as info:
        publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/gone", client=client)
    msg = info.value.message
    assert "Could not connect to the S3 endpoint" in msg and "could not be verified" in msg and "no manifest" in msg
    assert "Fix:" in msg and "job push" in msg
    run_id = run_bundle.run_id_for(fake_run_dir)
    assert f"gone/{run_id}/manifest.json" not in _keys(client, s3_bucket)  # not published: no manifest
    monkeypatch.setattr(publish, "_verify_all", real_verify_all)
    assert publish.publish_s3(fake_run_dir, f"s3://{s3_bucket}/gone", client=client).status == "published"
