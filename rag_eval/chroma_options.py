"""Chroma's command-line options and the :class:`~rag_eval.store_access.StoreTarget` they name (what
:mod:`rag_eval.stores` asks of a store module: ``options`` and ``make_target``; :mod:`rag_eval.store` re-exports them).

`--chroma-path` (embedded), `--chroma-host/--chroma-port` (a server; with `--chroma-ssl`, `--chroma-ca-bundle`,
`--chroma-token-env`/`--chroma-auth-header`, `--chroma-header`, `--chroma-tenant`, `--chroma-database`) or
`--chroma-cloud`. Secrets are never option values: the options name the environment variables that hold them,
and a value that may be a secret given by mistake is never echoed in an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from job.errors import JobError
from rag_eval import store_access
from rag_eval.store_access import StoreTarget
from rag_eval.store_access import describe_chroma as describe_target  # noqa: F401 - rag_eval.stores' entry point


def options(func):
    """Chroma's options (the command receives them among the store's values: see :func:`make_target`)."""
    func = click.option(
        "--chroma-cloud", is_flag=True, envvar="RAG_EVAL_CHROMA_CLOUD",
        help=f"Use Chroma Cloud (CloudClient); its API key is read from {store_access.CLOUD_KEY_ENV}, tenant and "
        "database from the key unless given.",
    )(func)  # fmt: skip
    func = click.option(
        "--chroma-database", default=None, envvar="RAG_EVAL_CHROMA_DATABASE", metavar="NAME",
        help=f"Server or Cloud database (default {store_access.DEFAULT_DATABASE}; `index` creates it on a server).",
    )(func)  # fmt: skip
    func = click.option(
        "--chroma-tenant", default=None, envvar="RAG_EVAL_CHROMA_TENANT", metavar="NAME",
        help=f"Server or Cloud tenant (default {store_access.DEFAULT_TENANT}).",
    )(func)  # fmt: skip
    func = click.option(
        "--chroma-header", "--chroma-headers", "chroma_headers", multiple=True, metavar="NAME=ENV_VAR",
        help="Send header NAME with the value of environment variable ENV_VAR on every request (repeatable), "
        "for proxies that check other headers.",
    )(func)  # fmt: skip
    func = click.option(
        "--chroma-auth-header", type=click.Choice(sorted(store_access.AUTH_HEADERS)), default="authorization",
        show_default=True, envvar="RAG_EVAL_CHROMA_AUTH_HEADER",
        help="How the token is sent: 'Authorization: Bearer <token>' or 'X-Chroma-Token: <token>'.",
    )(func)  # fmt: skip
    func = click.option(
        "--chroma-token-env", default=None, metavar="ENV_VAR", envvar="RAG_EVAL_CHROMA_TOKEN_ENV",
        help="Name of the environment variable that holds the token the server's proxy checks (never the token "
        f"itself). With --chroma-cloud: read the API key from it instead of {store_access.CLOUD_KEY_ENV}.",
    )(func)  # fmt: skip
    func = click.option(
        "--chroma-ca-bundle", type=click.Path(path_type=Path), default=None, envvar="RAG_EVAL_CHROMA_CA_BUNDLE",
        metavar="FILE",
        help="PEM file of the CA certificates that sign the server's (a private CA, or a self-signed certificate "
        "itself). Default: SSL_CERT_FILE, else REQUESTS_CA_BUNDLE, else the certifi bundle.",
    )(func)  # fmt: skip
    func = click.option(
        "--chroma-ssl", is_flag=True, envvar="RAG_EVAL_CHROMA_SSL",
        help="Connect to the Chroma server over HTTPS (TLS), e.g. through a reverse proxy.",
    )(func)  # fmt: skip
    func = click.option(
        "--chroma-port",
        type=int,
        default=None,
        envvar="RAG_EVAL_CHROMA_PORT",
        help="Chroma server port (default 8000 with --chroma-host, 443 with --chroma-ssl).",
    )(func)
    func = click.option(
        "--chroma-host",
        default=None,
        envvar="RAG_EVAL_CHROMA_HOST",
        help="Use the Chroma server on this host (HttpClient) instead of an embedded store; "
        "https://HOST[:PORT] implies --chroma-ssl.",
    )(func)
    func = click.option(
        "--chroma-path", type=click.Path(path_type=Path), default=None, envvar="RAG_EVAL_CHROMA_PATH",
        help="Embedded persistent Chroma store. Default: RUN_DIR/chroma with a run directory, else ./chroma.",
    )(func)  # fmt: skip
    return func


def make_target(chroma: dict[str, Any], run_dir) -> StoreTarget:
    """The Chroma store the options name: an embedded store (--chroma-path, default the run's), a server
    (--chroma-host/--chroma-port, with TLS, a token, headers, a tenant and a database) or Chroma Cloud."""
    path, host, port = chroma["chroma_path"], chroma["chroma_host"], chroma["chroma_port"]
    ssl = bool(chroma["chroma_ssl"])
    if host is not None and host.startswith(("http://", "https://")):
        parts = urlsplit(host)
        if not parts.hostname or parts.path not in ("", "/"):
            raise JobError(f"--chroma-host {host} is not a server address.", "pass e.g. --chroma-host chroma.internal.")
        ssl = ssl or parts.scheme == "https"
        host, port = parts.hostname, parts.port if parts.port is not None else port
    remote = {
        "--chroma-ssl": ssl, "--chroma-ca-bundle": chroma["chroma_ca_bundle"],
        "--chroma-token-env": chroma["chroma_token_env"], "--chroma-header": chroma["chroma_headers"],
        "--chroma-tenant": chroma["chroma_tenant"], "--chroma-database": chroma["chroma_database"],
    }  # fmt: skip
    given = [name for name, value in remote.items() if value]
    headers = tuple(_header_env(h) for h in chroma["chroma_headers"])
    for env in [chroma["chroma_token_env"], *(e for _, e in headers)]:
        if env is not None and not _ENV_NAME.fullmatch(env):
            raise JobError(  # not echoed: it may be the secret itself, given by mistake
                "--chroma-token-env and --chroma-header take the NAME of an environment variable (letters, digits "
                "and _), and one given is not a name.",
                "pass the variable's NAME (e.g. --chroma-token-env CHROMA_TOKEN with CHROMA_TOKEN exported), never "
                "the secret itself.",
            )
    bundle = chroma["chroma_ca_bundle"]
    if bundle is not None and not Path(bundle).expanduser().is_file():
        raise JobError(
            f"--chroma-ca-bundle {bundle} is not a file.",
            "pass the PEM file with the certificate of the CA that signed the server's certificate.",
        )
    common = dict(
        ca_bundle=chroma["chroma_ca_bundle"], token_env=chroma["chroma_token_env"],
        auth_header=chroma["chroma_auth_header"], header_envs=headers, tenant=chroma["chroma_tenant"],
        database=chroma["chroma_database"],
    )  # fmt: skip
    if chroma["chroma_cloud"]:
        clash = [n for n, v in (("--chroma-path", path), ("--chroma-host", host), ("--chroma-port", port)) if v]
        if clash or ssl:
            raise JobError(
                f"--chroma-cloud connects to Chroma Cloud; {', '.join(clash) or '--chroma-ssl'} name another store.",
                "drop them, or drop --chroma-cloud.",
            )
        return StoreTarget(cloud=True, **common)
    if host is None and port is not None:
        host = "localhost"
    if host is not None:
        if path is not None:
            raise JobError(
                "Both --chroma-path and --chroma-host are given.",
                "pass --chroma-path for an embedded store or --chroma-host/--chroma-port for a server, not both.",
            )
        port = port if port is not None else (443 if ssl else 8000)
        if not 0 < port < 65536:
            raise JobError(f"--chroma-port {port} is not a TCP port.", "pass a port between 1 and 65535.")
        if chroma["chroma_ca_bundle"] is not None and not ssl:
            raise JobError(
                "--chroma-ca-bundle is given without --chroma-ssl.", "add --chroma-ssl (the server speaks TLS)."
            )
        return StoreTarget(host=host, port=port, ssl=ssl, **common)
    if given:
        raise JobError(
            f"{', '.join(given)} apply to a Chroma server, but none is named.",
            "add --chroma-host (and --chroma-port), or --chroma-cloud; or drop them to use the embedded store.",
        )
    if path is None:
        path = run_dir.chroma if run_dir is not None else Path("chroma")
    return StoreTarget(path=Path(path).expanduser())


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _header_env(value: str) -> tuple[str, str]:
    name, sep, env = value.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name.strip()) or not env.strip():
        raise JobError(
            "A --chroma-header is not NAME=ENV_VAR (not shown: it may hold a secret given by mistake).",
            "pass the header's name and the environment variable that holds its value, e.g. "
            "--chroma-header CF-Access-Client-Secret=CF_SECRET (the value itself never goes on the command line).",
        )
    return name.strip(), env.strip()
