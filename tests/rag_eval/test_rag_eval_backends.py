"""`rag-eval serve --backend`: the models' ONNX exports encode the questions against the index PyTorch built; the
default picks the fastest export within the run's drop limit; the page and the API name models, never paths."""

# ruff: noqa: F811 - fixtures imported from rag_eval_helpers are, by design, the test functions' parameters

from __future__ import annotations

import json
import shutil

import pytest
from rag_eval_helpers import free_port, make_serve_run, tiny_pairs, tiny_run_dir  # noqa: F401 - fixtures

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from job.export.onnx import EXPORTS, export_model
from job.layout import RunDir
from rag_eval import page as html_page
from rag_eval import store, web
from rag_eval.cli import main
from rag_eval.service import RetrievalService
from rag_eval.sources import choose_backend, load_eval_data, resolve_models

HELD_OUT = tiny_pairs()[1].question


def _table(fast: str, flagged: tuple[str, ...] = ()) -> dict:
    row = {"dims": {}, "worst_drop_points": 0.0}
    return {"max_drop_points": 1.0, "models": {
        "pytorch": {**row, "texts_per_s": 10.0},
        "onnx": {**row, "texts_per_s": 50.0 if fast == "onnx" else 30.0, "flagged": "onnx" in flagged},
        "onnx-int8": {**row, "texts_per_s": 50.0 if fast == "onnx-int8" else 30.0, "flagged": "onnx-int8" in flagged},
    }}  # fmt: skip


@pytest.fixture(scope="module")
def exported_run(tiny_run_dir, tmp_path_factory):
    """The serve run with both models exported (as `job export` leaves it) and an export table in its report."""
    run = make_serve_run(tmp_path_factory.mktemp("backends"), tiny_run_dir)
    rd = RunDir(run)
    base = json.loads((rd.model / "training.json").read_text())["base_model"]
    names = list(EXPORTS)
    export_model(rd.model, names, echo=lambda m: None)
    export_model(base, names, out=rd.base_export, echo=lambda m: None)
    metrics = json.loads((rd.report / "metrics.json").read_text())
    (rd.report / "metrics.json").write_text(json.dumps({**metrics, "exports": _table("onnx-int8")}))
    return run


def _open(run, backend):
    sources = resolve_models(str(run))
    ir, _ = load_eval_data(None, sources)
    chosen, why = choose_backend(sources, backend)
    return RetrievalService.open(
        sources, store.StoreTarget(path=run / "chroma"), ir, echo=lambda _: None, backend=chosen, backend_note=why
    )


def test_auto_picks_the_fastest_export_within_the_drop_limit(exported_run):
    rd = RunDir(exported_run)
    sources = resolve_models(str(exported_run))
    assert choose_backend(sources, "auto")[0] == "onnx-int8"
    metrics = json.loads((rd.report / "metrics.json").read_text())
    for table, want in (
        (_table("onnx-int8", flagged=("onnx-int8",)), "onnx"),
        (_table("onnx", ("onnx", "onnx-int8")), "torch"),
    ):
        (rd.report / "metrics.json").write_text(json.dumps({**metrics, "exports": table}))
        assert choose_backend(sources, "auto")[0] == want
    (rd.report / "metrics.json").write_text(json.dumps(metrics))
    assert choose_backend(sources, "onnx")[0] == "onnx"  # asked for: no table needed


def test_auto_is_torch_when_a_model_lacks_the_export(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    shutil.rmtree(RunDir(run).base_export)  # the baseline column has no export
    backend, why = choose_backend(resolve_models(str(run)), "auto")
    assert backend == "torch" and "every model" in why


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_exports_answer_like_pytorch_against_the_same_index(exported_run, backend):
    torch_service, service = _open(exported_run, "torch"), _open(exported_run, backend)
    assert service.backend == backend and type(service.models[0].model).__name__ == "ExportedModel"
    for question in (HELD_OUT, "How did copper prices change?"):
        ours, ref = service.search(question, 5, 32), torch_service.search(question, 5, 32)
        for got, want in zip(ours.columns, ref.columns):
            if backend == "onnx":  # float32: the same ranking, scores within 1e-4
                assert [r.id for r in got.rows] == [r.id for r in want.rows]
                assert all(abs(a.score - b.score) < 1e-4 for a, b in zip(got.rows, want.rows))
            else:  # int8: the same top passage on these questions
                assert got.rows[0].id == want.rows[0].id


def test_page_and_api_name_models_never_paths(exported_run):
    from fastapi.testclient import TestClient

    service = _open(exported_run, "onnx-int8")
    client = TestClient(web.build_app(service, page=False))
    info = client.get("/api/info").json()
    answer = client.get("/api/search", params={"q": HELD_OUT, "k": 3, "dim": 16}).json()
    assert info["backend"] == "onnx-int8"
    assert [m["model"] for m in info["models"]] == ["tiny-bert", exported_run.name]
    assert [c["model"] for c in answer["columns"]] == ["tiny-bert", exported_run.name]
    html = "".join(
        [
            html_page.render_facts(service),
            html_page.render_quality(service),
            html_page.render_answer(service.search(HELD_OUT, 3, 16)),
        ]
    )
    shown = json.dumps(info) + json.dumps(answer) + html + service.page.title
    for private in (str(exported_run.parent), str(exported_run), "/tmp", "site-packages"):
        assert private not in shown, private


def test_a_damaged_export_stops_serve_with_the_fix(exported_run, capsys, monkeypatch, free_port):
    run = exported_run  # damaged in place (the index is tied to the run's path), restored afterwards
    target = RunDir(run).model / EXPORTS["onnx-int8"].file
    intact = target.read_bytes()
    monkeypatch.setattr(web, "run", lambda *a, **k: pytest.fail("served with a damaged export"))
    try:
        target.write_bytes(intact[:1000])
        code = main(["serve", "--model", str(run), "--backend", "onnx-int8", "--port", str(free_port)])
        err = capsys.readouterr().err
        assert code == 2 and str(target) in err and f"job export --run-dir {run} --force" in err
        # auto does not pick the damaged export: it serves with what is intact
        assert choose_backend(resolve_models(str(run)), "auto")[0] == "onnx"
    finally:
        target.write_bytes(intact)


@pytest.mark.slow
def test_the_load_matrix_runs_every_backend_in_one_command(exported_run, tmp_path):
    """bench/serve_load.py --matrix with tiny settings (the real run is the user's, on an idle machine)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "serve_load.json"
    done = subprocess.run(
        [sys.executable, str(repo / "bench" / "serve_load.py"), "--matrix", "--run", str(exported_run),
         "--backends", "torch,onnx-int8", "--peer", "none", "--dim", "16", "--clients", "1,2", "--seconds", "1",
         "--warmup", "0.5", "--ceiling-seconds", "0.05", "--ceiling-rounds", "1", "--json", str(out),
         "--logs", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["server"], r["backend"], r["clients"]) for r in rows] == [
        ("rag-eval serve", "torch", 1), ("rag-eval serve", "torch", 2),
        ("rag-eval serve", "onnx-int8", 1), ("rag-eval serve", "onnx-int8", 2),
    ]  # fmt: skip
    for r in rows:
        assert r["errors"] == 0 and r["requests_per_s"] > 0 and r["questions_per_s"] == 2 * r["requests_per_s"]
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and 0 <= r["load_generator_cpu_share"] <= 1
        # the encoders alone, measured before that server started: the served share of their questions/s
        ceiling = result["ceilings"][r["backend"]]
        assert r["ceiling_questions_per_s"] == max(v for b, v in ceiling["best"].items() if int(b) <= r["clients"])
        assert r["served_over_ceiling"] == round(r["questions_per_s"] / r["ceiling_questions_per_s"], 3)
        assert any(name.startswith("encode-") for name in r["server_threads_core_share"])  # the stages, by name
    assert set(result["ceilings"]) == {"torch", "onnx-int8"}
    assert result["machine"]["cpu"] and result["machine"]["cores"] >= 1 and "flags" in result["machine"]
    assert [s["backend"] for s in result["servers"]] == ["torch", "onnx-int8"]
    assert all(str(exported_run) not in json.dumps(s["models"]) for s in result["servers"])  # names, not paths
