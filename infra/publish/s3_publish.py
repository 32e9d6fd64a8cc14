"""Publish a finished run directory to S3 (the files and manifest of :mod:`infra.publish.bundle`): one prefix per run,
checksums verified, manifest last.

Layout written under ``<s3_uri>/<run-id>/``::

    model/...                 the fine-tuned model (with model/training.json and the evaluation card)
    report/...                report.md, metrics.json, ndcg_by_dim.png
    data/prepare.json         what data the run used (not the pairs themselves)
    baseline/metrics.json     base-model scores
    manifest.json             written LAST: files, sizes, SHA-256, metrics summary, created time

Rules:

* ``run-id`` is ``<run dir name>-<12 hex>``, the hex being a SHA-256 of model/training.json and
  report/metrics.json: the same run always maps to the same prefix, so re-publishing is
  idempotent, and two different trainings never share one.
* A run counts as published only once ``manifest.json`` exists. It is written after every file
  was uploaded and verified, with a conditional PUT (``If-None-Match: *``) where the server
  supports it, so a failed or concurrent upload never leaves a manifest that lies.
* A prefix whose manifest describes different content is never touched (JobError). Objects under a
  prefix without a manifest are leftovers of an interrupted upload and are replaced.

Checksums: every file is uploaded with ``ChecksumAlgorithm="SHA256"``; the server checks the
SHA-256 of what it received (AWS S3, SeaweedFS and MinIO reject a mismatch with BadDigest) and
returns it from ``HeadObject(ChecksumMode="ENABLED")``. After the upload each object is verified
against the SHA-256 computed locally: a single-part object's ``ChecksumSHA256`` is the file's
SHA-256; a multipart object's is the composite ``sha256(sha256(part1) + ... )-N``, recomputed from
the local file with the part sizes the server reports (``GetObjectAttributes``). An object with
no SHA-256 checksum (a server that ignores the header, or an object rewritten without one) is
downloaded and hashed instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.publish import s3
from infra.publish.bundle import (
    CHUNK,
    MANIFEST_NAME,
    RunFile,
    build_manifest,
    content_digest,
    different_run,
    run_files,
    run_id_for,
    run_root,
)
from job.errors import JobError

Echo = Callable[[str], None]


@dataclass
class S3Publication:
    run_id: str
    uri: str  # s3://bucket/prefix/<run-id>/
    manifest_uri: str
    files: int
    bytes: int
    status: str  # "published", "already published" or "republished"
    verification: dict[str, int] = field(default_factory=dict)


# --- S3 checks -----------------------------------------------------------------------------------
def check_s3_destination(s3_uri: str, client=None, *, endpoint_url: str | None = None) -> None:
    """Fail fast (before training) when the URI is malformed, the bucket is missing, the endpoint is
    unreachable or the credentials are wrong. Write permission is only proven by the upload itself."""
    s3.parse_s3_uri(s3_uri)
    s3.check_bucket(s3_uri, client or s3.s3_client(endpoint_url))


def _call(client, bucket: str, key: str, action: str, fn, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(Bucket=bucket, Key=key, **kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise s3.translate_error(exc, bucket, key, s3.endpoint_of(client), action, client) from exc


def read_manifest(client, bucket: str, key: str) -> dict[str, Any] | None:
    """The manifest object at ``key`` as a dict, or None when there is none."""
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if s3.error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise s3.translate_error(exc, bucket, key, s3.endpoint_of(client), "read", client) from exc
    try:
        manifest = json.loads(body)
    except ValueError:
        raise JobError(
            f"{s3.to_s3_uri(bucket, key)} exists but is not a valid manifest (not JSON).",
            "inspect that prefix; publish under another --s3-uri or remove it if it is junk.",
        ) from None
    return manifest if isinstance(manifest, dict) else {"content_sha256": None}


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _part_sizes(client, bucket: str, key: str, parts: int) -> list[int] | None:
    """Sizes of a multipart object's parts, from GetObjectAttributes, else HeadObject(PartNumber)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        sizes: list[int] = []
        marker = 0
        while True:
            attrs = client.get_object_attributes(
                Bucket=bucket, Key=key, ObjectAttributes=["ObjectParts"], PartNumberMarker=marker
            )
            info = attrs.get("ObjectParts") or {}
            sizes += [p["Size"] for p in sorted(info.get("Parts", []), key=lambda p: p["PartNumber"])]
            if not info.get("IsTruncated"):
                break
            marker = info.get("NextPartNumberMarker", marker + len(info.get("Parts", [])))
        if len(sizes) == parts:
            return sizes
    except (ClientError, BotoCoreError, KeyError):
        pass
    try:
        return [client.head_object(Bucket=bucket, Key=key, PartNumber=n)["ContentLength"] for n in range(1, parts + 1)]
    except (ClientError, BotoCoreError, KeyError):
        return None


def _composite_sha256(path: Path, sizes: list[int]) -> str | None:
    digests = []
    with open(path, "rb") as fh:
        for size in sizes:
            h, left = hashlib.sha256(), size
            while left:
                block = fh.read(min(CHUNK, left))
                if not block:
                    return None
                h.update(block)
                left -= len(block)
            digests.append(h.digest())
        if fh.read(1):
            return None
    return f"{_b64(hashlib.sha256(b''.join(digests)).digest())}-{len(sizes)}"


def _download_sha256(client, bucket: str, key: str) -> str:
    body = _call(client, bucket, key, "read back", client.get_object)["Body"]
    h = hashlib.sha256()
    for block in iter(lambda: body.read(CHUNK), b""):
        h.update(block)
    return h.hexdigest()


def verify_object(client, bucket: str, key: str, f: RunFile) -> tuple[bool, str]:
    """Does the object at ``key`` hold exactly ``f``? Returns (ok, method used); (False, "missing") if absent."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if s3.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False, "missing"
        raise s3.translate_error(exc, bucket, key, s3.endpoint_of(client), "verify", client) from exc
    except BotoCoreError as exc:  # the server went away (connection refused, timeout) while verifying
        raise s3.translate_error(exc, bucket, key, s3.endpoint_of(client), "verify", client) from exc
    if head.get("ContentLength") != f.size:
        return False, "size"
    remote = head.get("ChecksumSHA256")
    if remote:
        local = bytes.fromhex(f.sha256)
        if "-" not in remote:
            return remote == _b64(local), "checksum-sha256"
        if head.get("ChecksumType", "COMPOSITE") == "COMPOSITE":
            parts = int(remote.rsplit("-", 1)[1])
            sizes = _part_sizes(client, bucket, key, parts)
            if sizes and sum(sizes) == f.size:
                return remote == _composite_sha256(f.local, sizes), "checksum-sha256-composite"
    return _download_sha256(client, bucket, key) == f.sha256, "download-sha256"


# --- publishing ----------------------------------------------------------------------------------
def _upload_all(client, bucket: str, prefix: str, files: list[RunFile], config, progress: bool) -> None:
    from tqdm.auto import tqdm

    extra: dict[str, Any] | None = {"ChecksumAlgorithm": "SHA256"}
    with tqdm(
        total=sum(f.size for f in files), unit="B", unit_scale=True, desc="s3 upload", disable=not progress
    ) as bar:
        for f in files:
            key = s3.join_key(prefix, f.path)
            try:
                s3.upload_file(f.local, bucket, key, client, config=config, extra_args=extra, callback=bar.update)
            except JobError as exc:
                # A server that does not take the checksum header: upload plainly, verify by download.
                if extra and s3.error_code(exc) in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                    extra = None
                    s3.upload_file(f.local, bucket, key, client, config=config, callback=bar.update)
                else:
                    raise


def _put_manifest(client, bucket: str, key: str, body: bytes) -> bool:
    """Write the manifest only if none exists; False when another one appeared meanwhile."""
    from botocore.exceptions import BotoCoreError, ClientError

    kwargs = {
        "Bucket": bucket,
        "Key": key,
        "Body": body,
        "ContentType": "application/json",
        "ChecksumAlgorithm": "SHA256",
    }
    try:
        client.put_object(IfNoneMatch="*", **kwargs)
        return True
    except ClientError as exc:
        code = s3.error_code(exc)
        if code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        if code not in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
            raise s3.translate_error(exc, bucket, key, s3.endpoint_of(client), "write", client) from exc
    except BotoCoreError as exc:
        raise s3.translate_error(exc, bucket, key, s3.endpoint_of(client), "write", client) from exc
    _call(
        client,
        bucket,
        key,
        "write",
        client.put_object,
        **{k: v for k, v in kwargs.items() if k not in ("Bucket", "Key")},
    )
    return True


def _different_run(uri: str, manifest: dict[str, Any], run_id: str) -> JobError:
    return different_run(uri, manifest, run_id, "--s3-uri")


def _verify_all(client, bucket: str, prefix: str, files: list[RunFile]) -> tuple[list[str], dict[str, int]]:
    bad: list[str] = []
    methods: dict[str, int] = {}
    for f in files:
        ok, method = verify_object(client, bucket, s3.join_key(prefix, f.path), f)
        methods[method] = methods.get(method, 0) + 1
        if not ok:
            bad.append(f.path)
    return bad, methods


def publish_s3(
    run_dir,
    s3_uri: str,
    *,
    client=None,
    endpoint_url: str | None = None,
    run_id: str | None = None,
    config=None,
    progress: bool = False,
    echo: Echo | None = None,
) -> S3Publication:
    """Upload a finished run to ``<s3_uri>/<run-id>/``, verify every object, write manifest.json last.

    Idempotent for the same run (verified, not re-uploaded); refuses a prefix whose manifest
    describes other content; replaces the leftovers of an interrupted upload. ``run_id`` overrides
    :func:`run_id_for`; ``config`` is a boto3 TransferConfig (multipart threshold and part size).
    """
    say = echo or (lambda _msg: None)
    root = run_root(run_dir)
    bucket, base = s3.parse_s3_uri(s3_uri)
    client = client or s3.s3_client(endpoint_url)
    s3.check_bucket(s3_uri, client)  # also stops SeaweedFS from creating a missing bucket on PUT
    run_id = run_id or run_id_for(root)
    prefix = s3.join_key(base, run_id)
    uri = s3.to_s3_uri(bucket, prefix + "/")
    manifest_key = s3.join_key(prefix, MANIFEST_NAME)
    files = run_files(root)
    digest = content_digest(files)
    total = sum(f.size for f in files)

    status = "published"
    existing = read_manifest(client, bucket, manifest_key)
    if existing is not None:
        if existing.get("content_sha256") != digest:
            raise _different_run(uri, existing, run_id)
        bad, methods = _verify_all(client, bucket, prefix, files)
        if not bad:
            return S3Publication(
                run_id, uri, s3.to_s3_uri(bucket, manifest_key), len(files), total, "already published", methods
            )
        say(
            f"s3: {len(bad)} objects under {uri} do not match the manifest ({', '.join(bad[:3])}...); "
            "re-uploading the run"
        )
        _call(client, bucket, manifest_key, "remove the stale manifest of", client.delete_object)
        status = "republished"

    wanted = {s3.join_key(prefix, f.path) for f in files}
    present = [o["Key"] for o in s3.iter_objects(client, bucket, prefix + "/")]
    leftovers = [k for k in present if k not in wanted]
    if status == "published" and present:
        say(f"s3: {uri} holds objects but no manifest (an interrupted upload); replacing them")

    start = time.perf_counter()
    _upload_all(client, bucket, prefix, files, config or s3.transfer_config(), progress)
    for key in leftovers:
        _call(client, bucket, key, "remove a leftover object", client.delete_object)
    try:
        bad, methods = _verify_all(client, bucket, prefix, files)
    except JobError as exc:
        raise JobError(
            f"{exc.problem} The upload to {uri} finished but could not be verified, so no manifest was written and the "
            "run does not count as published.",
            f"{(exc.fix or 'fix that').rstrip('.')}; then publish again (`job push`): "
            "a prefix without a manifest is checked and replaced.",
        ) from None
    if bad:
        raise JobError(
            f"Checksum verification failed after uploading to {uri}: {', '.join(bad)} differ from the local files. "
            "No manifest was written, so the run does not count as published.",
            "re-run the publish (a prefix without a manifest is overwritten); if it fails again, check the server.",
        )
    manifest = build_manifest(root, run_id, files, uri, methods)
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    if not _put_manifest(client, bucket, manifest_key, body):
        other = read_manifest(client, bucket, manifest_key) or {}
        if other.get("content_sha256") != digest:
            raise _different_run(uri, other, run_id)
        status = "already published"
    say(f"s3: {len(files)} files ({total / 1e6:.1f} MB) verified in {time.perf_counter() - start:.1f} s -> {uri}")
    return S3Publication(run_id, uri, s3.to_s3_uri(bucket, manifest_key), len(files), total, status, methods)
