"""JSON Lines are read line by line on "\\n" only (issue #33, item 5).

U+0085 (NEL), U+2028 (LINE SEPARATOR) and U+2029 (PARAGRAPH SEPARATOR) may stand unescaped inside a JSON string
(MS MARCO passages hold NEL), but ``str.splitlines`` cuts lines at them: a BEIR corpus of such passages was
refused with "corpus.jsonl line 1816 is not valid JSON: Unterminated string". Every JSONL reader of the project
(pairs, BEIR corpus and queries for `job --eval-data` and `rag-eval`, the prepared splits) reads them whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from job.data import prepare as D
from job.errors import JobError

BREAKS = {"NEL": "\u0085", "LS": "\u2028", "PS": "\u2029"}
ALL = "".join(BREAKS.values())


def _raw_line(obj: dict) -> str:
    """One JSON line with every non-ASCII character unescaped (as MS MARCO's files are written)."""
    return json.dumps(obj, ensure_ascii=False)


def _pairs_rows() -> list[dict[str, str]]:
    return [
        {"question": f"What does the {name} report say?", "context": f"Revenue grew{ch}6 percent{ch}in 2024."}
        for name, ch in BREAKS.items()
    ] + [{"question": "And all three?", "context": f"One{ALL}passage with every separator."}]


def _write_beir(folder: Path) -> None:
    (folder / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": f"d{i}", "title": f"Title{ch}{i}", "text": f"Passage {i}{ch}continues after the separator."}
        for i, ch in enumerate(BREAKS.values())
    ] + [{"_id": "d3", "title": "", "text": f"All{ALL}of them."}]
    queries = [{"_id": f"q{i}", "text": f"Question{ch}{i}?"} for i, ch in enumerate(BREAKS.values())]
    (folder / "corpus.jsonl").write_text("".join(_raw_line(r) + "\n" for r in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(_raw_line(r) + "\n" for r in queries), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(3)), encoding="utf-8"
    )


def test_the_separators_are_line_breaks_to_splitlines_but_legal_inside_json_strings():
    line = _raw_line({"text": f"a{ALL}b"})
    assert len(line.splitlines()) == 4  # what the readers used to do
    assert json.loads(line) == {"text": f"a{ALL}b"}


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson", ".json"])  # .json: a JSON Lines file named .json
def test_pairs_with_unicode_line_separators_inside_strings_load_whole(tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    rows = _pairs_rows()
    path.write_text("".join(_raw_line(r) + "\n" for r in rows), encoding="utf-8")
    records = D.load_records(str(path))
    assert records.row_label == "line"
    assert [r[D.LINE_FIELD] for r in records.rows] == [1, 2, 3, 4]
    pairs = D.validate_pairs(records, "question", "context").pairs
    assert [(p.question, p.passage) for p in pairs] == [(r["question"], r["context"]) for r in rows]


def test_a_bad_line_is_named_by_its_newline_count(tmp_path):
    """Line numbers count "\\n" only, as editors and `sed -n` do: the separators do not shift them."""
    path = tmp_path / "pairs.jsonl"
    good = [_raw_line(r) for r in _pairs_rows()]
    path.write_text("\n".join([*good, '{"question": "broken', good[0]]) + "\n", encoding="utf-8")
    with pytest.raises(JobError) as info:
        D.load_records(str(path))
    assert f"{path} line 5 is not valid JSON: Unterminated string" in info.value.problem


def test_crlf_line_endings_still_read(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes("".join(_raw_line(r) + "\r\n" for r in _pairs_rows()).encode("utf-8"))
    pairs = D.validate_pairs(D.load_records(str(path)), "question", "context").pairs
    assert len(pairs) == 4 and pairs[3].passage == f"One{ALL}passage with every separator."


def test_a_beir_folder_whose_passages_hold_the_separators_loads(tmp_path):
    folder = tmp_path / "beir"
    _write_beir(folder)
    ir = D.load_beir(folder, "test")
    assert len(ir.corpus) == 4 and len(ir.queries) == 3
    assert ir.corpus["d0"] == "Title\u00850 Passage 0\u0085continues after the separator."
    assert ir.corpus["d3"] == f"All{ALL}of them."
    assert ir.queries["q1"] == "Question\u20281?"
    assert ir.relevant_docs() == {"q0": {"d0"}, "q1": {"d1"}, "q2": {"d2"}}


def test_prepared_files_round_trip_the_separators(tmp_path):
    pairs = [D.Pair(f"q{ALL}?", f"p{ALL}.", (f"n{ALL}.",)), D.Pair("plain?", "plain.")]
    D.write_pairs(tmp_path / "train.jsonl", pairs)
    assert D.read_pairs(tmp_path / "train.jsonl") == pairs
    ir = D.IRData({"d0": f"x{ALL}y"}, {"q0": f"q{ALL}"}, {"q0": {"d0": 1}})
    D.write_beir(tmp_path / "ir", ir, "test")
    assert D.load_beir(tmp_path / "ir", "test") == ir


def test_job_prepare_takes_such_a_beir_folder_as_eval_data(tmp_path, pairs_file):
    from job.config import resolve_config
    from job.layout import RunDir
    from job.pipeline import prepare

    folder = tmp_path / "beir"
    _write_beir(folder)
    cfg = resolve_config(
        cli={"run_dir": str(tmp_path / "run"), "data": str(pairs_file), "eval_data": str(folder)}, environ={}
    )
    summary = prepare(cfg, RunDir(cfg.run_dir), echo=lambda m: None)
    assert summary["test_queries"] == 3 and summary["test_corpus_size"] == 4
    assert D.load_beir(tmp_path / "run" / "ir" / "test", "test").corpus["d3"] == f"All{ALL}of them."


def test_rag_eval_reads_such_a_beir_folder_and_pairs_file(tmp_path):
    from rag_eval.sources import Sources, load_eval_data

    folder = tmp_path / "beir"
    _write_beir(folder)
    ir, where = load_eval_data(str(folder), Sources(models=[]))
    assert where == str(folder) and ir.corpus["d2"] == "Title\u20292 Passage 2\u2029continues after the separator."
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(_raw_line(r) + "\n" for r in _pairs_rows()), encoding="utf-8")
    ir, _ = load_eval_data(str(pairs), Sources(models=[]))
    assert sorted(ir.corpus.values()) == sorted(r["context"] for r in _pairs_rows())


def test_local_pairs_never_go_through_the_datasets_json_loader(tmp_path, monkeypatch):
    """Local JSON Lines are read by the job's own reader: `datasets.load_dataset` (and its JSON builder) is only
    for Hub dataset ids."""
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError("datasets.load_dataset was called for a local file")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(_raw_line(r) + "\n" for r in _pairs_rows()), encoding="utf-8")
    assert len(D.load_records(str(path)).rows) == 4
