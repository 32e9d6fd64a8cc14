"""A write killed midway (SIGKILL, nothing cleaned up) continues where it stopped, nothing half-written is
read as complete, and a store that fills up or another run's settings are clear errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rag_eval_helpers import free_port, killed_writer  # noqa: F401 - fixture

from job.errors import JobError
from rag_eval import store
from rag_eval.indexing import write_vectors

ROOT = Path(__file__).resolve().parents[2]
N, DIM, BATCH, KILL_AFTER = 1000, 16, 100, 300
NAME = "rag-eval-resume-test-d16"


def _vectors(n: int = N, dim: int = DIM) -> tuple[list[str], np.ndarray]:
    v = np.random.default_rng(7).standard_normal((n, dim)).astype(np.float32)
    return [f"p{i:05d}" for i in range(n)], v / np.linalg.norm(v, axis=1, keepdims=True)


def _meta(n: int = N, ef_search: int = 400) -> tuple[dict, store.HnswSettings]:
    settings = store.HnswSettings(ef_search=ef_search)
    meta = store.build_metadata(
        model="m", model_key="m", model_fingerprint="fp", model_dim=DIM, dim=DIM, corpus_fingerprint=f"c{n}",
        corpus_size=n, data_source="test", settings=settings, query_prompt=None, passage_prompt=None,
    )  # fmt: skip
    return meta, settings


def _writer_args(path: Path):
    return (store.connect(store.StoreTarget(path=path)), *_meta())


KILLED_WRITER = killed_writer("test_rag_eval_resume")


def test_a_killed_write_resumes_where_it_stopped_and_completes(tmp_path):
    path = tmp_path / "chroma"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    vs = store.connect(store.StoreTarget(path=path), create=False)
    assert vs.open(NAME) is None  # nothing half-written under the final name
    partial = vs.open(NAME + store.STAGING_SUFFIX)
    assert partial is not None and partial.count() == KILL_AFTER

    ids, vectors = _vectors()
    meta, settings = _meta()
    calls = []
    result = write_vectors(vs, NAME, ids, vectors, None, meta, settings, write_batch=BATCH, progress=calls.append)
    assert (result.action, result.resumed, result.written) == ("created", KILL_AFTER, N - KILL_AFTER)
    assert sum(calls) == N - KILL_AFTER  # only the rest was sent
    assert f"resumed: {KILL_AFTER} of {N} vectors were already written" in result.note
    index = vs.open(NAME)
    got_ids, got, _ = index.fetch_all()
    order = np.argsort(got_ids)
    assert [got_ids[i] for i in order] == ids and np.allclose(got[order], vectors, atol=1e-6)
    assert store.inspect(index, DIM) == (store.OURS, [])
    assert vs.names() == [NAME]  # the staging copy became the index

    again = write_vectors(vs, NAME, ids, vectors, None, meta, settings, write_batch=BATCH)
    assert again.action == "kept" and vs.open(NAME).collection.id == index.collection.id


def _staging_with(vs, ids, vectors, positions, meta, settings):
    meta = {**meta, store.WRITE_KEY: store.write_key(meta)}
    col = vs.client.create_collection(
        NAME + store.STAGING_SUFFIX, configuration=settings.configuration(), metadata=meta, embedding_function=None
    )
    col.add(ids=[ids[i] for i in positions], embeddings=vectors[positions])
    return col


def test_a_staging_copy_with_holes_is_completed_not_trusted(tmp_path):
    vs = store.connect(store.StoreTarget(path=tmp_path / "chroma"))
    ids, vectors = _vectors()
    meta, settings = _meta()
    holes = np.r_[0:100, 250:400, 990:1000]  # not a prefix: every stored id is read back
    _staging_with(vs, ids, vectors, holes, meta, settings)
    assert list(store.missing_positions(vs.open(NAME + store.STAGING_SUFFIX).collection, ids)) == sorted(
        set(range(N)) - set(holes.tolist())
    )
    result = write_vectors(vs, NAME, ids, vectors, None, meta, settings, write_batch=BATCH)
    assert (result.resumed, result.written) == (len(holes), N - len(holes))
    assert vs.open(NAME).count() == N and vs.names() == [NAME]


def test_a_partial_run_with_other_settings_is_refused_unless_forced(tmp_path):
    vs = store.connect(store.StoreTarget(path=tmp_path / "chroma"))
    ids, vectors = _vectors()
    meta, settings = _meta()
    _staging_with(vs, ids, vectors, np.arange(200), meta, settings)
    other_meta, other = _meta(ef_search=120)
    with pytest.raises(JobError) as err:
        write_vectors(vs, NAME, ids, vectors, None, other_meta, other, write_batch=BATCH)
    assert "An interrupted index run left" in err.value.problem and "200 of 1000 vectors" in err.value.problem
    assert "ef_search 400 -> 120" in err.value.problem and "--force" in err.value.fix
    assert vs.open(NAME + store.STAGING_SUFFIX).count() == 200  # untouched
    result = write_vectors(vs, NAME, ids, vectors, None, other_meta, other, write_batch=BATCH, force=True)
    assert (result.resumed, result.written) == (0, N)
    assert vs.open(NAME).settings.ef_search == 120


def _fail_adds_after(monkeypatch, ok: int, error: Exception):
    """Chroma's Collection.add writes ``ok`` batches, then raises ``error``; returns the real add."""
    from chromadb.api.models.Collection import Collection

    real_add, calls = Collection.add, []

    def add(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > ok:
            raise error
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "add", add)
    return real_add


def test_a_store_that_fills_up_is_named_with_the_resume(tmp_path, monkeypatch):
    from chromadb.api.models.Collection import Collection
    from chromadb.errors import InternalError

    vs = store.connect(store.StoreTarget(path=tmp_path / "chroma"))
    ids, vectors = _vectors()
    meta, settings = _meta()
    real_add = _fail_adds_after(monkeypatch, 3, InternalError("Error in compaction: Error purging logs"))  # Chroma 1.5
    with pytest.raises(JobError) as err:
        write_vectors(vs, NAME, ids, vectors, None, meta, settings, write_batch=BATCH)
    assert "its disk is most likely full" in err.value.problem
    assert "continues from the 300 of 1000 vectors" in err.value.fix
    monkeypatch.setattr(Collection, "add", real_add)
    assert write_vectors(vs, NAME, ids, vectors, None, meta, settings, write_batch=BATCH).resumed == 300


def test_a_server_lost_midway_names_it_and_the_resume(tmp_path, monkeypatch):
    import httpx

    embedded = store.connect(store.StoreTarget(path=tmp_path / "chroma"))
    vs = store.ChromaStore(embedded.client, store.StoreTarget(host="127.0.0.1", port=8123))  # described as a server
    ids, vectors = _vectors()
    meta, settings = _meta()
    _fail_adds_after(monkeypatch, 2, httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(JobError) as err:
        write_vectors(vs, NAME, ids, vectors, None, meta, settings, write_batch=BATCH)
    assert "The connection to the Chroma server http://127.0.0.1:8123 was lost while writing" in err.value.problem
    assert "chroma run --host 127.0.0.1 --port 8123" in err.value.fix and "from the 200 of 1000" in err.value.fix


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True)
    return ok.returncode == 0


@pytest.mark.slow
def test_a_real_chroma_server_on_a_full_disk_is_a_clear_error(tmp_path, free_port):  # noqa: F811
    """A Chroma server whose data folder is a 3 MiB tmpfs: the write fails midway with the fix, and the old
    collection (none here) is not replaced by a partial one."""
    from test_rag_eval_server import start_server, stop_server

    disk = tmp_path / "small-disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        proc, log = start_server(disk / "data", free_port, tmp_path / "server.log")
        try:
            vs = store.connect(store.StoreTarget(host="127.0.0.1", port=free_port))
            ids, vectors = _vectors(20_000, 64)
            meta, settings = _meta(20_000)
            meta["dim"] = meta["model_dim"] = 64
            with pytest.raises(JobError) as err:
                write_vectors(vs, NAME, ids, vectors, None, meta, settings, write_batch=1000)
            assert f"Chroma server http://127.0.0.1:{free_port} failed while writing" in err.value.problem
            assert "disk is most likely full" in err.value.problem and "continues from the" in err.value.fix
            assert NAME not in vs.names()
        finally:
            stop_server(proc, log)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
