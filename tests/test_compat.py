"""The saved model in other serving stacks, for real: sentence-transformers 3.4.1 and 5.7 (each in its own venv, with
transformers 4.57.6) and infinity-emb 0.0.78 load the job's model/ folder as the job writes it, and give our
embeddings; sentence-transformers 5.7's own ONNX backend (Optimum) loads the exports by file name.

Tolerances (all-MiniLM-L6-v2 saved by sentence-transformers 6 and made portable, unit vectors):
  * PyTorch in sentence-transformers 3.4.1 / 5.7 and infinity-emb vs sentence-transformers 6: 1e-5 per component
    (measured: 0.0 and ~1e-7);
  * ``backend="onnx"`` in 5.7 vs this project's ONNX Runtime encoder on the same file: 1e-5 (measured ~1e-7); the
    float32 file vs PyTorch: 1e-4.

The venvs: scripts/compat_venvs.sh builds .venv-st3, .venv-st5 and .venv-infinity (torch 2.13 CPU wheel first,
then the pins; ~3 min each). These tests use them when they are there; otherwise they skip with that command,
unless REQUIRE_COMPAT=1 (CI sets it in .ci/run), which makes them build the venvs and fail on any problem.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VENVS = {"st3": REPO / ".venv-st3", "st5": REPO / ".venv-st5", "infinity": REPO / ".venv-infinity"}
TEXTS = [
    "What was the order backlog at year end?",
    "How many employees does the company have?",
    "The board declared a quarterly dividend of $0.25 per share.",
    " ".join(["Revenue grew in every segment while operating costs fell."] * 60),  # over 256 tokens: truncated
]
ENCODE = """
import json, sys
from sentence_transformers import SentenceTransformer
folder, texts, out = sys.argv[1], json.loads(sys.argv[2]), {}
out["torch"] = SentenceTransformer(folder, device="cpu").encode(texts).tolist()
for f in sys.argv[3:]:
    onnx = SentenceTransformer(folder, device="cpu", backend="onnx", model_kwargs={"file_name": f})
    out[f] = onnx.encode(texts).tolist()
print(json.dumps(out))
"""


def _venv(name: str) -> Path:
    venv = VENVS[name]
    if os.environ.get("REQUIRE_COMPAT", "") in ("", "0"):
        if not (venv / ".compat-stamp").is_file():
            pytest.skip(f"{venv.name} is missing: build it with scripts/compat_venvs.sh {name} (REQUIRE_COMPAT=1 does)")
        return venv
    # required: build it, or rebuild it when its pins changed (the script keeps an up-to-date venv as it is)
    done = subprocess.run([str(REPO / "scripts" / "compat_venvs.sh"), name], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_path):
    """all-MiniLM-L6-v2 saved by sentence-transformers 6 and made portable with both exports, as `job run
    --export onnx,onnx-int8` leaves model/; and the reference vectors of sentence-transformers 6."""
    from sentence_transformers import SentenceTransformer

    from job.export.onnx import export_model
    from job.export.portable import make_portable

    folder = tmp_path_factory.mktemp("compat") / "model"
    model = SentenceTransformer(str(minilm_path), device="cpu")
    model.save(str(folder))  # the new format, which older releases cannot read
    assert make_portable(folder, model)["portable"]
    export_model(folder, ["onnx", "onnx-int8"], model=model, echo=lambda m: None)
    return folder, model.encode(TEXTS)


def _encode_in(venv: Path, folder: Path, *files: str) -> dict[str, np.ndarray]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", ENCODE, str(folder), json.dumps(TEXTS), *files],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {k: np.asarray(v, dtype=np.float32) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def test_sentence_transformers_3_loads_the_saved_model_with_the_same_vectors(saved):
    folder, reference = saved
    got = _encode_in(_venv("st3"), folder)
    assert np.abs(got["torch"] - reference).max() <= 1e-5


ENCODE_EACH = """
import json, sys
from sentence_transformers import SentenceTransformer
folders, texts, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), {}
for name, folder in folders.items():
    try:
        model = SentenceTransformer(folder, device="cpu")
        out[name] = {"plain": model.encode(texts).tolist()}
        if (getattr(model, "prompts", None) or {}).get("query"):
            out[name]["query"] = model.encode(texts, prompt_name="query").tolist()
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def saved_architectures(tmp_path_factory):
    """Each tiny architecture of tests/architectures.py saved by sentence-transformers 6 and made portable (as the
    job's train step leaves model/), with its reference vectors, plain and with its query prompt."""
    from architectures import ARCHITECTURES, build
    from conftest import make_pairs
    from sentence_transformers import SentenceTransformer

    from job.export.portable import make_portable

    rows = make_pairs(5)
    texts = [r["question"] for r in rows] + [r["context"] for r in rows]
    root = tmp_path_factory.mktemp("compat-arch")
    out = {}
    for name in ARCHITECTURES:
        model = SentenceTransformer(str(build(name, root, texts)), device="cpu")
        folder = root / f"{name}-saved"
        model.save(str(folder))
        record = make_portable(folder, model)
        assert record["portable"], (name, record.get("why"))
        reference = {"plain": model.encode(texts[:4])}
        if (model.prompts or {}).get("query"):
            reference["query"] = model.encode(texts[:4], prompt_name="query")
        out[name] = (folder, reference)
    return out, texts[:4]


@pytest.mark.parametrize("stack", ["st3", "st5"])
def test_older_stacks_load_every_architecture_with_the_same_vectors(saved_architectures, stack):
    """BERT (CLS, mean, prompts), MPNet, XLM-RoBERTa, ModernBERT and a Qwen3 decoder (last token, left padding),
    each as the job saves it, in sentence-transformers 3.4.1 and 5.7 with transformers 4.57.6: a tokenizer saved as
    transformers 5's TokenizersBackend, or one that gives token_type_ids ModernBERT refuses, failed there before
    the portable save rewrote tokenizer_config.json."""
    models, texts = saved_architectures
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    folders = {name: str(folder) for name, (folder, _) in models.items()}
    done = subprocess.run(
        [str(_venv(stack) / "bin" / "python"), "-c", ENCODE_EACH, json.dumps(folders), json.dumps(texts)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {name: got[name]["error"] for name in models if "error" in got[name]}
    assert not failed, failed
    for name, (_, reference) in models.items():
        for kind, vectors in reference.items():
            assert np.abs(np.asarray(got[name][kind], dtype=np.float32) - vectors).max() <= 1e-5, (name, kind)


def test_sentence_transformers_5_loads_the_model_and_its_onnx_exports(saved):
    from job.export.onnx import EXPORTS
    from job.export.runtime import ExportedModel

    folder, reference = saved
    files = [EXPORTS["onnx"].file, EXPORTS["onnx-int8"].file]
    got = _encode_in(_venv("st5"), folder, *files)
    assert np.abs(got["torch"] - reference).max() <= 1e-5
    assert np.abs(got[files[0]] - reference).max() <= 1e-4
    for name in ("onnx", "onnx-int8"):  # Optimum's path and ours give the same vectors from the same file
        ours = ExportedModel(folder, EXPORTS[name].file).encode(TEXTS)
        assert np.abs(got[EXPORTS[name].file] - ours).max() <= 1e-5, name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _infinity(folder: Path, log: Path):
    exe = _venv("infinity") / "bin" / "infinity_emb"
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    env.pop("PYTHONPATH", None)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(exe), "v2", "--model-id", str(folder), "--engine", "torch", "--device", "cpu",
             "--host", "127.0.0.1", "--port", str(port), "--url-prefix", ""],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"infinity-emb exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"infinity-emb did not start:\n{log.read_text()[-3000:]}")


def test_infinity_emb_serves_the_saved_model_with_the_same_vectors(saved, tmp_path):
    folder, reference = saved
    proc, url = _infinity(folder, tmp_path / "infinity.log")
    try:
        with urllib.request.urlopen(url + "/models", timeout=30) as r:
            model_id = json.loads(r.read())["data"][0]["id"]
        request = urllib.request.Request(
            url + "/embeddings", data=json.dumps({"model": model_id, "input": TEXTS}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as r:
            data = json.loads(r.read())["data"]
    finally:
        proc.terminate()  # by its PID: the server this test started
        proc.wait(timeout=60)
    got = np.asarray([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], dtype=np.float32)
    assert np.abs(got - reference).max() <= 1e-5


def test_the_load_matrix_measures_the_infinity_peer(saved, tmp_path):
    """bench/serve_load.py --matrix with tiny settings: the peer's rows, as the full benchmark writes them."""
    folder, _ = saved
    _venv("infinity")
    run = tmp_path / "run"
    shutil.copytree(folder, run / "model")
    (run / "ir" / "test").mkdir(parents=True)
    (run / "ir" / "test" / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[:3]))
    )
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "serve_load.py"), "--matrix", "--run", str(run), "--backends", "",
         "--dim", "128", "--clients", "1,2", "--seconds", "1", "--warmup", "0.5", "--json", str(out),
         "--logs", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["server"], r["clients"]) for r in rows] == [("infinity-emb", 1), ("infinity-emb", 2)]
    for r in rows:
        assert r["errors"] == 0 and r["requests_per_s"] > 0 and r["p95_ms"] > 0
        assert 0 <= r["load_generator_cpu_share"] <= 1
