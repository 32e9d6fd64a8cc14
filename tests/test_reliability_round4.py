"""Reliability, round 4 (issue #29, an independent probe of the landed code): a damaged merge scores file, an honest
merge choice without validation, pairs files that used to slip through or crash the loader (a repeated header, a
column named twice, problems counted per row, nesting too deep, lone surrogates, a column named like the loader's own
field, short synthesized chunks), hostile config files, and SageMaker limits checked before any upload. Real files,
the real CLI; nothing is mocked."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOPICS, make_pairs
from test_reliability import _fails

from job.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _prepare(tmp_path, model, data, *extra):
    return main([str(a) for a in ("prepare", "--run-dir", tmp_path / "run", "--data", data, "--model", model, *extra)])


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _trained_pairs(run_dir: Path) -> list[dict]:
    return [json.loads(line) for s in ("train", "validation", "test") for line in
            (run_dir / "data" / f"{s}.jsonl").read_text().splitlines()]  # fmt: skip


# --- merge (--merge-base auto) ----------------------------------------------------------------------
def _merge_args(run_dir, model, data, *extra):
    return [str(a) for a in ("run", "--run-dir", run_dir, "--model", model, "--data", data, "--max-steps", "3",
                             "--batch-size", "8", "--matryoshka-dims", "32,16", "--eval-steps", "3",
                             "--hard-negatives", "0", "--merge-base", "auto", *extra)]  # fmt: skip


def test_a_damaged_merge_scores_file_is_said_and_scored_again(tmp_path, tiny_model_path, pairs_file, capsys, caplog):
    """M04/M05: a cut-short or wrong-shape checkpoints/merge_scores.json used to fail every rerun (exit 1)."""
    from job.train import merge

    run_dir = tmp_path / "run"
    args = _merge_args(run_dir, tiny_model_path, pairs_file, "--merge-alphas", "1,0.5")
    assert main(args) == 0, capsys.readouterr().err
    first = json.loads((run_dir / "model" / "training.json").read_text())["merge_base"]
    scores = run_dir / "checkpoints" / merge.SCORES_FILE
    good = scores.read_text()
    key = json.loads(good)["key"]
    damages = {
        "cut short": good[: len(good) // 2],
        "a list": "[1, 2, 3]",
        "alphas a list": json.dumps({"key": key, "alphas": []}),
        "entries of another shape": json.dumps({"key": key, "alphas": {"1.0000": "x", "0.5000": {"alpha": 0.5}}}),
    }
    for what, text in damages.items():
        scores.write_text(text)
        shutil.rmtree(run_dir / "model")  # the train step runs again: resumes at its last checkpoint, merges again
        capsys.readouterr()
        caplog.clear()
        code = main(args)
        assert code == 0, (what, capsys.readouterr().err)
        assert "damaged" in caplog.text and str(scores) in caplog.text and "scoring" in caplog.text, what
        again = json.loads((run_dir / "model" / "training.json").read_text())["merge_base"]
        assert again["chosen"] == first["chosen"] and again["alphas"] == first["alphas"], what
        assert json.loads(scores.read_text())["key"] == key  # written whole again


def test_without_validation_the_merge_choice_does_not_claim_validation(tmp_path, tiny_model_path, pairs_file, capsys):
    """M06: with a guard set and --val-fraction 0 no alpha has validation scores; the record said "best validation
    NDCG@10" all the same."""
    from test_merge import guard_folder

    guard = guard_folder(tmp_path / "guard")
    run_dir = tmp_path / "run"
    args = _merge_args(run_dir, tiny_model_path, pairs_file, "--merge-alphas", "1,0.6,0.3", "--val-fraction", "0",
                       "--guard-data", guard, "--guard-max-drop", "100")  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    record = json.loads((run_dir / "model" / "training.json").read_text())["merge_base"]
    assert all("validation" not in r for r in record["alphas"])
    assert "validation NDCG" not in record["why"] and "no validation split" in record["why"], record["why"]
    assert record["chosen"] == 1.0  # every alpha within a 100-point guard: the most fine-tuning kept
    report = (run_dir / "report" / "report.md").read_text()
    assert "best validation" not in report and "Kept alpha 1: no validation split" in report


# --- pairs files ----------------------------------------------------------------------------------------
def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_a_repeated_header_row_is_named_and_never_a_pair(tmp_path, tiny_model_path, capsys):
    """D05: a header row repeated mid-file (two CSV files joined with cat) became the pair ('question', 'context')."""
    rows = [[r["question"], r["context"]] for r in make_pairs(5)]
    data = _csv(tmp_path / "pairs.csv", ["question", "context"], rows[:20] + [["question", "context"]] + rows[20:])
    _fails(capsys, _prepare(tmp_path, tiny_model_path, data), "1 row has the column names as its values",
           "header repeated", "row 21", "--drop-invalid")  # fmt: skip
    assert _prepare(tmp_path, tiny_model_path, data, "--drop-invalid") == 0
    assert "60 pairs (0 duplicates, 1 invalid dropped)" in capsys.readouterr().out
    assert not [p for p in _trained_pairs(tmp_path / "run") if p["anchor"] == "question"]


def test_a_column_named_twice_is_refused_naming_it(tmp_path, tiny_model_path, capsys):
    """D06: `question,question,context` kept one of the two 'question' columns silently; the result was called
    "columns look swapped", and swapping trained on the wrong column."""
    rows = [[r["question"], r["context"], r["context"]] for r in make_pairs(5)]
    data = _csv(tmp_path / "pairs.csv", ["question", "question", "context"], rows)
    err = _fails(capsys, _prepare(tmp_path, tiny_model_path, data), "names a column more than once",
                 "'question'", "give every column its own name")  # fmt: skip
    assert "swapped" not in err
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("query\tpassage\tpassage\n" + "".join(f"{q}\t{p}\t{p}\n" for q, p, _ in rows))
    _fails(capsys, _prepare(tmp_path, tiny_model_path, tsv), "more than once", "'passage'")
    trailing = tmp_path / "trailing.csv"  # unnamed columns (trailing commas of a spreadsheet) are not duplicates
    _csv(trailing, ["question", "context", "", ""], [[q, p, "", ""] for q, p, _ in rows])
    assert _prepare(tmp_path, tiny_model_path, trailing) == 0, capsys.readouterr().err


def test_a_parquet_column_named_twice_is_refused(tmp_path, tiny_model_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = make_pairs(5)
    table = pa.Table.from_arrays(
        [pa.array([r["question"] for r in rows]), pa.array([r["context"] for r in rows]),
         pa.array([r["context"] for r in rows])], names=["question", "context", "context"],
    )  # fmt: skip
    pq.write_table(table, tmp_path / "pairs.parquet")
    _fails(capsys, _prepare(tmp_path, tiny_model_path, tmp_path / "pairs.parquet"), "more than once", "'context'")


def test_drop_invalid_counts_rows_not_problems(tmp_path, tiny_model_path, capsys):
    """D11: a row with an empty question and an empty passage was counted as two dropped rows."""
    rows = make_pairs(5) + [{"question": "", "context": ""}, {"question": "Only a question?", "context": " "}]
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    assert _prepare(tmp_path, tiny_model_path, data, "--drop-invalid") == 0, capsys.readouterr().err
    assert "62 rows -> 60 pairs (0 duplicates, 2 invalid dropped)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "data" / "prepare.json").read_text())
    assert summary["rows_dropped_invalid"] == {  # the per-reason counts stay
        "an empty or whitespace-only 'question'": 1,
        "an empty or whitespace-only 'context'": 2,
    }


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_nested_too_deeply_is_named_not_a_recursion_error(tmp_path, tiny_model_path, capsys, suffix):
    """D18: 100,000 nested brackets gave a RecursionError (exit 1)."""
    deep = "[" * 100_000 + "]" * 100_000
    rows = [json.dumps(r) for r in make_pairs(5)]
    data = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        _jsonl(data, rows[:2] + [deep] + rows[2:])
        _fails(capsys, _prepare(tmp_path, tiny_model_path, data), f"{data} line 3 nests JSON", "too deeply", "Fix:")
    else:
        data.write_text(deep)
        _fails(capsys, _prepare(tmp_path, tiny_model_path, data), f"{data} nests JSON", "too deeply", "Fix:")
        data.write_text('{"pairs": ' + "[" * 100_000 + "]" * 100_000 + "}")
        _fails(capsys, _prepare(tmp_path, tiny_model_path, data), f"{data} nests JSON", "too deeply")


def test_a_lone_surrogate_escape_names_the_line_or_is_dropped(tmp_path, tiny_model_path, capsys):
    """D19: `"\\ud800 x"` is valid JSON but not text; it gave a TypeError (exit 1) naming no line."""
    rows = [json.dumps(r) for r in make_pairs(5)]
    bad = '{"question": "\\ud800 what about it?", "context": "Revenue grew 6 percent."}'
    data = _jsonl(tmp_path / "pairs.jsonl", rows[:3] + [bad] + rows[3:])
    _fails(capsys, _prepare(tmp_path, tiny_model_path, data), "lone UTF-16 surrogate", "line 4", "--drop-invalid")
    assert _prepare(tmp_path, tiny_model_path, data, "--drop-invalid") == 0, capsys.readouterr().err
    assert "1 invalid dropped" in capsys.readouterr().out
    assert len(_trained_pairs(tmp_path / "run")) == 60


def test_a_user_column_named_like_the_loaders_line_field_is_refused(tmp_path, tiny_model_path, capsys):
    """D31: a JSON Lines field `__line__` was overwritten by the loader's line number (and a CSV column of that name
    was taken for it)."""
    rows = [{**r, "__line__": f"mine {i}"} for i, r in enumerate(make_pairs(5))]
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    _fails(capsys, _prepare(tmp_path, tiny_model_path, data), f"{data} line 1 has a column named '__line__'",
           "rename that column")  # fmt: skip
    table = _csv(tmp_path / "pairs.csv", ["__line__", "question", "context"],
                 [["7", r["question"], r["context"]] for r in make_pairs(5)])  # fmt: skip
    _fails(capsys, _prepare(tmp_path, tiny_model_path, table), "has a column named '__line__'", "rename that column")


def _synthesized(path: Path, swap: bool = False) -> Path:
    """What `job synthesize` writes (question, passage, chunk_id, document, chunk_index), with the short passages of
    small chunks (--chunk-tokens 16) and its questions: full sentences ending in '?'."""
    forms = ["What does the annual report say about the company's {t} figures this year?",
             "How did the {t} numbers change compared with the previous fiscal year?",
             "Which details about {t} does the filing disclose to shareholders?",
             "Where in the annual report is the company's {t} position discussed?",
             "Why does management single out {t} in its discussion of the results?"]  # fmt: skip
    rows = []
    for n, (topic, passage) in enumerate(TOPICS):
        chunk = " ".join(passage.split()[:5])  # a 16-token chunk: a few words
        for form in forms:
            rows.append({"question": form.format(t=topic), "passage": chunk, "chunk_id": f"report.md#{n}",
                         "document": "report.md", "chunk_index": n})  # fmt: skip
    return _jsonl(path, rows)


def test_synthesized_pairs_of_short_chunks_are_not_called_swapped(tmp_path, tiny_model_path, capsys):
    """K06: `job run --docs DIR --chunk-tokens 16` refused its own pairs: its questions are longer than its chunks."""
    data = _synthesized(tmp_path / "pairs.jsonl")
    assert _prepare(tmp_path, tiny_model_path, data) == 0, capsys.readouterr().err
    assert "60 rows -> 60 pairs" in capsys.readouterr().out
    # and a file whose question column does hold passages is still refused
    swapped = tmp_path / "swapped.jsonl"
    _jsonl(swapped, [{"question": r["context"], "context": r["question"].rstrip("?")[:10]} for r in make_pairs(5)])
    _fails(capsys, _prepare(tmp_path, tiny_model_path, swapped), "columns look swapped")


# --- config files (--config) ----------------------------------------------------------------------------
def _job_cli(*args, timeout=120):
    """`python -m job ...` with 4 GiB of address space at most: a config that expands without bound fails there
    (exit 1, MemoryError) or times out instead of taking the machine down."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    try:
        return subprocess.run([sys.executable, "-m", "job", *map(str, args)], env=env, text=True, capture_output=True,
                              timeout=timeout, preexec_fn=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"`job {' '.join(map(str, args))}` still running after {timeout} s")


BILLION_LAUGHS = """\
model:
  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  - &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  - &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  - &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  - &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  - &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  - &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  - &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  - &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("bomb.yaml", BILLION_LAUGHS, ("through its YAML aliases", "more than 100,000 values")),
        ("self.yaml", "model: &m [*m]\n", ("a value that contains itself",)),
        ("huge.yaml", "epochs: 1\n" + "# padding\n" * 120_000, ("1.1 MiB", "at most 1 MiB")),
        ("deep.yaml", "model: " + "[" * 5000 + "]" * 5000 + "\n", ("nests YAML lists or mappings too deeply",)),
    ],
)
def test_a_hostile_config_file_is_refused_quickly(tmp_path, name, content, needles):
    """Y02: a YAML alias bomb ("billion laughs") hung `job` (and ate memory without end)."""
    path = tmp_path / name
    path.write_text(content)
    done = _job_cli("config", "--config", path, timeout=60)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr and f"Config file {path}" in done.stderr and "Fix:" in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_a_binary_config_file_is_named(tmp_path, capsys):
    """Y05: a binary file given to --config gave a UnicodeDecodeError (exit 1)."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 8)
    _fails(capsys, main(["config", "--config", str(path)]), f"Config file {path} is not UTF-8 text",
           "pass a UTF-8 YAML file")  # fmt: skip


def test_a_config_with_a_few_aliases_still_loads(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text('\ufeffquery_prompt: &p "query: "\npassage_prompt: *p\nepochs: 2\n')
    assert main(["config", "--config", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "passage_prompt: 'query: '" in out and "epochs: 2" in out


# --- SageMaker limits, before any upload --------------------------------------------------------------------
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/rag-embed-finetune:1.0"


@pytest.fixture()
def no_sagemaker(s3_env, tmp_path, monkeypatch):
    """S3 is the real SeaweedFS server; SageMaker is a closed loopback port: any call to it fails."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    sdk = tmp_path / "sagemaker-config.yaml"
    sdk.write_text("")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(sdk))
    monkeypatch.setenv("SAGEMAKER_ADMIN_CONFIG_OVERRIDE", str(sdk))
    for var in ("SAGEMAKER_ROLE", "SAGEMAKER_BUCKET", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    return s3_env


def _launch(bucket, data, *extra):
    from infra.sagemaker import cli as launch_cli

    return launch_cli.main(["sagemaker", "--bucket", bucket, "--image", IMAGE, "--data", str(data), "--no-wait",
                            "--role", ROLE, "--region", "us-east-1", *extra])  # fmt: skip


def _bucket_keys(s3, bucket):
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize("count", ["99999999999", "101"])
def test_an_instance_count_beyond_sagemakers_limit_is_refused_first(no_sagemaker, s3_bucket, pairs_file, capsys,
                                                                    count):  # fmt: skip
    """IC02: --instance-count 99999999999 was accepted, and the fix offered a batch size that is a multiple of it."""
    err = _fails(capsys, _launch(s3_bucket, pairs_file, "--instance-count", count), f"--instance-count {count}",
                 "at most 100 instances", "from 1 to 100")  # fmt: skip
    assert "batch" not in err
    assert _bucket_keys(no_sagemaker, s3_bucket) == []


@pytest.mark.parametrize("size", ["-1", "0", "16385", "99999999"])
def test_a_volume_size_sagemaker_refuses_is_refused_before_any_upload(no_sagemaker, s3_bucket, pairs_file, capsys,
                                                                      size):  # fmt: skip
    """IC05: --volume-size -1 (or 0, or beyond 16384 GB) was sent to SageMaker after the data was uploaded."""
    _fails(capsys, _launch(s3_bucket, pairs_file, "--volume-size", size), f"--volume-size {size}",
           "1 to 16384 GB", "Fix: pass --volume-size")  # fmt: skip
    assert _bucket_keys(no_sagemaker, s3_bucket) == []
    # the same settings with --dry-run (no S3, no SageMaker) are refused the same way
    _fails(capsys, _launch("no-such-bucket", pairs_file, "--volume-size", size, "--dry-run"), "1 to 16384 GB")
