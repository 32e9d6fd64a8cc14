"""Small S3 helpers on boto3, shared by publishing and the SageMaker launcher.

* :func:`parse_s3_uri` splits ``s3://bucket/prefix``;
* :func:`s3_client` builds a client that honours the usual AWS settings: credentials from the
  environment / ``~/.aws``, the region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (``us-east-1``
  when none is set), and an S3-compatible endpoint from ``endpoint_url`` or the environment
  (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, read by boto3 itself);
* :func:`upload_path` / :func:`download_prefix` copy a file or a directory tree through boto3's
  transfer manager, so large files go multipart;
* :func:`translate_error` turns a boto error into a :class:`~job.errors.JobError` that names the
  bucket or endpoint and the fix (never a secret). Every helper here raises only JobError for
  problems a user can fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from job.errors import JobError

MiB = 1024 * 1024
DEFAULT_REGION = "us-east-1"
# boto3's defaults (8 MiB threshold and parts), spelled out so callers and tests can change them.
MULTIPART_THRESHOLD = 8 * MiB
MULTIPART_CHUNKSIZE = 8 * MiB

_ACCESS_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
}
_NO_BUCKET_CODES = {"NoSuchBucket"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


# --- URIs ----------------------------------------------------------------------------------------
def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; the prefix may be empty.

    A trailing slash is kept (``s3://b/p/`` -> ``("b", "p/")``): it marks a "folder".
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise JobError(
            f"{uri!r} is not an S3 URI.",
            "write it as s3://BUCKET or s3://BUCKET/PREFIX (e.g. s3://my-models/embeddings).",
        )
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or any(c in bucket for c in " \\"):
        raise JobError(f"{uri!r} has no valid bucket name.", "write it as s3://BUCKET/PREFIX.")
    return bucket, key


def join_key(*parts: str) -> str:
    """Join key fragments with single slashes (empty fragments are dropped)."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def to_s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"


# --- client --------------------------------------------------------------------------------------
def _env_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client.

    ``endpoint_url`` (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) points it at an
    S3-compatible server such as SeaweedFS or MinIO; path-style addressing is then used, since such
    servers rarely resolve ``bucket.host`` names. Retries follow ``AWS_MAX_ATTEMPTS`` /
    ``AWS_RETRY_MODE`` (boto3's "standard" mode by default).
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise JobError(
            "S3 support needs boto3, which is not installed.", "pip install 'rag-embed-finetune[aws]'."
        ) from None

    session = boto3.session.Session()
    region = session.region_name or os.environ.get("AWS_REGION") or DEFAULT_REGION
    custom = endpoint_url or _env_endpoint()
    config = Config(
        signature_version="s3v4",
        connect_timeout=10,
        read_timeout=120,
        s3={"addressing_style": "path"} if custom else None,
    )
    kwargs: dict[str, Any] = {"region_name": region, "config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    try:
        return session.client("s3", **kwargs)
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise JobError(
            f"The S3 endpoint URL {custom!r} is not valid ({exc}).",
            "pass a full URL such as http://127.0.0.1:8333 to --endpoint-url (or AWS_ENDPOINT_URL_S3), or unset it "
            "to use AWS itself.",
        ) from None


def endpoint_of(client) -> str:
    return getattr(client.meta, "endpoint_url", None) or "AWS S3"


def transfer_config(
    multipart_threshold: int = MULTIPART_THRESHOLD,
    multipart_chunksize: int = MULTIPART_CHUNKSIZE,
    max_concurrency: int = 4,
):
    """boto3 ``TransferConfig``: files at or above ``multipart_threshold`` bytes go up in parts."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=multipart_threshold,
        multipart_chunksize=multipart_chunksize,
        max_concurrency=max_concurrency,
    )


# --- errors --------------------------------------------------------------------------------------
def _client_error(exc: BaseException):
    """The botocore error behind ``exc`` (boto3's transfer manager wraps ClientError without a cause)."""
    from botocore.exceptions import BotoCoreError, ClientError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ClientError, BotoCoreError)):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]  # (None ends the loop)
    return None


_CREDENTIAL_SOURCES = {
    "env": "the environment variables AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    "shared-credentials-file": "the shared credentials file (~/.aws/credentials)",
    "config-file": "the AWS config file (~/.aws/config)",
    "explicit": "explicit arguments",
}


def _credentials_source(client=None) -> str:
    """ "; they came from X" for a message: where boto found the credentials (never their values)."""
    creds = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if creds is None:
        try:
            import boto3

            creds = boto3.session.Session().get_credentials()
        except Exception:  # noqa: BLE001 - only used to word a message
            creds = None
    method = getattr(creds, "method", "") or ""
    where = _CREDENTIAL_SOURCES.get(method, method)
    return f"; they came from {where}" if where else ""


def translate_error(
    exc: BaseException,
    bucket: str | None = None,
    key: str | None = None,
    endpoint: str | None = None,
    action: str = "access",
    client=None,
) -> JobError:
    """A JobError for a boto3/botocore failure, naming the bucket/endpoint and the fix.

    Only codes and names are used, never a credential: boto's own messages do not carry the
    secret key either, and the access key id is not repeated.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, JobError):
        return exc
    err = _client_error(exc) or exc
    where = endpoint or "AWS S3"
    target = to_s3_uri(bucket, key or "") if bucket else where
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return JobError(
            f"No usable AWS credentials were found to {action} {target}.",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials) "
            "in the environment.",
        )
    if isinstance(err, (EndpointConnectionError, ConnectTimeoutError)):
        return JobError(
            f"Could not connect to the S3 endpoint {where} to {action} {target}.",
            "check that the server is running and reachable, and the endpoint URL (--endpoint-url, "
            "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL); unset them to use AWS itself.",
        )
    if isinstance(err, ReadTimeoutError):
        return JobError(
            f"The S3 endpoint {where} stopped answering while trying to {action} {target}.",
            "retry; check the network and the server's health.",
        )
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        detail = str(err.response.get("Error", {}).get("Message", "")).strip()
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _NO_BUCKET_CODES or (code in _NOT_FOUND_CODES and not key):
            return JobError(
                f"The bucket '{bucket}' does not exist at {where}.",
                f"create it first (e.g. `aws s3 mb s3://{bucket}`), or fix the bucket name in the S3 URI.",
            )
        if code in _CREDENTIAL_CODES:
            return JobError(
                f"{where} rejected the AWS credentials ({code}) when trying to {action} "
                f"{target}{_credentials_source(client)}.",
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS_PROFILE in use) and that they belong "
                "to this endpoint.",
            )
        if code in _ACCESS_CODES or status == 403:
            # A HEAD request has no body, so a bare 403 may also mean wrong credentials.
            maybe = " (or the credentials are wrong)" if code in ("403", "Forbidden") else ""
            return JobError(
                f"Access denied ({code or status}){maybe} when trying to {action} {target} at "
                f"{where}{_credentials_source(client)}.",
                "check the credentials, and grant them s3:ListBucket, s3:GetObject and s3:PutObject "
                f"on bucket '{bucket}'.",
            )
        if code in _NOT_FOUND_CODES:
            return JobError(f"{target} does not exist at {where}.", "check the S3 URI.")
        said = f": {detail}" if detail else ""
        return JobError(
            f"S3 error {code or status} when trying to {action} {target} at {where}{said}",
            "retry; if it persists, check the server (re-run with --debug for the traceback).",
        )
    return JobError(
        f"S3 failure ({type(err).__name__}) when trying to {action} {target} at {where}.",
        "retry; re-run with --debug for the traceback.",
    )


def _raise(exc: BaseException, client, bucket: str | None, key: str | None, action: str) -> None:
    raise translate_error(exc, bucket, key, endpoint_of(client), action, client) from exc


# --- bucket and objects --------------------------------------------------------------------------
def check_bucket(s3_uri: str, client=None) -> None:
    """Fail with a JobError unless the bucket exists and the credentials may list it.

    Uses ListObjectsV2 (one request) rather than HeadBucket: a HEAD answer has no body, so it
    cannot tell "wrong credentials" from "access denied".
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(s3_uri)
    client = client or s3_client()
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except (ClientError, BotoCoreError) as exc:
        if not_s3(exc):
            raise JobError(
                f"The endpoint {endpoint_of(client)} did not answer like an S3 server when listing bucket '{bucket}' "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}).",
                "point --endpoint-url (or AWS_ENDPOINT_URL_S3) at the S3 API of your storage (MinIO, SeaweedFS: "
                "its S3 port), or unset it to use AWS itself.",
            ) from None
        _raise(exc, client, bucket, None, "reach")


def not_s3(exc: BaseException) -> bool:
    """A GET that S3 answers with an error document (NoSuchBucket, AccessDenied, ...) got a bare HTTP status
    or a body that is not S3's XML: the endpoint is some other web server."""
    from botocore.exceptions import ClientError
    from botocore.parsers import ResponseParserError

    if isinstance(exc, ResponseParserError):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code.isdigit() or code in ("", "NotFound", "Not Found")
    return False


def iter_objects(client, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every object (``Key``, ``Size``, ``ETag``...) whose key starts with ``prefix``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Contents", [])
    except (ClientError, BotoCoreError) as exc:
        _raise(exc, client, bucket, prefix, "list")


def _files_under(local: Path) -> list[Path]:
    return sorted(p for p in local.rglob("*") if p.is_file())


def upload_file(
    path: Path, bucket: str, key: str, client, *, config=None, extra_args: dict[str, Any] | None = None, callback=None
) -> str:
    """Upload one file through the transfer manager (multipart above the threshold); return its URI."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.upload_file(
            str(path), bucket, key, ExtraArgs=extra_args or None, Config=config or transfer_config(), Callback=callback
        )
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        _raise(exc, client, bucket, key, "upload to")
    return to_s3_uri(bucket, key)


def upload_path(
    local: Path, s3_uri: str, client=None, *, config=None, extra_args: dict[str, Any] | None = None
) -> list[str]:
    """Upload a file or a whole directory; return the ``s3://`` URIs written.

    A file goes to the URI's key, or under it as ``<prefix>/<file name>`` when the URI ends with
    ``/`` or names only the bucket. A directory's files go to ``<prefix>/<relative path>``.
    ``config`` is a boto3 ``TransferConfig`` (default: :func:`transfer_config`, 8 MiB multipart
    threshold); ``extra_args`` are passed to ``upload_file`` (e.g. ``{"ChecksumAlgorithm": "SHA256"}``).

    The bucket is checked first (:func:`check_bucket`): some S3-compatible servers (SeaweedFS)
    answer a PUT into a missing bucket with a retried InternalError and create the bucket.
    """
    local = Path(local)
    bucket, prefix = parse_s3_uri(s3_uri)
    if local.is_file():
        key = join_key(prefix, local.name) if (not prefix or prefix.endswith("/")) else prefix
        pairs = [(local, key)]
    elif local.is_dir():
        pairs = [(p, join_key(prefix, p.relative_to(local).as_posix())) for p in _files_under(local)]
    else:
        raise JobError(f"{local} does not exist.", "pass an existing file or directory to upload.")
    client = client or s3_client()
    check_bucket(s3_uri, client)
    config = config or transfer_config()
    return [upload_file(path, bucket, key, client, config=config, extra_args=extra_args) for path, key in pairs]


def _safe_local(local_dir: Path, rel: str, uri: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("..", "") for p in parts) or PurePosixPath(rel).is_absolute():
        raise JobError(
            f"The object key behind {uri} would land outside {local_dir}.",
            "rename the object; keys must not contain '..'.",
        )
    return local_dir.joinpath(*parts)


def download_prefix(s3_uri: str, local_dir: Path, client=None, *, config=None) -> list[Path]:
    """Download every object under ``s3_uri`` into ``local_dir`` (keys relative to the prefix).

    ``s3://b/runs/x`` takes ``runs/x/...`` (not ``runs/xyz``); a URI naming one object downloads that
    object as ``local_dir/<its name>``. Raises a JobError when nothing is there.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(s3_uri)
    client = client or s3_client()
    config = config or transfer_config()
    local_dir = Path(local_dir)
    folder = prefix if (not prefix or prefix.endswith("/")) else prefix + "/"
    jobs: list[tuple[str, Path]] = []
    for obj in iter_objects(client, bucket, prefix):
        key = obj["Key"]
        if key == prefix and not key.endswith("/"):
            jobs.append((key, _safe_local(local_dir, PurePosixPath(key).name, to_s3_uri(bucket, key))))
        elif key.startswith(folder) and not key.endswith("/"):
            jobs.append((key, _safe_local(local_dir, key[len(folder) :], to_s3_uri(bucket, key))))
    if not jobs:
        raise JobError(
            f"Nothing to download: no objects under {s3_uri} at {endpoint_of(client)}.",
            "check the S3 URI (bucket and prefix).",
        )
    out = []
    for key, path in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, key, str(path), Config=config)
        except (ClientError, BotoCoreError) as exc:
            _raise(exc, client, bucket, key, "download")
        out.append(path)
    return out


def error_code(exc: BaseException) -> str | None:
    """The S3 error code behind ``exc`` (e.g. ``"NoSuchBucket"``), also through JobError/transfer wrappers."""
    from botocore.exceptions import ClientError

    err = _client_error(exc)
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", "")) or None
    return None
