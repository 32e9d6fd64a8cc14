"""Chroma as deployed: a real `chroma run` on loopback behind a real TLS reverse proxy that requires a token.

Chroma 1.x's server has no authentication of its own; deployments put it behind a reverse proxy that checks an
``Authorization: Bearer`` or ``X-Chroma-Token`` header, usually over TLS. The proxy here is this file run as a
script (``python test_chroma_deployed.py proxy ...``): a threaded HTTPS server with a certificate signed by a
CA made for the test (``cryptography``), which answers 401 without the token and 403 with a wrong one and
forwards everything else to `chroma run`. Both listen on 127.0.0.1 only and are stopped by PID at teardown.

Chroma Cloud cannot be reached from here. Its path (``--chroma-cloud``: ``chromadb.CloudClient``, key from
``CHROMA_API_KEY``) is tested for the clear error a missing key gives before any network use, and run for real
against the same local proxy, which checks ``X-Chroma-Token`` as Chroma Cloud does: ``store_access.CLOUD_HOST``
and ``CLOUD_PORT`` (CloudClient's ``cloud_host``/``cloud_port``) point at it. That it works against
api.trychroma.com itself is not verified here.
"""

# ruff: noqa: F811 - fixtures imported from rag_eval_helpers are, by design, the test functions' parameters

from __future__ import annotations

import datetime as dt
import hmac
import http.client
import ipaddress
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

if __name__ != "__main__":  # the proxy process (this file run as a script) needs none of the test helpers
    from rag_eval_helpers import tiny_run_dir  # noqa: F401 - fixture

HERE = Path(__file__).resolve()
TOKEN_ENV = "RAG_EVAL_TEST_CHROMA_TOKEN"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"}


# --- the proxy (run as a script) ------------------------------------------------------------------
def serve_proxy(listen: int, upstream: int, cert: str, key: str, header: str) -> None:
    """HTTPS on 127.0.0.1:``listen`` -> HTTP on 127.0.0.1:``upstream``, for requests whose ``header``
    (``authorization``: ``Bearer <token>``; or ``x-chroma-token``) holds the token in $PROXY_TOKEN; 401 without
    it, 403 with another; the token header is not forwarded. Logs request lines only, never headers."""
    token = os.environ["PROXY_TOKEN"].encode()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write(fmt % args + "\n")

        def _deny(self, status: int) -> None:
            body = f"{status} {'Unauthorized' if status == 401 else 'Forbidden'}\n".encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="chroma"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            given = self.headers.get(header)
            if header == "authorization" and given is not None:
                given = given[7:] if given.lower().startswith("bearer ") else None
            if given is None:
                return self._deny(401)
            if not hmac.compare_digest(given.strip().encode(), token):
                return self._deny(403)
            forward = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {header}}
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=120)
            try:
                conn.request(self.command, self.path, body=body or None, headers=forward)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP | {"content-length", "date", "server"}:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def finish_request(self, request, client_address):  # the TLS handshake in the connection's own thread
            try:
                request = context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:  # an untrusting client, or plain HTTP
                sys.stderr.write(f"TLS handshake failed: {exc}\n")
                return
            super().finish_request(request, client_address)

    server = Server(("127.0.0.1", listen), Handler)
    print("ready", flush=True)
    server.serve_forever()


# --- certificates, ports, processes ---------------------------------------------------------------
def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA (ca.pem) and a server certificate it signs for 127.0.0.1 and localhost (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rag-eval test CA")])
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)  # fmt: skip
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "cert.pem").write_bytes(cert.public_bytes(pem))
    (folder / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "ca.pem", folder / "cert.pem", folder / "key.pem"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(upstream: int, cert: Path, key: Path, token: str, header: str, log: Path):
    """This file as a proxy process in front of 127.0.0.1:``upstream``: (process, port), once it listens."""
    port = _free_port()
    env = {**os.environ, "PROXY_TOKEN": token}
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(HERE), "proxy", str(port), str(upstream), str(cert), str(key), header],
            stdout=subprocess.PIPE, stderr=err, env=env, text=True,
        )  # fmt: skip
    line = proc.stdout.readline()
    if line.strip() != "ready":
        stop(proc)
        pytest.fail(f"the TLS proxy did not start: {log.read_text()[-2000:]}")
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    """Stop a process this test started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


@dataclass
class Deployed:
    chroma_port: int  # plain HTTP, no token: `chroma run` itself
    port: int  # the TLS proxy that wants 'Authorization: Bearer <token>'
    ca: Path
    cert: Path
    key: Path
    token: str
    folder: Path

    def args(self, *, token: bool = True, ca: bool = True, database: str = "rag_eval_deployed") -> list[str]:
        out = ["--chroma-host", "127.0.0.1", "--chroma-port", str(self.port), "--chroma-ssl"]
        out += ["--chroma-ca-bundle", str(self.ca)] if ca else []
        out += ["--chroma-token-env", TOKEN_ENV] if token else []
        return out + ["--chroma-database", database]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from test_rag_eval_server import start_server, stop_server

    folder = tmp_path_factory.mktemp("deployed")
    ca, cert, key = make_certificates(folder)
    token = "tok-" + secrets.token_urlsafe(24)
    chroma_port = _free_port()
    server, server_log = start_server(folder / "chroma-data", chroma_port, folder / "chroma.log")
    try:
        proxy, port = start_proxy(chroma_port, cert, key, token, "authorization", folder / "proxy.log")
        try:
            yield Deployed(chroma_port, port, ca, cert, key, token, folder)
        finally:
            stop(proxy)
    finally:
        stop_server(server, server_log)


@pytest.fixture()
def env(monkeypatch, deployed):
    """The token in its variable; no CA bundle from the environment (each test says what it trusts)."""
    monkeypatch.setenv(TOKEN_ENV, deployed.token)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CHROMA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def run(capsys, *args) -> tuple[int, str]:
    """`rag-eval ARGS` in this process: (exit code, stdout + stderr)."""
    from rag_eval.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out + err


def _plain_client(deployed: Deployed, database: str):
    """chromadb straight to `chroma run`, past the proxy: what the server really holds."""
    import chromadb
    from chromadb.config import Settings

    return chromadb.HttpClient(
        host="127.0.0.1", port=deployed.chroma_port, database=database, settings=Settings(anonymized_telemetry=False)
    )


# --- the tests ------------------------------------------------------------------------------------
def test_index_score_query_through_a_token_checking_tls_proxy(deployed, env, tiny_run_dir, tmp_path, capsys):
    from rag_eval import store
    from rag_eval.sources import resolve_models

    code, out = run(capsys, "index", "--model", tiny_run_dir, "--dims", "32,8", *deployed.args())
    assert code == 0, out
    assert f"created database rag_eval_deployed in tenant default_tenant (https://127.0.0.1:{deployed.port})" in out
    where = f"Chroma server https://127.0.0.1:{deployed.port} (database rag_eval_deployed)"
    assert f"-> {where}\n" in out

    names = {c.name for c in _plain_client(deployed, "rag_eval_deployed").list_collections()}
    specs = resolve_models(str(tiny_run_dir)).models
    assert names == {store.collection_name(store.DEFAULT_PREFIX, s.key, d) for s in specs for d in (32, 8)}
    assert not _plain_client(deployed, "default_database").list_collections()  # the database asked for, only

    report = tmp_path / "report"
    code, out = run(
        capsys, "score", "--model", tiny_run_dir, "--dims", "32,8", *deployed.args(), "--out", report,
        "--latency-samples", "5", "--batch-queries", "2", "--no-disk-size", "--precision", "none",
    )  # fmt: skip
    assert code == 0, out
    payload = json.loads((report / "metrics.json").read_text())
    assert payload["store"] == where and payload["agreement"]["ok"]
    for label in ("baseline", "fine-tuned"):
        row = payload["models"][label]["dims"]["8"]
        assert abs(row["store"]["ndcg@10"] - row["evaluator"]["ndcg@10"]) <= 0.002

    code, query_out = run(capsys, "query", "tax rate", "--model", tiny_run_dir, "--dims", "8", "-k", "2",
                          *deployed.args())  # fmt: skip
    assert code == 0, query_out

    # `serve` starts over the same target (its searches and page are tested in test_rag_eval_serve.py)
    from rag_eval.service import RetrievalService
    from rag_eval.sources import load_eval_data

    sources = resolve_models(str(tiny_run_dir))
    target = store.StoreTarget(
        host="127.0.0.1", port=deployed.port, ssl=True, ca_bundle=deployed.ca, token_env=TOKEN_ENV,
        database="rag_eval_deployed",
    )  # fmt: skip
    service = RetrievalService.open(sources, target, load_eval_data(None, sources)[0], echo=lambda _: None)
    assert service.dims == [32, 8]  # every collection opened and checked through the proxy
    served = str(service.info())

    # the token is in no output and no report file
    assert deployed.token not in out + query_out + served
    for path in report.rglob("*"):
        assert not path.is_file() or deployed.token.encode() not in path.read_bytes(), path


def test_collections_are_queried_with_plain_chromadb_as_the_docs_show(deployed, env, tiny_run_dir, capsys):
    """The metadata holds what docs/rag-eval.md's three lines need, and they give rag-eval's own vectors."""
    import chromadb
    import numpy as np
    from chromadb.config import Settings
    from sentence_transformers import SentenceTransformer

    from rag_eval import store
    from rag_eval.sources import resolve_models
    from rag_eval.vectors import encode_queries, truncate_normalise

    code, out = run(capsys, "index", "--model", tiny_run_dir, "--dims", "32,8", *deployed.args())
    assert code == 0, out
    spec = resolve_models(str(tiny_run_dir)).models[-1]
    client = chromadb.HttpClient(
        host="127.0.0.1", port=deployed.port, ssl=True, headers={"Authorization": f"Bearer {deployed.token}"},
        database="rag_eval_deployed",
        settings=Settings(anonymized_telemetry=False, chroma_server_ssl_verify=str(deployed.ca)),
    )  # fmt: skip
    collection = client.get_collection(store.collection_name(store.DEFAULT_PREFIX, spec.key, 8))
    meta = collection.metadata
    assert meta["model"] == str(tiny_run_dir / "model") and meta["model_name"] == tiny_run_dir.name
    assert (meta["dim"], meta["model_dim"], meta["normalized"], meta["precision"], meta["space"]) == (
        8, 32, True, "float32", "cosine",
    )  # fmt: skip
    assert meta["query_prompt_used"] == "" and meta["passage_prompt_used"] == ""
    assert "truncate_dim=8" in meta["usage"] and "normalize_embeddings=True" in meta["usage"]

    # docs/rag-eval.md, "Querying the collections without rag-eval"
    questions = ["What is the tax rate?", "How large is the order backlog?"]
    model = SentenceTransformer(meta["model"], truncate_dim=meta["dim"])
    embedded = model.encode_query(questions, prompt=meta["query_prompt_used"], normalize_embeddings=True)
    hits = collection.query(query_embeddings=embedded, n_results=3)

    ours = truncate_normalise(encode_queries(SentenceTransformer(meta["model"]), questions), 8)
    assert np.allclose(embedded, ours, atol=1e-5)
    index = store.ChromaIndex(collection)
    assert hits["ids"] == [[h.id for h in row] for row in index.query(ours, 3)]


def test_a_missing_or_wrong_token_is_a_clear_error(deployed, env, tiny_run_dir, capsys):
    args = ["index", "--model", tiny_run_dir, "--dims", "8"]
    code, out = run(capsys, *args, *deployed.args(token=False))
    assert code == 2 and "Traceback" not in out
    assert "refused the request (HTTP 401 Unauthorized): it requires a token and none was sent" in out
    assert "--chroma-token-env NAME" in out

    code, out = run(capsys, "score", "--model", tiny_run_dir, *deployed.args(token=False))
    assert code == 2 and "HTTP 401" in out and "--chroma-token-env" in out

    wrong = "wrong-" + secrets.token_urlsafe(16)
    env.setenv(TOKEN_ENV, wrong)
    code, out = run(capsys, *args, *deployed.args())
    assert code == 2 and "Traceback" not in out
    assert f"refused the token in {TOKEN_ENV} as Authorization (HTTP 403 Forbidden)" in out
    assert f"check the token in {TOKEN_ENV}" in out and wrong not in out
    code, out = run(capsys, *args, *deployed.args(), "--debug")  # even with the traceback
    assert code == 2 and wrong not in out and deployed.token not in out

    env.setenv(TOKEN_ENV, deployed.token)  # the right token, in the header this proxy does not check
    code, out = run(capsys, *args, *deployed.args(), "--chroma-auth-header", "x-chroma-token")
    assert code == 2 and "as X-Chroma-Token (HTTP 401 Unauthorized)" in out
    assert "--chroma-auth-header authorization" in out and deployed.token not in out

    env.delenv(TOKEN_ENV)
    code, out = run(capsys, *args, *deployed.args())
    assert code == 2 and f"the environment variable {TOKEN_ENV} is not set" in out


def test_an_untrusted_certificate_names_the_ca_bundle(deployed, env, tiny_run_dir, tmp_path, capsys):
    args = ["index", "--model", tiny_run_dir, "--dims", "8"]
    code, out = run(capsys, *args, *deployed.args(ca=False))
    assert code == 2 and "Traceback" not in out
    assert f"The certificate of the Chroma server at https://127.0.0.1:{deployed.port} is not trusted" in out
    assert "--chroma-ca-bundle FILE" in out and deployed.token not in out

    other, _, _ = make_certificates(tmp_path)  # a bundle that does not hold the CA that signed it
    code, out = run(capsys, *args, *deployed.args(ca=False), "--chroma-ca-bundle", other)
    assert code == 2 and f"not trusted by the CA bundle {other} (--chroma-ca-bundle)" in out

    env.setenv("SSL_CERT_FILE", str(deployed.ca))  # the environment's bundle is honoured
    code, out = run(capsys, *args, *deployed.args(ca=False, database="via_ssl_cert_file"))
    assert code == 0, out
    env.delenv("SSL_CERT_FILE")
    env.setenv("REQUESTS_CA_BUNDLE", str(deployed.ca))
    code, out = run(capsys, "query", "tax rate", "--model", tiny_run_dir, "--dims", "8",
                    *deployed.args(ca=False, database="via_ssl_cert_file"))  # fmt: skip
    assert code == 0, out

    # TLS and plain HTTP mixed up
    code, out = run(capsys, *args, "--chroma-host", "127.0.0.1", "--chroma-port", deployed.port)
    assert code == 2 and "add --chroma-ssl" in out
    code, out = run(capsys, *args, "--chroma-host", "127.0.0.1", "--chroma-port", deployed.chroma_port, "--chroma-ssl")
    assert code == 2 and "does not speak TLS" in out and "drop --chroma-ssl" in out


def test_x_chroma_token_and_chroma_cloud_through_a_proxy_that_checks_it(deployed, env, tiny_run_dir, capsys):
    """A proxy that checks X-Chroma-Token, as Chroma Cloud does; Cloud's path (CloudClient, key from
    CHROMA_API_KEY) run against it through store_access.CLOUD_HOST/CLOUD_PORT, since Chroma Cloud itself is not
    reachable here."""
    from rag_eval import store_access

    proxy, port = start_proxy(
        deployed.chroma_port, deployed.cert, deployed.key, deployed.token, "x-chroma-token", deployed.folder / "x.log"
    )
    try:
        code, out = run(
            capsys, "index", "--model", tiny_run_dir, "--dims", "8", "--chroma-host", f"https://127.0.0.1:{port}",
            "--chroma-ca-bundle", deployed.ca, "--chroma-token-env", TOKEN_ENV, "--chroma-auth-header",
            "x-chroma-token",
        )  # fmt: skip
        assert code == 0, out
        assert f"-> Chroma server https://127.0.0.1:{port}\n" in out

        env.setattr(store_access, "CLOUD_HOST", "127.0.0.1")
        env.setattr(store_access, "CLOUD_PORT", port)
        env.setenv("CHROMA_API_KEY", deployed.token)
        cloud = ["--chroma-cloud", "--chroma-ca-bundle", deployed.ca]
        code, out = run(capsys, "query", "tax rate", "--model", tiny_run_dir, "--dims", "8", *cloud)
        assert code == 0, out  # the key's tenant and database: the server's defaults, indexed into above

        wrong = "wrong-" + secrets.token_urlsafe(16)
        env.setenv("CHROMA_API_KEY", wrong)
        code, out = run(capsys, "query", "tax rate", "--model", tiny_run_dir, "--dims", "8", *cloud)
        assert code == 2 and "Chroma Cloud refused the API key in CHROMA_API_KEY (HTTP 403 Forbidden)" in out
        assert wrong not in out and deployed.token not in out
    finally:
        stop(proxy)


def test_chroma_cloud_without_a_key_fails_before_any_network_use(monkeypatch, tiny_run_dir, capsys):
    """Chroma Cloud cannot be reached from here: this checks the error a missing CHROMA_API_KEY gives, and that
    nothing was sent (every outgoing connection fails the test)."""
    monkeypatch.delenv("CHROMA_API_KEY", raising=False)
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("network use before the key was checked")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    for command in (["index", "--dims", "8"], ["score"], ["query", "tax rate"]):
        code, out = run(capsys, *command, "--model", tiny_run_dir, "--chroma-cloud")
        assert code == 2 and "Traceback" not in out, out
        assert (
            "--chroma-cloud: the environment variable CHROMA_API_KEY is not set; Chroma Cloud needs an API key" in out
        )
        assert "export CHROMA_API_KEY=" in out
    assert attempts == []


def test_a_kept_collection_gets_the_new_metadata_without_a_rewrite(tmp_path):
    """Collections indexed before the descriptive keys existed keep their write key (no re-index) and get the
    keys added in place; a model's own passage prompt, which its weights' digest does not cover, is keyed."""
    import numpy as np

    from rag_eval import store
    from rag_eval.indexing import PASSAGE_PROMPT_NAMES, QUERY_PROMPT_NAMES, prompt_used, write_vectors
    from rag_eval.naming import DESCRIPTIVE

    settings = store.HnswSettings()
    meta = store.build_metadata(
        model="/runs/a/model", model_key="k", model_fingerprint="fp", model_dim=4, dim=4, corpus_fingerprint="c",
        corpus_size=3, data_source="test", settings=settings, query_prompt=None, passage_prompt=None, model_name="a",
    )  # fmt: skip
    old_style = {k: v for k, v in meta.items() if k not in DESCRIPTIVE}
    assert store.write_key(old_style) == store.write_key(meta)
    vs = store.connect(store.StoreTarget(path=tmp_path / "chroma"))
    vectors = np.eye(3, 4, dtype=np.float32)
    write_vectors(vs, "rag-eval-a-d4", ["p1", "p2", "p3"], vectors, None, meta, settings)
    index = vs.open("rag-eval-a-d4")
    index.collection.modify(metadata={k: v for k, v in index.metadata.items() if k not in DESCRIPTIVE})
    assert "precision" not in vs.open("rag-eval-a-d4").metadata

    again = write_vectors(vs, "rag-eval-a-d4", ["p1", "p2", "p3"], vectors, None, meta, settings)
    kept = vs.open("rag-eval-a-d4")
    assert again.action == "kept" and kept.collection.id == index.collection.id
    assert {k: kept.metadata[k] for k in DESCRIPTIVE} == {k: meta[k] for k in DESCRIPTIVE}
    assert store.inspect(kept, 4) == (store.OURS, [])

    class Prompted:  # what sentence-transformers keeps: prompts and default_prompt_name
        prompts = {"query": "query: ", "passage": "passage: "}
        default_prompt_name = None

    assert prompt_used(Prompted(), None, QUERY_PROMPT_NAMES) == "query: "
    assert prompt_used(Prompted(), None, PASSAGE_PROMPT_NAMES) == "passage: "
    assert prompt_used(Prompted(), "", PASSAGE_PROMPT_NAMES) == ""  # an explicit empty prompt wins
    own = {**meta, "passage_prompt_used": "passage: "}
    assert store.write_key(own) != store.write_key(meta)


def test_store_options_are_checked_before_connecting(tiny_run_dir, tmp_path, capsys, monkeypatch):
    from rag_eval import store, stores
    from rag_eval.store_options import store_keys, store_target

    def target(**given):
        options = {k: None for k in store_keys()} | {"chroma_headers": (), "chroma_auth_header": "authorization"}
        return store_target(options | given, None)

    assert target(chroma_host="https://chroma.internal") == store.StoreTarget(
        host="chroma.internal", port=443, ssl=True
    )
    assert target(chroma_host="http://h:9000").url == "http://h:9000"
    t = target(chroma_host="h", chroma_ssl=True, chroma_token_env="T", chroma_headers=("X-Extra=E",))
    assert (t.port, t.tls, t.header_envs) == (443, True, (("X-Extra", "E"),))
    monkeypatch.setenv("T", "the-token")
    monkeypatch.setenv("E", "extra")
    assert t.request_headers() == {"X-Extra": "extra", "Authorization": "Bearer the-token"}
    assert "the-token" not in repr(t) + stores.describe(t)
    assert stores.describe(target(chroma_cloud=True, chroma_tenant="t", chroma_database="d")) == (
        "Chroma Cloud (tenant t, database d)"
    )

    base = ["index", "--model", tiny_run_dir, "--dims", "8"]
    cases = {
        ("--chroma-token-env", "T"): "--chroma-token-env apply to a Chroma server, but none is named",
        ("--chroma-host", "h", "--chroma-ca-bundle", tiny_run_dir / "model" / "training.json"): "without --chroma-ssl",
        ("--chroma-host", "h", "--chroma-ssl", "--chroma-ca-bundle", tmp_path / "none.pem"): "is not a file",
        ("--chroma-host", "h", "--chroma-token-env", "abc-secret-xyz"): "not a name",
        ("--chroma-host", "h", "--chroma-header", "Authorization: Bearer abc-secret-xyz"): "is not NAME=ENV_VAR",
        ("--chroma-cloud", "--chroma-host", "h"): "--chroma-cloud connects to Chroma Cloud; --chroma-host",
    }
    for args, message in cases.items():
        code, out = run(capsys, *base, *args)
        assert code == 2 and message in out, (args, out)
        assert "abc-secret-xyz" not in out  # a secret given by mistake is not echoed


if __name__ == "__main__" and sys.argv[1:2] == ["proxy"]:
    serve_proxy(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
