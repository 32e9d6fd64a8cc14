"""Security properties (issue #29), each checked end to end with real files, real processes and real HTTP:

1. no file outside the folders given to ``job synthesize --docs`` is read (links out, special files, /proc);
2. no secret (the API key from the environment, credentials inside ``--llm-base-url``, a key pasted where a
   variable name belongs) appears in any output: stdout, stderr, a file written, or a request's body;
3. nothing is written through a symbolic or hard link planted in a run directory (the lock file, the answer
   cache, JSON records).

The LLM server is the stand-in over real HTTP (tests/llm_servers.py): a secret must not reach any server's
prompt, and the stand-in records every request. Where a credential must reach the server (the key, as the
Authorization header), the test says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from llm_servers import FakeChatServer, completion, free_port
from test_synthesize import PASSAGES

from job.cli import main
from job.layout import run_lock, write_json
from job.synth import documents, llm

ROOT = Path(__file__).resolve().parents[1]
SECRET_ENV = "sk-proj-envsecret0123456789abcdef"
URL_PASSWORD = "urlpassw0rd-XYZ"
URL_KEY = "querykey-98765"
TEXTS = PASSAGES  # the synthesize tests' twelve passages, one document each


def _answer(request: dict):
    passage = request["messages"][-1]["content"].split("Passage:", 1)[-1].strip()
    return completion(f"What does the filing say about {' '.join(passage.split()[:4]).lower()}?")


def _docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    for i, t in enumerate(TEXTS):
        (d / f"{i:02d}.txt").write_text(t)
    return d


def _all_written(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


def _synth(docs, out, url, model, *extra):
    return ["synthesize", "--docs", str(docs), "--out", str(out), "--llm-base-url", url, "--llm-model", "m",
            "--model", str(model), "--llm-max-retries", "0", "--llm-timeout", "5", "--consistency-top-k", "0",
            *map(str, extra)]  # fmt: skip


# --- 1. no file outside the given folders --------------------------------------------------------------
def test_links_out_of_the_folder_and_special_files_are_listed_never_read(tmp_path, tiny_model_path, capsys,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ENV)
    outside = tmp_path / "outside.txt"
    outside.write_text(f"The vault code is {SECRET_ENV}.")
    docs = _docs(tmp_path)
    (docs / "env.txt").symlink_to("/proc/self/environ")
    (docs / "secret.txt").symlink_to(outside)
    (docs / "gone.txt").symlink_to(tmp_path / "missing.txt")
    (docs / "loop.txt").symlink_to(docs / "loop.txt")
    (docs / "up").symlink_to(tmp_path)
    (docs / "sub").mkdir()
    (docs / "sub-link").symlink_to(docs / "sub")
    os.mkfifo(docs / "pipe.txt")  # reading it would block forever
    (docs / "inner.txt").symlink_to(docs / "00.txt")  # a link that stays inside: read (its chunk is a repeat)
    out = tmp_path / "out" / "pairs.jsonl"
    with FakeChatServer(_answer) as server:
        code = main(_synth(docs, out, server.url, tiny_model_path))
        bodies = json.dumps(server.requests)
    text, err = capsys.readouterr()
    assert code == 0, err
    assert SECRET_ENV not in bodies and "vault" not in bodies and "AWS_SECRET" not in bodies
    written = _all_written(out.parent)
    assert SECRET_ENV not in written and "vault" not in written and SECRET_ENV not in text + err
    summary = json.loads((out.parent / "pairs.summary.json").read_text())
    skipped = {s["file"]: s["reason"] for s in summary["documents"]["skipped"]}
    assert "outside" in skipped["env.txt"] and "not read" in skipped["env.txt"]
    assert "outside" in skipped["secret.txt"]
    assert "broken symbolic link" in skipped["gone.txt"]
    assert "cannot be followed" in skipped["loop.txt"]
    assert "outside" in skipped["up"]
    assert "a folder: not followed" in skipped["sub-link"]
    assert "FIFO" in skipped["pipe.txt"]
    assert "inner.txt" not in skipped
    for name in ("env.txt", "secret.txt", "gone.txt", "loop.txt", "pipe.txt"):
        assert f"skipped {name}:" in text


def test_a_special_file_given_directly_is_not_read(tmp_path):
    read = documents.read_documents(["/proc/self/environ"])
    assert read.documents == [] and "special file system" in read.skipped[0][1]


def test_a_folder_nested_1200_deep_and_a_file_name_that_is_not_utf8(tmp_path):
    docs = tmp_path / "docs"
    deep = docs
    docs.mkdir()
    try:
        for _ in range(1200):  # one level at a time: os.makedirs itself recurses
            deep = deep / "d"
            deep.mkdir()
        (deep / "bottom.txt").write_text(TEXTS[0])
        raw = os.fsencode(docs) + b"/caf\xe9.txt"  # Latin-1 bytes: not UTF-8
        with open(raw, "w") as fh:
            fh.write(TEXTS[1])
        read = documents.read_documents([docs])
        labels = sorted(d.id for d in read.documents)
        assert labels[0] == "caf\ufffd.txt" and labels[1].endswith("d/d/bottom.txt") and labels[1].count("/") == 1200
        json.dumps(labels).encode()  # printable and storable
    finally:  # bottom-up: shutil.rmtree (pytest's clean-up of old temporary folders) recurses too
        (deep / "bottom.txt").unlink(missing_ok=True)
        while deep != docs:
            deep.rmdir()
            deep = deep.parent


def test_a_file_name_that_is_not_utf8_runs_to_the_end(tmp_path, tiny_model_path, capsys):
    docs = _docs(tmp_path)
    with open(os.fsencode(docs) + b"/r\xe9sum\xe9.txt", "w") as fh:
        fh.write("The auditor issued an unqualified opinion on the consolidated statements.")
    out = tmp_path / "pairs.jsonl"
    with FakeChatServer(_answer) as server:
        code = main(_synth(docs, out, server.url, tiny_model_path))
    assert code == 0, capsys.readouterr().err
    docs_seen = {json.loads(line)["document"] for line in out.read_text().splitlines()}
    assert "r\ufffdsum\ufffd.txt" in docs_seen


# --- 2. no secret in any output ------------------------------------------------------------------------
def test_credentials_in_the_endpoint_url_are_masked_everywhere(tmp_path, tiny_model_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_ENV)
    docs = _docs(tmp_path)
    out = tmp_path / "out" / "pairs.jsonl"
    with FakeChatServer(_answer) as server:
        host = server.url.split("://", 1)[1]
        url = f"http://alice:{URL_PASSWORD}@{host}?api-key={URL_KEY}"
        code = main(_synth(docs, out, url, tiny_model_path))
        bodies = json.dumps(server.requests)
        # the credentials reach the server in the Authorization header (httpx sends the URL's user-info as Basic
        # auth): that is their purpose, and the only place they go
        assert server.headers[0]["authorization"].startswith("Basic ")
    text, err = capsys.readouterr()
    assert code == 0, err
    for secret in (URL_PASSWORD, URL_KEY, SECRET_ENV):
        assert secret not in text + err, secret
        assert secret not in _all_written(out.parent), secret
        assert secret not in bodies, secret
    summary = json.loads((out.parent / "pairs.summary.json").read_text())
    assert summary["generator"]["base_url"] == f"http://***@{host}?api-key=***"
    # the same URL pointing at nothing: the error names it, masked
    dead = f"http://alice:{URL_PASSWORD}@127.0.0.1:{free_port()}/v1?api-key={URL_KEY}"
    code = main(_synth(docs, tmp_path / "p2.jsonl", dead, tiny_model_path))
    text, err = capsys.readouterr()
    assert code == 2 and "Cannot reach the LLM endpoint" in err and "127.0.0.1" in err
    assert URL_PASSWORD not in text + err and URL_KEY not in text + err


def test_job_config_dump_masks_the_url(tmp_path, capsys):
    code = main(["config", "--llm-base-url", f"https://bob:{URL_PASSWORD}@llm.example/v1?token={URL_KEY}"])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert URL_PASSWORD not in text + err and URL_KEY not in text + err and "llm.example" in text


def test_a_key_given_as_the_variable_name_is_refused_without_echoing_it(tmp_path, capsys):
    key = "sk-proj-AbCdEf0123456789GhIjKlMnOpQrStUv"
    code = main(["synthesize", "--docs", str(tmp_path), "--llm-model", "m", "--llm-api-key-env", key])
    text, err = capsys.readouterr()
    assert code == 2 and "NAME of an environment variable" in err and "looks like an API key" in err
    assert key not in text + err and key[:12] not in text + err


@pytest.mark.parametrize("url", ["not-a-url", "ftp://127.0.0.1/v1", "http:///v1", "http://127.0.0.1:port/v1"])
def test_an_endpoint_that_is_not_an_http_url_is_named_up_front(tmp_path, capsys, url):
    code = main(["synthesize", "--docs", str(tmp_path), "--llm-model", "m", "--llm-base-url", url])
    _, err = capsys.readouterr()
    assert code == 2 and "--llm-base-url" in err and "http://127.0.0.1:8080/v1" in err, err


# --- 3. no write through a link in a run directory ----------------------------------------------------------
def test_a_lock_file_that_is_a_link_is_never_written_through(tmp_path):
    victim = tmp_path / "other-run-model.safetensors"
    victim.write_bytes(b"weights" * 100)
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(Exception, match="symbolic link") as info, run_lock(run, "job run"):
        pass
    assert getattr(info.value, "exit_code", None) == 2
    assert victim.read_bytes() == b"weights" * 100
    (run / ".lock").unlink()
    os.link(victim, run / ".lock")  # a hard link: the same file under another name
    with pytest.raises(Exception, match="hard link"), run_lock(run, "job run"):
        pass
    assert victim.read_bytes() == b"weights" * 100


def test_a_lock_link_stops_the_cli_with_exit_2(tmp_path, tiny_model_path, pairs_file, capsys):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    code = main(["prepare", "--run-dir", str(run), "--data", str(pairs_file), "--model", str(tiny_model_path)])
    _, err = capsys.readouterr()
    assert code == 2 and ".lock is a symbolic link" in err and "rm " in err
    assert victim.read_bytes() == b"keep me"


def test_json_records_replace_a_planted_link_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    target = tmp_path / "run" / "report" / "metrics.json"
    target.parent.mkdir(parents=True)
    target.symlink_to(victim)
    write_json(target, {"ok": 1})
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_an_answer_cache_that_is_a_link_or_a_folder_is_refused(tmp_path, tiny_model_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    docs = _docs(tmp_path)
    out = tmp_path / "pairs.jsonl"
    (tmp_path / "pairs.answers.jsonl").symlink_to(victim)
    code = main(_synth(docs, out, "http://127.0.0.1:9/v1", tiny_model_path))
    _, err = capsys.readouterr()
    assert code == 2 and "is a symbolic link" in err and victim.read_text() == "keep"
    (tmp_path / "pairs.answers.jsonl").unlink()
    (tmp_path / "pairs.answers.jsonl").mkdir()
    code = main(_synth(docs, out, "http://127.0.0.1:9/v1", tiny_model_path))
    _, err = capsys.readouterr()
    assert code == 2 and "is a folder" in err and "--out" in err


# --- the lock guards the directory, not a file name ------------------------------------------------------
def _hold(run: Path, shared: bool = False) -> subprocess.Popen:
    code = (f"import sys\nfrom job.layout import run_lock\nwith run_lock({str(run)!r}, 'rag-eval serve', "
            f"shared={shared}):\n    print('held', flush=True)\n    sys.stdin.read()\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_deleting_the_lock_file_does_not_let_a_second_writer_in(tmp_path):
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        (run / ".lock").unlink()
        with pytest.raises(Exception, match=f"in use by .*pid {holder.pid}"), run_lock(run, "job run"):
            pass
    finally:
        holder.communicate("", timeout=60)
    with run_lock(run, "job run"):  # released with the holder
        pass


def test_a_refusal_names_the_live_reader_not_the_last_finished_writer(tmp_path):
    run = tmp_path / "run"
    with run_lock(run, "job run"):  # a writer that finished long ago left its record
        pass
    assert f'"pid": {os.getpid()}' in (run / ".lock").read_text()
    reader = _hold(run, shared=True)
    try:
        with pytest.raises(Exception) as info, run_lock(run, "rag-eval index"):
            pass
    finally:
        reader.communicate("", timeout=60)
    message = str(info.value)
    assert f"pid {reader.pid}" in message and f"pid {os.getpid()}" not in message


# --- the answer cache survives damage -------------------------------------------------------------------
def _line(key: str, answer) -> str:
    return json.dumps({"key": key, "chunk_id": "c1", "answer": answer, "tokens_in": 5, "tokens_out": 3}) + "\n"


def test_one_damaged_line_in_the_middle_costs_only_itself(tmp_path):
    path = tmp_path / "a.answers.jsonl"
    path.write_text(_line("k1", "What?") + '{"key": "k2", "ans\n' + _line("k3", "Why?") + "[1, 2]\n"
                    + '{"key": 7}\n' + '{"key": "k4", "answer": 5}\n' + "not json\n" + _line("k5", "How?"))  # fmt: skip
    cache = llm.AnswerCache(path)
    assert set(cache.records) == {"k1", "k3", "k5"}
    assert cache.damaged == [2, 4, 5, 6, 7] and cache.torn == 0
    before = path.read_text()
    cache.put({"key": "k6", "answer": "Who?"})
    assert path.read_text().startswith(before)  # nothing valid was cut off
    assert set(llm.AnswerCache(path).records) == {"k1", "k3", "k5", "k6"}


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "a.answers.jsonl"
    path.write_text(_line("k1", "What?") + _line("k2", "Why?").rstrip("\n"))
    cache = llm.AnswerCache(path)
    assert set(cache.records) == {"k1", "k2"} and cache.torn == 0
    cache.put({"key": "k3", "answer": "How?"})
    assert [json.loads(x)["key"] for x in path.read_text().split("\n") if x] == ["k1", "k2", "k3"]


def test_a_damaged_cache_line_is_asked_again_and_nothing_else(tmp_path, tiny_model_path, capsys):
    docs = _docs(tmp_path)
    out = tmp_path / "pairs.jsonl"
    with FakeChatServer(_answer) as server:
        assert main(_synth(docs, out, server.url, tiny_model_path)) == 0
        answers = out.with_name("pairs.answers.jsonl")
        lines = answers.read_text().split("\n")
        lines[5] = lines[5][:20]  # one line in the middle damaged
        answers.write_text("\n".join(lines))
        before = len(server.requests)
        capsys.readouterr()
        assert main(_synth(docs, out, server.url, tiny_model_path)) == 0
        assert len(server.requests) - before == 1
    assert "1 damaged line(s) (line 6)" in capsys.readouterr().out


def test_a_junk_reply_is_not_final_and_is_asked_again_once_the_server_recovers(tmp_path, tiny_model_path, capsys):
    docs = _docs(tmp_path)
    out = tmp_path / "pairs.jsonl"
    with FakeChatServer(lambda r: (200, {"object": "error", "detail": "upstream overloaded"})) as server:
        code = main(_synth(docs, out, server.url, tiny_model_path))
    _, err = capsys.readouterr()
    assert code == 2 and "asked again on the next run" in err
    with FakeChatServer(_answer) as server:
        code = main(_synth(docs, out, server.url, tiny_model_path))
        assert len(server.requests) == 12  # every junk answer asked again
    assert code == 0, capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 12


def test_absurd_token_counts_are_not_billed(tmp_path, tiny_model_path, capsys):
    docs = _docs(tmp_path)
    out = tmp_path / "pairs.jsonl"

    def absurd(request):
        status, body = _answer(request)
        body["usage"] = {"prompt_tokens": 10**12, "completion_tokens": 10**12, "total_tokens": 2 * 10**12}
        return status, body

    with FakeChatServer(absurd) as server:
        code = main(_synth(docs, out, server.url, tiny_model_path, "--llm-price-in", 0.15, "--llm-price-out", 0.6))
    text, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.with_name("pairs.summary.json").read_text())
    assert summary["cost"] == 0 and summary["tokens"]["answers_with_implausible_usage"] == 12
    assert "cost $0.0000" in text
