"""Data preparation (job/data/prepare.py): loading, column mapping, validation, de-duplication, splitting,
IR sets, leakage, the BEIR format and truncation counts. No model, no network; exact values."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from job.data import prepare as D
from job.data.prepare import IRData, Pair, Records
from job.errors import JobError

FIX_EMPTY = (
    "Fix: fill in or remove those rows, or pass --drop-invalid to drop them (they are then counted in the report)."
)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Any accidental fall-through to the Hugging Face Hub fails loudly instead of reaching the network."""

    def _fail(dataset_id, split):
        raise AssertionError(f"unexpected Hub load of {dataset_id!r}")

    monkeypatch.setattr(D, "_load_hub", _fail)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(JobError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --- load_records: formats ------------------------------------------------------------------------
def test_load_csv_rows_source_and_row_labels(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('question,context\nWhat is X?,"X is a thing, really."\nWho is Y?,Y is a person.\n')
    rec = D.load_records(str(path))
    assert rec.rows == [
        {"question": "What is X?", "context": "X is a thing, really."},
        {"question": "Who is Y?", "context": "Y is a person."},
    ]
    assert rec.source == str(path)
    assert rec.row_label == "row"
    assert rec.where(0) == "row 1"
    assert rec.where(1) == "row 2"


def test_load_csv_strips_utf8_bom_from_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffquestion,context\nq,p\n".encode("utf-8"))
    assert D.load_records(str(path)).rows == [{"question": "q", "context": "p"}]


def test_load_csv_uppercase_extension(tmp_path):
    path = tmp_path / "PAIRS.CSV"
    path.write_text("question,context\nq,p\n")
    assert D.load_records(str(path)).rows == [{"question": "q", "context": "p"}]


def test_load_tsv(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("query\tpassage\nWhat, exactly?\tA passage, with commas.\n")
    rec = D.load_records(str(path))
    assert rec.rows == [{"query": "What, exactly?", "passage": "A passage, with commas."}]
    assert rec.row_label == "row"


def test_load_json_list_of_objects(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"question": "q1", "context": "p1"}, {"question": "q2", "context": "p2"}]))
    rec = D.load_records(str(path))
    assert rec.rows == [{"question": "q1", "context": "p1"}, {"question": "q2", "context": "p2"}]
    assert rec.row_label == "row"
    assert rec.source == str(path)


def test_load_json_single_key_wrapper(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"data": [{"question": "q1", "context": "p1"}]}))
    rec = D.load_records(str(path))
    assert rec.rows == [{"question": "q1", "context": "p1"}]
    assert rec.row_label == "row"


def test_load_json_not_a_list_of_objects(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(5))
    msg = _error(D.load_records, str(path))
    assert msg.startswith(f"{path} must hold a list of objects (one per pair).")


def test_load_json_list_with_a_non_object(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"question": "q", "context": "p"}, "oops"]))
    assert _error(D.load_records, str(path)).startswith(f"{path} must hold a list of objects")


def test_load_json_file_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('{"question": "q1", "context": "p1"}\n{"question": "q2", "context": "p2"}\n')
    rec = D.load_records(str(path))
    assert rec.row_label == "line"
    assert rec.rows == [
        {"question": "q1", "context": "p1", "__line__": 1},
        {"question": "q2", "context": "p2", "__line__": 2},
    ]


def test_load_jsonl_labels_rows_by_file_line_and_skips_blank_lines(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('\n{"question": "q1", "context": "p1"}\n   \n\n{"question": "q2", "context": "p2"}\n')
    rec = D.load_records(str(path))
    assert rec.row_label == "line"
    assert rec.rows == [
        {"question": "q1", "context": "p1", "__line__": 2},
        {"question": "q2", "context": "p2", "__line__": 5},
    ]


def test_load_ndjson_suffix(tmp_path):
    path = tmp_path / "pairs.ndjson"
    path.write_text('{"q": "a", "text": "b"}\n')
    assert D.load_records(str(path)).rows == [{"q": "a", "text": "b", "__line__": 1}]


def test_load_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": ["q1", "q2"], "positive": ["p1", None]}), path)
    rec = D.load_records(str(path))
    assert rec.rows == [{"anchor": "q1", "positive": "p1"}, {"anchor": "q2", "positive": None}]
    assert rec.row_label == "row"
    assert rec.source == str(path)


def test_load_embedded_default():
    if not D.embedded_data_path().is_file():
        pytest.skip(f"embedded data {D.embedded_data_path()} is not built yet")
    rec = D.load_records("embedded")
    assert rec.source == str(D.embedded_data_path())
    assert rec.row_label == "line"
    assert len(rec.rows) > 0
    assert "question" in rec.rows[0]
    assert "context" in rec.rows[0]


def test_load_hub_id_is_routed_to_the_hub_loader_with_its_split(monkeypatch):
    calls = []
    sentinel = Records([{"question": "q", "context": "p"}], "org/name[validation]")
    monkeypatch.setattr(D, "_load_hub", lambda dataset_id, split: calls.append((dataset_id, split)) or sentinel)
    assert D.load_records("org/name", "validation") is sentinel
    assert calls == [("org/name", "validation")]


# --- load_records: errors ---------------------------------------------------------------------------
def test_load_directory_instead_of_file(tmp_path):
    msg = _error(D.load_records, str(tmp_path))
    assert msg == (
        f"{tmp_path} is a directory, but --data expects a file (CSV, TSV, JSON, JSONL or Parquet) or a Hub dataset id. "
        f"Fix: pass the data file itself, e.g. --data {tmp_path / 'pairs.csv'}."
    )


@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl", "empty.json", "empty.parquet"])
def test_load_zero_byte_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    assert _error(D.load_records, str(path)) == (
        f"Data file {path} is empty. Fix: give a file with a header and at least one row of pairs."
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("header.csv", "question,context\n"),
        ("header.tsv", "question\tcontext\n"),
        ("blank.jsonl", "\n\n  \n"),
        ("list.json", "[]"),
    ],
)
def test_load_file_without_rows(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert _error(D.load_records, str(path)) == (
        f"Data file {path} has no rows. Fix: give a file with at least one (question, passage) row."
    )


@pytest.mark.parametrize("source", ["./nope.csv", "nope.csv", "data/nope.jsonl", "./no_suffix", "a/b/c"])
def test_load_missing_local_path(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    assert _error(D.load_records, source) == (
        f"Data file {Path(source)} does not exist. Fix: check the path given to --data."
    )


def test_load_missing_absolute_path(tmp_path):
    path = tmp_path / "missing"
    assert _error(D.load_records, str(path)) == f"Data file {path} does not exist. Fix: check the path given to --data."


def test_load_unknown_extension(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("question,context\nq,p\n")
    assert _error(D.load_records, str(path)) == (
        f"Cannot tell the format of {path} from its extension '.txt'. "
        "Fix: use one of .csv, .json, .jsonl, .ndjson, .parquet, .tsv."
    )


def test_load_invalid_json_line_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"question": "q1", "context": "p1"}\n\n{"question": "q2", "context": \n')
    msg = _error(D.load_records, str(path))
    assert msg.startswith(f"{path} line 3 is not valid JSON: ")
    assert msg.endswith("Fix: fix or remove that line.")


def test_load_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"question": "q1", "context": "p1"}\n[1, 2]\n')
    assert _error(D.load_records, str(path)).startswith(f"{path} line 2 is not a JSON object.")


@pytest.mark.parametrize(
    ("name", "content", "offset", "reason"),
    [
        ("bad.csv", b"question,context\nab\xff,c\n", 19, "invalid start byte"),
        ("bad.jsonl", b'{"question": "\xe9t\xe9", "context": "p"}\n', 14, "invalid continuation byte"),
        ("bad.json", b'[{"question": "q", "context": "\xff"}]', 31, "invalid start byte"),
    ],
)
def test_load_non_utf8_bytes(tmp_path, name, content, offset, reason):
    path = tmp_path / name
    path.write_bytes(content)
    assert _error(D.load_records, str(path)) == (
        f"Data file {path} is not UTF-8 text ({reason} at byte {offset}). Fix: save it as UTF-8."
    )


@pytest.mark.parametrize(
    "content",
    [
        b"question,context\n" + b"a,b\n" * 5000 + b"x\xff,y\n",  # bad byte at 20018, reported as 3634
        b"\xef\xbb\xbfquestion,context\nab\xff,c\n",  # bad byte at 22, reported as 19
    ],
    ids=["large-csv", "bom-csv"],
)
def test_load_non_utf8_reports_the_file_byte_offset(tmp_path, content):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    offset = content.index(b"\xff")
    assert f"at byte {offset})" in _error(D.load_records, str(path))


def test_load_corrupt_parquet(tmp_path):
    path = tmp_path / "pairs.parquet"
    path.write_bytes(b"this is not parquet at all")
    msg = _error(D.load_records, str(path))
    assert msg.startswith(f"Could not read {path} as parquet: ")
    assert msg.endswith("Fix: check that the file is valid parquet.")


# --- detect_columns ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["question", "context"], ("question", "context")),
        (["id", "query", "passage"], ("query", "passage")),
        (["anchor", "positive", "negative"], ("anchor", "positive")),
        (["Question", "CONTEXT"], ("Question", "CONTEXT")),
        (["QUERY", "Document"], ("QUERY", "Document")),
        (["text", "q", "context"], ("q", "context")),  # 'context' ranks before 'text'
        (["__line__", "queries", "chunk"], ("queries", "chunk")),
    ],
)
def test_detect_columns_auto(columns, expected):
    assert D.detect_columns(columns, None, None, "src") == expected


def test_detect_columns_explicit_names():
    assert D.detect_columns(["title", "body", "question"], "title", "body", "src") == ("title", "body")


def test_detect_columns_explicit_question_auto_passage():
    assert D.detect_columns(["ask", "context"], "ask", None, "src") == ("ask", "context")


def test_detect_columns_explicit_name_missing():
    msg = _error(D.detect_columns, ["question", "context", "__line__"], None, "body", "data.jsonl")
    assert msg == (
        "data.jsonl has no passage column 'body'. Available columns: 'question', 'context'. "
        "Fix: pass the right name with --passage-column."
    )


def test_detect_columns_explicit_name_is_case_sensitive():
    msg = _error(D.detect_columns, ["question", "context"], "Question", None, "src")
    assert msg.startswith("src has no question column 'Question'. Available columns: 'question', 'context'.")


def test_detect_columns_missing_passage_column_lists_available():
    msg = _error(D.detect_columns, ["question", "answer", "__line__"], None, None, "pairs.csv")
    assert msg == (
        "pairs.csv has no passage column (looked for context, passage, positive, document, doc, text, chunk, content, "
        "pos, positives). "
        "Available columns: 'question', 'answer'. Fix: name it with --passage-column COLUMN."
    )


def test_detect_columns_missing_question_column_and_no_columns():
    msg = _error(D.detect_columns, [], None, None, "x.csv")
    assert msg == (
        "x.csv has no question column (looked for question, query, anchor, questions, queries, q). "
        "Available columns: (none). Fix: name it with --question-column COLUMN."
    )


@pytest.mark.parametrize(
    ("columns", "question", "passage"),
    [(["question", "context"], "question", "question"), (["text", "other"], "text", None)],
)
def test_detect_columns_same_column_twice(columns, question, passage):
    msg = _error(D.detect_columns, columns, question, passage, "src")
    assert msg == f"The question and passage columns are both '{question}'. Fix: pass two different columns."


def test_ragged_csv_row_gives_a_job_error_not_a_crash(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("question,context\nq1,p1\nq2,p2,extra\n")
    assert _error(D.load_records, str(path)) == (
        f"{path} row 2 has more fields than the header, "
        "which was read as 2 columns ('question', 'context') split on ','. "
        "Fix: quote fields that contain the delimiter, or fix that row."
    )


# --- validate_pairs ---------------------------------------------------------------------------------
def test_validate_empty_and_whitespace_names_file_and_rows(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("question,context\nWhat?,A passage.\n,Another passage.\nWhy?,   \n")
    rec = D.load_records(str(path))
    msg = _error(D.validate_pairs, rec, "question", "context")
    assert msg == (
        f"{path}: 1 row has an empty or whitespace-only 'question': row 2; "
        f"1 row has an empty or whitespace-only 'context': row 3. {FIX_EMPTY}"
    )


def test_validate_none_values_and_missing_keys(tmp_path):
    path = tmp_path / "pairs.json"
    rows = [{"question": "q1", "context": "p1"}, {"question": None, "context": "p2"}, {"question": "q3"}]
    path.write_text(json.dumps(rows))
    msg = _error(D.validate_pairs, D.load_records(str(path)), "question", "context")
    assert msg == (
        f"{path}: 1 row has an empty or whitespace-only 'question': row 2; "
        f"1 row has an empty or whitespace-only 'context': row 3. {FIX_EMPTY}"
    )


def test_validate_nan_counts_as_empty():
    rec = Records([{"q": "a", "p": "b"}, {"q": float("nan"), "p": "c"}], "src")
    assert (
        _error(D.validate_pairs, rec, "q", "p") == f"src: 1 row has an empty or whitespace-only 'q': row 2. {FIX_EMPTY}"
    )


def test_validate_non_string_values_in_jsonl_name_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"question": "q1", "context": "p1"}\n\n{"question": 7, "context": "p2"}\n'
        '{"question": "q3", "context": [1, 2]}\n'
    )
    msg = _error(D.validate_pairs, D.load_records(str(path)), "question", "context")
    assert msg == (
        f"{path}: 1 row has a non-text 'question' (a number, list or object instead of a string): line 3; "
        f"1 row has a non-text 'context' (a number, list or object instead of a string): line 4. {FIX_EMPTY}"
    )


def test_validate_lists_at_most_eight_rows():
    rec = Records([{"q": "", "p": "x"} for _ in range(11)] + [{"q": "ok", "p": "fine"}], "src")
    msg = _error(D.validate_pairs, rec, "q", "p")
    assert msg == (
        "src: 11 rows have an empty or whitespace-only 'q': row 1, row 2, row 3, row 4, row 5, row 6, row 7, row 8 "
        f"and 3 more. {FIX_EMPTY}"
    )


def test_validate_drop_invalid_drops_and_reports(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"question": "q1", "context": "p1"}\n'
        '{"question": "  ", "context": "p2"}\n'
        '{"question": 5, "context": "p3"}\n'
        '{"question": "q4", "context": null}\n'
        '{"question": "q5", "context": "p5"}\n'
        '{"question": "", "context": ""}\n'
    )
    result = D.validate_pairs(D.load_records(str(path)), "question", "context", drop_invalid=True)
    assert result.pairs == [Pair("q1", "p1"), Pair("q5", "p5")]
    assert result.dropped_rows == {
        "an empty or whitespace-only 'question'": ["line 2", "line 6"],
        "a non-text 'question' (a number, list or object instead of a string)": ["line 3"],
        "an empty or whitespace-only 'context'": ["line 4", "line 6"],
    }


def test_validate_no_problems_reports_nothing_dropped():
    result = D.validate_pairs(Records([{"q": "a", "p": "bb"}], "src"), "q", "p")
    assert result.pairs == [Pair("a", "bb")]
    assert result.dropped_rows == {}


def test_validate_drop_invalid_with_nothing_left():
    rec = Records([{"q": "", "p": "x"}, {"q": None, "p": "y"}], "src")
    assert _error(D.validate_pairs, rec, "q", "p", drop_invalid=True) == (
        "src: no valid (question, passage) rows remain. Fix: check the column mapping and the data."
    )


def test_validate_column_order_check_refuses_swapped_columns():
    # question lengths 20, 30, 40 (median 30); passage lengths 5, 10, 15 (median 10)
    rows = [
        {"question": "x" * 20, "context": "y" * 5},
        {"question": "x" * 30, "context": "y" * 10},
        {"question": "x" * 40, "context": "y" * 15},
    ]
    msg = _error(D.validate_pairs, Records(rows, "src"), "question", "context")
    assert msg == (
        "src: the question column 'question' (median 30 characters) is longer than the passage column 'context' "
        "(median 10). The loss treats the first column as the query and the second as the passage, so the columns "
        "look swapped. Fix: swap --question-column and --passage-column, "
        "or pass --no-check-column-order if this is intended."
    )


def test_validate_column_order_check_can_be_disabled():
    rows = [{"question": "a long question text", "context": "short"}]
    result = D.validate_pairs(Records(rows, "src"), "question", "context", check_column_order=False)
    assert result.pairs == [Pair("a long question text", "short")]


def test_validate_column_order_equal_medians_accepted():
    rows = [{"q": "abcd", "p": "wxyz"}, {"q": "ab", "p": "abcdefgh"}, {"q": "abcdefgh", "p": "ab"}]
    assert len(D.validate_pairs(Records(rows, "src"), "q", "p").pairs) == 3


def test_validate_strips_surrounding_whitespace():
    rows = [
        {"q": "  What is X?\n", "p": "\tX is a thing.  \n"},
        {"q": "Inner  spaces stay ", "p": " a  b c d e f g h i j "},
    ]
    result = D.validate_pairs(Records(rows, "src"), "q", "p")
    assert result.pairs == [Pair("What is X?", "X is a thing."), Pair("Inner  spaces stay", "a  b c d e f g h i j")]


# --- dedupe_pairs -----------------------------------------------------------------------------------
def test_dedupe_drops_exact_duplicates_keeps_first_order():
    pairs = [Pair("a", "X"), Pair("b", "Y"), Pair("a", "X"), Pair("a", "Z"), Pair("b", "Y"), Pair("a", "X")]
    assert D.dedupe_pairs(pairs) == ([Pair("a", "X"), Pair("b", "Y"), Pair("a", "Z")], 3)


def test_dedupe_same_question_different_passage_kept():
    pairs = [Pair("q", "P1"), Pair("q", "P2"), Pair("Q", "P1")]
    assert D.dedupe_pairs(pairs) == (pairs, 0)


def test_dedupe_after_validation_treats_whitespace_variants_as_duplicates():
    rows = [{"q": "q1", "p": "p1"}, {"q": " q1 ", "p": "p1\n"}, {"q": "q2", "p": "p2"}]
    pairs = D.validate_pairs(Records(rows, "src"), "q", "p").pairs
    assert D.dedupe_pairs(pairs) == ([Pair("q1", "p1"), Pair("q2", "p2")], 1)


def test_dedupe_empty():
    assert D.dedupe_pairs([]) == ([], 0)


# --- split_pairs ------------------------------------------------------------------------------------
def _pairs(n):
    return [Pair(f"question {i}", f"passage {i}") for i in range(n)]


def test_split_is_deterministic_for_a_seed():
    pairs = _pairs(50)
    assert D.split_pairs(pairs, 0.1, 0.2, seed=3) == D.split_pairs(pairs, 0.1, 0.2, seed=3)
    assert D.split_pairs(pairs, 0.1, 0.2, seed=3, split_by="passage") == D.split_pairs(
        pairs, 0.1, 0.2, seed=3, split_by="passage"
    )


def test_split_different_seed_different_split():
    pairs = _pairs(50)
    a, b = D.split_pairs(pairs, 0.1, 0.2, seed=1), D.split_pairs(pairs, 0.1, 0.2, seed=2)
    assert a["test"] != b["test"]
    assert (
        {s: len(v) for s, v in a.items()}
        == {s: len(v) for s, v in b.items()}
        == {"train": 35, "validation": 5, "test": 10}
    )


def test_split_exact_sizes():
    out = D.split_pairs(_pairs(100), val_fraction=0.1, test_fraction=0.2, seed=42)
    assert list(out) == ["train", "validation", "test"]
    assert {s: len(v) for s, v in out.items()} == {"train": 70, "validation": 10, "test": 20}


def test_split_sizes_use_python_round():
    # 10 * 0.25 = 2.5 -> 2 and 10 * 0.15 = 1.5 -> 2 (round half to even)
    out = D.split_pairs(_pairs(10), val_fraction=0.15, test_fraction=0.25, seed=0)
    assert {s: len(v) for s, v in out.items()} == {"train": 6, "validation": 2, "test": 2}


def test_split_zero_fractions_put_everything_in_train():
    pairs = _pairs(7)
    out = D.split_pairs(pairs, 0.0, 0.0, seed=5)
    assert out["validation"] == [] and out["test"] == []
    order = list(range(7))
    random.Random(5).shuffle(order)
    assert out["train"] == [pairs[i] for i in order]


@pytest.mark.parametrize("seed", [0, 42, 1234])
def test_split_pair_mode_follows_the_documented_protocol(seed):
    pairs = _pairs(100)
    order = list(range(100))
    random.Random(seed).shuffle(order)
    out = D.split_pairs(pairs, val_fraction=0.1, test_fraction=0.2, seed=seed, split_by="pair")
    assert out["test"] == [pairs[i] for i in order[:20]]
    assert out["validation"] == [pairs[i] for i in order[20:30]]
    assert out["train"] == [pairs[i] for i in order[30:]]


def _grouped_pairs():
    """30 passages with 1, 2, 3 or 4 questions each (73 pairs), interleaved so groups are not contiguous."""
    pairs = []
    for k in range(4):
        for j in range(30):
            if k < j % 4 + 1:
                pairs.append(Pair(f"q{k} about {j}", f"passage {j}"))
    return pairs


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_passage_mode_keeps_each_passage_in_one_split(seed):
    pairs = _grouped_pairs()
    assert len(pairs) == 73
    out = D.split_pairs(pairs, 0.2, 0.2, seed=seed, split_by="passage")
    seen = {s: {p.passage for p in v} for s, v in out.items()}
    assert seen["train"].isdisjoint(seen["validation"])
    assert seen["train"].isdisjoint(seen["test"])
    assert seen["validation"].isdisjoint(seen["test"])
    assert len(seen["train"] | seen["validation"] | seen["test"]) == 30
    # round(73 * 0.2) = 15: a split fills whole groups until it holds at least 15 pairs (at most 3 over)
    assert 15 <= len(out["test"]) <= 18
    assert 15 <= len(out["validation"]) <= 18


def test_split_passage_mode_exact_groups():
    # 10 passages with 2 questions each; want test = round(20 * 0.15) = 3 -> 2 groups (4 pairs, overshoot),
    # validation = round(20 * 0.1) = 2 -> 1 group. Groups are shuffled in order of first appearance.
    pairs = [Pair(f"q{k} {j}", f"passage {j}") for k in range(2) for j in range(10)]
    order = list(range(10))
    random.Random(11).shuffle(order)
    out = D.split_pairs(pairs, 0.1, 0.15, seed=11, split_by="passage")
    assert out["test"] == [
        p for g in order[:2] for p in (Pair(f"q0 {g}", f"passage {g}"), Pair(f"q1 {g}", f"passage {g}"))
    ]
    assert out["validation"] == [
        Pair(f"q0 {order[2]}", f"passage {order[2]}"),
        Pair(f"q1 {order[2]}", f"passage {order[2]}"),
    ]
    assert {s: len(v) for s, v in out.items()} == {"train": 14, "validation": 2, "test": 4}


@pytest.mark.parametrize("split_by", ["pair", "passage"])
def test_splits_partition_the_input(split_by):
    pairs = _grouped_pairs() + [Pair("q0 about 0", "passage 0")]  # one exact duplicate survives as two items
    out = D.split_pairs(pairs, 0.15, 0.25, seed=9, split_by=split_by)
    merged = out["train"] + out["validation"] + out["test"]
    assert len(merged) == len(pairs) == 74
    assert Counter(merged) == Counter(pairs)


# --- IR sets ----------------------------------------------------------------------------------------
def test_build_ir_corpus_shares_ids_in_order_of_first_appearance():
    splits = {  # deliberately not in train/validation/test order
        "test": [Pair("q5", "B"), Pair("q6", "D")],
        "validation": [Pair("q4", "C"), Pair("q7", "A")],
        "train": [Pair("q1", "A"), Pair("q2", "B"), Pair("q3", "A")],
    }
    corpus, ids = D.build_ir_corpus(splits)
    assert corpus == {"d0": "A", "d1": "B", "d2": "C", "d3": "D"}
    assert list(corpus) == ["d0", "d1", "d2", "d3"]
    assert ids == {"A": "d0", "B": "d1", "C": "d2", "D": "d3"}


def test_build_ir_corpus_missing_splits():
    corpus, ids = D.build_ir_corpus({"test": [Pair("q", "only")]})
    assert corpus == {"d0": "only"}
    assert ids == {"only": "d0"}


def test_build_ir_queries_one_query_per_question_with_all_relevant_docs():
    ids = {"A": "d0", "B": "d1", "C": "d2"}
    pairs = [Pair("q1", "A"), Pair("q2", "C"), Pair("q1", "B"), Pair("q2", "C")]
    queries, qrels = D.build_ir_queries(pairs, ids, "test-q")
    assert queries == {"test-q0": "q1", "test-q1": "q2"}
    assert qrels == {"test-q0": {"d0": 1, "d1": 1}, "test-q1": {"d2": 1}}


def test_irdata_relevant_docs_excludes_grade_zero_and_graded():
    data = IRData(
        corpus={"d1": "a", "d2": "b", "d3": "c", "d4": "d"},
        queries={"q1": "x", "q2": "y", "q3": "z"},
        qrels={"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d4": 0}, "q3": {"d3": 1}},
    )
    assert data.relevant_docs() == {"q1": {"d1", "d2"}, "q3": {"d3"}}
    assert data.graded is True


def test_irdata_binary_is_not_graded():
    data = IRData({"d1": "a"}, {"q1": "x"}, {"q1": {"d1": 1, "d2": 0}})
    assert data.relevant_docs() == {"q1": {"d1"}}
    assert data.graded is False


# --- leakage_report ---------------------------------------------------------------------------------
def test_leakage_report_exact_counts():
    splits = {
        "train": [Pair("a", "X"), Pair("b", "Y")],
        "validation": [Pair("c", "W")],
        "test": [Pair("c", "X"), Pair("b", "Z"), Pair("d", "Y")],
    }
    rep = D.leakage_report(splits)
    assert rep["test_pairs"] == 3
    assert rep["test_pairs_whose_passage_is_in_train"] == 2
    assert rep["fraction_passage_in_train"] == 0.6667
    assert rep["test_questions_also_in_train"] == 1
    assert rep["examples"] == [{"question": "c", "passage": "X"}, {"question": "d", "passage": "Y"}]
    assert "--split-by passage" in rep["note"]


def test_leakage_report_examples_truncated_and_capped():
    long = "p" * 300
    splits = {"train": [Pair("t", long)] + [Pair(f"t{i}", f"P{i}") for i in range(6)],
              "test": [Pair("x", long)] + [Pair(f"x{i}", f"P{i}") for i in range(6)]}  # fmt: skip
    rep = D.leakage_report(splits)
    assert rep["test_pairs_whose_passage_is_in_train"] == 7
    assert rep["fraction_passage_in_train"] == 1.0
    assert rep["test_questions_also_in_train"] == 0
    assert len(rep["examples"]) == 5
    assert rep["examples"][0] == {"question": "x", "passage": "p" * 200}


def test_leakage_report_empty_test():
    rep = D.leakage_report({"train": [Pair("a", "X")], "test": []})
    assert rep["test_pairs"] == 0
    assert rep["fraction_passage_in_train"] == 0.0
    assert rep["test_pairs_whose_passage_is_in_train"] == 0
    assert rep["examples"] == []


# --- BEIR format ------------------------------------------------------------------------------------
def _beir(tmp_path, corpus, queries, qrels, split="test"):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps(o) + "\n" for o in corpus))
    (d / "queries.jsonl").write_text("".join(json.dumps(o) + "\n" for o in queries))
    (d / "qrels" / f"{split}.tsv").write_text(qrels)
    return d


CORPUS = [{"_id": "d1", "title": "", "text": "alpha"}, {"_id": "d2", "text": "beta"}, {"_id": "d3", "text": "gamma"}]
QUERIES = [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"}]


def test_write_beir_load_beir_round_trip(tmp_path):
    data = IRData(
        corpus={"d0": "alpha", "d1": "beta é", "d2": "gamma"},
        queries={"q0": "first?", "q1": "second?"},
        qrels={"q0": {"d0": 1}, "q1": {"d1": 1, "d2": 2}},
    )
    d = tmp_path / "ir"
    D.write_beir(d, data, "validation")
    assert (
        d / "qrels" / "validation.tsv"
    ).read_text() == "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq1\td2\t2\n"
    assert D.read_jsonl(d / "corpus.jsonl")[1] == {"_id": "d1", "title": "", "text": "beta é"}
    assert D.read_jsonl(d / "queries.jsonl") == [{"_id": "q0", "text": "first?"}, {"_id": "q1", "text": "second?"}]
    assert sorted(p.name for p in d.iterdir()) == ["corpus.jsonl", "qrels", "queries.jsonl"]  # no .tmp left
    assert D.load_beir(d, "validation") == data


def test_load_beir_graded_relevance(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq1\td3\t0\n")
    data = D.load_beir(d)
    assert data.qrels == {"q1": {"d1": 2, "d2": 1, "d3": 0}}
    assert data.relevant_docs() == {"q1": {"d1", "d2"}}
    assert data.graded is True
    assert data.queries == {"q1": "first?"}  # q2 has no qrels
    assert data.corpus == {"d1": "alpha", "d2": "beta", "d3": "gamma"}


def test_load_beir_qrels_with_and_without_header(tmp_path):
    with_header = D.load_beir(
        _beir(tmp_path / "a", CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    )
    without = D.load_beir(_beir(tmp_path / "b", CORPUS, QUERIES, "q1\td1\t1\nq2\td3\t1\n"))
    assert with_header.qrels == without.qrels == {"q1": {"d1": 1}, "q2": {"d3": 1}}
    assert with_header == without


def test_load_beir_float_score_and_blank_lines(tmp_path):
    data = D.load_beir(_beir(tmp_path, CORPUS, QUERIES, "q1\td1\t1.0\n\nq2\td2\t2\n"))
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}


def test_load_beir_joins_title_and_text(tmp_path):
    corpus = [
        {"_id": "d1", "title": "Annual report", "text": "Revenue grew."},
        {"_id": "d2", "title": None, "text": "No title."},
        {"_id": 3, "text": "Numeric id."},
    ]
    data = D.load_beir(_beir(tmp_path, corpus, QUERIES, "q1\td1\t1\n"))
    assert data.corpus == {"d1": "Annual report Revenue grew.", "d2": "No title.", "3": "Numeric id."}


def test_load_beir_missing_qrels_split_lists_present_splits(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "q1\td1\t1\n", split="test")
    (d / "qrels" / "train.tsv").write_text("q1\td1\t1\n")
    assert _error(D.load_beir, d, "dev") == (
        f"{d} (given with --eval-data) is not a BEIR folder: it lacks qrels/dev.tsv (qrels splits present: test.tsv, "
        "train.tsv). Fix: add the file, or pick another --eval-split."
    )


def test_load_beir_missing_corpus_and_missing_folder(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "q1\td1\t1\n")
    (d / "corpus.jsonl").unlink()
    assert _error(D.load_beir, d, option="--guard-data") == (
        f"{d} (given with --guard-data) is not a BEIR folder: it lacks corpus.jsonl. "
        "Fix: add the file (BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."
    )
    nowhere = tmp_path / "nowhere"
    assert _error(D.load_beir, nowhere) == (
        f"BEIR folder {nowhere} (given with --eval-data) does not exist. "
        "Fix: pass to --eval-data a folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv."
    )


@pytest.mark.parametrize(
    ("qrels", "line", "kind"),
    [("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n", 3, "corpus"), ("q1\td1\t1\nq7\td1\t1\n", 2, "query")],
)
def test_load_beir_qrels_unknown_id(tmp_path, qrels, line, kind):
    d = _beir(tmp_path, CORPUS, QUERIES, qrels)
    assert _error(D.load_beir, d) == (
        f"{d / 'qrels' / 'test.tsv'} line {line} names a {kind} id that is not in {kind}.jsonl. Fix: fix the ids."
    )


def test_load_beir_malformed_qrels_line(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "q1\td1\t1\nq2\td2\n")
    assert _error(D.load_beir, d) == (
        f"{d / 'qrels' / 'test.tsv'} line 2 is not 'query-id<TAB>corpus-id<TAB>score'. Fix: fix that line."
    )


def test_load_beir_no_relevant_pairs(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "q1\td1\t0\nq2\td2\t0\n")
    assert (
        _error(D.load_beir, d)
        == f"{d / 'qrels' / 'test.tsv'} has no relevant (score > 0) pairs. Fix: check the qrels file."
    )


def test_load_beir_entry_without_text(tmp_path):
    d = _beir(tmp_path, CORPUS, [{"_id": "q1", "title": "only a title"}], "q1\td1\t1\n")
    assert _error(D.load_beir, d) == (
        f"{d / 'queries.jsonl'}: entry 'q1' has no text. Fix: give every entry a \"text\" string."
    )


def test_load_beir_malformed_corpus_line_is_a_job_error(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "q1\td1\t1\n")
    (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "alpha"}\n{"_id": "d2", "text": \n')
    assert "corpus.jsonl" in _error(D.load_beir, d)


def test_load_beir_nan_score_is_a_job_error(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "q1\td1\t1\nq2\td2\tnan\n")
    assert "line 2" in _error(D.load_beir, d)


# --- pairs files and truncation -----------------------------------------------------------------------
def test_write_pairs_read_pairs_round_trip(tmp_path):
    pairs = [Pair("What?", "Ünïcode passage."), Pair("Why?", "Because.")]
    path = tmp_path / "train.jsonl"
    D.write_pairs(path, pairs)
    assert path.read_text(encoding="utf-8").splitlines()[0] == '{"anchor": "What?", "positive": "Ünïcode passage."}'
    assert D.read_pairs(path) == pairs


class FakeTokenizer:
    """One token per whitespace-separated word plus [CLS] and [SEP]."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, add_special_tokens, truncation):
        self.calls.append((list(texts), add_special_tokens, truncation))
        return {"input_ids": [[101] + [7] * len(t.split()) + [102] for t in texts]}


def test_count_truncated_exact():
    texts = ["a b c", "a", "a b c d", "", "a b"]  # 5, 3, 6, 2, 4 tokens
    tok = FakeTokenizer()
    assert D.count_truncated(texts, tok, max_length=4) == 2  # 4 tokens == limit is not truncated
    assert tok.calls == [(texts, True, False)]


def test_count_truncated_batches():
    texts = ["a b c", "a", "a b c d", "", "a b"]
    tok = FakeTokenizer()
    assert D.count_truncated(texts, tok, max_length=2, batch_size=2) == 4
    assert [c[0] for c in tok.calls] == [["a b c", "a"], ["a b c d", ""], ["a b"]]


def test_count_truncated_empty():
    tok = FakeTokenizer()
    assert D.count_truncated([], tok, max_length=8) == 0
    assert tok.calls == []


def test_semicolon_separated_csv_is_read_with_its_delimiter(tmp_path, caplog):
    path = tmp_path / "pairs.csv"
    path.write_text('question;context\n"What grew?";"Revenue grew, by 6 percent."\nWho leads?;The CEO leads.\n')
    with caplog.at_level("WARNING"):
        records = D.load_records(str(path))
    assert records.rows[0]["question"] == "What grew?" and records.rows[0]["context"] == "Revenue grew, by 6 percent."
    assert "reading the file with ';'" in caplog.text


def test_too_many_fields_names_how_the_header_was_read(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("question,context\nWhat grew?,Revenue grew,by 6 percent\n")
    with pytest.raises(
        JobError,
        match=r"row 1 has more fields than the header, "
        r"which was read as 2 columns \('question', 'context'\) split on ','",
    ):
        D.load_records(str(path))
