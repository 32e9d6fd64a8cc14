"""`job synthesize`: documents -> chunks -> questions from an OpenAI-compatible endpoint -> filtered pairs.

The end-to-end tests at the bottom run against a REAL llama.cpp server (SmolLM2-135M-Instruct) started on
127.0.0.1 by the tests. The error paths (401, 404, 429, 5xx, stalls, junk) use FakeChatServer, a stand-in
over real HTTP (tests/llm_servers.py), because a real small model cannot be made to fail on demand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from llm_servers import FakeChatServer, completion, error, passage_of, require_llama, start_llama_server

from job.cli import main
from job.config import resolve_config
from job.errors import JobError
from job.synth import documents, llm
from job.synth.synthesize import (
    copies_chunk,
    normalise_question,
    own_chunk_ranks,
    parse_questions,
    rule_check,
    side_files,
    synthesize,
)

PASSAGES = [
    "Revenue grew 6 percent to 8.9 billion dollars on strong pricing in the industrial segment.",
    "The board raised the quarterly dividend to 62 cents per share in February.",
    "Senior notes of 500 million dollars due 2031 carry a 4.25 percent coupon.",
    "The Monterrey plant added a second assembly line for servo drives last year.",
    "The company holds about 3,900 active patents worldwide, most of them in Europe.",
    "About 31,400 employees work in 24 countries, a third of them in manufacturing.",
    "Backlog reached 5.3 billion dollars at year end, up from 4.1 billion.",
    "The effective tax rate was 21.4 percent in fiscal 2024 after a one-time benefit.",
    "A cybersecurity committee of the board reviews incidents every quarter.",
    "Copper and steel prices drive the cost of the transformers the company builds.",
    "Share repurchases totalled 700 million dollars during the year under the program.",
    "The pension plan was 96 percent funded at year end, against 91 percent a year earlier.",
]
TOPICS = ["revenue", "dividend", "notes", "plant", "patents", "employees", "backlog", "tax", "committee", "copper",
          "repurchases", "pension"]  # fmt: skip


def make_pdf(path: Path, lines: list[str]) -> Path:
    """A minimal one-page PDF whose text pypdf can extract (Helvetica, one text object per line)."""
    ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
    for line in lines:
        ops.append("(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*")
    ops.append("ET")
    stream = zlib.compress("\n".join(ops).encode("latin-1"))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


@pytest.fixture()
def docs_dir(tmp_path) -> Path:
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "annual.txt").write_text("\n\n".join(PASSAGES[:3]))
    (d / "notes.md").write_text("# Notes\n\n" + "\n\n".join(PASSAGES[3:5]))
    (d / "page.html").write_text(
        "<html><head><style>p {color: red}</style><script>alert('x')</script></head><body>"
        + "".join(f"<p>{p}</p>" for p in PASSAGES[5:7])
        + "</body></html>"
    )
    make_pdf(d / "sub" / "filing.pdf", PASSAGES[7:9])
    (d / "table.csv").write_text("id,text\n1," + PASSAGES[9] + "\n2," + PASSAGES[10] + "\n3,\n")
    (d / "rows.jsonl").write_text(json.dumps({"content": PASSAGES[11]}) + "\n")
    (d / "empty.txt").write_text("  \n\n")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (d / "logo.png").write_bytes(b"\x89PNG\r\n")
    (d / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    return d


# --- reading and chunking ------------------------------------------------------------------------
def test_every_document_kind_is_read_and_every_skipped_file_is_named(docs_dir):
    read = documents.read_documents([docs_dir])
    texts = {d.id: d.text for d in read.documents}
    assert read.files == 10
    assert set(texts) == {"annual.txt", "notes.md", "page.html", "sub/filing.pdf", "table.csv#row 1",
                          "table.csv#row 2", "rows.jsonl#line 1"}  # fmt: skip
    assert "alert" not in texts["page.html"] and "color" not in texts["page.html"]
    assert PASSAGES[5] in texts["page.html"]
    assert PASSAGES[7] in texts["sub/filing.pdf"] and PASSAGES[8] in texts["sub/filing.pdf"]
    assert texts["rows.jsonl#line 1"] == PASSAGES[11]
    skipped = dict(read.skipped)
    assert skipped["empty.txt"] == "no text"
    assert skipped["latin1.txt"].startswith("unreadable: not UTF-8")
    assert skipped["logo.png"] == "unsupported file type '.png'"
    assert skipped["broken.pdf"].startswith("unreadable:")


def test_a_table_without_a_text_column_is_skipped_with_the_fix(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    read = documents.read_documents([tmp_path])
    assert not read.documents
    assert "no text column" in read.skipped[0][1] and "--text-column" in read.skipped[0][1]
    (tmp_path / "t.csv").write_text("a,body_text\n1," + "x" * 200_000 + "\n")  # over csv's default field limit
    read = documents.read_documents([tmp_path], text_column="body_text")
    assert len(read.documents[0].text) == 200_000


def test_an_encrypted_pdf_is_named(tmp_path):
    from pypdf import PdfReader, PdfWriter

    plain = make_pdf(tmp_path / "plain.pdf", ["Secret revenue figures."])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt("a-password")
    plain.unlink()
    with open(tmp_path / "locked.pdf", "wb") as fh:
        writer.write(fh)
    read = documents.read_documents([tmp_path])
    assert read.skipped == [("locked.pdf", read.skipped[0][1])]
    assert "encrypted" in read.skipped[0][1]


def test_chunks_fit_the_model_tokens_and_repeats_are_dropped(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    tok = SentenceTransformer(str(tiny_model_path)).tokenizer
    long = " ".join(PASSAGES)
    docs = [documents.Document("a", long), documents.Document("b", PASSAGES[0]), documents.Document("c", PASSAGES[0])]
    chunks, repeats = documents.chunk_documents(docs, tok, chunk_tokens=24, overlap=4)
    assert repeats >= 1  # document c is document b again
    assert len({c.id for c in chunks}) == len(chunks)
    for c in chunks:
        assert len(tok(c.text, add_special_tokens=False)["input_ids"]) <= 24
    assert [c.index for c in chunks if c.document == "a"] == list(range(sum(c.document == "a" for c in chunks)))
    with pytest.raises(JobError, match="chunk_overlap"):
        documents.chunk_documents(docs, tok, chunk_tokens=24, overlap=24)


# --- parsing and filtering ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "n", "expected"),
    [
        ("What was revenue in 2024?", 1, ["What was revenue in 2024?"]),
        ("1. What is X? 2. What is Y?", 2, ["What is X?", "What is Y?"]),
        ('Sure, here they are:\n- "How big is the backlog?"\n- Why did it grow?', 2,
         ["How big is the backlog?", "Why did it grow?"]),
        ("Question: How many patents are active?", 1, ["How many patents are active?"]),
        ("The company has stores.", 1, ["The company has stores."]),  # kept, to be counted as not a question
        ("   \n", 1, []),
    ],
)  # fmt: skip
def test_parse_questions(answer, n, expected):
    assert parse_questions(answer, n) == expected


def test_statements_are_kept_one_per_sentence_in_the_statement_form():
    from job.synth.synthesize import normalise_query

    answer = "Here are the statements:\n1. The board raised the dividend to 62 cents.\n- Dividends rose in February"
    assert parse_questions(answer, 2, "statement") == ["The board raised the dividend to 62 cents.",
                                                      "Dividends rose in February"]  # fmt: skip
    # one statement per sentence: a paragraph on one line (what SmolLM2-135M writes for most SciFact abstracts) gives
    # its first sentence, not one 60-word "statement" to drop as too long
    paragraph = (
        "GATA-3 is required for the maintenance of LT-HSCs. Approximately 75% of cells in a highly enriched "
        "HSC population are quiescent, e.g. in G0. (Fig. 2b) shows it"
    )
    assert parse_questions(paragraph, 1, "statement") == ["GATA-3 is required for the maintenance of LT-HSCs."]
    assert parse_questions(paragraph, 3, "statement") == [
        "GATA-3 is required for the maintenance of LT-HSCs.",
        "Approximately 75% of cells in a highly enriched HSC population are quiescent, e.g. in G0.",
        "(Fig. 2b) shows it",
    ]
    assert parse_questions("What is X? What is Y?", 2, "statement") == ["What is X?", "What is Y?"]
    assert normalise_query("The  backlog grew.", "statement") == "The backlog grew."
    assert normalise_query("The backlog grew.", "question") is None  # the question form drops it


def test_normalise_question():
    assert normalise_question("What is the tax rate??") == "What is the tax rate?"
    assert normalise_question("How large is the backlog.") == "How large is the backlog?"
    assert normalise_question("The backlog grew.") is None


@pytest.mark.parametrize(
    ("question", "reason"),
    [
        (None, "not_a_question"),
        ("Revenue?", "too_short"),
        ("What " + "very " * 40 + "big?", "too_long"),
        ("What does the passage say about the dividend?", "mentions_passage"),
        ("How many stores did the company have in North America at the end of fiscal 2022?", "echoes_prompt"),
        ("Senior notes of 500 million dollars due 2031 carry a 4.25 percent coupon?", "copies_chunk"),
        ("What coupon do the senior notes due 2031 carry?", None),
    ],
)
def test_rule_filters(question, reason):
    examples = ["How many stores did the company have in North America at the end of fiscal 2022?"]
    assert rule_check(question, PASSAGES[2], set(), examples) == reason


def test_duplicates_and_verbatim_copies():
    assert rule_check("What coupon do the notes carry?", PASSAGES[2], {"what coupon do the notes carry"}) == "duplicate"
    assert copies_chunk("Backlog reached 5.3 billion dollars at year end?", PASSAGES[6])
    assert not copies_chunk("How large was the backlog at year end?", PASSAGES[6])


class _Vectors:
    """A stand-in encoder: each text is a fixed vector (enough to check the ranking arithmetic)."""

    def __init__(self, table):
        self.table = table

    def encode_document(self, texts, **kw):
        return np.array([self.table[t] for t in texts], dtype=np.float32)

    encode_query = encode_document


def test_consistency_rank_counts_better_chunks_only():
    table = {"c0": [1, 0], "c1": [0, 1], "c2": [0.6, 0.8], "q0": [1, 0], "q1": [1, 0.1], "q2": [0.6, 0.8]}
    cfg = resolve_config(cli={}, environ={})
    ranks = own_chunk_ranks(_Vectors(table), ["q0", "q1", "q2"], [0, 1, 2], ["c0", "c1", "c2"], cfg)
    # q0 is c0 itself; q1 is far from c1 (c0 and c2 closer); q2 equals c2
    assert ranks == [1, 3, 1]


def test_prompt_files(tmp_path):
    plain = tmp_path / "p.txt"
    plain.write_text("Write {n} questions for: {passage}")
    p = llm.load_prompt(str(plain))
    assert p.render("A {braced} text.", 2) == [{"role": "user", "content": "Write 2 questions for: A {braced} text."}]
    sections = tmp_path / "s.txt"
    sections.write_text(
        "### system\nBe brief.\n### user\nExample\n### assistant\nWhat?\n### user\nPassage: {passage}\n"
    )
    assert [m["role"] for m in llm.load_prompt(str(sections)).render("x", 1)] == ["system", "user", "assistant", "user"]
    (tmp_path / "bad.txt").write_text("No slot here.")
    with pytest.raises(JobError, match="no \\{passage\\} slot"):
        llm.load_prompt(str(tmp_path / "bad.txt"))
    (tmp_path / "bad2.txt").write_text("preamble\n### user\n{passage}")
    with pytest.raises(JobError, match="text before its first"):
        llm.load_prompt(str(tmp_path / "bad2.txt"))


def test_a_torn_cache_line_is_dropped_and_the_file_continues_cleanly(tmp_path):
    path = tmp_path / "a.answers.jsonl"
    path.write_text(json.dumps({"key": "k1", "answer": "What?"}) + "\n" + '{"key": "k2", "ans')
    cache = llm.AnswerCache(path)
    assert set(cache.records) == {"k1"} and cache.torn == 1
    cache.put({"key": "k3", "answer": "Why?"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["k1", "k3"]


# --- the step, against the stand-in server -----------------------------------------------------------
def _topic(request: dict) -> str:
    passage = passage_of(request)
    return next(t for t, p in zip(TOPICS, PASSAGES) if p[:40] in passage)


def good_answers(request: dict):
    """Questions a good generator would write: one per passage, each naming its passage's subject and nothing the
    passage does not say (the grounding filter drops "the company" where the passage never names one)."""
    return completion(f"What is reported about the {_topic(request)}?")


def _synth_args(docs, out, url, model, *extra):
    return ["synthesize", "--docs", str(docs), "--out", str(out), "--llm-base-url", url, "--llm-model", "m",
            "--model", str(model), "--llm-max-retries", "1", "--llm-timeout", "5", *map(str, extra)]  # fmt: skip


def _one_passage_per_file(tmp_path) -> Path:
    d = tmp_path / "onefile"
    d.mkdir()
    for i, p in enumerate(PASSAGES):
        (d / f"{i:02d}.txt").write_text(p)
    return d


def test_pairs_columns_summary_and_reasons(tmp_path, tiny_model_path, capsys):
    docs = _one_passage_per_file(tmp_path)

    def answers(request):
        topic = _topic(request)
        if topic == "dividend":
            return completion("The board likes dividends.")  # not a question
        if topic == "notes":
            return completion("What does the passage say about the notes?")
        return good_answers(request)

    out = tmp_path / "out" / "pairs.jsonl"
    with FakeChatServer(answers) as server:
        code = main(_synth_args(docs, out, server.url, tiny_model_path, "--consistency-top-k", 0,
                                "--llm-price-in", 1, "--llm-price-out", 2))  # fmt: skip
    text, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10
    assert set(rows[0]) == {"question", "passage", "chunk_id", "document", "chunk_index"}
    assert {r["document"] for r in rows} == {f"{i:02d}.txt" for i in range(12)} - {"01.txt", "02.txt"}
    summary = json.loads(side_files(out)["summary"].read_text())
    assert summary["questions"]["kept"] == 10
    assert summary["questions"]["dropped"]["not_a_question"] == 1
    assert summary["questions"]["dropped"]["mentions_passage"] == 1
    assert summary["tokens"] == {**summary["tokens"], "in": 12 * 50, "out": 12 * 12}
    assert summary["cost"] == pytest.approx((600 * 1 + 144 * 2) / 1e6)
    dropped = [json.loads(line) for line in side_files(out)["dropped"].read_text().splitlines()]
    assert sorted(d["reason"] for d in dropped) == ["mentions_passage", "not_a_question"]
    assert "questions 12: kept 10" in text and "cost $0.0009" in text
    # the pairs train: prepare reads them
    assert main(["prepare", "--run-dir", tmp_path / "run", "--data", out, "--model", tiny_model_path]) == 0


def test_the_statement_form_keeps_claims_and_asks_for_them(tmp_path, tiny_model_path, capsys):
    """--query-form statement (users who search with claims or phrases): the built-in prompt asks for statements,
    and a claim is kept where the question form counts it as not a question; the rules still apply."""
    docs = _one_passage_per_file(tmp_path)
    asked = []

    def answers(request):
        asked.append(request["messages"][0]["content"])
        topic = _topic(request)
        if topic == "notes":
            return completion("The passage describes the notes.")  # still names the passage: dropped
        return completion(f"Figures on the {topic} are reported.")

    out = tmp_path / "out" / "claims.jsonl"
    with FakeChatServer(answers) as server:
        code = main(_synth_args(docs, out, server.url, tiny_model_path, "--consistency-top-k", 0,
                                "--query-form", "statement"))  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 11 and all(r["question"].endswith("are reported.") for r in rows)
    summary = json.loads(side_files(out)["summary"].read_text())
    assert summary["questions"]["dropped"]["not_a_question"] == 0
    assert summary["questions"]["dropped"]["mentions_passage"] == 1
    assert all("statement" in a and "not questions" in a for a in asked)  # the built-in statement prompt
    assert summary["generator"]["prompt"] == "(built-in, statements)"
    with FakeChatServer(answers) as server:  # the question form: the same claims are not questions
        code = main(_synth_args(docs, tmp_path / "q.jsonl", server.url, tiny_model_path, "--consistency-top-k", 0))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "not_a_question 12" in err and "--query-form statement keeps them" in err, err


def test_a_kill_mid_generation_then_the_same_command_asks_only_for_what_is_missing(tmp_path, tiny_model_path):
    docs = _one_passage_per_file(tmp_path)
    out = tmp_path / "pairs.jsonl"

    def slow(request):
        time.sleep(0.4)
        return good_answers(request)

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-m", "job"] + _synth_args(docs, out, "URL", tiny_model_path, "--llm-concurrency", 1,
                                                        "--consistency-top-k", 0)  # fmt: skip
    with FakeChatServer(slow) as server:
        argv = [server.url if a == "URL" else a for a in args]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        answers = side_files(out)["answers"]
        deadline = time.time() + 120
        while time.time() < deadline and (not answers.exists() or len(answers.read_text().splitlines()) < 4):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cached = len(answers.read_text().splitlines())
        assert 4 <= cached < 12 and not out.exists()
        before = len(server.requests)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(server.requests) - before == 12 - cached  # only the missing chunks were asked
        assert f"{12 - cached} requests ({cached} answers from the cache" in done.stdout
    assert len(out.read_text().splitlines()) == 12


def test_a_changed_prompt_is_noticed_and_asked_again(tmp_path, tiny_model_path, capsys):
    docs = _one_passage_per_file(tmp_path)
    out = tmp_path / "pairs.jsonl"
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Passage: {passage}\nWrite one question.")
    with FakeChatServer(good_answers) as server:
        assert main(_synth_args(docs, out, server.url, tiny_model_path, "--consistency-top-k", 0)) == 0
        capsys.readouterr()
        code = main(_synth_args(docs, out, server.url, tiny_model_path, "--consistency-top-k", 0,
                                "--prompt-file", prompt))  # fmt: skip
        text = capsys.readouterr().out
        assert code == 0 and len(server.requests) == 24
    assert "holds 12 answers for these chunks made with other settings (prompt" in text


SPECIFIC = {
    "revenue": "How much did revenue grow on strong pricing?",
    "dividend": "What quarterly dividend per share did the board set?",
    "notes": "What coupon do the senior notes due 2031 carry?",
    "plant": "What did the Monterrey plant add for servo drives?",
    "patents": "How many active patents does the company hold?",
    "employees": "How many employees work in how many countries?",
    "backlog": "How large was the backlog at year end?",
    "tax": "What was the effective tax rate in fiscal 2024?",
    "committee": "Which committee reviews cybersecurity incidents?",
    "copper": "Which metal prices drive the cost of transformers?",
    "repurchases": "How much did share repurchases total?",
    "pension": "How well funded was the pension plan?",
}


def test_the_consistency_filter_drops_questions_that_do_not_find_their_chunk(tmp_path, minilm_path):
    docs = _one_passage_per_file(tmp_path)

    def answers(request):
        if _topic(request) in ("tax", "copper"):
            return completion("What is the capital city of Australia?")  # unrelated to its passage
        return completion(SPECIFIC[_topic(request)])

    out = tmp_path / "pairs.jsonl"
    # the grounding filter is off: it would drop "Australia" (not in the passage) before this filter sees it
    cfg = resolve_config(cli={"docs": str(docs), "llm_model": "m", "model": str(minilm_path),
                              "consistency_top_k": 1, "grounding_filter": False}, environ={})  # fmt: skip
    with FakeChatServer(answers) as server:
        cfg = dataclasses.replace(cfg, llm_base_url=server.url)
        summary = synthesize(cfg, [str(docs)], out, echo=lambda m: None)
    dropped = summary["questions"]["dropped"]
    # the second unrelated question is a duplicate of the first; the first is inconsistent
    assert dropped["duplicate"] == 1 and dropped["inconsistent"] == 1
    assert summary["questions"]["kept"] == 10


# --- faults ---------------------------------------------------------------------------------------
def _fails(capsys, code, *needles):
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return out + err


def test_a_wrong_key_is_named_and_never_shown(tmp_path, tiny_model_path, capsys, monkeypatch):
    secret = "sk-test-very-secret-4242"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    docs = _one_passage_per_file(tmp_path)
    with FakeChatServer(lambda r: error(401, f"Incorrect API key provided: {secret}")) as server:
        code = main(_synth_args(docs, tmp_path / "p.jsonl", server.url, tiny_model_path))
        assert server.headers[0]["authorization"] == f"Bearer {secret}"  # the key did reach the server
    text = _fails(capsys, code, "refused the key", "OPENAI_API_KEY", "--llm-api-key-env")
    assert secret not in text


def test_a_key_flag_does_not_exist(tmp_path, capsys):
    code = main(["synthesize", "--docs", str(tmp_path), "--llm-api-key", "sk-x"])
    assert code == 2 and "No such option" in capsys.readouterr().err


def test_unknown_model_and_endpoint_down(tmp_path, tiny_model_path, capsys):
    docs = _one_passage_per_file(tmp_path)
    with FakeChatServer(lambda r: error(404, "model 'm' not found")) as server:
        code = main(_synth_args(docs, tmp_path / "p.jsonl", server.url, tiny_model_path))
    _fails(capsys, code, "does not know the model", "--llm-model")
    from llm_servers import free_port

    code = main(_synth_args(docs, tmp_path / "p.jsonl", f"http://127.0.0.1:{free_port()}/v1", tiny_model_path))
    _fails(capsys, code, "Cannot reach the LLM endpoint", "start the server or fix --llm-base-url")


def test_rate_limits_and_server_errors_are_retried(tmp_path, tiny_model_path, capsys):
    docs = _one_passage_per_file(tmp_path)
    failures = {"n": 0}

    def flaky(request):
        failures["n"] += 1
        if failures["n"] % 3 == 1:
            return error(429, "slow down")
        if failures["n"] % 3 == 2:
            return error(503, "overloaded")
        return good_answers(request)

    with FakeChatServer(flaky) as server:
        code = main(_synth_args(docs, tmp_path / "p.jsonl", server.url, tiny_model_path, "--llm-max-retries", 3,
                                "--llm-concurrency", 1, "--consistency-top-k", 0))  # fmt: skip
        assert code == 0, capsys.readouterr()
        assert len(server.requests) == 36  # every chunk: 429, 503, then the answer
    with FakeChatServer(lambda r: error(429, "quota")) as server:
        code = main(_synth_args(docs, tmp_path / "q.jsonl", server.url, tiny_model_path))
    _fails(capsys, code, "kept rate-limiting", "--llm-concurrency")


def test_a_stalled_server_times_out_and_answers_so_far_are_kept(tmp_path, tiny_model_path, capsys):
    docs = _one_passage_per_file(tmp_path)
    out = tmp_path / "p.jsonl"

    def stall_after_three(request):
        return good_answers(request) if len(server.requests) <= 3 else None

    server = FakeChatServer(stall_after_three, stall_seconds=3)
    try:
        code = main(_synth_args(docs, out, server.url, tiny_model_path, "--llm-timeout", 0.5, "--llm-max-retries", 0,
                                "--llm-concurrency", 1))  # fmt: skip
    finally:
        server.stop()
    _fails(capsys, code, "Cannot reach the LLM endpoint", "3 answers are kept", "Rerun the same command")
    assert len(side_files(out)["answers"].read_text().splitlines()) == 3


def test_a_rejected_request_concerns_its_chunk_only(tmp_path, tiny_model_path, capsys):
    docs = _one_passage_per_file(tmp_path)

    def too_long(request):
        if _topic(request) == "pension":
            return error(400, "this model's maximum context length is 2048 tokens")
        return good_answers(request)

    out = tmp_path / "p.jsonl"
    with FakeChatServer(too_long) as server:
        assert main(_synth_args(docs, out, server.url, tiny_model_path, "--consistency-top-k", 0)) == 0
    assert json.loads(side_files(out)["summary"].read_text())["questions"]["dropped"]["request_failed"] == 1
    assert "1 failed" in capsys.readouterr().out


def test_junk_answers_leave_too_few_pairs_a_clear_error_and_everything_kept(tmp_path, tiny_model_path, capsys):
    docs = _one_passage_per_file(tmp_path)
    out = tmp_path / "p.jsonl"

    def junk(request):
        return completion("" if _topic(request) == "plant" else "I am a helpful assistant.")

    with FakeChatServer(junk) as server:
        code = main(_synth_args(docs, out, server.url, tiny_model_path))
    _fails(capsys, code, "Only 0 of 12 generated questions", "not_a_question 11, empty_answer 1", "--consistency-top-k")
    assert len(side_files(out)["answers"].read_text().splitlines()) == 12
    assert side_files(out)["dropped"].is_file() and side_files(out)["summary"].is_file()


def test_no_documents(tmp_path, tiny_model_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"\0")
    code = main(_synth_args(tmp_path / "d", tmp_path / "p.jsonl", "http://127.0.0.1:9/v1", tiny_model_path))
    _fails(capsys, code, "No readable documents", "1 files (1 skipped")
    code = main(_synth_args(tmp_path / "nope", tmp_path / "p.jsonl", "http://127.0.0.1:9/v1", tiny_model_path))
    _fails(capsys, code, "does not exist")
    code = main(["synthesize", "--out", str(tmp_path / "p.jsonl")])
    _fails(capsys, code, "needs documents", "--docs")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--questions-per-chunk", "0"], "questions_per_chunk is 0"),
        (["--llm-concurrency", "0"], "llm_concurrency is 0"),
        (["--chunk-tokens", "4"], "chunk_tokens is 4"),
        (["--chunk-tokens", "64", "--chunk-overlap", "64"], "chunk_overlap (64) must be below"),
        (["--llm-api-key-env", "sk-abc/def"], "NAME of an environment variable"),
        (["--data", "pairs.csv"], "Both --docs"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, capsys, args, needle):
    code = main(["synthesize", "--docs", str(tmp_path), "--llm-model", "m", *args])
    _fails(capsys, code, needle)


# --- against the real llama.cpp server ------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    gguf = require_llama()
    server = start_llama_server(gguf, tmp_path_factory.mktemp("llama") / "server.log")
    yield server
    server.stop()


@pytest.mark.slow
def test_real_llm_server_documents_to_pairs(llama_server, docs_dir, minilm_path, tmp_path, capsys):
    # every file kind (7 chunks), and 12 more short documents: enough questions that a small model's misses
    # still leave the 10 pairs a pairs file needs
    for i, p in enumerate(PASSAGES):
        (docs_dir / f"extra{i}.md").write_text(p + " " + PASSAGES[(i + 5) % 12])
    out = tmp_path / "pairs.jsonl"
    code = main(["synthesize", "--docs", str(docs_dir), "--out", str(out), "--llm-base-url", llama_server.url,
                 "--llm-model", llama_server.model, "--model", str(minilm_path), "--consistency-top-k", "3",
                 "--llm-concurrency", "2"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    summary = json.loads(side_files(out)["summary"].read_text())
    assert summary["chunks"]["count"] == 19  # one chunk per readable document (all are short)
    assert summary["requests"] == {"asked": 19, "cached": 0, "failed": 0}
    assert summary["tokens"]["in"] > 0 and summary["tokens"]["out"] > 0  # the server reports usage
    assert summary["questions"]["generated"] == 19
    assert {s["file"] for s in summary["documents"]["skipped"]} == {"empty.txt", "latin1.txt", "logo.png",
                                                                    "broken.pdf"}  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["questions"]["kept"] >= 10
    for r in rows:
        rest = r["passage"].replace("# Notes", "")
        for p in PASSAGES:
            rest = rest.replace(p, "")
        assert r["question"].endswith("?") and r["passage"].strip() and not rest.strip(), r
    assert "synthesize: skipped logo.png: unsupported file type" in text


@pytest.mark.slow
def test_real_llm_server_job_run_from_documents(llama_server, tmp_path, tiny_model_path, capsys):
    """`job run --docs`: synthesize (a staged step of the run), then prepare, baseline, train, evaluate;
    the same command again skips every step."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "report.txt").write_text("\n\n".join(PASSAGES * 2))  # two copies: the repeats are dropped
    for i, p in enumerate(PASSAGES):
        (docs / f"extra{i}.md").write_text(p + " " + PASSAGES[(i + 5) % 12])
    run_dir = tmp_path / "run"
    args = ["run", "--docs", str(docs), "--run-dir", str(run_dir), "--llm-base-url", llama_server.url,
            "--llm-model", llama_server.model, "--model", str(tiny_model_path), "--consistency-top-k", "0",
            "--chunk-tokens", "40", "--epochs", "1", "--batch-size", "4", "--hard-negatives", "0",
            "--val-fraction", "0.2", "--test-fraction", "0.2"]  # fmt: skip
    code = main(args)
    text = capsys.readouterr().out
    assert code == 0, text
    assert (run_dir / "synth" / "pairs.jsonl").is_file()
    prepared = json.loads((run_dir / "data" / "prepare.json").read_text())
    assert prepared["source"].endswith("synth/pairs.jsonl")
    assert (run_dir / "report" / "metrics.json").is_file()
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "synthesize: already done" in again and "evaluate: already done" in again


def test_a_cloud_job_does_not_synthesize(tmp_path, capsys):
    code = main(["launch", "local", "--docs", str(tmp_path), "--llm-model", "m"])
    _fails(capsys, code, "does not synthesize", "job synthesize --docs")
