"""A new vector store is one module plus one line in rag_eval.stores.STORES (issue #31): tests/rag_eval/json_store.py
(each index a JSON file, brute-force search, one option of its own) is registered here with that one line, and
`rag-eval index`, `score`, `query` and `serve`'s search run on it; its option is refused with another store, an
unknown store is exit 2 naming the stores there are, and HNSW parameters are refused for a store that has none."""

# ruff: noqa: F811 - fixtures imported from rag_eval_helpers are, by design, the test functions' parameters

from __future__ import annotations

import importlib
import json

import pytest
from rag_eval_helpers import run_cli, tiny_pairs, tiny_run_dir  # noqa: F401 - fixtures

from rag_eval import stores
from rag_eval.store_access import StoreTarget

FAST_SCORE = ("--latency-samples", "10", "--batch-queries", "4")


@pytest.fixture
def json_store_registered(monkeypatch):
    """The one registry line; the CLI is rebuilt so that its commands carry the new store's option (a store
    registered before `rag_eval.cli` is imported, as a real one is, needs no rebuild)."""
    import rag_eval.cli

    monkeypatch.setitem(stores.STORES, "json", "json_store")
    importlib.reload(rag_eval.cli)
    yield
    monkeypatch.undo()
    importlib.reload(rag_eval.cli)


def test_a_store_added_as_one_module_runs_every_command(json_store_registered, tiny_run_dir, tmp_path, capsys):
    where = tmp_path / "js"
    common = ("--model", tiny_run_dir, "--store", "json", "--json-folder", where)
    code, out, err = run_cli(capsys, "index", *common)
    assert code == 0, err
    assert "JSON store" in out and sorted(p.suffix for p in where.iterdir()) == [".json"] * len(list(where.iterdir()))
    code, out, err = run_cli(capsys, "score", *common, "--out", tmp_path / "report", *FAST_SCORE)
    assert code == 0, err
    payload = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert (payload["store_kind"], payload["store_label"], payload["store"]) == (
        "json",
        "JSON store",
        f"JSON store {where}",
    )
    for model in payload["models"].values():  # brute force: the store's rankings are exact search's
        for row in model["dims"].values():
            assert row["ann_recall@10"] == 1.0 and row["store"] == row["exact"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "# Retrieval through JSON store" in report and "Search: none" in report and "HNSW" not in report
    code, out, err = run_cli(capsys, "query", "What about tax?", *common, "--dims", "16", "-k", "2")
    assert code == 0, err
    assert "  1. " in out

    from rag_eval.service import RetrievalService
    from rag_eval.sources import load_eval_data, resolve_models

    sources = resolve_models(str(tiny_run_dir))
    ir, _ = load_eval_data(None, sources)
    service = RetrievalService.open(sources, StoreTarget(path=where, kind="json"), ir, [16], echo=lambda _: None)
    question = tiny_pairs()[1].question
    answer = service.search(question, 3, 16)
    assert [c.label for c in answer.columns] == ["baseline", "fine-tuned"]
    assert all([r.rank for r in c.rows] == [1, 2, 3] and all(r.text for r in c.rows) for c in answer.columns)


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--json-folder", "x"), "--json-folder apply to --store json, but the store is chroma"),
        (("--store", "json", "--store-path", "x"), "--store-path apply to --store exact, but the store is json"),
        (("--store", "json", "--ef-search", "50"), "--store json has no index parameters"),
        (("--store", "pgvector"), "There is no store named 'pgvector'"),
    ],
)
def test_the_new_store_s_options_are_checked_like_the_others(json_store_registered, tiny_run_dir, tmp_path, capsys,
                                                             args, needle):  # fmt: skip
    code, out, err = run_cli(capsys, "index", "--model", tiny_run_dir, *args)
    assert code == 2 and needle in err, err
    if "pgvector" in needle:
        assert "--store chroma or exact or json" in err  # the stores there are, the new one among them
    assert not (tmp_path / "x").exists()
