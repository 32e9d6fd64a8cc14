"""Helpers and fixtures for the rag_eval tests: a hand-made table model, the hand-worked dataset,
a tiny job run directory and a free loopback port.

Not a conftest.py: other test modules import the top-level tests/conftest.py as ``conftest``, and a
second conftest module here would shadow it. Test modules import the fixtures they use from here.
Every store is an embedded Chroma in a temp dir or a server the test starts itself; no network.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers.util import cos_sim

from job.data.prepare import IRData, Pair, build_ir_corpus, build_ir_queries, write_beir
from job.layout import RunDir, write_json
from rag_eval.sources import FINETUNED, LoadedModel, ModelSpec


class _CardData:
    def set_evaluation_metrics(self, *args, **kwargs):
        pass


class TableModel:
    """A "model" that looks each text up in a table of vectors; enough for the job's evaluator too."""

    similarity_fn_name = "cosine"
    model_card_data = _CardData()

    def __init__(self, table: dict[str, list[float]]):
        self.table = {k: np.asarray(v, dtype=np.float32) for k, v in table.items()}
        self.encode_calls = 0

    def get_sentence_embedding_dimension(self) -> int:
        return len(next(iter(self.table.values())))

    @staticmethod
    def similarity(a, b):
        return cos_sim(a, b)

    def encode(self, sentences, truncate_dim=None, convert_to_tensor=False, **kwargs):
        self.encode_calls += 1
        emb = np.stack([self.table[s] for s in sentences])[:, :truncate_dim]
        return torch.from_numpy(emb) if convert_to_tensor else emb

    encode_query = encode
    encode_document = encode


def loaded(model: TableModel, label: str = FINETUNED, ref: str = "table-model") -> LoadedModel:
    return LoadedModel(ModelSpec(label, ref), model, f"fp-{ref}", model.get_sentence_embedding_dimension())


# --- the hand-worked dataset (see test_rag_eval_agreement.py for every number) ----------------------
CORPUS_VECTORS = {
    "d0": [4, 0, 0, 0],
    "d1": [0, 4, 0, 0],
    "d2": [3, 1, 0, 0],
    "d3": [1, 3, 0, 0],
    "d4": [2, 2, 0, 4],
}
QUERY_VECTORS = {"q0": [1, 0, 0, 0], "q1": [2, 1, 0, 3], "q2": [0, 1, 0, 0]}
HAND_QRELS = {"q0": {"d2": 1}, "q1": {"d4": 1}, "q2": {"d1": 1, "d3": 1}}


def hand_data(qrels=None) -> tuple[IRData, TableModel]:
    corpus = {cid: f"passage {cid}" for cid in CORPUS_VECTORS}
    queries = {qid: f"question {qid}" for qid in QUERY_VECTORS}
    table = {f"passage {k}": v for k, v in CORPUS_VECTORS.items()} | {
        f"question {k}": v for k, v in QUERY_VECTORS.items()
    }
    return IRData(corpus, queries, qrels or HAND_QRELS), TableModel(table)


# --- a tiny job run directory --------------------------------------------------------------------
PASSAGES = [
    "Revenue grew 6 percent to 8.9 billion dollars on strong pricing.",
    "The board raised the quarterly dividend to 62 cents per share.",
    "Senior notes of 500 million dollars due 2031 carry a 4.25 percent coupon.",
    "The Monterrey plant added a second assembly line for servo drives.",
    "The company holds about 3,900 active patents worldwide.",
    "About 31,400 employees work in 24 countries.",
    "Backlog reached 5.3 billion dollars at year end.",
    "The effective tax rate was 21.4 percent in fiscal 2024.",
]
TOPICS = ["revenue", "dividend", "debt", "plant", "patents", "employees", "backlog", "tax"]
QUESTION_FORMS = ["What about {t}?", "Tell me the {t} figure.", "How did {t} change?"]


def tiny_pairs() -> list[Pair]:
    return [Pair(form.format(t=t), p) for t, p in zip(TOPICS, PASSAGES) for form in QUESTION_FORMS]


def tiny_ir() -> IRData:
    pairs = tiny_pairs()
    corpus, ids = build_ir_corpus({"test": pairs})
    queries, qrels = build_ir_queries(pairs, ids, "qt")
    return IRData(corpus, queries, qrels)


def perturbed_copy(src, dst, seed: int = 1, scale: float = 0.05):
    """The tiny model with its weights nudged: a stand-in for a fine-tuned model."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(src), device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in st.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    st.save(str(dst))
    return dst


_RUN_DIRS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_model_path):
    """A finished job run directory: model/ (+ training.json naming the tiny base model, dims 32/16/8)
    and ir/test. Built once per session (each test module imports this fixture). Treat it as
    read-only; stores go elsewhere (pass --chroma-path)."""
    if str(tiny_model_path) in _RUN_DIRS:
        return _RUN_DIRS[str(tiny_model_path)]
    rd = RunDir(tmp_path_factory.mktemp("run"))
    perturbed_copy(tiny_model_path, rd.model)
    write_json(
        rd.model / "training.json",
        {
            "base_model": str(tiny_model_path),
            "dims": [32, 16, 8],
            "fingerprint": {"query_prompt": None, "passage_prompt": None},
        },
    )
    write_beir(rd.ir("test"), tiny_ir(), "test")
    (rd.root / "data").mkdir()
    (rd.root / "data" / "prepare.json").write_text(json.dumps({"note": "made by the rag_eval fixture"}))
    _RUN_DIRS[str(tiny_model_path)] = rd.root
    return rd.root


@pytest.fixture()
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a run directory for `rag-eval serve` ---------------------------------------------------------
# A passage is user data: this one must show as text on the page and never run.
XSS_PASSAGE = (
    'Warranty reserves were 12 million dollars. <script>alert(1)</script><img src=x onerror="window.__xss=1">'
    " <b>bold</b> ${7*7} {{constructor}} &amp;"
)
XSS_QUESTION = "How large are the warranty reserves?"


def serve_pairs() -> list[Pair]:
    return tiny_pairs() + [Pair(XSS_QUESTION, XSS_PASSAGE), Pair("Which warranty figure is reported?", XSS_PASSAGE)]


def make_serve_run(root: Path, tiny_run: Path, *, report: bool = True) -> Path:
    """A copy of the tiny run whose test set also holds the XSS passage, indexed into RUN/chroma at
    dims 32/16/8, with `rag-eval score`'s report and the job's held-out report (real numbers from the
    job's evaluator on the tiny models) when ``report``."""
    import shutil

    from job.evaluate.report import write_report
    from job.evaluate.retrieval import evaluate_model
    from job.models import load_model
    from rag_eval.cli import main

    run = root / "serve-run"
    shutil.copytree(tiny_run, run)
    rd = RunDir(run)
    pairs = serve_pairs()
    corpus, ids = build_ir_corpus({"test": pairs})
    queries, qrels = build_ir_queries(pairs, ids, "qt")
    ir = IRData(corpus, queries, qrels)
    shutil.rmtree(rd.ir("test"))
    write_beir(rd.ir("test"), ir, "test")
    assert main(["index", "--model", str(run)]) == 0
    if report:
        args = ["--latency-samples", "5", "--batch-queries", "2", "--no-disk-size"]
        assert main(["score", "--model", str(run), *args]) == 0
        training = json.loads((rd.model / "training.json").read_text())
        dims = training["dims"]
        base = evaluate_model(load_model(training["base_model"]), ir, dims, "base")
        tuned = evaluate_model(load_model(str(rd.model)), ir, dims, "tuned")
        write_report(
            rd.report, base, tuned, {"model": str(rd.model), "test_queries": len(queries), "corpus_size": len(corpus)}
        )
    return run


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`rag-eval ARGS` in this process: (exit code, stdout, stderr)."""
    from rag_eval.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def killed_writer(test_module: str) -> str:
    """A script (argument: the store's folder) that writes ``test_module``'s NAME index of ``_vectors()`` in
    batches of BATCH through ``write_vectors`` and SIGKILLs itself once KILL_AFTER vectors are written: no cleanup
    of any kind, as a killed job. The module gives the store and what to write: ``_writer_args(path) -> (store,
    metadata, settings)``."""
    import textwrap

    here = Path(__file__).resolve().parent
    return textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(here.parents[1])!r})
        sys.path.insert(0, {str(here)!r})
        from pathlib import Path
        from rag_eval.indexing import write_vectors
        from {test_module} import NAME, BATCH, KILL_AFTER, _vectors, _writer_args

        written = 0
        def progress(n):
            global written
            written += n
            if written >= KILL_AFTER:
                os.kill(os.getpid(), signal.SIGKILL)
        vs, meta, settings = _writer_args(Path(sys.argv[1]))
        ids, vectors = _vectors()
        write_vectors(vs, NAME, ids, vectors, None, meta, settings, write_batch=BATCH, progress=progress)
        print("not killed")
        """
    )
