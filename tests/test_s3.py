"""infra.publish.s3 against a real S3 server: SeaweedFS on loopback (see the s3_server fixture)."""

from __future__ import annotations

import hashlib
import os

import pytest

from infra.publish import s3
from job.errors import JobError

MiB = 1024 * 1024


# --- URIs (no server) ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "uri, expected",
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/a/b", ("bucket", "a/b")),
        ("s3://bucket/a/b/", ("bucket", "a/b/")),
    ],
)
def test_parse_s3_uri(uri, expected):
    assert s3.parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["bucket/key", "/tmp/x", "https://bucket.s3.amazonaws.com/k", "s3://", "s3:///key", ""])
def test_parse_s3_uri_rejects_non_s3(uri):
    with pytest.raises(JobError, match="s3://BUCKET"):
        s3.parse_s3_uri(uri)


def test_join_key():
    assert s3.join_key("a/", "/b/", "", "c.txt") == "a/b/c.txt"
    assert s3.join_key("", "c.txt") == "c.txt"


# --- client --------------------------------------------------------------------------------------
def test_client_reads_endpoint_and_region_from_env(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    client = s3.s3_client()
    assert client.meta.endpoint_url == s3_env.endpoint
    assert client.meta.region_name == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert s3.s3_client().meta.region_name == "eu-west-1"
    assert s3.s3_client("http://127.0.0.1:1").meta.endpoint_url == "http://127.0.0.1:1"


# --- round trips ---------------------------------------------------------------------------------
def test_file_round_trip(s3_env, s3_bucket, tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("hello s3")
    assert s3.upload_path(src, f"s3://{s3_bucket}/docs/") == [f"s3://{s3_bucket}/docs/notes.txt"]
    assert s3.upload_path(src, f"s3://{s3_bucket}/renamed.txt") == [f"s3://{s3_bucket}/renamed.txt"]

    # the documented keyword names are part of the interface (the SageMaker launcher uses them)
    assert s3.upload_path(local=src, s3_uri=f"s3://{s3_bucket}/kw/", client=None) == [f"s3://{s3_bucket}/kw/notes.txt"]
    assert s3.download_prefix(s3_uri=f"s3://{s3_bucket}/kw/", local_dir=tmp_path / "kw", client=None)

    got = s3.download_prefix(f"s3://{s3_bucket}/docs/notes.txt", tmp_path / "out")
    assert got == [tmp_path / "out" / "notes.txt"]
    assert got[0].read_text() == "hello s3"


def test_directory_round_trip(s3_env, s3_bucket, tmp_path):
    src = tmp_path / "tree"
    (src / "sub" / "deeper").mkdir(parents=True)
    files = {"a.txt": b"a", "sub/b.bin": os.urandom(1000), "sub/deeper/c.json": b"{}"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    client = s3.s3_client()
    uris = s3.upload_path(src, f"s3://{s3_bucket}/run", client)
    assert sorted(uris) == sorted(f"s3://{s3_bucket}/run/{rel}" for rel in files)
    # a sibling prefix that merely starts with the same letters must not come along
    s3.upload_path(src / "a.txt", f"s3://{s3_bucket}/run-other/a.txt", client)

    out = tmp_path / "out"
    got = s3.download_prefix(f"s3://{s3_bucket}/run", out, client)
    assert sorted(p.relative_to(out).as_posix() for p in got) == sorted(files)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data


def test_multipart_upload_of_a_large_file(s3_env, s3_bucket, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * MiB))
    client = s3.s3_client()
    config = s3.transfer_config(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_path(big, f"s3://{s3_bucket}/big.bin", client, config=config)
    head = client.head_object(Bucket=s3_bucket, Key="big.bin")
    assert head["ContentLength"] == 9 * MiB
    assert head["ETag"].strip('"').endswith("-2")  # two parts: 5 MiB + 4 MiB
    (got,) = s3.download_prefix(f"s3://{s3_bucket}/big.bin", tmp_path / "out", client, config=config)
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_download_of_an_empty_prefix_is_a_clear_error(s3_env, s3_bucket, tmp_path):
    with pytest.raises(JobError, match=f"no objects under s3://{s3_bucket}/nothing"):
        s3.download_prefix(f"s3://{s3_bucket}/nothing/", tmp_path)


def test_upload_of_a_missing_local_path(s3_env, s3_bucket, tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        s3.upload_path(tmp_path / "missing", f"s3://{s3_bucket}/x")


# --- errors --------------------------------------------------------------------------------------
def test_missing_bucket_is_named_and_not_created(s3_env, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    client = s3.s3_client()
    with pytest.raises(JobError) as info:
        s3.upload_path(src, "s3://no-such-bucket-here/k.txt", client)
    msg = info.value.message
    assert "The bucket 'no-such-bucket-here' does not exist at " + s3_env.endpoint in msg
    assert "Fix: create it first" in msg
    # SeaweedFS would create the bucket on a PUT; the pre-check keeps that from happening
    assert "no-such-bucket-here" not in [b["Name"] for b in client.list_buckets()["Buckets"]]


@pytest.mark.parametrize(
    "access, code",
    [("test-access-key", "SignatureDoesNotMatch"), ("unknown-access-key", "InvalidAccessKeyId")],
)
def test_wrong_credentials(s3_env, s3_bucket, monkeypatch, tmp_path, access, code):
    bad_secret = "definitely-wrong-secret-1234"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
    src = tmp_path / "f.txt"
    src.write_text("x")
    with pytest.raises(JobError) as info:
        s3.upload_path(src, f"s3://{s3_bucket}/k.txt")
    msg = info.value.message
    assert f"{s3_env.endpoint} rejected the AWS credentials ({code})" in msg
    assert "they came from the environment variables AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in msg
    assert "AWS_SECRET_ACCESS_KEY" in msg  # the fix names the variable...
    assert bad_secret not in msg and s3_env.secret_key not in msg  # ...never its value


def test_no_credentials(s3_env, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe
    with pytest.raises(JobError, match="No usable AWS credentials were found to reach s3://some-bucket/"):
        s3.check_bucket("s3://some-bucket/prefix")


def test_unreachable_endpoint(s3_env, monkeypatch):
    from conftest import _free_ports

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    endpoint = f"http://127.0.0.1:{_free_ports(1)[0]}"
    with pytest.raises(JobError) as info:
        s3.check_bucket("s3://some-bucket/prefix", s3.s3_client(endpoint))
    assert f"Could not connect to the S3 endpoint {endpoint}" in info.value.message
    assert "--endpoint-url" in info.value.message
