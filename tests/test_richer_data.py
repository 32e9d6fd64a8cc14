"""Richer training data (issue #33, item 6): several positives per question, hard negatives given with the data
(``negative`` / ``negative_1..n`` columns, FlagEmbedding's ``{"query", "pos": [...], "neg": [...]}``), used by
the loss as given; mining fills only what they leave, skips the top-ranked candidates when asked
(``--hard-negative-range-min``), and its positive-vs-negative score statistics land in training.json."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from conftest import TOPICS

from job.data import prepare as D
from job.data.prepare import Pair, Records
from job.errors import JobError

FORMS = ("What about {t}?", "Tell me the {t} figure.", "How did {t} change?")


def _restated(passage: str) -> str:
    return f"In short: {passage.lower()}"


def flag_rows(without_negatives: int = 1) -> list[dict]:
    """FlagEmbedding rows: 12 topics x 3 questions, two positives each; the last ``without_negatives`` questions of
    every topic give no "neg" (mining fills them), the others two negatives from other topics."""
    rows = []
    for i, (topic, passage) in enumerate(TOPICS):
        for j, form in enumerate(FORMS):
            row = {"query": form.format(t=topic), "pos": [passage, _restated(passage)]}
            if j < len(FORMS) - without_negatives:
                row["neg"] = [TOPICS[(i + 1) % 12][1], TOPICS[(i + 5) % 12][1]]
            rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(JobError) as info:
        fn(*args, **kwargs)
    return f"{info.value.problem} Fix: {info.value.fix}"


# --- reading the data -------------------------------------------------------------------------------------
def test_flagembedding_rows_become_one_pair_per_positive_carrying_the_question_negatives(tmp_path):
    records = D.load_records(str(_write_jsonl(tmp_path / "flag.jsonl", flag_rows()[:2])))
    columns = [c for c in records.rows[0] if c != D.LINE_FIELD]
    q, p = D.detect_columns(columns, None, None, records.source)
    negatives = D.detect_negative_columns(columns, ["auto"], q, p, records.source)
    assert (q, p, negatives) == ("query", "pos", ["neg"])
    pairs = D.validate_pairs(records, q, p, negative_columns=negatives).pairs
    revenue, dividend, employees = (t[1] for t in (TOPICS[0], TOPICS[1], TOPICS[5]))
    assert pairs[:2] == [
        Pair("What about revenue?", revenue, (dividend, employees)),
        Pair("What about revenue?", _restated(revenue), (dividend, employees)),
    ]
    assert len(pairs) == 4


def test_negative_columns_are_found_by_name_and_numbered_ones_in_number_order():
    columns = ["question", "context", "negative_10", "negative_2", "label", "negative", "negative_1", "__line__"]
    assert D.detect_negative_columns(columns, ["auto"], "question", "context", "src") == [
        "negative", "negative_1", "negative_2", "negative_10",
    ]  # fmt: skip
    assert D.detect_negative_columns(["q", "p", "neg", "hard_negatives", "neg3"], ["auto"], "q", "p", "s") == [
        "neg", "hard_negatives", "neg3",
    ]  # fmt: skip
    assert D.detect_negative_columns(columns, ["off"], "question", "context", "src") == []
    assert D.detect_negative_columns(columns, ["label"], "question", "context", "src") == ["label"]
    assert "has no negative column 'wrong'" in _error(
        D.detect_negative_columns, columns, ["wrong"], "question", "context", "src"
    )
    assert "the question or passage column" in _error(
        D.detect_negative_columns, columns, ["context"], "question", "context", "src"
    )


def test_csv_triplet_rows_of_one_question_pool_their_negatives(tmp_path):
    """Rows repeated with the same question (and even the same positive) each give negatives: all of them are
    the question's, on each of its pairs, in order of first appearance; exact (question, positive) repeats go."""
    path = tmp_path / "triplets.csv"
    path.write_text(
        "anchor,positive,negative\n"
        "What grew?,Revenue grew 6 percent.,The dividend rose.\n"
        "What grew?,Sales rose in Asia.,Debt fell.\n"
        "What grew?,Revenue grew 6 percent.,The plant opened.\n"
        "Who works?,About 31400 employees.,\n"
    )
    records = D.load_records(str(path))
    negatives = D.detect_negative_columns(["anchor", "positive", "negative"], ["auto"], "anchor", "positive", "s")
    pooled, dropped = D.pool_negatives(
        D.validate_pairs(records, "anchor", "positive", negative_columns=negatives).pairs
    )
    pairs, duplicates = D.dedupe_pairs(pooled)
    given = ("The dividend rose.", "Debt fell.", "The plant opened.")
    assert pairs == [
        Pair("What grew?", "Revenue grew 6 percent.", given),
        Pair("What grew?", "Sales rose in Asia.", given),
        Pair("Who works?", "About 31400 employees."),
    ]
    assert (duplicates, dropped) == (1, 0)
    assert D.data_shape(pairs) == {
        "questions": 2, "questions_with_several_positives": 1, "questions_with_given_negatives": 1,
        "given_negatives": 3,
    }  # fmt: skip


def test_a_given_negative_that_is_one_of_the_question_positives_is_dropped():
    pairs = [Pair("q?", "p1", ("p2", "n1")), Pair("q?", "p2", ("n1",)), Pair("r?", "p3", ("p1",))]
    pooled, dropped = D.pool_negatives(pairs)
    assert pooled == [Pair("q?", "p1", ("n1",)), Pair("q?", "p2", ("n1",)), Pair("r?", "p3", ("p1",))]
    assert dropped == 1  # p2 for q; p1 stays a negative of r (it is not r's positive)


def test_bad_cells_are_named_and_empty_negatives_are_none_given():
    rows = [
        {"q": "fine?", "p": ["a", "b"], "neg": None},
        {"q": "blank negatives?", "p": "c", "neg": ["", "  ", "n"]},
        {"q": "number?", "p": "d", "neg": 7},
        {"q": "empty list?", "p": [], "neg": "n"},
        {"q": "number in list?", "p": ["e", 3]},
        {"q": "object?", "p": "f", "neg": [{"text": "x"}]},
    ]
    result = D.validate_pairs(Records(rows, "src"), "q", "p", negative_columns=["neg"], drop_invalid=True)
    assert result.pairs == [Pair("fine?", "a"), Pair("fine?", "b"), Pair("blank negatives?", "c", ("n",))]
    assert result.dropped_rows == {
        "a non-text 'neg' (a number or object instead of a string or a list of strings)": ["row 3", "row 6"],
        "an empty or whitespace-only 'p'": ["row 4"],
        "a non-text 'p' (a number, list or object instead of a string)": ["row 5"],
    }


def test_negative_columns_off_ignores_them(tmp_path, capsys):
    from job.config import resolve_config
    from job.layout import RunDir
    from job.pipeline import prepare

    data = _write_jsonl(tmp_path / "flag.jsonl", flag_rows())
    cfg = resolve_config(
        cli={"run_dir": str(tmp_path / "run"), "data": str(data), "negative_columns": "off"}, environ={}
    )
    summary = prepare(cfg, RunDir(cfg.run_dir), echo=lambda m: None)
    assert summary["columns"] == {"question": "query", "passage": "pos"} and summary["given_negatives"] == 0
    assert all("negatives" not in row for row in D.read_jsonl(tmp_path / "run" / "data" / "train.jsonl"))


# --- splitting and evaluation --------------------------------------------------------------------------
def _several_positives(questions: int = 60, most: int = 4, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    return [Pair(f"q{i}?", f"passage {i}-{k}") for i in range(questions) for k in range(rng.randint(1, most))]


@pytest.mark.parametrize("split_by", ["pair", "passage"])
@pytest.mark.parametrize("seed", [0, 3, 42])
def test_all_pairs_of_a_question_land_in_one_split(split_by, seed):
    pairs = _several_positives() + [Pair("q0?", "passage 5-0"), Pair("q7?", "passage 0-0")]  # shared passages
    out = D.split_pairs(pairs, 0.1, 0.2, seed=seed, split_by=split_by)
    where: dict[str, set[str]] = {}
    for split, split_pairs in out.items():
        for p in split_pairs:
            where.setdefault(p.question, set()).add(split)
    assert all(len(splits) == 1 for splits in where.values()), where
    assert Counter(out["train"] + out["validation"] + out["test"]) == Counter(pairs)
    n = len(pairs)
    # a split fills whole questions (connected through shared passages in passage mode) until it has enough
    assert round(n * 0.2) <= len(out["test"]) <= round(n * 0.2) + 8
    assert round(n * 0.1) <= len(out["validation"]) <= round(n * 0.1) + 8


def test_passage_split_says_when_questions_chain_every_passage_together():
    chained = [Pair(f"q{i}?", f"passage {i + k}") for i in range(20) for k in range(2)]  # q_i: passages i, i + 1
    assert "join 21 passages (40 of the 40 pairs) into one group" in _error(
        D.split_pairs, chained, 0.1, 0.1, seed=0, split_by="passage"
    )
    out = D.split_pairs(chained, 0.1, 0.1, seed=0, split_by="pair")  # questions alone: fine
    assert len(out["test"]) == len(out["validation"]) == 4


def test_prepare_marks_every_positive_of_a_question_relevant_and_keeps_given_negatives(tmp_path):
    from job.config import resolve_config
    from job.layout import RunDir
    from job.pipeline import prepare

    rows = flag_rows()
    data = _write_jsonl(tmp_path / "flag.jsonl", rows)
    cfg = resolve_config(
        cli={"run_dir": str(tmp_path / "run"), "data": str(data), "val_fraction": 0.2, "test_fraction": 0.2},
        environ={},
    )
    summary = prepare(cfg, RunDir(cfg.run_dir), echo=lambda m: None)
    assert summary["columns"] == {"question": "query", "passage": "pos", "negatives": ["neg"]}
    assert (summary["pairs"], summary["questions"], summary["questions_with_several_positives"]) == (72, 36, 36)
    assert (summary["questions_with_given_negatives"], summary["given_negatives"]) == (24, 48)
    positives = {r["query"]: set(r["pos"]) for r in rows}
    for split in ("validation", "test"):
        ir = D.load_beir(tmp_path / "run" / "ir" / split, split)
        assert ir.queries
        for qid, text in ir.queries.items():
            assert {ir.corpus[d] for d in ir.relevant_docs()[qid]} == positives[text]
    given = {r["query"]: r["neg"] for r in rows if "neg" in r}
    train = D.read_jsonl(tmp_path / "run" / "data" / "train.jsonl")
    for row in train:
        assert row.get("negatives") == given.get(row["anchor"])  # unchanged, or absent when none was given


def test_no_batch_holds_one_question_twice():
    """Each (question, positive) is its own row; the no-duplicates samplers (sentence-transformers' and the
    length-grouped one) never put two rows of one question in a batch, so a question's other positives are never
    its in-batch negatives."""
    import datasets
    import torch
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    from job.train.sampler import LengthGroupedBatchSampler

    pairs = _several_positives(questions=40, most=5, seed=1)
    ds = datasets.Dataset.from_dict({"anchor": [p.question for p in pairs], "positive": [p.passage for p in pairs]})
    samplers = [
        NoDuplicatesBatchSampler(ds, 8, drop_last=False, generator=torch.Generator(), seed=1),
        NoDuplicatesBatchSampler(ds, 8, drop_last=True, generator=torch.Generator(), seed=2, precompute_hashes=True,
                                 precompute_num_proc=1),
        LengthGroupedBatchSampler(ds, 8, drop_last=False, generator=torch.Generator(), seed=3, pool_batches=2),
    ]  # fmt: skip
    for sampler in samplers:
        batches = list(sampler)
        assert batches
        for batch in batches:
            anchors = [ds[i]["anchor"] for i in batch]
            assert len(anchors) == len(set(anchors)), (type(sampler).__name__, anchors)


# --- negatives for the loss -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model_path), device="cpu")


def _pairs_from(rows: list[dict]) -> list[Pair]:
    records = Records(rows, "src")
    pairs = D.validate_pairs(records, "query", "pos", negative_columns=["neg"]).pairs
    return D.pool_negatives(pairs)[0]


def _negatives(row: dict) -> list[str]:
    return [row[c] for c in sorted((c for c in row if c.startswith("negative_")), key=lambda c: int(c[9:]))]


def _spy(monkeypatch, fail: bool = False) -> list[dict]:
    import sentence_transformers.util

    seen: list[dict] = []
    mine = sentence_transformers.util.mine_hard_negatives

    def spy(dataset, model, **kwargs):
        if fail:
            raise AssertionError("mining ran although every pair had its negatives")
        seen.append({"anchors": list(dataset["anchor"]), **kwargs})
        return mine(dataset, model, **kwargs)

    monkeypatch.setattr(sentence_transformers.util, "mine_hard_negatives", spy)
    return seen


def test_given_negatives_are_used_as_given_and_never_re_mined(tiny_model, monkeypatch):
    from job.train.negatives import add_hard_negatives

    _spy(monkeypatch, fail=True)
    pairs = _pairs_from(flag_rows(without_negatives=0))
    for asked in (1, 2):  # --hard-negatives 1 with two given: both are kept (k is the larger)
        ds, stats = add_hard_negatives(pairs, tiny_model, asked, seed=1)
        assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2"]
        assert [_negatives(row) for row in ds] == [list(p.negatives) for p in pairs]
        assert stats["negatives_per_pair"] == 2 and stats["pairs_with_given_negatives"] == len(pairs)
        assert stats["pairs_with_mined_negatives"] == stats["pairs_with_random_fallback"] == 0
        assert stats["pairs_mining_looked_at"] == 0 and "mining_scores" not in stats


def test_mining_fills_only_the_questions_without_enough_given_negatives(tiny_model, monkeypatch):
    from job.train.negatives import add_hard_negatives

    seen = _spy(monkeypatch)
    rows = flag_rows(without_negatives=1)
    pairs = _pairs_from(rows)
    ds, stats = add_hard_negatives(pairs, tiny_model, 2, margin=0.0, range_min=1, seed=1)
    short = {r["query"] for r in rows if "neg" not in r}
    assert len(seen) == 1 and set(seen[0]["anchors"]) == short and len(seen[0]["anchors"]) == 2 * len(short)
    assert seen[0]["range_min"] == 1 and seen[0]["num_negatives"] == 2
    assert set(seen[0]["corpus"]) >= {n for p in pairs for n in p.negatives}  # given negatives are candidates too
    positives = {r["query"]: set(r["pos"]) for r in rows}
    for row, pair in zip(ds, pairs):
        negatives = _negatives(row)
        if pair.negatives:
            assert negatives == list(pair.negatives)
        else:
            assert len(set(negatives)) == 2 and not set(negatives) & positives[pair.question]
    assert stats["pairs_with_mined_negatives"] + stats["pairs_with_random_fallback"] == stats[
        "pairs_mining_looked_at"
    ] == 2 * len(short)  # fmt: skip
    scores = stats["mining_scores"]  # the tiny model's vocabulary (so its scores) changes from build to build
    assert scores["positive"]["count"] == 2 * len(short)
    assert scores["negative"]["count"] == 2 * stats["pairs_with_mined_negatives"]  # those of the rows it filled
    assert {"mean", "median", "std", "min", "25%", "50%", "75%", "max"} <= set(scores["negative"])
    if scores["negative"]["count"]:  # margin 0: no mined negative scores above its question's positives
        assert scores["difference"]["min"] >= 0 and scores["positive"]["mean"] >= scores["negative"]["mean"]
    assert any(note.startswith("Found ") for note in scores["notes"])


def test_without_mining_short_pairs_repeat_their_given_negatives(tiny_model, monkeypatch):
    from job.train.negatives import add_hard_negatives

    _spy(monkeypatch, fail=True)
    pairs = [
        Pair("a?", "pa", ("n1", "n2", "n3")),
        Pair("b?", "pb", ("n4",)),
        Pair("c?", "pc1"),
        Pair("c?", "pc2"),
    ]
    ds, stats = add_hard_negatives(pairs, tiny_model, 0, seed=1)
    rows = [_negatives(row) for row in ds]
    assert rows[:2] == [["n1", "n2", "n3"], ["n4", "n4", "n4"]]
    for negatives in rows[2:]:  # none given: random training passages, never one of the question's positives
        assert not set(negatives) & {"pc1", "pc2"}
    assert stats["pairs_repeating_their_given_negatives"] == 1 and stats["pairs_with_random_fallback"] == 2
    assert stats["mining"].startswith("off")


def test_mining_without_given_negatives_is_unchanged(tiny_model, monkeypatch):
    """Data without negatives (the embedded pairs, `make demo`) mines exactly as before: the same call, the same
    rows, the same random fallback."""
    from conftest import make_pairs

    from job.train.negatives import add_hard_negatives

    seen = _spy(monkeypatch)
    pairs = [Pair(r["question"], r["context"]) for r in make_pairs(3)]
    ds, stats = add_hard_negatives(pairs, tiny_model, 1, seed=1)
    assert seen[0]["anchors"] == [p.question for p in pairs] and seen[0]["range_min"] == 0
    assert seen[0]["corpus"] == list(dict.fromkeys(p.passage for p in pairs))
    assert ds.column_names == ["anchor", "positive", "negative_1"]
    assert set(stats) == {
        "negatives_per_pair", "relative_margin", "range_min", "depth", "pairs_with_mined_negatives",
        "pairs_with_random_fallback", "mining_scores",
    }  # fmt: skip


def test_library_statistics_are_read_from_its_printed_table():
    from job.train.negatives import library_statistics

    printed = """Setting range_max to 23 based on the provided parameters.
Negative candidates mined, preparing dataset...
Metric       Positive       Negative     Difference
Count         100,231        487,865
Mean           0.6866         0.4194         0.2752
Median         0.7010         0.4102         0.2760
Std            0.1125         0.0719         0.1136
Min            0.0303         0.1702         0.0209
25%            0.6221         0.3672         0.1899
50%            0.7010         0.4102         0.2760
75%            0.7667         0.4647         0.3590
Max            0.9584            nan         0.7073
Skipped 427,503 potential negatives (8.36%) due to the relative_margin of 0.05.
"""
    stats = library_statistics(printed)
    assert stats["positive"]["count"] == 100231 and stats["negative"]["count"] == 487865
    assert stats["positive"]["mean"] == 0.6866 and stats["difference"]["75%"] == 0.359
    assert stats["negative"]["max"] is None  # nan: not JSON
    assert "count" not in stats["difference"]
    assert stats["notes"] == [
        "Setting range_max to 23 based on the provided parameters.",
        "Skipped 427,503 potential negatives (8.36%) due to the relative_margin of 0.05.",
    ]


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"hard_negative_range_min": -1}, "hard_negative_range_min is -1"),
        ({"hard_negatives": 2, "hard_negative_depth": 5, "hard_negative_range_min": 4}, "hard_negative_depth 5 less"),
    ],
)
def test_range_min_settings_are_checked(settings, needle):
    from job.config import resolve_config

    assert needle in _error(resolve_config, None, settings, {})


# --- end to end -----------------------------------------------------------------------------------------
def test_a_flagembedding_file_trains_end_to_end(tmp_path, tiny_model_path, monkeypatch, capsys):
    from job.cli import main

    seen = _spy(monkeypatch)
    rows = flag_rows(without_negatives=1)
    data = _write_jsonl(tmp_path / "flag.jsonl", rows)
    run = tmp_path / "run"
    args = [
        "run", "--run-dir", run, "--model", tiny_model_path, "--data", data, "--batch-size", "8",
        "--matryoshka-dims", "32,16", "--hard-negatives", "2", "--hard-negative-range-min", "1",
        "--hard-negative-margin", "0", "--max-steps", "2", "--eval-batch-size", "16",
    ]  # fmt: skip
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert "36 of 36 questions with several positives; 48 given hard negatives for 24 questions" in out

    given = {r["query"]: r["neg"] for r in rows if "neg" in r}
    train = D.read_jsonl(run / "data" / "train.jsonl")
    assert all(row.get("negatives") == given.get(row["anchor"]) for row in train)
    short_rows = [row for row in train if row["anchor"] not in given]
    assert short_rows and len(train) > len(short_rows)
    assert len(seen) == 1 and Counter(seen[0]["anchors"]) == Counter(row["anchor"] for row in short_rows)

    training = json.loads((run / "model" / "training.json").read_text())
    negatives = training["hard_negatives"]
    assert negatives["negatives_per_pair"] == 2 and negatives["range_min"] == 1
    assert negatives["pairs_with_given_negatives"] == len(train) - len(short_rows)
    assert negatives["pairs_mining_looked_at"] == len(short_rows)
    scores = negatives["mining_scores"]
    assert scores["positive"]["count"] == len(short_rows)
    assert scores["negative"]["count"] == 2 * negatives["pairs_with_mined_negatives"]
    assert {"mean", "median", "std", "min", "max"} <= set(scores["negative"]) & set(scores["difference"])

    positives = {r["query"]: set(r["pos"]) for r in rows}
    test = D.load_beir(run / "ir" / "test", "test")
    assert all({test.corpus[d] for d in docs} == positives[test.queries[q]] for q, docs in test.relevant_docs().items())
    assert (run / "report" / "metrics.json").is_file()
