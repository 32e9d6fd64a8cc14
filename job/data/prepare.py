"""Data preparation: load pairs, map and validate columns, de-duplicate, split, build IR sets.

Everything here is a pure function of its inputs (plus file I/O at the edges), so it is tested
with numbers. The on-disk evaluation format is BEIR's (``corpus.jsonl``, ``queries.jsonl``,
``qrels/<split>.tsv``), so a user's own BEIR data and our prepared splits go through one loader.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from job.config import EMBEDDED_DATA
from job.errors import JobError

logger = logging.getLogger(__name__)

QUESTION_COLUMNS = ("question", "query", "anchor", "questions", "queries", "q")
PASSAGE_COLUMNS = (
    "context", "passage", "positive", "document", "doc", "text", "chunk", "content", "pos", "positives",
)  # fmt: skip
# hard-negative columns found on their own: these names, then numbered ones (negative_1, neg2, ...) in number order
NEGATIVE_COLUMNS = ("negative", "negatives", "neg", "hard_negative", "hard_negatives")
_NUMBERED_NEGATIVE = re.compile(r"(?:hard_)?neg(?:ative)?_?(\d+)", re.IGNORECASE)
AUTO, OFF = "auto", "off"  # --negative-columns' two words
LOCAL_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
SPLITS = ("train", "validation", "test")
LINE_FIELD = "__line__"  # the loader's own field on JSON Lines rows: the row's line in the file
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a lone surrogate (from a JSON escape such as \ud800): not text


@dataclass(frozen=True)
class Pair:
    """One training example: a question, one of its positive passages, and the hard negatives given for the
    question (empty unless the data has negative columns; mining adds its own at training time)."""

    question: str
    passage: str
    negatives: tuple[str, ...] = ()


@dataclass
class Records:
    """Raw rows from a source, with how to name a row in a message."""

    rows: list[dict[str, Any]]
    source: str
    row_label: str = "row"  # "row" (1-based data row, header excluded) or "line" (1-based file line)

    def where(self, index: int) -> str:
        return f"{self.row_label} {index + 1}"


@dataclass
class IRData:
    """One evaluation set: corpus id -> text, query id -> text, query id -> {corpus id: grade}."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def relevant_docs(self, threshold: int = 1) -> dict[str, set[str]]:
        """Binary relevance for InformationRetrievalEvaluator: every grade >= ``threshold`` counts (default 1:
        every grade > 0; TREC-DL counts from 2). Queries with no passage that high are left out."""
        threshold = max(int(threshold), 1)
        return {
            q: {d for d, g in docs.items() if g >= threshold}
            for q, docs in self.qrels.items()
            if any(g >= threshold for g in docs.values())
        }

    @property
    def graded(self) -> bool:
        return any(g > 1 for docs in self.qrels.values() for g in docs.values())


# --- loading -------------------------------------------------------------------------------------
def embedded_data_path() -> Path:
    return Path(str(resources.files("job") / "data" / "corvane_10k.jsonl"))


def load_records(source: str, split: str = "train") -> Records:
    """Rows from the embedded data, a local CSV/TSV/JSON/JSONL/Parquet file, or a Hub dataset."""
    if source == EMBEDDED_DATA:
        return _load_local(embedded_data_path())
    path = Path(source).expanduser()
    if path.is_dir():
        raise JobError(
            f"{path} is a directory, but --data expects a file (CSV, TSV, JSON, JSONL or Parquet) or a Hub dataset id.",
            "pass the data file itself, e.g. --data " + str(path / "pairs.csv") + ".",
        )
    if path.exists():
        return _refuse_reserved(_load_local(path))
    if path.suffix.lower() in LOCAL_SUFFIXES or source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise JobError(f"Data file {path} does not exist.", "check the path given to --data.")
    return _refuse_reserved(_load_hub(source, split))


def _reserved_column(where: str) -> JobError:
    return JobError(
        f"{where} has a column named '{LINE_FIELD}', a name the loader keeps for itself (the line number of each "
        "JSON Lines row, used to name bad rows).",
        "rename that column (or drop it: only the question and passage columns are read).",
    )


def _refuse_reserved(records: Records) -> Records:
    """A user column named like the loader's line-number field would be overwritten or mistaken for it."""
    if records.row_label != "line" and any(LINE_FIELD in row for row in records.rows):
        raise _reserved_column(records.source)
    return records


def _duplicate_columns(names: Iterable[str], where: str) -> None:
    """A header naming a column twice: a reader keeps only one of the two, silently."""
    seen: dict[str, int] = {}
    for name in names:
        if name and name.strip():  # unnamed (empty) columns, e.g. trailing delimiters, are never read
            seen[name] = seen.get(name, 0) + 1
    twice = [name for name, n in seen.items() if n > 1]
    if twice:
        raise JobError(
            f"{where} names {'a column' if len(twice) == 1 else 'columns'} more than once in its header: "
            f"{', '.join(repr(c) for c in twice)}. Only one of each would be read, and which one is the question or "
            "the passage cannot be told.",
            "give every column its own name in the header (e.g. question, context), then name them with "
            "--question-column and --passage-column if they are not found on their own.",
        )


def _load_local(path: Path) -> Records:
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise JobError(
            f"Cannot tell the format of {path} from its extension '{path.suffix}'.",
            f"use one of {', '.join(sorted(LOCAL_SUFFIXES))}.",
        )
    if path.stat().st_size == 0:
        raise JobError(f"Data file {path} is empty.", "give a file with a header and at least one row of pairs.")
    if kind != "parquet":
        try:
            path.read_bytes().decode("utf-8")  # whole-file decode: the offset is the file's own
        except UnicodeDecodeError as exc:
            raise JobError(
                f"Data file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).", "save it as UTF-8."
            ) from None
    try:
        if kind in ("csv", "tsv"):
            delimiter = "\t" if kind == "tsv" else _csv_delimiter(path)
            with path.open(newline="", encoding="utf-8-sig") as fh:
                csv.field_size_limit(2**31 - 1)  # a long passage is data, not an error (the default limit is 128 KiB)
                reader = csv.DictReader(fh, delimiter=delimiter)
                _duplicate_columns(reader.fieldnames or [], str(path))
                rows = []
                for i, r in enumerate(reader):
                    if None in r:
                        header = reader.fieldnames or []
                        raise JobError(
                            f"{path} row {i + 1} has more fields than the header, which was read as "
                            f"{len(header)} column{'s' if len(header) != 1 else ''} ({', '.join(map(repr, header))}) "
                            f"split on {delimiter!r}.",
                            "quote fields that contain the delimiter, or fix that row.",
                        )
                    rows.append(dict(r))
            records = Records(rows, str(path), "row")
        elif kind == "parquet":
            import pyarrow.parquet as pq

            _duplicate_columns(pq.read_schema(path).names, str(path))  # read_table itself fails on a duplicate
            records = Records(pq.read_table(path).to_pylist(), str(path), "row")
        else:
            records = _load_json(path, kind)
    except (OSError, ValueError) as exc:
        raise JobError(f"Could not read {path} as {kind}: {exc}.", f"check that the file is valid {kind}.") from None
    if not records.rows:
        raise JobError(f"Data file {path} has no rows.", "give a file with at least one (question, passage) row.")
    return records


_OTHER_DELIMITERS = (";", "\t", "|")


def _csv_delimiter(path: Path) -> str:
    """',' unless the header has no comma but splits into several columns on ';', tab or '|' (a
    spreadsheet in a locale that writes semicolon-separated "CSV"): then that one, and the log says so."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        header = fh.readline()
    if "," in header:
        return ","
    for delimiter in _OTHER_DELIMITERS:
        fields = next(csv.reader([header], delimiter=delimiter), [])
        if len(fields) >= 2 and all(f.strip() for f in fields):
            logger.warning(
                "%s: the header has no commas but %d %r-separated columns; reading the file with %r",
                path,
                len(fields),
                delimiter,
                delimiter,
            )
            return delimiter
    return ","


def _load_json(path: Path, kind: str) -> Records:
    text = path.read_text(encoding="utf-8-sig")
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            kind = "jsonl"  # many ".json" files on the Hub are JSON Lines
        except RecursionError:
            raise _too_deep(str(path), "make it a flat list of objects") from None
        else:
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))
            elif isinstance(data, dict):
                data = [data]  # a one-line JSON Lines file
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise JobError(
                    f"{path} must hold a list of objects (one per pair).",
                    'write [{"question": ..., "context": ...}, ...].',
                )
            return Records(data, str(path), "row")
    rows = []
    for lineno, obj in json_lines(path, text):
        if not isinstance(obj, dict):
            raise JobError(
                f"{path} line {lineno} is not a JSON object.",
                'write one {"question": ..., "context": ...} object per line.',
            )
        if LINE_FIELD in obj:
            raise _reserved_column(f"{path} line {lineno}")
        obj[LINE_FIELD] = lineno
        rows.append(obj)
    return Records(rows, str(path), "line")


def json_lines(path: Path, text: str):
    """(line number, parsed object) for every non-blank line; a bad line is a JobError naming it.

    Lines end at "\\n" only (a "\\r" before it is dropped): ``str.splitlines`` would also cut at U+0085 (NEL),
    U+2028 and U+2029, which JSON allows unescaped inside a string (MS MARCO passages hold NEL), and then
    refuse the halves as "Unterminated string"."""
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JobError(f"{path} line {lineno} is not valid JSON: {exc.msg}.", "fix or remove that line.") from None
        except RecursionError:
            raise _too_deep(f"{path} line {lineno}", "fix or remove that line (one flat object per line)") from None
        yield lineno, obj


def _too_deep(where: str, fix: str) -> JobError:
    return JobError(
        f"{where} nests JSON arrays or objects too deeply to read (more levels than Python's recursion limit, "
        f"{sys.getrecursionlimit()}).",
        f"{fix}: a pair is one object with a question string and a passage string.",
    )


def _load_hub(dataset_id: str, split: str) -> Records:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # noqa: BLE001 - translated into an actionable message
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise JobError(
            f"Could not load '{dataset_id}' (split '{split}') as a local file or Hugging Face Hub dataset: {msg}",
            "pass an existing local file, or a Hub dataset id and --data-split while online.",
        ) from None
    return Records(ds.to_list(), f"{dataset_id}[{split}]", "row")


# --- columns and validation ---------------------------------------------------------------------
def detect_columns(columns: list[str], question: str | None, passage: str | None, source: str) -> tuple[str, str]:
    available = ", ".join(repr(c) for c in columns if c != LINE_FIELD) or "(none)"
    lower = {c.lower(): c for c in columns}

    def pick(given: str | None, candidates: Iterable[str], what: str, flag: str) -> str:
        if given is not None:
            if given not in columns:
                raise JobError(
                    f"{source} has no {what} column '{given}'. Available columns: {available}.",
                    f"pass the right name with {flag}.",
                )
            return given
        for cand in candidates:
            if cand in lower:
                return lower[cand]
        raise JobError(
            f"{source} has no {what} column (looked for {', '.join(candidates)}). Available columns: {available}.",
            f"name it with {flag} COLUMN.",
        )

    q = pick(question, QUESTION_COLUMNS, "question", "--question-column")
    p = pick(passage, PASSAGE_COLUMNS, "passage", "--passage-column")
    if q == p:
        raise JobError(f"The question and passage columns are both '{q}'.", "pass two different columns.")
    return q, p


@dataclass
class ValidationResult:
    pairs: list[Pair]
    dropped_rows: dict[str, list[str]] = field(default_factory=dict)  # problem -> row labels

    @property
    def rows_dropped(self) -> int:
        """Rows dropped: a row with two problems is under both in ``dropped_rows`` but is one row."""
        return len({label for labels in self.dropped_rows.values() for label in labels})


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt_rows(rows: list[str], limit: int = 8) -> str:
    shown = ", ".join(rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def detect_negative_columns(
    columns: list[str], wanted: list[str] | None, question: str, passage: str, source: str
) -> list[str]:
    """The columns holding hard negatives: ``wanted`` (``--negative-columns``) by name, none for ``off``, and for
    ``auto`` (the default) those named negative/negatives/neg/hard_negative(s), then numbered ones (negative_1,
    negative_2, ... in number order)."""
    names = [c for c in columns if c != LINE_FIELD and c not in (question, passage)]
    if wanted and [w.lower() for w in wanted] in ([OFF], ["none"]):
        return []
    if wanted and wanted != [AUTO]:
        available = ", ".join(repr(c) for c in columns if c != LINE_FIELD) or "(none)"
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise JobError(
                f"{source} has no negative column {', '.join(map(repr, missing))}. Available columns: {available}.",
                "pass the right names with --negative-columns, or --negative-columns off to use no given negatives.",
            )
        taken = [c for c in wanted if c in (question, passage)]
        if taken:
            raise JobError(
                f"--negative-columns names {', '.join(map(repr, taken))}, the question or passage column.",
                "name only the columns that hold hard negatives.",
            )
        return list(dict.fromkeys(wanted))
    plain = [c for c in names if c.lower() in NEGATIVE_COLUMNS]
    numbered = [c for c in names if _NUMBERED_NEGATIVE.fullmatch(c)]
    return plain + sorted(numbered, key=lambda c: int(_NUMBERED_NEGATIVE.fullmatch(c)[1]))  # type: ignore[index]


_NON_TEXT = "a non-text '{}' (a number, list or object instead of a string)"
_NON_TEXT_LIST = "a non-text '{}' (a number or object instead of a string or a list of strings)"
_EMPTY = "an empty or whitespace-only '{}'"
_SURROGATE_TEXT = (
    "a '{}' holding a lone UTF-16 surrogate (an escape such as \\ud800 without its pair), which is not text"
)


def _cell_texts(value: Any, column: str, *, many: bool = False, optional: bool = False) -> tuple[list[str], str | None]:
    """The stripped texts of one cell, and what is wrong with it (None: nothing). ``many``: a list of strings
    holds several texts (several positives, or several negatives). ``optional`` (negatives): an empty cell, or an
    empty item of a list, is no text rather than a problem."""
    listed = many and isinstance(value, (list, tuple))
    if not listed and (_is_missing(value) or (isinstance(value, str) and not value.strip())):
        return [], None if optional else _EMPTY.format(column)
    out = []
    for item in value if listed else [value]:
        if isinstance(item, str) and not item.strip() or _is_missing(item):
            if optional:
                continue
            return [], _EMPTY.format(column)
        if not isinstance(item, str):
            return [], (_NON_TEXT_LIST if optional else _NON_TEXT).format(column)
        if _SURROGATE.search(item):
            return [], _SURROGATE_TEXT.format(column)
        out.append(item.strip())
    if not out and not optional:
        return [], _EMPTY.format(column)
    return out, None


def validate_pairs(
    records: Records,
    question_column: str,
    passage_column: str,
    *,
    drop_invalid: bool = False,
    check_column_order: bool = True,
    negative_columns: Iterable[str] = (),
) -> ValidationResult:
    """Map rows onto (question, passage[, negatives]); every bad row is named, and the run fails unless dropping.

    A passage cell holding a list of strings gives one pair per string (several positives of one question); the
    ``negative_columns`` hold hard negatives, each a string or a list of strings (an empty cell: none given)."""
    problems: dict[str, list[str]] = defaultdict(list)
    pairs: list[Pair] = []
    negative_columns = list(negative_columns)
    for i, row in enumerate(records.rows):
        label = f"line {row[LINE_FIELD]}" if records.row_label == "line" and LINE_FIELD in row else records.where(i)
        cells = [
            (question_column, _cell_texts(row.get(question_column), question_column)),
            (passage_column, _cell_texts(row.get(passage_column), passage_column, many=True)),
            *((c, _cell_texts(row.get(c), c, many=True, optional=True)) for c in negative_columns),
        ]
        bad = False
        for _, (_, problem) in cells:
            if problem is not None:
                problems[problem].append(label)
                bad = True
        if bad:
            continue
        question, passages = cells[0][1][0][0], cells[1][1][0]
        if isinstance(row.get(passage_column), str) and all(
            t.lstrip("\ufeff").casefold() == c.strip().casefold()
            for t, c in ((question, question_column), (passages[0], passage_column))
        ):
            problems["the column names as its values (the header repeated inside the data)"].append(label)
            continue
        negatives = tuple(dict.fromkeys(t for _, (texts, _) in cells[2:] for t in texts))
        pairs.extend(Pair(question, passage, negatives) for passage in passages)
    if problems and not drop_invalid:
        details = "; ".join(
            f"{len(rows)} {'row has' if len(rows) == 1 else 'rows have'} {what}: {_fmt_rows(rows)}"
            for what, rows in problems.items()
        )
        raise JobError(
            f"{records.source}: {details}.",
            "fill in or remove those rows, or pass --drop-invalid to drop them (they are then counted in the report).",
        )
    if not pairs:
        raise JobError(
            f"{records.source}: no valid (question, passage) rows remain.", "check the column mapping and the data."
        )
    if check_column_order:
        q_len = statistics.median(len(p.question) for p in pairs)
        p_len = statistics.median(len(p.passage) for p in pairs)
        if q_len > p_len and not _questions_are_questions(pairs):
            raise JobError(
                f"{records.source}: the question column '{question_column}' (median {q_len:.0f} characters) "
                f"is longer than the passage column '{passage_column}' (median {p_len:.0f}). "
                "The loss treats the first column as the "
                "query and the second as the passage, so the columns look swapped.",
                "swap --question-column and --passage-column, or pass --no-check-column-order if this is intended.",
            )
    return ValidationResult(pairs, {k: v for k, v in problems.items()})


def _questions_are_questions(pairs: list[Pair]) -> bool:
    """Most questions end in '?' and clearly more of them than of the passages: the columns are in order, however
    long the passages (short chunks of documents, e.g. `job run --docs` with a small --chunk-tokens)."""
    asked = sum(p.question.endswith("?") for p in pairs) / len(pairs)
    passages_asked = sum(p.passage.endswith("?") for p in pairs) / len(pairs)
    return asked >= 0.5 and asked >= passages_asked + 0.25


def dedupe_pairs(pairs: list[Pair]) -> tuple[list[Pair], int]:
    """Drop exact duplicate (question, passage) pairs (after whitespace stripping), keeping the first occurrence."""
    seen: set[tuple[str, str]] = set()
    out = []
    for p in pairs:
        if (p.question, p.passage) not in seen:
            seen.add((p.question, p.passage))
            out.append(p)
    return out, len(pairs) - len(out)


def pool_negatives(pairs: list[Pair]) -> tuple[list[Pair], int]:
    """Hard negatives belong to the question: every pair of a question gets all the negatives given on any of its
    rows (in order of first appearance), less any that is one of the question's own positives (a false negative).
    Returns the pairs and how many given negatives were dropped for being a positive."""
    if not any(p.negatives for p in pairs):
        return pairs, 0
    positives: dict[str, set[str]] = defaultdict(set)
    given: dict[str, dict[str, None]] = defaultdict(dict)
    for p in pairs:
        positives[p.question].add(p.passage)
        given[p.question].update(dict.fromkeys(p.negatives))
    kept = {q: tuple(n for n in negs if n not in positives[q]) for q, negs in given.items()}
    dropped = sum(len(negs) - len(kept[q]) for q, negs in given.items())
    pooled = [p if p.negatives == kept[p.question] else Pair(p.question, p.passage, kept[p.question]) for p in pairs]
    return pooled, dropped


def data_shape(pairs: list[Pair]) -> dict[str, int]:
    """Questions, how many have several positives, and the given hard negatives: for prepare's summary."""
    per_question: dict[str, int] = defaultdict(int)
    for p in pairs:
        per_question[p.question] += 1
    with_negatives = {p.question: len(p.negatives) for p in pairs if p.negatives}
    return {
        "questions": len(per_question),
        "questions_with_several_positives": sum(n > 1 for n in per_question.values()),
        "questions_with_given_negatives": len(with_negatives),
        "given_negatives": sum(with_negatives.values()),
    }


# --- splitting ----------------------------------------------------------------------------------
def split_pairs(
    pairs: list[Pair], val_fraction: float, test_fraction: float, seed: int, split_by: str = "pair"
) -> dict[str, list[Pair]]:
    """Seeded split. ``pair``: shuffle indices with ``random.Random(seed)``; the first
    ``round(n * test_fraction)`` are test, the next ``round(n * val_fraction)`` validation.
    ``passage``: the same over groups of pairs sharing one passage, so no passage crosses splits.

    Either way, all pairs of one question stay in one split (its other positives are relevant to it in the
    evaluation, and never training pairs of a test question): units (pairs, or passage groups) that share a
    question go together, to the split of the unit among them that comes first in the input, at that unit's
    place in the shuffled order. Data whose questions each have one unit is split exactly as described above."""
    if split_by == "pair":
        units = [[p] for p in pairs]
    else:
        by_passage: dict[str, list[Pair]] = {}
        for p in pairs:
            by_passage.setdefault(p.passage, []).append(p)
        units = list(by_passage.values())
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    together = _units_sharing_a_question(units)  # unit -> the first unit of its component
    members: dict[int, list[int]] = defaultdict(list)
    for u in order:  # a component's units in shuffled order
        members[together[u]].append(u)
    n = len(pairs)
    want = {"test": round(n * test_fraction), "validation": round(n * val_fraction)}
    placed: dict[int, str] = {}
    size = {s: 0 for s in SPLITS}
    current = "test"
    for u in order:
        if together[u] != u:  # not the component's first unit: placed with it
            continue
        while current != "train" and size[current] >= want[current]:
            current = "validation" if current == "test" else "train"
        for member in members[u]:
            placed[member] = current
            size[current] += len(units[member])
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for u in order:
        out[placed[u]].extend(units[u])
    starved = not out["train"] or (want["validation"] and not out["validation"])
    if split_by == "passage" and starved and len(members) < len(units):
        biggest = max(members.values(), key=lambda m: sum(len(units[u]) for u in m))
        pairs_in = sum(len(units[u]) for u in biggest)
        raise JobError(
            f"--split-by passage keeps every passage, and every question, in one split; but questions with several "
            f"positives join {len(biggest)} passages ({pairs_in} of the {n} pairs) into one group, so the "
            "train / validation / test split cannot be made.",
            "use --split-by pair (each question still stays in one split; a passage may then be in several).",
        )
    return out


def _units_sharing_a_question(units: list[list[Pair]]) -> list[int]:
    """For each unit, the lowest-numbered unit connected to it through shared questions (union-find)."""
    parent = list(range(len(units)))

    def root(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    first_with: dict[str, int] = {}
    for u, unit in enumerate(units):
        for p in unit:
            other = first_with.setdefault(p.question, u)
            a, b = root(u), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [root(u) for u in range(len(units))]


# --- IR sets ------------------------------------------------------------------------------------
def build_ir_corpus(splits: dict[str, list[Pair]]) -> tuple[dict[str, str], dict[str, str]]:
    """All unique passages of all splits. Identical passages share one id, so retrieving either
    copy counts as a hit. Returns (corpus id -> text, text -> corpus id)."""
    ids: dict[str, str] = {}
    for split in SPLITS:
        for p in splits.get(split, []):
            if p.passage not in ids:
                ids[p.passage] = f"d{len(ids)}"
    return {cid: text for text, cid in ids.items()}, ids


def build_ir_queries(
    pairs: list[Pair], passage_ids: dict[str, str], prefix: str
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """One query per unique question; a question paired with several passages has several relevant docs."""
    qids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for p in pairs:
        qid = qids.setdefault(p.question, f"{prefix}{len(qids)}")
        qrels.setdefault(qid, {})[passage_ids[p.passage]] = 1
    return {qid: text for text, qid in qids.items()}, qrels


def leakage_report(splits: dict[str, list[Pair]]) -> dict[str, Any]:
    train_passages = {p.passage for p in splits["train"]}
    train_questions = {p.question for p in splits["train"]}
    test = splits["test"]
    passage_leaks = [p for p in test if p.passage in train_passages]
    question_leaks = [p for p in test if p.question in train_questions]
    return {
        "test_pairs": len(test),
        "test_pairs_whose_passage_is_in_train": len(passage_leaks),
        "fraction_passage_in_train": round(len(passage_leaks) / len(test), 4) if test else 0.0,
        "test_questions_also_in_train": len(question_leaks),
        "examples": [{"question": p.question, "passage": p.passage[:200]} for p in passage_leaks[:5]],
        "note": "A test question whose passage also has a training question is easier than an unseen passage; "
        "use --split-by passage to keep every passage in one split.",
    }


def leakage_against_test_set(splits: dict[str, list[Pair]], test: IRData) -> dict[str, Any]:
    """Leakage between the training pairs and a separate (BEIR) test set, by text: test questions that
    are also training questions, and test-relevant documents that are also training passages."""
    train_passages = {p.passage.strip() for p in splits["train"]}
    train_questions = {p.question.strip() for p in splits["train"]}
    relevant = test.relevant_docs()
    cited = {doc for docs in relevant.values() for doc in docs}
    leaked_docs = sorted(d for d in cited if test.corpus.get(d, "").strip() in train_passages)
    leaked_questions = sorted(q for q in relevant if test.queries.get(q, "").strip() in train_questions)
    queries_citing_leaked = sum(1 for docs in relevant.values() if docs & set(leaked_docs))
    return {
        "test_queries": len(relevant),
        "test_relevant_documents": len(cited),
        "test_relevant_documents_in_train": len(leaked_docs),
        "test_queries_citing_a_document_in_train": queries_citing_leaked,
        "test_queries_also_in_train": len(leaked_questions),
        "test_pairs_whose_passage_is_in_train": queries_citing_leaked,
        "examples": [{"document": d, "text": test.corpus[d][:200]} for d in leaked_docs[:5]]
        + [{"query": q, "text": test.queries[q][:200]} for q in leaked_questions[:5]],
        "note": "Test documents that are also training passages (or test questions that are also training questions) "
        "make the test easier than unseen data; remove them from the training pairs for a clean measurement.",
    }


# --- BEIR format --------------------------------------------------------------------------------
def write_beir(directory: Path, data: IRData, split: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "qrels").mkdir(exist_ok=True)
    write_jsonl(
        directory / "corpus.jsonl", ({"_id": cid, "title": "", "text": text} for cid, text in data.corpus.items())
    )
    write_jsonl(directory / "queries.jsonl", ({"_id": qid, "text": text} for qid, text in data.queries.items()))
    with (directory / "qrels" / f"{split}.tsv").open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["query-id", "corpus-id", "score"])
        for qid, docs in data.qrels.items():
            for cid, grade in docs.items():
                w.writerow([qid, cid, grade])


def load_beir(
    directory: str | Path, split: str = "test", *, option: str = "--eval-data", split_option: str = "--eval-split"
) -> IRData:
    """Read a BEIR folder; graded relevance (score > 1) is kept, score 0 rows are not relevant.
    ``option`` / ``split_option`` name the flags that gave the folder and split, for the fixes."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise JobError(
            f"BEIR folder {d} (given with {option}) {'is a file, not a folder' if d.exists() else 'does not exist'}.",
            f"pass to {option} a folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv.",
        )
    qrels_path = d / "qrels" / f"{split}.tsv"
    for needed in (d / "corpus.jsonl", d / "queries.jsonl", qrels_path):
        if not needed.is_file():
            have = sorted(p.name for p in (d / "qrels").glob("*.tsv")) if (d / "qrels").is_dir() else []
            extra = f" (qrels splits present: {', '.join(have)})" if have and needed == qrels_path else ""
            raise JobError(
                f"{d} (given with {option}) is not a BEIR folder: it lacks {needed.relative_to(d)}{extra}.",
                f"add the file, or pick another {split_option}"
                if needed == qrels_path
                else "add the file (BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)",
            )

    def text_of(obj: dict, path: Path) -> str:
        title, text = obj.get("title") or "", obj.get("text")
        if not isinstance(text, str):
            raise JobError(f"{path}: entry {obj.get('_id')!r} has no text.", 'give every entry a "text" string.')
        return f"{title} {text}".strip() if title else text

    def entries(path: Path) -> dict[str, str]:
        out = {}
        for lineno, obj in json_lines(path, path.read_text(encoding="utf-8")):
            if not isinstance(obj, dict) or "_id" not in obj:
                raise JobError(f'{path} line {lineno} has no "_id".', 'give every entry an "_id" and a "text".')
            out[str(obj["_id"])] = text_of(obj, path)
        return out

    corpus = entries(d / "corpus.jsonl")
    queries = entries(d / "queries.jsonl")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if not row or (lineno == 1 and not _is_number(row[-1])):
                continue
            if len(row) < 3 or not _is_number(row[2]):
                raise JobError(
                    f"{qrels_path} line {lineno} is not 'query-id<TAB>corpus-id<TAB>score'.", "fix that line."
                )
            qid, cid, grade = row[0], row[1], int(float(row[2]))
            if qid not in queries or cid not in corpus:
                missing = "query" if qid not in queries else "corpus"
                raise JobError(
                    f"{qrels_path} line {lineno} names a {missing} id that is not in {missing}.jsonl.", "fix the ids."
                )
            qrels.setdefault(qid, {})[cid] = grade
    data = IRData(corpus, {q: t for q, t in queries.items() if q in qrels}, qrels)
    if not data.relevant_docs():
        raise JobError(f"{qrels_path} has no relevant (score > 0) pairs.", "check the qrels file.")
    return data


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON Lines file the job wrote (lines end at "\\n" only, as in :func:`json_lines`)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def write_pairs(path: Path, pairs: list[Pair]) -> None:
    """One JSON object per pair: anchor, positive, and the given hard negatives (a list) when the pair has any."""
    write_jsonl(
        path,
        ({"anchor": p.question, "positive": p.passage, **({"negatives": list(p.negatives)} if p.negatives else {})}
         for p in pairs),
    )  # fmt: skip


def read_pairs(path: Path) -> list[Pair]:
    return [Pair(r["anchor"], r["positive"], tuple(r.get("negatives") or ())) for r in read_jsonl(path)]


def count_truncated(texts: list[str], tokenizer, max_length: int, batch_size: int = 1024) -> int:
    """How many texts exceed ``max_length`` tokens (special tokens included) and will be truncated."""
    n = 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], add_special_tokens=True, truncation=False)["input_ids"]
        n += sum(len(ids) > max_length for ids in enc)
    return n
