"""A real Chroma server on a free loopback port, started and stopped by the test, used through HttpClient."""

# ruff: noqa: F811 - fixtures imported from rag_eval_helpers are, by design, the test functions' parameters

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rag_eval_helpers import free_port, tiny_run_dir  # noqa: F401 - fixtures

from rag_eval.cli import main

CHROMA = Path(sys.executable).with_name("chroma")


def start_server(data: Path, port: int, log_path: Path):
    """`chroma run` on 127.0.0.1:port with its own data folder, once it answers a heartbeat: (process, log)."""
    exe = CHROMA if CHROMA.exists() else shutil.which("chroma")
    if not exe:
        pytest.skip("the chroma executable is not installed")
    log = log_path.open("w")
    proc = subprocess.Popen(
        [str(exe), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(data)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    import chromadb
    from chromadb.config import Settings

    deadline = time.monotonic() + 30
    while True:
        try:
            chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False)).heartbeat()
            return proc, log
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"chroma server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)


def stop_server(proc, log) -> None:
    """Stop the server by its PID (SIGTERM, then SIGKILL after 15 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture()
def chroma_server(tmp_path, free_port):
    proc, log = start_server(tmp_path / "server-data", free_port, tmp_path / "server.log")
    yield proc, free_port
    stop_server(proc, log)


def test_index_score_query_through_a_chroma_server(chroma_server, tiny_run_dir, tmp_path, capsys):
    proc, port = chroma_server
    server = ("--chroma-host", "127.0.0.1", "--chroma-port", str(port))
    assert main(["index", "--model", str(tiny_run_dir), "--dims", "32,8", *server]) == 0
    out = capsys.readouterr().out
    assert f"-> Chroma server http://127.0.0.1:{port}" in out.strip().splitlines()[-1]

    report = tmp_path / "report"
    code = main(
        [
            "score",
            "--model",
            str(tiny_run_dir),
            "--dims",
            "32,8",
            *server,
            "--out",
            str(report),
            "--latency-samples",
            "10",
            "--batch-queries",
            "4",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    payload = json.loads((report / "metrics.json").read_text())
    assert payload["store"] == f"Chroma server http://127.0.0.1:{port}"
    assert payload["agreement"]["ok"]
    for label in ("baseline", "fine-tuned"):
        for dim in ("32", "8"):
            row = payload["models"][label]["dims"][dim]
            assert abs(row["store"]["ndcg@10"] - row["evaluator"]["ndcg@10"]) <= 0.002
            assert row["latency"]["single_p50_ms"] > 0

    assert (
        main(["query", "tax rate", "--model", str(tiny_run_dir), "--dim", "8", "--k", "2", "--compare", *server]) == 0
    )
    out = capsys.readouterr().out
    assert "Left: fine-tuned" in out

    # the server goes away: a clear error naming it, no traceback
    proc.terminate()
    proc.wait(timeout=15)
    code = main(["query", "tax rate", "--model", str(tiny_run_dir), "--dim", "8", *server])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"Cannot reach the Chroma server at 127.0.0.1:{port}" in err
