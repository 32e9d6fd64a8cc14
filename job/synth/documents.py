"""Documents in, chunks out: the first half of `job synthesize`.

- :func:`read_documents` takes files and folders (recursively) of ``.txt``, ``.md``, ``.html``, ``.pdf``
  (pypdf) and ``.jsonl`` / ``.csv`` (one document per row, from a text column). A file that cannot be read
  (not UTF-8, a broken or encrypted PDF, a table without the text column) or that holds no text is
  listed with the reason and skipped, never silently; a file of another kind is listed as unsupported.
- :func:`chunk_documents` splits every document with semchunk, sized in the base model's own tokens
  (``chunk_tokens``, ``chunk_overlap``), and drops repeated chunks (same text after whitespace and case
  folding), counting them. semchunk splits at the most meaningful boundary that fits (paragraphs, then
  sentences, then clauses, then words), takes any Hugging Face tokenizer as its token counter, and has
  no dependencies of its own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from job.errors import JobError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
HTML_SUFFIXES = (".html", ".htm")
TABLE_SUFFIXES = (".jsonl", ".ndjson", ".csv")
SUPPORTED = TEXT_SUFFIXES + HTML_SUFFIXES + TABLE_SUFFIXES + (".pdf",)
TEXT_COLUMNS = ("text", "content", "context", "passage", "document", "body", "chunk")


@dataclass
class Document:
    id: str  # the file's path (as given, relative to a folder given), plus "#row N" for table rows
    text: str


@dataclass
class Chunk:
    id: str  # "c" + 12 hex digits of the chunk's normalised text: stable across runs and machines
    text: str
    document: str
    index: int  # position of the chunk in its document


@dataclass
class ReadResult:
    documents: list[Document] = field(default_factory=list)
    files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


class _HTMLText(HTMLParser):
    """The visible text of an HTML page: no scripts, styles or markup; block elements end a line."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "noscript", "template"):
            self._skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "noscript", "template"):
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def clean(text: str) -> str:
    """Whitespace tidied (runs of spaces to one, at most one blank line), control characters removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[^\S\n]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def html_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return clean("".join(parser.parts))


def pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    if reader.is_encrypted:
        try:
            if not reader.decrypt(""):
                raise ValueError("it is encrypted with a password")
        except Exception as exc:  # noqa: BLE001 - pypdf raises several kinds for an unsupported encryption
            raise ValueError(f"it is encrypted ({exc})") from None
    return clean("\n\n".join((page.extract_text() or "") for page in reader.pages))


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _table_rows(path: Path, suffix: str) -> Iterable[tuple[int, dict]]:
    text = _read_text(path)
    if suffix == ".csv":
        csv.field_size_limit(sys.maxsize)  # a long passage is data, not an error
        # io.StringIO with newline="": the csv module finds the row ends itself (quoted newlines stay in a field)
        yield from ((i + 1, row) for i, row in enumerate(csv.DictReader(io.StringIO(text, newline=""))))
        return
    for n, line in enumerate(text.split("\n"), 1):  # "\n" only: U+2028 / U+0085 are legal inside JSON strings
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {n} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"line {n} is not a JSON object")
        yield n, row


def _table_documents(path: Path, label: str, text_column: str | None) -> list[Document]:
    docs = []
    column = text_column
    suffix = Path(label).suffix.lower()
    unit = "row" if suffix == ".csv" else "line"
    for n, row in _table_rows(path, suffix):
        if column is None:
            lower = {str(k).lower(): k for k in row}
            column = next((lower[c] for c in TEXT_COLUMNS if c in lower), None)
            if column is None:
                raise ValueError(
                    f"no text column (looked for {', '.join(TEXT_COLUMNS)}; it has {', '.join(map(str, row))}); "
                    "name it with --text-column"
                )
        if column not in row:
            raise ValueError(f"{unit} {n} has no column '{column}'")
        value = row[column]
        if isinstance(value, str) and value.strip():
            docs.append(Document(f"{label}#{unit} {n}", clean(value)))
    return docs


SPECIAL_ROOTS = ("/proc", "/sys", "/dev")  # file systems whose "files" are the machine's state, never documents


def safe_label(text: str) -> str:
    """A file name as text that can be printed and stored: bytes that are not UTF-8 become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _walk(root: Path) -> Iterator[tuple[Path, str] | tuple[None, str, str]]:
    """Every entry under ``root`` that is not a folder, in a stable order, without recursion (a folder nested
    thousands deep is data, not a crash) and without following links to folders. Yields (path, label), or
    (None, label, reason) for a folder that cannot be listed."""
    stack = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield None, safe_label(rel or str(folder)), f"cannot list this folder ({exc.strerror or exc})"
            continue
        below = []
        for e in entries:
            label = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                below.append((Path(e.path), label))
            elif not e.name.startswith("."):
                yield Path(e.path), label
        stack += reversed(below)


def _judge(path: Path, root: Path | None) -> tuple[Path | None, str | None]:
    """(the path to read, None), or (None, why it is not read): links that leave ``root`` (the folder given,
    resolved), broken links, link loops, links to folders, special files and special file systems."""
    target = path
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except FileNotFoundError:
            return None, "a broken symbolic link (its target does not exist)"
        except (RuntimeError, OSError) as exc:
            return None, f"a symbolic link that cannot be followed ({getattr(exc, 'strerror', None) or 'a loop'})"
        if root is not None and not target.is_relative_to(root):
            return None, f"a symbolic link to {safe_label(str(target))}, outside {safe_label(str(root))}: not read"
        if target.is_dir():
            return None, "a symbolic link to a folder: not followed"
    else:
        target = path.resolve()
    if any(target.is_relative_to(r) for r in SPECIAL_ROOTS):
        return None, f"on a special file system ({safe_label(str(target))}): not read"
    try:
        mode = target.stat().st_mode
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        return None, f"not a regular file ({kind}): not read"
    return target, None


def list_files(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """(file to read, label) for every document file under ``paths`` in a stable order (labels relative to a
    folder given), and (label, reason) for every entry that is not read. Only regular files inside a folder
    given are read: a link out of it, a special file or a special file system is listed, never opened."""
    files, skipped = [], []
    for given in paths:
        p = Path(given).expanduser()
        if p.is_dir():
            root = p.resolve()
            for path, label, *why in _walk(p):
                if path is None:
                    skipped.append((label, why[0]))
                    continue
                label = safe_label(label)
                target, reason = _judge(path, root)
                if reason or target is None:
                    skipped.append((label, reason or "not readable"))
                else:
                    files.append((target, label))
        elif p.exists() or p.is_symlink():
            label = safe_label(p.name)
            target, reason = _judge(p, None)
            if reason or target is None:
                skipped.append((label, reason or "not readable"))
            else:
                files.append((target, label))
        else:
            raise JobError(f"Documents path {safe_label(str(p))} does not exist.", "check the path given to --docs.")
    return files, skipped


def collect_files(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(file, label) for every readable document file under ``paths`` (see :func:`list_files`)."""
    return list_files(paths)[0]


def read_documents(paths: Iterable[str | Path], text_column: str | None = None) -> ReadResult:
    result = ReadResult()
    files, skipped = list_files(paths)
    result.files = len(files) + len(skipped)
    result.skipped += skipped
    for path, label in files:
        suffix = Path(label).suffix.lower()  # the kind the name says (a link inside the folder reads its target)
        if suffix not in SUPPORTED:
            result.skipped.append((label, f"unsupported file type '{suffix or '(none)'}'"))
            continue
        try:
            if suffix in TABLE_SUFFIXES:
                docs = _table_documents(path, label, text_column)
            elif suffix == ".pdf":
                docs = [Document(label, pdf_text(path))]
            elif suffix in HTML_SUFFIXES:
                docs = [Document(label, html_text(_read_text(path)))]
            else:
                docs = [Document(label, clean(_read_text(path)))]
        except Exception as exc:  # noqa: BLE001 - any reader failure skips the file, named with its reason
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result.skipped.append((label, f"unreadable: {reason}"))
            continue
        docs = [d for d in docs if d.text]
        if not docs:
            result.skipped.append((label, "no text" + (" (a scanned PDF needs OCR first)" if suffix == ".pdf" else "")))
            continue
        result.documents += docs
    return result


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def chunk_id(text: str) -> str:
    return "c" + hashlib.sha256(normalise(text).encode()).hexdigest()[:12]


def chunk_documents(
    documents: list[Document], tokenizer, chunk_tokens: int, overlap: int = 0
) -> tuple[list[Chunk], int]:
    """Every document in chunks of at most ``chunk_tokens`` tokens of ``tokenizer`` (``overlap`` tokens
    shared by neighbours); repeated chunks kept once. Returns (chunks, repeats dropped)."""
    import semchunk

    if chunk_tokens < 8:
        raise JobError(f"chunk_tokens is {chunk_tokens}; it must be at least 8.", "pass e.g. --chunk-tokens 256.")
    if not 0 <= overlap < chunk_tokens:
        raise JobError(
            f"chunk_overlap is {overlap}; it must be 0 or more and below chunk_tokens ({chunk_tokens}).",
            "pass e.g. --chunk-overlap 32.",
        )
    chunker = semchunk.chunkerify(tokenizer, chunk_tokens)
    chunks, seen, repeats = [], set(), 0
    for doc in documents:
        pieces: list[str] = chunker(doc.text, overlap=overlap or None)  # type: ignore[assignment]  # (str in: str out)
        for i, text in enumerate(pieces):
            text = text.strip()
            if not text:
                continue
            cid = chunk_id(text)
            if cid in seen:
                repeats += 1
                continue
            seen.add(cid)
            chunks.append(Chunk(cid, text, doc.id, i))
    return chunks, repeats
