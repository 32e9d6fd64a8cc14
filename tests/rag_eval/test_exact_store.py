"""The exact store (`--store exact`, rag_eval/exact_store.py), the second implementation of rag_eval.index that
rag_eval.stores hands out by name: `index`, `score`, `query` and `serve` on it; its search equals exact search at
float32 (ANN recall 1.0) and goes through the int8 / binary codes when asked; a write killed midway (SIGKILL)
resumes from its complete batches; a swap cut between its two renames is repaired; bad options are exit 2."""

# ruff: noqa: F811 - fixtures imported from rag_eval_helpers are, by design, the test functions' parameters

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rag_eval_helpers import PASSAGES, killed_writer, run_cli, tiny_pairs, tiny_run_dir  # noqa: F401 - fixtures

from job.errors import JobError
from rag_eval import exact_store, metrics, stores
from rag_eval.index import CORRUPT, OURS
from rag_eval.indexing import write_vectors
from rag_eval.naming import build_metadata
from rag_eval.store_access import StoreTarget

ROOT = Path(__file__).resolve().parents[2]
N, DIM, BATCH, KILL_AFTER = 500, 16, 100, 200
NAME = "rag-eval-exact-test-d16"
FAST_SCORE = ("--latency-samples", "10", "--batch-queries", "4")


def _vectors(n: int = N, dim: int = DIM) -> tuple[list[str], np.ndarray]:
    v = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    return [f"p{i:05d}" for i in range(n)], v / np.linalg.norm(v, axis=1, keepdims=True)


def _meta(n: int = N, source: str = "test") -> dict:
    return build_metadata(
        model="m", model_key="m", model_fingerprint="fp", model_dim=DIM, dim=DIM, corpus_fingerprint=f"c{n}",
        corpus_size=n, data_source=source, settings=None, query_prompt=None, passage_prompt=None,
    )  # fmt: skip


def _store(path: Path, precision: str = "float32", create: bool = True):
    return stores.connect(StoreTarget(path=path, kind="exact", precision=precision), create=create)


def test_the_registry_hands_out_the_exact_store_and_its_search_is_exact(tmp_path):
    vs = _store(tmp_path / "exact")
    assert isinstance(vs, exact_store.ExactStore) and vs.kind == "exact"
    ids, vectors = _vectors()
    texts = [f"passage {i}" for i in ids]
    result = write_vectors(vs, NAME, ids, vectors, texts, _meta(), None, write_batch=BATCH)
    assert (result.action, result.written) == ("created", N)
    index = vs.open(NAME)
    assert index.check(DIM) == (OURS, []) and vs.names() == [NAME]
    queries = _vectors(20)[1][::-1].copy()
    got = [[h.id for h in hits] for hits in index.query(queries, 10)]
    assert got == metrics.exact_search(queries, vectors, ids, 10)  # ties and all: the same ranking
    hits = index.query(queries[:1], 3, documents=True)[0]
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].text == f"passage {hits[0].id}"
    assert index.fetch([ids[4]]) == {ids[4]: texts[4]}
    got_ids, got_vectors, got_texts = index.fetch_all()
    assert got_ids == ids and np.array_equal(got_vectors, vectors) and got_texts == texts
    # the same index searched through int8 codes: another store object, nothing re-written
    int8 = _store(tmp_path / "exact", "int8", create=False).open(NAME)
    assert int8.search_settings()["precision"] == "int8"
    overlap = metrics.mean_overlap_at_k([[h.id for h in hs] for hs in int8.query(queries, 10)], got, 10)
    assert 0.8 <= overlap <= 1.0
    # unchanged: kept; other metadata: replaced
    assert write_vectors(vs, NAME, ids, vectors, texts, _meta(), None).action == "kept"
    again = write_vectors(vs, NAME, ids, vectors, texts, _meta(source="other"), None, write_batch=BATCH)
    assert again.action == "replaced" and vs.names() == [NAME]
    assert sorted(p.name for p in (tmp_path / "exact").iterdir()) == sorted([NAME, exact_store.MARKER])


def _writer_args(path: Path):
    return _store(path), _meta(), None


KILLED_WRITER = killed_writer("test_exact_store")


def test_a_killed_write_resumes_from_its_complete_batches(tmp_path):
    path = tmp_path / "exact"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    vs = _store(path, create=False)
    assert vs.open(NAME) is None and vs.names() == []  # nothing half-written under the final name
    ids, vectors = _vectors()
    calls: list[int] = []
    result = write_vectors(vs, NAME, ids, vectors, None, _meta(), None, write_batch=BATCH, progress=calls.append)
    assert (result.action, result.resumed, result.written) == ("created", KILL_AFTER, N - KILL_AFTER)
    assert sum(calls) == N - KILL_AFTER and f"resumed: {KILL_AFTER} of {N}" in result.note
    got_ids, got, _ = vs.open(NAME).fetch_all()
    assert got_ids == ids and np.array_equal(got, vectors)
    # a leftover of another write key is refused unless forced
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "b")], capture_output=True)
    with pytest.raises(JobError, match="interrupted index run left .* other settings"):
        write_vectors(_store(tmp_path / "b"), NAME, ids, vectors, None, _meta(source="other"), None)
    forced = write_vectors(_store(tmp_path / "b"), NAME, ids, vectors, None, _meta(source="other"), None, force=True)
    assert forced.action == "created" and forced.resumed == 0


def test_a_swap_cut_between_its_renames_is_repaired_on_the_next_open(tmp_path):
    vs = _store(tmp_path / "exact")
    ids, vectors = _vectors()
    write_vectors(vs, NAME, ids, vectors, None, _meta(), None)
    root = tmp_path / "exact"
    # the crash after "final -> .old" and before "staging -> final": only the previous index is left
    (root / NAME).rename(root / (NAME + exact_store.OLD))
    assert vs.names() == [NAME] and vs.open(NAME).check(DIM) == (OURS, [])
    assert not (root / (NAME + exact_store.OLD)).exists()
    # a damaged index (its vectors truncated) is named, not read as whole
    np.save(root / NAME / exact_store.VECTORS, vectors[:10])
    kind, problems = _store(root, create=False).open(NAME).check(DIM)
    assert kind == CORRUPT and "inconsistent: 500 ids, 500 texts and vectors of shape (10, 16)" in problems[0]
    with pytest.raises(JobError, match="inconsistent"):
        _store(root, create=False).open(NAME).query(vectors[:1], 3)
    with pytest.raises(JobError, match="A corrupted index named"):
        write_vectors(_store(root, create=False), NAME, ids, vectors, None, _meta(source="new"), None)
    result = write_vectors(_store(root, create=False), NAME, ids, vectors, None, _meta(source="new"), None, force=True)
    assert result.action == "replaced" and "replaced a corrupted index" in result.note


def test_a_folder_that_is_not_an_exact_store_is_refused(tmp_path):
    with pytest.raises(JobError, match="no rag-eval-exact-store.json"):
        _store(tmp_path / "missing", create=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(JobError, match="not empty and is not an exact store"):
        _store(tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_index_score_and_query_run_on_the_exact_store(tiny_run_dir, tmp_path, capsys):
    where = tmp_path / "exact"
    common = ("--model", tiny_run_dir, "--store", "exact", "--store-path", where)
    code, out, err = run_cli(capsys, "index", *common)
    assert code == 0, err
    assert "exact store" in out.strip().splitlines()[-1]
    code, out, err = run_cli(capsys, "score", *common, "--out", tmp_path / "report", *FAST_SCORE)
    assert code == 0, err
    assert "| dim | baseline exact store | baseline exact evaluator |" in out
    payload = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert payload["store_kind"] == "exact" and payload["store_label"] == "exact store"
    for model in payload["models"].values():
        for row in model["dims"].values():
            assert row["ann_recall@10"] == 1.0 and row["store"] == row["exact"]
            assert row["store_settings"] == {"search": "exact", "precision": "float32", "rescore_multiplier": 0}
            assert row["disk_bytes"] > 0
    assert "# Retrieval through exact store" in (tmp_path / "report" / "report.md").read_text()
    code, out, err = run_cli(capsys, "query", "What about tax?", *common, "--dims", "16", "-k", "2")
    assert code == 0, err
    assert "  1. " in out and any(p[:30] in out for p in PASSAGES), out  # passages read back from the store


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ("--store", "exact", "--chroma-host", "localhost"),
            "--chroma-host apply to --store chroma, but the store is exact",
        ),
        (("--store-path", "x"), "--store-path apply to --store exact, but the store is chroma"),
        (("--exact-precision", "int8"), "--exact-precision apply to --store exact"),
        (("--store", "pgvector"), "There is no store named 'pgvector'"),
    ],
)
def test_options_of_another_store_are_exit_2(tiny_run_dir, tmp_path, capsys, args, needle):
    code, out, err = run_cli(capsys, "index", "--model", tiny_run_dir, *args)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "x").exists()


def test_serve_answers_from_the_exact_store_like_exact_search(tiny_run_dir, tmp_path, capsys):
    from rag_eval.service import RetrievalService
    from rag_eval.sources import load_eval_data, resolve_models

    where = tmp_path / "exact"
    code, _, err = run_cli(capsys, "index", "--model", tiny_run_dir, "--store", "exact", "--store-path", where)
    assert code == 0, err
    sources = resolve_models(str(tiny_run_dir))
    ir, _ = load_eval_data(None, sources)
    target = StoreTarget(path=where, kind="exact")
    service = RetrievalService.open(sources, target, ir, [16], echo=lambda _: None)
    question = tiny_pairs()[1].question
    answer = service.search(question, 3, 16)
    assert [c.label for c in answer.columns] == ["baseline", "fine-tuned"]
    assert "exact vector store" in service.describe_search(public=True) and str(where) not in service.describe_search(
        public=True
    )
    for column, searcher in zip(answer.columns, service.searchers[16]):
        ids, vectors, _ = searcher.index.fetch_all()
        q = vectors[[ids.index(column.rows[0].id)]]  # the top passage's own vector ranks itself first
        assert [h.id for h in searcher.index.query(q, 1)[0]] == [column.rows[0].id]
        assert [r.rank for r in column.rows] == [1, 2, 3] and all(r.text for r in column.rows)


def test_a_full_disk_is_named_with_the_fix_and_the_write_resumes_elsewhere(mount_tmpfs, tmp_path):
    small = mount_tmpfs("64k")
    ids, vectors = _vectors()
    with pytest.raises(JobError, match=r"(?s)disk is full.*exact store.*--store-path.*continues"):
        vs = _store(small / "exact")
        with vs.errors():
            write_vectors(vs, NAME, ids, vectors, None, _meta(), None, write_batch=BATCH)
    assert _store(small / "exact", create=False).names() == []  # nothing half-written under the final name
    big = tmp_path / "exact"  # the same folder copied to a larger disk: the complete batches are kept
    shutil.copytree(small / "exact", big)
    result = write_vectors(_store(big, create=False), NAME, ids, vectors, None, _meta(), None, write_batch=BATCH)
    assert result.action == "created" and result.resumed > 0 and result.resumed + result.written == N
