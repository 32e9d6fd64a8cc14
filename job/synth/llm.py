"""Questions from an OpenAI-compatible chat endpoint: the prompt, the client, the answer cache.

- Any server that speaks OpenAI's chat-completions API works (OpenAI, vLLM, Ollama, llama.cpp's server,
  TGI, LiteLLM and other gateways): the official ``openai`` client talks to ``--llm-base-url``. Its own
  retry loop (exponential back-off with jitter, honouring ``Retry-After``) repeats a request on 408/409/
  429/5xx, timeouts and dropped connections, ``--llm-max-retries`` times, each try limited by
  ``--llm-timeout`` seconds.
- The key comes only from the environment (``OPENAI_API_KEY``, or the variable ``--llm-api-key-env``
  names). It is never taken from the command line, and every message this module raises has it masked.
- :class:`AnswerCache`: every answer is appended to a JSONL file (flushed and fsynced) the moment it
  arrives, keyed by the chunk's text, the prompt and the generation settings, so a killed run asked
  again asks only for what is missing. Only usable answers are final: a failed request or an empty reply is
  asked again on the next run. A damaged line is skipped and counted, the lines after it kept; a torn last
  line (a kill mid-write) is cut off.
- Secrets: the key, and the credentials a ``--llm-base-url`` may carry (user-info, ``?api-key=``), are masked
  in every message and never stored (:mod:`job.redact`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from job.errors import JobError
from job.redact import mask, redact_url, url_secrets

PASSAGE_SLOT = "{passage}"
COUNT_SLOT = "{n}"
ROLES = ("system", "user", "assistant")
_SECTION = re.compile(r"^###\s*(system|user|assistant)\s*$", re.IGNORECASE | re.MULTILINE)

# A few-shot prompt: small local models (SmolLM2-135M here) follow an example far better than an instruction.
# The example is deliberately of no domain users bring (a bridge and its traffic), so what a small model copies
# from it is caught by the grounding filter (job.synth.grounding), never mistaken for the user's subject.
DEFAULT_PROMPT = """### system
You write search questions. Given a passage from a document, write {n} specific question(s) that the passage \
answers, one per line. A question must make sense on its own, without the passage: name what it is about, using \
only names, numbers and terms that appear in the passage. Reply with the question(s) only, each ending with a \
question mark.
### user
Passage: The Harwick Bridge, opened in 1932, carries about 18,000 vehicles a day across the Tamsin River.
### assistant
How many vehicles cross the Harwick Bridge each day?
### user
Passage: {passage}
"""

# --query-form statement: the same instructions for a claim or search phrase (users who search with statements,
# e.g. SciFact's claims); its example paraphrases the passage (a copied sentence is dropped as copies_chunk)
STATEMENT_PROMPT = """### system
You write search queries. Given a passage from a document, write {n} short statement(s) that a person searching \
for this passage would type: a claim the passage supports, in your own words, one per line. A statement must make \
sense on its own, without the passage: name what it is about, using only names, numbers and terms that appear in \
the passage. Reply with the statement(s) only, not questions.
### user
Passage: The Harwick Bridge, opened in 1932, carries about 18,000 vehicles a day across the Tamsin River.
### assistant
Some 18,000 vehicles use the Harwick Bridge daily.
### user
Passage: {passage}
"""
BUILT_IN = {"question": DEFAULT_PROMPT, "statement": STATEMENT_PROMPT}


@dataclass(frozen=True)
class Prompt:
    """Chat messages with ``{passage}`` (and optionally ``{n}``) slots; ``source`` names where it came from."""

    messages: tuple[tuple[str, str], ...]
    source: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.messages).encode()).hexdigest()[:12]

    def render(self, passage: str, n: int) -> list[dict[str, str]]:
        # plain replacement, not str.format: passages hold braces
        return [
            {"role": role, "content": text.replace(COUNT_SLOT, str(n)).replace(PASSAGE_SLOT, passage)}
            for role, text in self.messages
        ]


def parse_prompt(text: str, source: str) -> Prompt:
    """A prompt file: plain text (one user message), or sections that start with a line
    ``### system`` / ``### user`` / ``### assistant`` (few-shot examples). ``{passage}`` is required."""
    if PASSAGE_SLOT not in text:
        raise JobError(
            f"The prompt {source} has no {PASSAGE_SLOT} slot, so the passage would never reach the LLM.",
            f"put {PASSAGE_SLOT} where the passage goes (and optionally {COUNT_SLOT} for --questions-per-chunk).",
        )
    marks = list(_SECTION.finditer(text))
    if not marks:
        return Prompt((("user", text.strip()),), source)
    if text[: marks[0].start()].strip():
        raise JobError(
            f"The prompt {source} has text before its first '### system|user|assistant' line.",
            "start the file with a section line, or use no section lines at all (one user message).",
        )
    messages = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        messages.append((m[1].lower(), text[m.end() : end].strip()))
    if messages[-1][0] != "user" or PASSAGE_SLOT not in messages[-1][1]:
        raise JobError(
            f"The prompt {source} must end with a '### user' section holding {PASSAGE_SLOT}.",
            "put the passage in the last user message (examples go before it).",
        )
    return Prompt(tuple(messages), source)


def load_prompt(path: str | None, form: str = "question") -> Prompt:
    """The prompt file's, or the built-in prompt for the query form (``question`` or ``statement``)."""
    if path is None:
        return parse_prompt(BUILT_IN[form], "(built-in)" if form == "question" else f"(built-in, {form}s)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise JobError(f"Prompt file {p} does not exist.", "pass a text file to --prompt-file.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"Prompt file {p} cannot be read ({exc}).", "save it as UTF-8 text.") from None
    return parse_prompt(text, str(p))


# --- settings and the client ---------------------------------------------------------------------
@dataclass(frozen=True)
class LLMSettings:
    base_url: str | None
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    questions: int = 1
    temperature: float = 0.0
    max_tokens: int = 64
    timeout: float = 60.0
    max_retries: int = 5
    concurrency: int = 4

    def generation_key(self) -> dict[str, Any]:
        """What an answer depends on besides the chunk and the prompt (the cache key's other half)."""
        return {
            "model": self.model,
            "questions": self.questions,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def describe(self) -> str:
        """For messages: the URL with its credentials masked (user-info, key-like query values)."""
        return f"{self.model} at {redact_url(self.base_url) or 'the OpenAI API'}"

    def secrets(self) -> list[str]:
        """Every value that must never be shown: the key from the environment, the URL's credentials."""
        key = os.environ.get(self.api_key_env, "").strip()
        return [*([key] if len(key) >= 4 else []), *url_secrets(self.base_url)]


def api_key(settings: LLMSettings) -> str:
    """The key from the environment. Without one a placeholder is sent: local servers need none, and a
    server that does answers 401, which :func:`fatal_error` turns into the fix."""
    return os.environ.get(settings.api_key_env, "").strip() or "no-key-set"


def make_client(settings: LLMSettings):
    try:
        import openai
    except ImportError:
        raise JobError(
            "job synthesize needs the openai package (the official client for OpenAI-compatible endpoints).",
            "pip install 'rag-embed-finetune[synth]' (the README's set-up installs it).",
        ) from None
    return openai.OpenAI(
        base_url=settings.base_url,
        api_key=api_key(settings),
        timeout=settings.timeout,
        max_retries=settings.max_retries,
    )


def masked(text: str, settings: LLMSettings) -> str:
    """``text`` with the key, the URL's credentials, bearer tokens and key-shaped values masked."""
    return mask(text, settings.secrets())


def check_base_url(url: str | None) -> None:
    """An endpoint must be an http(s) URL with a host: anything else is named up front (credentials masked),
    not after a minute of retries."""
    if url is None:
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        why = "has no host" if parts is not None and parts.scheme in ("http", "https") else "is not an http(s) URL"
        raise JobError(
            f"The LLM endpoint {redact_url(url)!r} given with --llm-base-url {why}.",
            "pass the server's OpenAI-compatible base URL, e.g. --llm-base-url http://127.0.0.1:8080/v1 (or leave it "
            "out for OpenAI's API).",
        )


def _status_text(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "message", None) or str(exc)
    return f"HTTP {status}: {body}" if status else body


def fatal_error(exc: Exception, settings: LLMSettings, kept: str) -> JobError | None:
    """The JobError for an error that no retry can mend (wrong key, unknown model, endpoint down, rate
    limits that outlast the retries), or None for an error that concerns only one chunk."""
    import openai

    where = settings.describe()
    what = masked(_status_text(exc), settings)[:300]
    again = f" {kept} Rerun the same command to continue: only the missing answers are asked for."
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return JobError(
            f"The LLM endpoint ({where}) refused the key ({what}).{again}",
            f"set {settings.api_key_env} to a valid key in the environment (never on the command line), or name "
            "the variable holding it with --llm-api-key-env.",
        )
    if isinstance(exc, openai.NotFoundError):
        return JobError(
            f"The LLM endpoint ({where}) does not know the model or the path ({what}).{again}",
            "check --llm-model against the server's model list, and that --llm-base-url ends where the API starts "
            "(usually .../v1).",
        )
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts, after every retry
        return JobError(
            f"Cannot reach the LLM endpoint ({where}) after {settings.max_retries} retries ({what}).{again}",
            "start the server or fix --llm-base-url; for a slow server raise --llm-timeout.",
        )
    if isinstance(exc, openai.RateLimitError):
        return JobError(
            f"The LLM endpoint ({where}) kept rate-limiting after {settings.max_retries} retries ({what}).{again}",
            "lower --llm-concurrency, raise --llm-max-retries, or raise the account's rate limit.",
        )
    if isinstance(exc, openai.InternalServerError):
        return JobError(
            f"The LLM endpoint ({where}) kept failing after {settings.max_retries} retries ({what}).{again}",
            "check the server's log; rerun when it is healthy.",
        )
    return None


def ask(client, settings: LLMSettings, messages: list[dict[str, str]]) -> dict[str, Any]:
    """One chat completion: the answer text and the tokens it cost (None where the server does not say)."""
    start = time.perf_counter()
    response = client.chat.completions.create(
        model=settings.model,
        messages=messages,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
    )
    choices = getattr(response, "choices", None)  # a junk reply (a server fault) has none: an empty answer
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = getattr(choice, "message", None)
    usage = getattr(response, "usage", None)
    answer = getattr(message, "content", None) or ""
    return {
        "answer": answer.encode("utf-8", "replace").decode("utf-8") if isinstance(answer, str) else "",
        "finish_reason": getattr(choice, "finish_reason", None),
        "tokens_in": getattr(usage, "prompt_tokens", None),
        "tokens_out": getattr(usage, "completion_tokens", None),
        "seconds": round(time.perf_counter() - start, 3),
    }


# --- the answer cache ----------------------------------------------------------------------------
def answer_key(chunk_text: str, prompt: Prompt, settings: LLMSettings) -> str:
    payload = json.dumps([chunk_text, prompt.messages, settings.generation_key()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def usable(record: dict[str, Any] | None) -> bool:
    """A final answer: text came back. A failed request (no answer) or an empty reply (a server fault, a cut
    connection) is kept for the record but asked again on the next run."""
    return record is not None and isinstance(record.get("answer"), str) and bool(record["answer"].strip())


def plausible_tokens(value: Any, limit: int) -> int | None:
    """A token count the server reported, or None when it is missing, not a count, or beyond ``limit`` (a
    server that reports nonsense must not turn into a bill)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        return None
    return value


_FIELDS = {  # what a cache line must hold, and the types each field may have
    "key": (str,),
    "answer": (str, type(None)),
    "tokens_in": (int, type(None)),
    "tokens_out": (int, type(None)),
    "seconds": (int, float, type(None)),
}


def _record(line: bytes) -> dict[str, Any] | None:
    """A cache line as a record, or None when it is not one (torn, not JSON, or the wrong shape)."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) or not rec["key"]:
        return None
    if any(not isinstance(rec.get(k), types) for k, types in _FIELDS.items() if k != "key"):
        return None
    return rec


class AnswerCache:
    """Answers on disk, one JSON object per line, appended as they arrive (thread-safe).

    A damaged line anywhere (not JSON, the wrong shape) is skipped and counted, and the lines after it are
    kept; only a torn LAST line (a kill mid-write) is cut off, so that the next answer starts a line of its
    own. The file is opened without following a symbolic link."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.torn = 0
        self.damaged: list[int] = []  # line numbers skipped
        self._lock = threading.Lock()
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            what = "a symbolic link" if self.path.is_symlink() else "a folder" if self.path.is_dir() else "not a file"
            raise JobError(
                f"The answer cache {self.path} is {what}; it must be a plain file (or not exist yet).",
                "move it away, or pass another --out (the cache is <out stem>.answers.jsonl beside it).",
            )
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise JobError(
                f"The answer cache {self.path} cannot be read ({exc.strerror}).", "check its permissions."
            ) from None
        lines = raw.split(b"\n")  # on "\n" only: U+2028 and U+0085 are legal inside JSON strings
        tail = lines.pop()  # b"" when the file ends with a newline
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            rec = _record(line)
            if rec is None:
                self.damaged.append(n)
                continue
            self.records[rec["key"]] = rec  # a later answer for the same key wins
        if tail.strip():
            rec = _record(tail)
            with self._open("r+b") as fh:
                if rec is not None:  # whole but unterminated: keep it, end its line
                    self.records[rec["key"]] = rec
                    fh.seek(0, os.SEEK_END)
                    fh.write(b"\n")
                else:  # torn by a kill mid-write: cut it off
                    self.torn += 1
                    fh.truncate(len(raw) - len(tail))

    def _open(self, mode: str):
        flags = (os.O_RDWR if "+" in mode else os.O_WRONLY) | os.O_NOFOLLOW | (os.O_APPEND if "a" in mode else 0)
        if "a" in mode:
            flags |= os.O_CREAT
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise JobError(
                    f"The answer cache {self.path} is a symbolic link; it is never written through.",
                    "move the link away, or pass another --out.",
                ) from None
            raise
        return os.fdopen(fd, mode)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=True) + "\n").encode()  # ASCII: no text can break the file
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._open("ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.records[record["key"]] = record
