"""Reaching the store: where the collections live (:class:`StoreTarget`) and the checks before chromadb connects.

- A server as deployed: over TLS (``--chroma-ssl``; ``--chroma-ca-bundle``, else ``SSL_CERT_FILE``, else
  ``REQUESTS_CA_BUNDLE``), behind a reverse proxy that checks a token (``--chroma-token-env NAME``: the token
  from the environment variable ``NAME``, as ``Authorization: Bearer`` or ``X-Chroma-Token``; other headers
  with ``--chroma-header NAME=ENV_VAR``), in a tenant and database; or Chroma Cloud (key from ``CHROMA_API_KEY``).
- Before chromadb connects, the server is asked who we are (``/api/v2/auth/identity``) with the same TLS
  settings and headers (:func:`check_server`): chromadb reports a refused token as the proxy's page and an
  untrusted certificate as "Could not connect", so these, TLS against a plain server and the reverse are told
  apart here, as JobErrors naming the fix. Chroma Cloud's key is checked before any network use.
- Secrets are read from the environment when connecting and never held in a target, so a target can be
  described, logged and recorded as it is; no message names a secret's value, only its variable.
- An embedded store's folder that this process cannot write is named before chromadb starts (:func:`check_writable`);
  :func:`store_errors` turns failures midway (a lost server, a damaged SQLite file) into JobErrors.

No chromadb here (tests/test_structure.py): :mod:`rag_eval.store` makes the clients.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from job.errors import JobError
from rag_eval.store_faults import damaged_store, forget_client, is_damage, storage_problem

CLOUD_HOST, CLOUD_PORT = "api.trychroma.com", 443  # where chromadb.CloudClient connects
CLOUD_KEY_ENV = "CHROMA_API_KEY"
DEFAULT_TENANT, DEFAULT_DATABASE = "default_tenant", "default_database"  # chromadb's defaults
# --chroma-auth-header: the header the token goes in, and its prefix
AUTH_HEADERS = {"authorization": ("Authorization", "Bearer "), "x-chroma-token": ("X-Chroma-Token", "")}
CA_ENVS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")  # honoured, in this order, when --chroma-ca-bundle is not given


@dataclass(frozen=True)
class StoreTarget:
    """Where the collections live: an embedded store at ``path``, a server at ``host:port`` (over TLS with
    ``ssl``), or Chroma Cloud (``cloud``). Secrets are never held here, only the names of the environment
    variables that hold them (``token_env``, ``header_envs``; Chroma Cloud's key: ``CHROMA_API_KEY``), so a
    target can be described, logged or recorded as it is."""

    path: Path | None = None
    host: str | None = None
    port: int | None = None
    ssl: bool = False
    ca_bundle: Path | None = None
    token_env: str | None = None  # the variable holding the token a proxy checks (Cloud: instead of CHROMA_API_KEY)
    auth_header: str = "authorization"
    header_envs: tuple[tuple[str, str], ...] = ()  # (header, the variable holding its value)
    tenant: str | None = None
    database: str | None = None
    cloud: bool = False
    kind: str = "chroma"  # which store (rag_eval.stores.STORES); "exact": a folder at ``path``
    precision: str = "float32"  # the exact store: the codes it searches (float32, int8, binary)

    @property
    def is_server(self) -> bool:
        return self.host is not None or self.cloud

    @property
    def tls(self) -> bool:
        return self.cloud or self.ssl

    @property
    def url(self) -> str:
        host, port = (CLOUD_HOST, CLOUD_PORT) if self.cloud else (self.host, self.port)
        host = f"[{host}]" if host and ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    @property
    def key_env(self) -> str:
        """Chroma Cloud: the environment variable its API key is read from."""
        return self.token_env or CLOUD_KEY_ENV

    def request_headers(self) -> dict[str, str]:
        """The headers every request carries, read from the environment now (a JobError naming the variable
        when one is unset). Chroma Cloud's key is not among them: chromadb.CloudClient sends it itself."""
        headers = {name: secret(env, f"--chroma-header {name}={env}") for name, env in self.header_envs}
        if self.token_env and not self.cloud:
            header, prefix = AUTH_HEADERS[self.auth_header]
            headers[header] = prefix + secret(self.token_env, f"--chroma-token-env {self.token_env}")
        return headers

    def trusted(self) -> tuple[str | None, str]:
        """The CA bundle that verifies the server's certificate, and what named it (for messages):
        --chroma-ca-bundle, else SSL_CERT_FILE, else REQUESTS_CA_BUNDLE; (None, "") for httpx's default (certifi)."""
        if self.ca_bundle is not None:
            return str(Path(self.ca_bundle).expanduser()), "--chroma-ca-bundle"
        for env in CA_ENVS:
            if os.environ.get(env):
                return os.environ[env], env
        return None, ""


def describe_chroma(target: StoreTarget) -> str:
    """The phrase messages name a Chroma store by (never a secret: tokens and headers are not part of it);
    rag_eval.stores.describe names any store."""
    if not target.is_server:
        return f"embedded Chroma store {target.path}"
    where = "Chroma Cloud" if target.cloud else f"Chroma server {target.url}"
    scope = []
    if target.tenant and target.tenant != DEFAULT_TENANT:
        scope.append(f"tenant {target.tenant}")
    if target.database and target.database != DEFAULT_DATABASE:
        scope.append(f"database {target.database}")
    return f"{where} ({', '.join(scope)})" if scope else where


def secret(env: str, option: str, what: str = "", value_is: str = "the value") -> str:
    value = os.environ.get(env, "").strip()
    if not value:
        raise JobError(
            f"{option}: the environment variable {env} is {'empty' if env in os.environ else 'not set'}{what}.",
            f"export {env}=<{value_is}> before running rag-eval (secrets are read from the environment, never taken "
            "from the command line).",
        )
    return value


def missing_scope(target: StoreTarget, exc: BaseException) -> JobError:
    tenant, database = target.tenant or DEFAULT_TENANT, target.database or DEFAULT_DATABASE
    where = "Chroma Cloud" if target.cloud else f"The Chroma server {target.url}"
    if str(exc).lower().startswith("tenant"):
        return JobError(
            f"{where} has no tenant {tenant}.",
            "pass an existing --chroma-tenant (a server's own is default_tenant), or have its admin create it "
            "(chromadb.AdminClient(...).create_tenant(NAME)).",
        )
    return JobError(
        f"{where} has no database {database} in tenant {tenant}.",
        "run `rag-eval index` with the same --chroma-database first (it creates the database), or check "
        "--chroma-database.",
    )


def preflight(target: StoreTarget, headers: dict[str, str], verify: str | None, named_by: str) -> None:
    """Ask the server who we are, with the headers and TLS settings chromadb will use: a refused token, an
    untrusted certificate and TLS against a plain server (or the reverse) become JobErrors naming the fix."""
    import ssl

    import httpx

    context: ssl.SSLContext | bool = True
    if verify:
        try:
            context = ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise JobError(
                f"The CA bundle {verify} ({named_by}) cannot be read as PEM certificates ({exc}).",
                "pass --chroma-ca-bundle FILE with the PEM certificate of the CA that signed the server's "
                "certificate (for a self-signed certificate, the certificate itself).",
            ) from None
    try:
        with httpx.Client(verify=context, timeout=httpx.Timeout(30.0)) as http:
            resp = http.get(f"{target.url}/api/v2/auth/identity", headers=headers)
    except httpx.TransportError as exc:
        raise transport_problem(target, exc, verify, named_by) from None
    if resp.status_code in (401, 403):
        raise refused(target, f"HTTP {resp.status_code} {resp.reason_phrase}".strip())
    if resp.status_code == 400 and not target.tls and "https" in resp.text.lower():
        raise JobError(
            f"The server at {target.url} answered plain HTTP with HTTP 400: it expects TLS.",
            "add --chroma-ssl (and --chroma-ca-bundle FILE for a self-signed or private certificate).",
        )


def refused(target: StoreTarget, status: str) -> JobError:
    """The server (its proxy) refused our credentials: which ones were sent (by variable, never by value)."""
    if target.cloud:
        return JobError(
            f"Chroma Cloud refused the API key in {target.key_env} ({status}).",
            f"check {target.key_env} (a key from your Chroma Cloud dashboard, with access to the tenant and database).",
        )
    sent = [f"{h} from {env}" for h, env in target.header_envs]
    if target.token_env:
        header, _ = AUTH_HEADERS[target.auth_header]
        sent.insert(0, f"the token in {target.token_env} as {header}")
    how = (
        "--chroma-auth-header x-chroma-token sends it as 'X-Chroma-Token: <token>' instead"
        if target.auth_header == "authorization"
        else "--chroma-auth-header authorization sends it as 'Authorization: Bearer <token>' instead"
    )
    if not sent:
        return JobError(
            f"The {describe_chroma(target)} refused the request ({status}): it requires a token and none was sent.",
            "put the token in an environment variable and pass its name with --chroma-token-env NAME (sent as "
            "'Authorization: Bearer <token>'; --chroma-auth-header x-chroma-token sends 'X-Chroma-Token: <token>'). "
            "The token is never taken from the command line.",
        )
    return JobError(
        f"The {describe_chroma(target)} refused {' and '.join(sent)} ({status}).",
        f"check the token in {target.token_env or 'the variables named'} and the header the proxy expects ({how}).",
    )


def certificate_reason(exc: BaseException) -> str | None:
    """The certificate check's own words when ``exc`` (or what it wraps) is a failed verification."""
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else None


def transport_problem(target: StoreTarget, exc: BaseException, verify: str | None, named_by: str) -> JobError:
    """A failed connection, told apart: an untrusted or misnamed certificate, TLS against a plain server,
    plain HTTP against a TLS one, or no server at all."""
    import httpx

    where = "Chroma Cloud" if target.cloud else f"the Chroma server at {target.url}"
    reason = certificate_reason(exc)
    if reason is not None:
        if "mismatch" in reason.lower():
            return JobError(
                f"The certificate of {where} is not valid for the name {target.host or CLOUD_HOST} ({reason}).",
                "connect with a --chroma-host the certificate names, or give the proxy a certificate for this name.",
            )
        trusted = f"the CA bundle {verify} ({named_by})" if verify else "this machine's trusted CAs (certifi)"
        return JobError(
            f"The certificate of {where} is not trusted by {trusted}: {reason}.",
            "pass --chroma-ca-bundle FILE with the PEM certificate of the CA that signed it (for a self-signed "
            "certificate, the certificate itself); SSL_CERT_FILE or REQUESTS_CA_BUNDLE in the environment work too.",
        )
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if target.tls and any(m in text.lower() for m in ("wrong_version_number", "wrong version number", "record layer")):
        return JobError(
            f"The server at {target.host}:{target.port} does not speak TLS ({text}).",
            "drop --chroma-ssl for a plain HTTP server, or point --chroma-host/--chroma-port at the TLS proxy.",
        )
    error = unreachable(target, exc)
    if not target.tls and isinstance(exc, (httpx.ReadError, httpx.RemoteProtocolError)):
        hint = "if the server is behind a TLS proxy, add --chroma-ssl; else "
        return JobError(error.problem, hint + (error.fix or ""))
    return error


def unreachable(target: StoreTarget, exc: BaseException) -> JobError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if target.cloud:
        return JobError(
            f"Cannot reach Chroma Cloud at {target.url} ({reason}).",
            "check this machine's internet access (and HTTPS_PROXY if it needs a proxy), or leave out --chroma-cloud.",
        )
    if target.tls or target.token_env or target.header_envs:
        return JobError(
            f"Cannot reach the Chroma server at {target.host}:{target.port} ({reason}).",
            "check that the server and the proxy in front of it run and that --chroma-host/--chroma-port name the "
            "proxy, or leave both out to use the embedded store at --chroma-path.",
        )
    return JobError(
        f"Cannot reach the Chroma server at {target.host}:{target.port} ({reason}).",
        f"start it (`chroma run --host {target.host} --port {target.port} --path DIR`), check --chroma-host and "
        "--chroma-port, or leave both out to use the embedded store at --chroma-path.",
    )


@contextlib.contextmanager
def store_errors(target: StoreTarget) -> Iterator[None]:
    """Turn the store's failures the user can act on into JobErrors that name it: a lost connection
    to a Chroma server (at any step), or an embedded store whose SQLite file turns out damaged."""
    if not target.is_server:
        try:
            yield
        except JobError:
            raise
        except Exception as exc:
            path = Path(target.path or ".").expanduser()  # an embedded store always has one
            if is_damage(exc):
                forget_client(path)
                raise damaged_store(path, exc) from None
            translated = storage_problem(exc, path)
            if translated is not None:
                raise translated from None
            raise
        return
    import httpx

    try:
        yield
    except (httpx.TransportError, ConnectionError) as exc:
        raise unreachable(target, exc) from None


def check_server(target: StoreTarget) -> tuple[dict[str, str], str | None, str | None]:
    """Before chromadb connects to a server or Chroma Cloud: (headers, Cloud's key, CA bundle), every secret
    read from the environment (Cloud's key first, before any network use), and the server's answer checked."""
    key = None
    if target.cloud:
        key = secret(
            target.key_env,
            "--chroma-cloud",
            "; Chroma Cloud needs an API key",
            "an API key from your Chroma Cloud dashboard",
        )
    headers = target.request_headers()
    verify, named_by = target.trusted() if target.tls else (None, "")
    preflight(target, {**headers, "X-Chroma-Token": key} if key else headers, verify, named_by)
    return headers, key, verify


def create_database(target: StoreTarget, headers: dict[str, str], verify: str | None) -> str:
    """Create ``target``'s database on its server (Chroma's REST API, as chromadb's AdminClient does); its name."""
    import ssl

    import httpx

    tenant, database = target.tenant or DEFAULT_TENANT, target.database or DEFAULT_DATABASE
    context = ssl.create_default_context(cafile=verify) if verify else True
    with httpx.Client(verify=context, timeout=httpx.Timeout(30.0)) as http:
        resp = http.post(f"{target.url}/api/v2/tenants/{tenant}/databases", json={"name": database}, headers=headers)
    if resp.status_code >= 400:
        raise JobError(
            f"{describe_chroma(target)} did not create database {database} in tenant {tenant} "
            f"(HTTP {resp.status_code}: {resp.text.strip()[:200]}).",
            "create it yourself (chromadb.AdminClient(...).create_database), or pass an existing --chroma-database.",
        )
    return database


def check_writable(path: Path) -> None:
    """A store folder (or the nearest existing parent) this process cannot write is named now, with the fix."""
    import uuid

    folder = next((p for p in (path, *path.parents) if p.exists()), None)
    if folder is None:
        return
    probe = folder / f".rag-eval-probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"probe")
        os.unlink(probe)
    except OSError as exc:
        translated = storage_problem(exc, path)
        if translated is not None:
            raise translated from None
        raise


# --- Chroma's index settings (the CLI's HNSW options read them here, without importing the store) ---------
@dataclass(frozen=True)
class HnswSettings:
    """HNSW parameters, always set explicitly. The defaults reach recall@10 >= 0.99 against exact
    search on the evaluation corpora (see ``rag-eval score``'s ANN recall column and bench/chroma_scale.py);
    Chroma's own defaults (ef_search 100, max_neighbors 16) gave 0.71 on 5k random vectors."""

    ef_construction: int = 200
    ef_search: int = 400
    max_neighbors: int = 32
    space: str = "cosine"

    def configuration(self) -> dict[str, Any]:
        return {"hnsw": asdict(self)}

    def check(self) -> None:
        for name in ("ef_construction", "ef_search", "max_neighbors"):
            if getattr(self, name) < 1:
                raise JobError(
                    f"{name} is {getattr(self, name)}; it must be at least 1.",
                    f"pass a positive --{name.replace('_', '-')}.",
                )
        if self.space != "cosine":
            raise JobError(
                f"space {self.space!r} is not supported.", "rag_eval scores cosine similarity, as the evaluator does."
            )

    @classmethod
    def of(cls, collection) -> HnswSettings | None:
        """The settings a collection was created with (from Chroma's configuration), if it has HNSW ones."""
        hnsw = (collection.configuration_json or {}).get("hnsw") or {}
        try:
            return cls(
                int(hnsw["ef_construction"]),
                int(hnsw["ef_search"]),
                int(hnsw["max_neighbors"]),
                str(hnsw.get("space", "l2")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def describe_changes(old: HnswSettings | None, new: HnswSettings) -> str:
    if old is None:
        return "unknown before"
    return ", ".join(
        f"{k} {getattr(old, k)} -> {getattr(new, k)}" for k in asdict(new) if getattr(old, k) != getattr(new, k)
    )
