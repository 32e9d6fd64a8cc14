"""Collections in an embedded Chroma: settings, metadata, clean replacement, refusing what is not ours."""

from __future__ import annotations

import numpy as np
import pytest
from rag_eval_helpers import hand_data, loaded

from job.errors import JobError
from rag_eval import store
from rag_eval.indexing import index_models
from rag_eval.scoring import ScoreOptions, open_collection, score_models
from rag_eval.vectors import corpus_fingerprint

QUIET = {"echo": lambda _: None}


@pytest.fixture()
def setup(tmp_path):
    target = store.StoreTarget(path=tmp_path / "chroma")
    data, model = hand_data()
    return store.connect(target), target, data, loaded(model)


def _index(client, data, m, dims=(4, 2), settings=None, **kw):
    return index_models(client, [m], data, "hand", list(dims), settings or store.HnswSettings(), **QUIET, **kw)


def _name(m, dim):
    return store.collection_name(store.DEFAULT_PREFIX, m.spec.key, dim)


def test_collection_has_cosine_space_explicit_hnsw_and_full_metadata(setup):
    client, _, data, m = setup
    _index(client, data, m, settings=store.HnswSettings(ef_construction=150, ef_search=300, max_neighbors=24))
    col = client.client.get_collection(_name(m, 2))
    hnsw = col.configuration_json["hnsw"]
    assert (hnsw["space"], hnsw["ef_construction"], hnsw["ef_search"], hnsw["max_neighbors"]) == (
        "cosine",
        150,
        300,
        24,
    )
    meta = col.metadata
    assert meta["rag_eval"] == 1 and meta["model"] == "table-model" and meta["model_fingerprint"] == "fp-table-model"
    assert (meta["dim"], meta["model_dim"], meta["corpus_size"]) == (2, 4, 5)
    assert meta["corpus_fingerprint"] == corpus_fingerprint(data.corpus)
    assert (meta["space"], meta["ef_construction"], meta["ef_search"], meta["max_neighbors"]) == (
        "cosine",
        150,
        300,
        24,
    )
    # stored vectors are the truncated prefixes, re-normalised
    got = col.get(ids=["d4"], include=["embeddings", "documents"])
    assert np.asarray(got["embeddings"][0]) == pytest.approx([2**-0.5, 2**-0.5], abs=1e-6)
    assert got["documents"] == ["passage d4"]
    assert store.dims_in_store(client, store.DEFAULT_PREFIX, m.spec.key) == [4, 2]


def test_no_default_embedding_function_is_ever_called(setup, monkeypatch):
    from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

    def boom(*args, **kwargs):
        raise AssertionError("Chroma's default embedding function (a model download) was used")

    monkeypatch.setattr(DefaultEmbeddingFunction, "__call__", boom)
    client, target, data, m = setup
    _index(client, data, m)
    score_models(
        client,
        [m],
        data,
        [4, 2],
        opts=ScoreOptions(latency_samples=2, batch_queries=2, measure_disk=False),
        **QUIET,
    )


def test_reindexing_keeps_an_unchanged_collection_and_force_replaces_it_cleanly(setup):
    client, _, data, m = setup
    first = _index(client, data, m)
    old_id = client.client.get_collection(_name(m, 4)).id
    encodes = m.model.encode_calls
    again = _index(client, data, m)
    assert [r.action for r in first] == ["created", "created"]
    assert [r.action for r in again] == ["kept", "kept"]  # same model, corpus, dim, settings: nothing to do
    assert m.model.encode_calls == encodes  # not even encoded again
    assert [r.action for r in _index(client, data, m, dims=(4, 3))] == ["kept", "created"]  # one new dim: encoded
    assert client.client.get_collection(_name(m, 4)).id == old_id
    client.delete(_name(m, 3))
    forced = _index(client, data, m, force=True)
    assert [r.action for r in forced] == ["replaced", "replaced"] and all(r.note == "" for r in forced)
    col = client.client.get_collection(_name(m, 4))
    assert col.id != old_id and col.count() == 5
    assert sorted(client.names()) == sorted([_name(m, 4), _name(m, 2)])  # no staging left behind


def test_a_changed_hnsw_setting_recreates_the_collection(setup):
    client, _, data, m = setup
    _index(client, data, m, dims=(4,))
    done = _index(client, data, m, dims=(4,), settings=store.HnswSettings(ef_search=120))
    assert done[0].note == "HNSW settings changed (ef_search 400 -> 120): recreated"
    assert client.client.get_collection(_name(m, 4)).configuration_json["hnsw"]["ef_search"] == 120


def test_a_failed_write_leaves_the_old_collection_as_it_was(setup, monkeypatch):
    from chromadb.api.models.Collection import Collection

    client, _, data, m = setup
    _index(client, data, m, dims=(4,))
    before = client.client.get_collection(_name(m, 4))

    def fail(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Collection, "add", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        _index(client, data, m, dims=(4,), settings=store.HnswSettings(ef_search=99))
    after = client.client.get_collection(_name(m, 4))
    assert after.id == before.id and after.count() == 5 and after.configuration_json["hnsw"]["ef_search"] == 400
    # the partial copy stays under the staging name, for the next run to continue; never read as the index
    assert sorted(client.names()) == [_name(m, 4), _name(m, 4) + store.STAGING_SUFFIX]
    assert client.open(_name(m, 4)).collection.id == before.id


def test_a_foreign_collection_is_refused_unless_forced(setup):
    client, target, data, m = setup
    foreign = client.client.create_collection(_name(m, 4), metadata={"owner": "someone else"}, embedding_function=None)
    foreign.add(ids=["x"], embeddings=[[0.1, 0.2, 0.3, 0.4]])
    with pytest.raises(JobError, match=r"foreign collection named .*d4 already exists.*--force"):
        _index(client, data, m, dims=(4,))
    kept = client.client.get_collection(_name(m, 4))
    assert kept.metadata == {"owner": "someone else"} and kept.count() == 1
    with pytest.raises(JobError, match="is foreign"):
        open_collection(client, m, 4, store.DEFAULT_PREFIX)
    done = _index(client, data, m, dims=(4,), force=True)
    assert done[0].note == "replaced a foreign collection (--force)"
    assert client.client.get_collection(_name(m, 4)).count() == 5


def test_a_corrupted_collection_is_refused_unless_forced(setup):
    client, target, data, m = setup
    _index(client, data, m, dims=(4,))
    client.client.get_collection(_name(m, 4)).delete(ids=["d3"])  # lost a vector
    with pytest.raises(JobError, match="is corrupted: it holds 4 vectors but its metadata says 5"):
        open_collection(client, m, 4, store.DEFAULT_PREFIX)
    with pytest.raises(JobError, match="corrupted collection named .* holds 4 vectors"):
        _index(client, data, m, dims=(4,))
    assert client.client.get_collection(_name(m, 4)).count() == 4  # untouched
    _index(client, data, m, dims=(4,), force=True)
    open_collection(client, m, 4, store.DEFAULT_PREFIX)


def test_querying_checks_dim_model_and_corpus(setup):
    client, target, data, m = setup
    _index(client, data, m)
    with pytest.raises(JobError, match=r"Dim 3 is not indexed .*; indexed dims: 4, 2\."):
        open_collection(client, m, 3, store.DEFAULT_PREFIX)
    retrained = loaded(m.model)
    retrained.fingerprint = "fp-other-weights"
    with pytest.raises(JobError, match="indexed from other weights"):
        open_collection(client, retrained, 4, store.DEFAULT_PREFIX)
    narrower = loaded(m.model)
    narrower.dim = 3
    with pytest.raises(JobError, match="makes 3-dim embeddings, but collection .* was indexed from a 4-dim model"):
        open_collection(client, narrower, 2, store.DEFAULT_PREFIX)
    with pytest.raises(JobError, match="holds another corpus"):
        open_collection(client, m, 4, store.DEFAULT_PREFIX, corpus_fp="0" * 16)


def test_footprint_grows_with_dim(setup):
    rng = np.random.default_rng(0)
    ids = [f"d{i}" for i in range(300)]
    small = store.footprint_bytes(
        ids, rng.standard_normal((300, 8)).astype(np.float32), [None] * 300, store.HnswSettings()
    )
    large = store.footprint_bytes(
        ids, rng.standard_normal((300, 256)).astype(np.float32), [None] * 300, store.HnswSettings()
    )
    assert 0 < small < large
    assert large - small > 300 * (256 - 8) * 4  # at least the raw float32 difference


def test_bad_settings_and_prefix_are_refused():
    with pytest.raises(JobError, match="ef_search is 0"):
        store.HnswSettings(ef_search=0).check()
    with pytest.raises(JobError, match="prefix"):
        store.check_prefix("-bad prefix")


def test_a_server_lost_midway_is_a_clear_error_naming_it():
    import httpx

    target = store.StoreTarget(host="10.1.2.3", port=8123)
    refused = r"Cannot reach the Chroma server at 10\.1\.2\.3:8123 \(\[Errno 111\] Connection refused\)"
    with pytest.raises(JobError, match=refused), store.store_errors(target):
        raise httpx.ConnectError("[Errno 111] Connection refused")
