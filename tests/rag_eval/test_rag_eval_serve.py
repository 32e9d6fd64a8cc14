"""`rag-eval serve`: the search service without Gradio, its JSON API and basic auth, start-up errors,
and the page itself in a real headless Chromium (a `rag-eval serve` subprocess on a free loopback port).

The browser tests skip, with the reason, only when no browser is installed and REQUIRE_BROWSER is
unset (CI installs Chromium and sets REQUIRE_BROWSER=1). Screenshots go to TEST_ARTIFACTS_DIR
(default build/test-artifacts/).
"""

# ruff: noqa: F811 - fixtures imported from rag_eval_helpers are, by design, the test functions' parameters

from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import serve_browser as browser
from rag_eval_helpers import XSS_QUESTION, free_port, make_serve_run, tiny_pairs, tiny_run_dir  # noqa: F401 - fixtures

from job.errors import JobError
from rag_eval import page as html_page
from rag_eval import store, web
from rag_eval.cli import main
from rag_eval.page_data import load_score_report
from rag_eval.service import MAX_K, RetrievalService, query_terms
from rag_eval.sources import load_eval_data, resolve_models

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / "build" / "test-artifacts")
DIMS = [32, 16, 8]
HELD_OUT = tiny_pairs()[1].question  # "Tell me the revenue figure."


@pytest.fixture(scope="module")
def serve_run(tiny_run_dir, tmp_path_factory):
    """The tiny run plus the XSS passage, indexed at 32/16/8, with both reports."""
    return make_serve_run(tmp_path_factory.mktemp("serve"), tiny_run_dir)


@pytest.fixture(scope="module")
def service(serve_run):
    sources = resolve_models(str(serve_run))
    ir, _ = load_eval_data(None, sources)
    return RetrievalService.open(sources, store.StoreTarget(path=serve_run / "chroma"), ir, echo=lambda _: None)


# --- the service, without Gradio ----------------------------------------------------------------------
def test_both_models_side_by_side_with_moves_relevance_and_timings(service):
    answer = service.search(HELD_OUT, 3, 16)
    full = service.search(HELD_OUT, MAX_K, 16)  # every passage, both models
    assert (answer.dim, answer.k) == (16, 3)
    assert [c.label for c in answer.columns] == ["baseline", "fine-tuned"]
    assert answer.relevant and set(answer.relevant) == service.page.gold[HELD_OUT]
    full_rank = {c.label: {r.id: r.rank for r in c.rows} for c in full.columns}
    for column, other in zip(answer.columns, ("fine-tuned", "baseline")):
        assert [r.rank for r in column.rows] == [1, 2, 3]
        assert [r.score for r in column.rows] == sorted((r.score for r in column.rows), reverse=True)
        assert all(r.text == service.searchers[16][0].documents([r.id])[r.id] != "" for r in column.rows)
        assert all(r.relevant == (r.id in answer.relevant) for r in column.rows)
        assert all(r.other_rank == full_rank[other][r.id] for r in column.rows)  # the other model's rank
        assert column.relevant_rank == min(full_rank[column.label][i] for i in answer.relevant)
        assert column.embed_ms > 0 and column.store_ms > 0
    assert answer.embed_ms > 0 and answer.store_ms > 0 and answer.total_ms >= answer.embed_ms
    assert answer.to_dict()["columns"][1]["rows"][0]["rank"] == 1


@pytest.mark.parametrize("precision,multiplier", [("int8", 4), ("binary", 0)])
def test_a_chosen_precision_is_served_from_codes_in_memory(serve_run, service, precision, multiplier):
    from rag_eval.quantized import QuantizedIndex

    sources = resolve_models(str(serve_run))
    ir, _ = load_eval_data(None, sources)
    quantized = RetrievalService.open(
        sources, store.StoreTarget(path=serve_run / "chroma"), ir, echo=lambda _: None,
        precision=precision, rescore_multiplier=multiplier,
    )  # fmt: skip
    index = quantized.searchers[16][1].index
    assert isinstance(index, QuantizedIndex) and (index.precision, index.rescore_multiplier) == (precision, multiplier)
    assert index.count() == service.searchers[16][1].index.count()
    info = quantized.info()
    assert (info["precision"], info["rescore_multiplier"]) == (precision, multiplier)
    assert f"searched as {precision} codes in memory" in info["store"]
    assert [f.raw_bytes for f in quantized.facts] == [{"int8": d, "binary": d // 8}[precision] for d in DIMS]
    answer = quantized.search(HELD_OUT, 3, 16)
    tuned = answer.columns[1]
    assert [r.rank for r in tuned.rows] == [1, 2, 3] and all(r.text for r in tuned.rows)  # texts from Chroma
    vector = quantized.searchers[16][1].embed(HELD_OUT)
    assert [(r.id, r.score) for r in tuned.rows] == [(h.id, h.score) for h in index.query(vector, 3)[0]]
    if precision == "binary":  # no rescoring: minus the Hamming distance of 16 bits
        assert all(float(r.score).is_integer() and -16 <= r.score <= 0 for r in tuned.rows)


def test_concurrent_searches_are_batched_and_agree_with_one_at_a_time(service):
    from concurrent.futures import ThreadPoolExecutor

    questions = [f"{p.question} (concurrent {i})" for i, p in enumerate(tiny_pairs()[:16])]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda q: service.search(q, 4, 8), questions))
    for question, answer in zip(questions, answers):
        for column, searcher in zip(answer.columns, service.searchers[8]):
            alone = searcher.search(question, 4)  # the terminal demo's path: no batching, no cache
            assert [r.id for r in column.rows] == [h.id for h in alone]
            assert [r.score for r in column.rows] == pytest.approx([h.score for h in alone], abs=1e-4)
            assert not column.cached
    again = service.search(questions[0], 4, 16)  # another dim: the question's vectors are re-used
    assert all(c.cached for c in again.columns) and "(cached)" in html_page.render_answer(again)


def test_waiting_requests_share_one_pass_per_model_and_per_collection(service, monkeypatch):
    """While the encoders are busy, new requests wait and then go through together: one encode per model and one
    query per (dim, model) collection for the whole batch, however many requests it holds; each model's stage
    takes its own batches."""
    import asyncio
    import threading

    from rag_eval import service as service_module

    calls = []
    encode, query = service_module.RetrievalService._encode, service.searchers[8][0].query_many
    blocked = threading.Event()

    def slow_encode(m, questions):
        calls.append(("encode", m.label, len(questions)))
        if len(calls) <= 2:  # each model's first batch holds its encoder while the others arrive
            blocked.wait(10)
        return encode(m, questions)

    def counted_query(vectors, n):
        calls.append(("query", "baseline", len(vectors)))
        return query(vectors, n)

    questions = [f"{p.question} (batched {i})" for i, p in enumerate(tiny_pairs()[:12])]

    async def ask_all():
        first = asyncio.create_task(service.search_async(questions[0], 4, 8))
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        rest = [asyncio.create_task(service.search_async(q, 4, 8)) for q in questions[1:]]
        await asyncio.sleep(0.2)  # every request is queued behind the first batch
        blocked.set()
        return await asyncio.gather(first, *rest)

    service.stage_stats(reset=True)
    monkeypatch.setattr(service_module.RetrievalService, "_encode", staticmethod(slow_encode))
    monkeypatch.setattr(service.searchers[8][0], "query_many", counted_query)
    answers = asyncio.run(ask_all())
    monkeypatch.undo()
    stats = service.stage_stats()
    for label in ("baseline", "fine-tuned"):
        assert (stats[f"encode-{label}"]["items"], stats[f"encode-{label}"]["batches"]) == (12, 2)
        assert stats[f"encode-{label}"]["largest"] == 11
    encodes = sorted(c for c in calls if c[0] == "encode")
    assert encodes == [("encode", "baseline", 1), ("encode", "baseline", 11),
                       ("encode", "fine-tuned", 1), ("encode", "fine-tuned", 11)]  # fmt: skip
    assert sum(n for kind, _, n in calls if kind == "query") == 12 and len([c for c in calls if c[0] == "query"]) <= 3
    for question, answer in zip(questions, answers):
        assert answer.question == question and not any(c.cached for c in answer.columns)
        for column, searcher in zip(answer.columns, service.searchers[8]):
            assert [r.id for r in column.rows] == [h.id for h in searcher.search(question, 4)]


def test_bad_input_is_a_message_that_names_the_fix(service):
    cases = {
        "": "The question is empty. Fix:",
        "   ": "The question is empty. Fix:",
        "x" * 100_000: "The question is 100,000 characters long; questions are limited to 2,000 characters",
    }
    for question, message in cases.items():
        with pytest.raises(JobError, match=re.escape(message)):
            service.search(question, 5, 16)
    with pytest.raises(
        JobError, match=re.escape("Dim 12 is not indexed (indexed dims: 32, 16, 8). Fix: pick one of 32, 16, 8")
    ):
        service.search("tax", 5, 12)
    with pytest.raises(JobError, match="Dim 'abc' is not a whole number"):
        service.search("tax", 5, "abc")
    for k in (0, 51, "many"):
        with pytest.raises(JobError, match="top-k"):
            service.search("tax", k, 16)
    assert service.search("tax", None, None).dim == 32  # defaults: the service's k, the largest dim


def test_passages_are_escaped_and_question_words_highlighted(service):
    answer = service.search(XSS_QUESTION, 9, 8)
    assert any("<script>" in r.text for c in answer.columns for r in c.rows)  # the data is what it is ...
    html = html_page.render_answer(answer)
    lowered = html.lower()
    assert "<script" not in lowered and "<img" not in lowered and "<b>" not in lowered  # ... the HTML never holds it
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;" in html
    assert "${" not in html and "{{" not in html and "&#36;&#123;7*7&#125;" in html
    assert "&amp;amp;" in html  # an entity in the passage shows as typed
    assert "<mark>Warranty</mark> <mark>reserves</mark>" in html
    assert html_page.highlight("a <b>Tax</b> rate", {"tax"}) == "a &lt;b&gt;<mark>Tax</mark>&lt;/b&gt; rate"
    assert query_terms("What was the tax rate in 2024?") == {"tax", "rate", "2024"}
    question = html_page.render_answer(service.search('<img src=x onerror="alert(1)"> tax', 2, 8))
    assert "<img" not in question and "&lt;img src=x" in question


def test_index_facts_and_quality_by_dim_come_from_the_run_reports(service, serve_run):
    import json

    scored = json.loads((serve_run / "rag_eval" / "metrics.json").read_text())
    quality = json.loads((serve_run / "report" / "metrics.json").read_text())
    assert [f.dim for f in service.facts] == DIMS
    for f in service.facts:
        assert set(f.vectors.values()) == {scored["data"]["corpus_size"]} and f.raw_bytes == 4 * f.dim
        for label in ("baseline", "fine-tuned"):
            row = scored["models"][label]["dims"][str(f.dim)]
            assert f.scored[label]["ann_recall@10"] == row["ann_recall@10"]
            assert f.scored[label]["ndcg_store"] == row["store"]["ndcg@10"]
            assert f.scored[label]["ndcg_exact"] == row["evaluator"]["ndcg@10"]
    facts = html_page.render_facts(service)
    assert facts.count("<tr data-dim=") == 3 and "rag_eval/metrics.json" in facts
    assert [r["dim"] for r in service.page.quality["rows"]] == DIMS
    assert service.page.quality["rows"][0]["finetuned"] == quality["comparison"][0]["finetuned"]
    html = html_page.render_quality(service)
    assert 'src="data:image/png;base64,iVBOR' in html and f"{quality['comparison'][0]['baseline']:.4f}" in html

    bare = copy.copy(service)  # a model without a run directory's reports
    bare.page.score_report, bare.page.quality, bare.page.quality_plot = None, None, None
    bare.page.score_note = "No `rag-eval score` report at x."
    bare.facts = [bare._dim_facts(d) for d in bare.dims]
    assert "<code>rag-eval score</code>" in html_page.render_facts(bare) and "n/a" in html_page.render_facts(bare)
    assert "No held-out report" in html_page.render_quality(bare)


def test_a_score_report_of_other_weights_is_not_shown(service, tmp_path):
    import json

    report = {"models": {m.label: {"fingerprint": "other", "dims": {}} for m in service.models}}
    (tmp_path / "metrics.json").write_text(json.dumps(report))
    got, note = load_score_report(tmp_path / "metrics.json", service.models)
    assert got is None and "other weights of baseline, fine-tuned" in note


# --- the JSON API and basic auth, in process -------------------------------------------------------------
def test_json_api(service):
    from fastapi.testclient import TestClient

    client = TestClient(web.build_app(service, page=False))
    got = client.get("/api/search", params={"q": HELD_OUT, "k": 2, "dim": 8})
    assert got.status_code == 200
    body = got.json()
    assert body["dim"] == 8 and [len(c["rows"]) for c in body["columns"]] == [2, 2] and body["relevant"]
    assert body["embed_ms"] > 0 and body["store_ms"] > 0
    bad = client.get("/api/search", params={"q": "tax", "dim": 12})
    assert bad.status_code == 400 and bad.json()["error"].startswith("Dim 12 is not indexed (indexed dims: 32, 16, 8).")
    long = client.post("/api/search", json={"q": "x" * 100_000, "k": 3, "dim": 16})
    assert long.status_code == 400 and "100,000 characters" in long.json()["error"]
    assert client.post("/api/search", json={"q": "tax", "k": 3, "dim": 16}).json()["k"] == 3
    info = client.get("/api/info").json()
    assert info["dims"] == DIMS and HELD_OUT in info["questions"] and len(info["index"]) == 3


def test_the_get_fast_path_answers_like_the_fastapi_route(service):
    """GET /api/search is answered in front of FastAPI's router; the route it stands for gives the same answers."""
    from fastapi.testclient import TestClient

    fast = web.build_app(service, page=False)
    routed = web.build_app(service, page=False)
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not web.SearchFastPath]
    assert len(routed.user_middleware) == len(fast.user_middleware) - 1
    queries = [
        f"q={HELD_OUT}&k=2&dim=8", "q=tax&k=&dim=", "q=tax&dim=16&dim=8", "q=%E2%82%AC%20revenue&k=3",
        "k=3", "q=tax&k=2.5", "q=tax&dim=12", "q=tax&k=99", "q=" + "x" * 2001, "q=tax&k=+3", "q=tax&k=%00",
    ]  # fmt: skip
    with TestClient(fast) as a, TestClient(routed) as b:
        for query in queries:
            got, want = a.get("/api/search?" + query), b.get("/api/search?" + query)
            assert (got.status_code, got.headers["content-type"]) == (want.status_code, want.headers["content-type"])
            got_body, want_body = got.json(), want.json()
            for body in (got_body, want_body):
                for key in ("embed_ms", "store_ms", "total_ms"):
                    body.pop(key, None)
                for column in body.get("columns", []):
                    column.pop("embed_ms"), column.pop("store_ms"), column.pop("cached")
            assert got_body == want_body, query


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"q": 123}, "The question must be text, not int"),
        ({"q": ["tax"]}, "The question must be text, not list"),
        ({"q": {"a": 1}}, "The question must be text, not dict"),
        ({"q": "tax\ud800"}, "not valid text (it holds a lone surrogate"),
        ({"q": "tax", "k": 2.5}, "top-k 2.5 is not a whole number"),
        ({"q": "tax", "k": True}, "top-k True is not a whole number"),
        ({"q": "tax", "k": "3"}, "k must be JSON numbers, not strings"),
        ({"q": "tax", "dim": 1e309}, "Dim 'inf' is not a whole number"),
        ({"q": "tax", "dim": [16]}, "Dim '[16]' is not a whole number"),
    ],
)
def test_client_input_always_gets_400_with_the_reason(service, payload, needle):
    """Every bad JSON input is a 400 naming the problem: never str() of a number, never a silent truncation
    (2.5 -> 2, true -> 1), never a 500 with a traceback."""
    import json as _json

    from fastapi.testclient import TestClient

    client = TestClient(web.build_app(service, page=False), raise_server_exceptions=False)
    body = _json.dumps(payload, ensure_ascii=True)  # a lone surrogate travels as \ud800, as a browser would send it
    got = client.post("/api/search", content=body, headers={"Content-Type": "application/json"})
    assert got.status_code == 400, got.text
    assert needle in got.json()["error"]


def test_malformed_requests_get_400_too(service):
    from fastapi.testclient import TestClient

    client = TestClient(web.build_app(service, page=False), raise_server_exceptions=False)
    for body in ("[1, 2]", "{not json", '"just a string"'):
        got = client.post("/api/search", content=body, headers={"Content-Type": "application/json"})
        assert got.status_code == 400 and "Fix:" in got.json()["error"], (body, got.text)
    assert client.get("/api/search", params={"q": "tax", "k": "3", "dim": "16"}).status_code == 200  # a URL's strings
    assert client.get("/api/search", params={"q": "tax", "k": "2.5"}).status_code == 400


def test_basic_auth_from_the_environment_guards_every_route_but_health(service):
    from fastapi.testclient import TestClient

    assert web.auth_from_env({}) is None
    assert web.auth_from_env({web.AUTH_ENV: "demo:pa:ss"}) == ("demo", "pa:ss")
    for bad in ("nocolon", ":pw", "user:"):
        with pytest.raises(JobError, match="RAG_EVAL_SERVE_AUTH is set but is not of the form user:password") as exc:
            web.auth_from_env({web.AUTH_ENV: bad})
        assert bad not in str(exc.value).replace("user:password", "")
    client = TestClient(web.build_app(service, ("demo", "s3cret"), page=True))
    for path in ("/", "/api/search?q=tax", "/api/info", "/config"):
        denied = client.get(path)
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Basic"), path
        assert client.get(path, auth=("demo", "wrong")).status_code == 401
    assert client.get("/api/search?q=tax", auth=("demo", "s3cret")).status_code == 200
    assert client.get("/", auth=("demo", "s3cret")).status_code == 200
    assert client.get("/healthz").status_code == 200


# --- start-up errors: exit 2 and a message, before anything is served -----------------------------------
def _fails(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    return err


@pytest.fixture()
def never_serves(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the server started although start-up should have failed")

    monkeypatch.setattr(web, "run", refuse)


def test_start_up_errors_exit_2_with_the_fix(
    never_serves, serve_run, tiny_run_dir, tmp_path, capsys, monkeypatch, free_port
):
    free = ("--port", free_port)  # not 7860: a real server may be running there
    unindexed = tmp_path / "unindexed-run"
    shutil.copytree(tiny_run_dir, unindexed, ignore=shutil.ignore_patterns("chroma"))
    err = _fails(capsys, "serve", "--model", unindexed, *free)
    assert f"There is no Chroma store at {unindexed / 'chroma'}" in err and "run `rag-eval index` first" in err

    garbage = tmp_path / "garbage-store"
    garbage.mkdir()
    (garbage / "chroma.sqlite3").write_bytes(b"not a database, whatever the name says\n" * 200)
    err = _fails(capsys, "serve", "--model", serve_run, "--chroma-path", garbage, *free)
    assert f"The Chroma store at {garbage} is damaged" in err and "rag-eval index --force" in err

    err = _fails(capsys, "serve", "--model", serve_run, "--dims", "32,12", *free)
    assert "Dim 12 is not indexed" in err and "indexed dims: 32, 16, 8" in err

    err = _fails(capsys, "serve", "--model", serve_run, "-k", "0", *free)
    assert "-k/--k 0 is out of range" in err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = _fails(capsys, "serve", "--model", serve_run, "--port", port)
        assert f"Cannot listen on 127.0.0.1:{port}" in err and "pass another --port" in err

    monkeypatch.setenv(web.AUTH_ENV, "no-password-here")
    err = _fails(capsys, "serve", "--model", serve_run, *free)
    assert "RAG_EVAL_SERVE_AUTH is set but is not of the form user:password" in err and "no-password-here" not in err


# --- the page, in a real headless Chromium --------------------------------------------------------------
@pytest.fixture(scope="module")
def browser_ok():
    why = browser.missing()
    if why:
        if os.environ.get("REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"REQUIRE_BROWSER is set, but {why}")
        pytest.skip(why)


def _start_server(run: Path, log_path: Path, env_extra: dict[str, str] | None = None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(web.AUTH_ENV, None)  # only the test decides about a login
    env.update(env_extra or {})
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag_eval", "serve", "--model", str(run), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"rag-eval serve did not come up:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, url, log


def _stop_server(proc, log, log_path: Path) -> None:
    proc.terminate()  # SIGTERM: uvicorn shuts down gracefully
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    log.close()
    assert code == 0, f"rag-eval serve exited {code} on SIGTERM:\n{log_path.read_text()[-3000:]}"
    assert "serve: stopped" in log_path.read_text()


@pytest.fixture(scope="module")
def server(browser_ok, serve_run, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve-log") / "server.log"
    proc, url, log = _start_server(serve_run, log_path)
    yield url
    _stop_server(proc, log, log_path)


@pytest.fixture(scope="module")
def chrome(browser_ok):
    d = browser.driver()
    yield d
    d.quit()


@pytest.fixture()
def page(chrome, server, request):
    """The page freshly loaded; a screenshot of how the test left it goes to the artifacts folder."""
    browser.open_page(chrome, server)
    browser.requested_urls(chrome)  # start each test's request log afresh
    yield chrome
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chrome.set_window_size(1400, min(max(1600, chrome.execute_script("return document.body.scrollHeight")), 4000))
    chrome.save_screenshot(str(ARTIFACTS / f"serve-{request.node.name}.png"))
    chrome.set_window_size(1400, 1600)


def _css(d, selector):
    from selenium.webdriver.common.by import By

    return d.find_elements(By.CSS_SELECTOR, selector)


def test_page_is_offline_and_shows_index_facts_and_quality(chrome, server, service, request):
    chrome.get(server)
    browser.wait(chrome, lambda d: _css(d, "#facts tr[data-dim]"), 60)
    time.sleep(1)
    urls = browser.requested_urls(chrome)
    assert urls and all(u.startswith((server, "data:", "blob:")) for u in urls), [
        u for u in urls if not u.startswith(server)
    ][:5]
    assert chrome.title == "rag-eval serve"
    assert [r.get_attribute("data-dim") for r in _css(chrome, "#facts tr[data-dim]")] == ["32", "16", "8"]
    facts = _css(chrome, "#facts")[0].text
    assert "ANN recall@10" in facts and "NDCG@10 Chroma / exact" in facts and "1.000" in facts
    plot = _css(chrome, "#quality img.re-plot")[0]
    assert plot.get_attribute("src").startswith("data:image/png;base64,") and plot.size["width"] > 100
    assert [r.get_attribute("data-dim") for r in _css(chrome, "#quality tr[data-dim]")] == ["32", "16", "8"]
    assert [x.text.strip() for x in _css(chrome, "#dim label")] == ["32", "16", "8"]  # only indexed dims are offered
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chrome.save_screenshot(str(ARTIFACTS / f"serve-{request.node.name}.png"))


def test_a_question_both_columns_ranks_latency_and_dims(page):
    results = browser.ask(page, "dividend per share")
    for model in ("baseline", "fine-tuned"):
        column = _css(page, f'#results .re-col[data-model="{model}"]')
        assert column, model
        assert [c.text for c in _css(page, f'#results .re-col[data-model="{model}"] .re-rank')] == [
            "1",
            "2",
            "3",
            "4",
            "5",
        ]
        moved = [c.text for c in _css(page, f'#results .re-col[data-model="{model}"] .re-moved')]
        assert len(moved) == 5 and all(re.fullmatch(r"▲\d+|▼\d+|=|▲ new|▼ out", m) for m in moved), moved
    latency = _css(page, "#results .re-latency")[0].text
    assert re.match(r"dim 32 · top 5 · embedding \d+\.\d ms · vector store \d+\.\d ms · total \d+\.\d ms", latency), (
        latency
    )
    assert "dividend" in [m.text.lower() for m in _css(page, "#results mark")]
    assert "Q: dividend per share" in results.text
    for dim in (8, 16):
        browser.pick_dim(page, dim)
        assert _css(page, "#results .re-latency")[0].text.startswith(f"dim {dim} · top 5")
        assert len(_css(page, "#results .re-rank")) == 10


def test_a_held_out_question_marks_the_relevant_passage_at_each_dim(page, service):
    options = browser.heldout_options(page)
    assert len(options) == len(service.page.questions) and HELD_OUT in options
    browser.pick_heldout(page, HELD_OUT)
    assert _css(page, "#question textarea")[0].get_attribute("value") == HELD_OUT
    for dim in DIMS:
        if dim != 32:
            browser.pick_dim(page, dim)
        expected = service.search(HELD_OUT, 5, dim)
        assert ", ".join(expected.relevant) in _css(page, "#results .re-gold")[0].text
        for column in expected.columns:
            shown = _css(page, f'#results .re-col[data-model="{column.label}"] .re-outcome')[0].text
            rank = column.relevant_rank
            want = f"✓ hit: relevant passage at #{rank}" if rank and rank <= 5 else "✗ miss"
            assert shown.startswith(want), (dim, column.label, shown)
            marked = [
                r.get_attribute("data-id")
                for r in _css(page, f'#results .re-col[data-model="{column.label}"] .re-row.re-relevant')
            ]
            assert marked == [r.id for r in column.rows if r.relevant], (dim, column.label)
            for row in _css(page, f'#results .re-col[data-model="{column.label}"] .re-row.re-relevant'):
                assert "✓ relevant" in row.text


def test_passage_html_shows_as_text_and_never_runs(page):
    from selenium.common.exceptions import NoAlertPresentException

    browser.set_k(page, 9)  # every passage of the tiny corpus, so the XSS passage is on the page
    results = browser.ask(page, XSS_QUESTION, expect='.re-answer[data-k="9"]')
    time.sleep(0.5)
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert  # noqa: B018 - the property raises when no alert is open
    assert page.execute_script("return window.__xss === undefined")
    assert not _css(page, "#results script") and not _css(page, "#results img") and not _css(page, "#results b")
    text = results.text
    assert (
        '<script>alert(1)</script><img src=x onerror="window.__xss=1"> <b>bold</b> ${7*7} {{constructor}} &amp;' in text
    )


def test_bad_input_shows_a_message_on_the_page(page):
    results = browser.ask(page, "", expect=".re-error")
    assert "The question is empty. Fix: type a question" in results.text
    results = browser.ask(page, "x" * 100_000, typed=False, expect=".re-error")
    assert "The question is 100,000 characters long; questions are limited to 2,000 characters" in results.text
    results = browser.ask(page, "tax rate", expect=".re-answer")  # and it recovers
    assert "Q: tax rate" in results.text


def test_basic_auth_page(browser_ok, serve_run, tmp_path):
    import base64

    log_path = tmp_path / "server.log"
    proc, url, log = _start_server(serve_run, log_path, {web.AUTH_ENV: "demo:s3cret"})
    try:
        d = browser.driver()
        try:
            d.get(url)  # Chrome answers a 401 with its login prompt: no page
            time.sleep(1)
            assert browser.response_status(d, url) == 401 and not _css(d, "#question")
        finally:
            d.quit()
        d = browser.driver(headers={"Authorization": "Basic " + base64.b64encode(b"demo:s3cret").decode()})
        try:
            browser.open_page(d, url)
            assert "Q: tax rate" in browser.ask(d, "tax rate").text
        finally:
            d.quit()
    finally:
        _stop_server(proc, log, log_path)
    assert "s3cret" not in log_path.read_text()
