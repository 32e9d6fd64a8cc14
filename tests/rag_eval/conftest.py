"""Fixtures for rag_eval: a tiny job run directory and a free loopback port.

Every store is an embedded Chroma in a temp dir or a server the test starts itself; no network.
"""

from __future__ import annotations

import json
import socket

import pytest

from job.data import write_beir
from job.pipeline import RunDir, write_json
from rag_eval_helpers import perturbed_copy, tiny_ir


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_model_path):
    """A finished job run directory: model/ (+ training.json naming the tiny base model, dims 32/16/8)
    and ir/test. Treat it as read-only; stores go elsewhere (pass --chroma-path)."""
    rd = RunDir(tmp_path_factory.mktemp("run"))
    perturbed_copy(tiny_model_path, rd.model)
    write_json(
        rd.model / "training.json",
        {"base_model": str(tiny_model_path), "dims": [32, 16, 8], "fingerprint": {"query_prompt": None, "passage_prompt": None}},
    )
    write_beir(rd.ir("test"), tiny_ir(), "test")
    (rd.root / "data").mkdir()
    (rd.root / "data" / "prepare.json").write_text(json.dumps({"note": "made by the rag_eval fixture"}))
    return rd.root


@pytest.fixture()
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
