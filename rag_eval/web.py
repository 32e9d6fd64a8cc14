"""`rag-eval serve`'s web layer: a Gradio page and a small JSON API on one FastAPI app (uvicorn).

A thin layer over :mod:`rag_eval.service` (the search) and :mod:`rag_eval.page` (the HTML). Routes:

- ``/``: the Gradio page (question box, top-k, dim, held-out questions, both models side by side,
  index facts per dim, NDCG@10 by dim);
- ``GET /api/search?q=...&k=5&dim=128`` or ``POST /api/search`` with ``{"q": ..., "k": ..., "dim": ...}``:
  the same answer as JSON (400 with ``{"error": ...}`` for bad input). Used by scripts and by
  ``bench/serve_load.py``: plain HTTP, no Gradio queue or SSE in the way;

- ``GET /api/info``: models, dims, held-out questions, index facts; ``GET /healthz``: liveness (no auth).

Both the page's events and the API are async: a request waits on the service's batch threads (the encode
and the search stage) without holding a worker thread, so many concurrent requests share a few batched
model calls. ``GET /api/search`` is answered by a small ASGI layer (:class:`SearchFastPath`) in front of
FastAPI's router, with the same parameters, answers and errors as the FastAPI route it stands for: the
router's per-request work (parameter validation, dependency resolution) cost more CPU than all the rest of the
HTTP layer (~250 against ~90 us per request), and on two cores the CPU not spent encoding is taken from the
encoders (BENCHMARKS.md, `rag-eval serve` at the encoders' ceiling).

Offline by construction: Gradio analytics are off (``GRADIO_ANALYTICS_ENABLED=False``), there is no
share link, no server-side rendering (no Node), and the frontend and its fonts come from the gradio
wheel. It binds 127.0.0.1 unless ``--host`` says otherwise. ``RAG_EVAL_SERVE_AUTH=user:password``
(environment only, never argv) turns on HTTP basic auth for every route but ``/healthz``.
"""

from __future__ import annotations

import base64
import gc
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from job.errors import JobError
from rag_eval import page as html_page
from rag_eval.service import MAX_K, RetrievalService

AUTH_ENV = "RAG_EVAL_SERVE_AUTH"
MAX_LISTED = 1000  # held-out questions offered in the page's list (any question can still be typed)
# The cyclic garbage collector holds the GIL while it runs, stalling every thread. With the models, Chroma and Gradio
# loaded, a full collection walked ~600k start-up objects (~0.45 s each, twice per 15 s at 160 requests/s); frozen
# after start-up they are skipped, and a larger first generation runs the young collections less often.
GC_THRESHOLD = (20_000, 20, 20)
log = logging.getLogger("rag_eval.serve")


def _offline_env() -> None:
    """Set before gradio is imported: no analytics or version checks, no telemetry."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("GRADIO_SSR_MODE", "False")


def check_installed() -> None:
    try:
        _offline_env()
        import fastapi  # noqa: F401
        import gradio  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise JobError(
            f"`rag-eval serve` needs Gradio, FastAPI and uvicorn, and {exc.name} is not installed.",
            "install the serve extra: pip install -e '.[serve]' (`make` installs it with the dev extra).",
        ) from None


def check_port_free(host: str, port: int) -> None:
    """Fail at start-up, before any model loads, if HOST:PORT cannot be listened on."""
    if not 0 < port < 65536:
        raise JobError(f"--port {port} is not a TCP port.", "pass a port between 1 and 65535.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise JobError(
            f"--host {host} is not an address this machine can listen on ({exc.strerror}).",
            "pass 127.0.0.1 (or 0.0.0.0 for every interface).",
        ) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as exc:
            raise JobError(
                f"Cannot listen on {host}:{port} ({exc.strerror or exc}).",
                "pass another --port, or stop the program that uses it.",
            ) from None


def auth_from_env(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(user, password) from RAG_EVAL_SERVE_AUTH=user:password, or None when unset. Never echoed."""
    value = (os.environ if environ is None else environ).get(AUTH_ENV, "")
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise JobError(
            f"{AUTH_ENV} is set but is not of the form user:password.",
            f"set {AUTH_ENV}=user:password, or unset it to serve without a login.",
        )
    return user, password


class BasicAuth:
    """ASGI middleware: HTTP basic auth on every request but ``open_paths`` (constant-time compare)."""

    def __init__(self, app, user: str, password: str, open_paths: tuple[str, ...] = ("/healthz",)):
        self.app = app
        self.expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.open_paths:
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if secrets.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="rag-eval serve", charset="UTF-8"'),
                    (b"content-type", b"text/plain; charset=utf-8"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"401: log in (rag-eval serve has RAG_EVAL_SERVE_AUTH set)\n"}
        )


async def _answer_html(service: RetrievalService, question: Any, k: Any, dim: Any) -> str:
    try:
        return html_page.render_answer(await service.search_async(question, k, dim))
    except JobError as exc:
        return html_page.render_error(exc.message)
    except Exception:
        log.exception("search failed")
        return html_page.render_error("Unexpected error while searching; the server log has the details.")


def build_blocks(service: RetrievalService):
    """The Gradio page: inputs on top, both models side by side, then index facts and quality by dim."""
    _offline_env()
    import gradio as gr

    models = " vs ".join(f"{m.label} <code>{html_page.esc(m.spec.name)}</code>" for m in service.models)
    header = (
        f'<h2 style="margin:0">Retrieval demo: {html_page.esc(service.page.title)}</h2>'
        f'<div class="re-note">{models}; questions encoded with {html_page.esc(service.backend)}; '
        f"{html_page.esc(service.describe_search(public=True))}; the models are loaded once.</div>"
    )
    with gr.Blocks(title="rag-eval serve", analytics_enabled=False) as blocks:
        gr.HTML(header, js_on_load=None, elem_id="header")
        with gr.Row():
            question = gr.Textbox(
                label="Question",
                placeholder="Ask something the passages answer; Enter searches",
                scale=5,
                elem_id="question",
                lines=1,
                max_lines=4,
            )
            ask = gr.Button("Search", variant="primary", scale=1, elem_id="search")
        with gr.Row():
            dim = gr.Radio(
                choices=service.dims, value=service.dims[0], label="Matryoshka dim (indexed)", elem_id="dim", scale=3
            )
            k = gr.Slider(1, MAX_K, value=service.k, step=1, label="top-k", elem_id="k", scale=2)
        listed = [text for _, text in service.page.questions[:MAX_LISTED]]
        count = (
            f"{len(listed)} of {len(service.page.questions)}"
            if len(listed) < len(service.page.questions)
            else str(len(listed))
        )
        heldout = gr.Dropdown(
            choices=listed, value=None, label=f"Held-out test questions ({count}): pick one to see whether each "
            "model finds its relevant passage (type to filter)", elem_id="heldout", filterable=True,
            visible=bool(listed),
        )  # fmt: skip
        results = gr.HTML(html_page.render_placeholder(service), js_on_load=None, elem_id="results")
        with gr.Accordion("Index facts by dim", open=True):
            gr.HTML(html_page.render_facts(service), js_on_load=None, elem_id="facts")
        with gr.Accordion("Quality by dim: held-out NDCG@10, baseline and fine-tuned", open=True):
            gr.HTML(html_page.render_quality(service), js_on_load=None, elem_id="quality")

        async def answer(q, k_, dim_):
            return await _answer_html(service, q, k_, dim_)

        async def answer_if_asked(q, k_, dim_):
            return await _answer_html(service, q, k_, dim_) if str(q or "").strip() else gr.skip()

        async def pick(text, k_, dim_):
            if not text:
                return gr.skip(), gr.skip()
            return text, await _answer_html(service, text, k_, dim_)

        question.submit(answer, [question, k, dim], results)
        ask.click(answer, [question, k, dim], results)
        dim.input(answer_if_asked, [question, k, dim], results)
        k.release(answer_if_asked, [question, k, dim], results)
        heldout.input(pick, [heldout, k, dim], [question, results])
    blocks.queue(default_concurrency_limit=8)
    return blocks


def _dumps(payload: dict[str, Any]) -> bytes:
    """JSON bytes, by orjson (a gradio dependency) when it is there: several times faster than the standard library
    for the answers' nested lists, which matters at a few hundred answers a second."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - gradio brings it
        import json

        return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _json(payload: dict[str, Any], status: int = 200):
    """A JSON response (:func:`_dumps`)."""
    from fastapi.responses import Response

    return Response(_dumps(payload), status_code=status, media_type="application/json")


async def _search_json(service: RetrievalService, q: Any, k: Any, dim: Any) -> tuple[int, bytes]:
    """(status, JSON body) of one search: the answer, 400 with the reason for bad input, 500 for anything else."""
    try:
        return 200, _dumps((await service.search_async(q, k, dim)).to_dict())
    except JobError as exc:
        return 400, _dumps({"error": exc.message})
    except Exception:
        log.exception("search failed")
        return 500, _dumps({"error": "unexpected error while searching; the server log has the details"})


class SearchFastPath:
    """ASGI middleware: ``GET /api/search?q=...&k=...&dim=...`` answered without FastAPI's router (the query string
    read as Starlette reads it: latin-1, blanks kept, the last of repeated names); everything else passes on."""

    def __init__(self, app, service: RetrievalService, path: str = "/api/search"):
        self.app = app
        self.service = service
        self.path = path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        status, body = await _search_json(self.service, params.get("q", ""), params.get("k"), params.get("dim"))
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def build_app(
    service: RetrievalService,
    auth: tuple[str, str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    page: bool = True,
):
    """The FastAPI app: JSON routes first, the Gradio page mounted at / (``page=False``: JSON only)."""
    _offline_env()
    from fastapi import Body, FastAPI
    from fastapi.responses import Response

    app = FastAPI(title="rag-eval serve", docs_url=None, redoc_url=None, openapi_url=None)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc: RequestValidationError) -> Response:
        """Client input always gets 400 with the reason (FastAPI's own answer would be a 422 validation dump)."""
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the request"
        return _json(
            {"error": f"{where}: {first.get('msg', 'not valid')}. Fix: send a JSON object such as "
             '{"q": "...", "k": 5, "dim": 128}.'},
            400,
        )  # fmt: skip

    async def _search(q: Any, k: Any, dim: Any) -> Response:
        status, body = await _search_json(service, q, k, dim)
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/search")  # GET is answered by SearchFastPath in front; this route documents it (and HEAD)
    async def search_get(q: str = "", k: str | None = None, dim: str | None = None):
        return await _search(q, k, dim)

    @app.post("/api/search")
    async def search_post(payload: dict[str, Any] = Body(...)):  # noqa: B008 - FastAPI's idiom
        strings = [name for name in ("k", "dim") if isinstance(payload.get(name), str)]
        if strings:  # in JSON a number is a number: "3" is a client mistake, not a 3
            return _json(
                {"error": f"{' and '.join(strings)} must be JSON numbers, not strings. Fix: send e.g. "
                 '{"q": "...", "k": 5, "dim": 128}.'},
                400,
            )  # fmt: skip
        return await _search(payload.get("q"), payload.get("k"), payload.get("dim"))

    if page:
        import gradio as gr

        gr.mount_gradio_app(
            app, build_blocks(service), path="/", server_name=host, server_port=port, ssr_mode=False,
            footer_links=["api", "settings"], css=html_page.CSS, show_error=False, run_history=False,
        )  # fmt: skip
    app.add_middleware(SearchFastPath, service=service)
    if auth is not None:  # added last: the outermost layer, so it guards the fast path too
        app.add_middleware(BasicAuth, user=auth[0], password=auth[1])
    return app


def run(
    service: RetrievalService,
    *,
    host: str,
    port: int,
    auth: tuple[str, str] | None,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve until Ctrl+C or SIGTERM (uvicorn shuts down gracefully and this returns)."""
    import uvicorn

    app = build_app(service, auth, host=host, port=port)
    gc.collect()
    gc.freeze()  # everything loaded so far lives as long as the server
    gc.set_threshold(*GC_THRESHOLD)
    shown = f"[{host}]" if ":" in host else host
    echo(
        f"serve: http://{shown}:{port}/ (JSON: /api/search?q=...&k={service.k}&dim={service.dims[0]})"
        f"{'; basic auth on' if auth else ''}; Ctrl+C stops it"
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown (exit status -15 / a KeyboardInterrupt);
            # a server stopped on purpose has done its job: return and exit 0
            getattr(self, "_captured_signals", []).clear()

    if not auth and host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"serve: warning: listening on {host} without a login; set {AUTH_ENV}=user:password to require one")
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5, lifespan="on"
    )
    Server(config).run()
    echo("serve: stopped")
