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
  again asks only for what is missing. A torn last line (a kill mid-write) is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.errors import JobError

PASSAGE_SLOT = "{passage}"
COUNT_SLOT = "{n}"
ROLES = ("system", "user", "assistant")
_SECTION = re.compile(r"^###\s*(system|user|assistant)\s*$", re.IGNORECASE | re.MULTILINE)

# A few-shot prompt: small local models (SmolLM2-135M here) follow an example far better than an instruction.
DEFAULT_PROMPT = """### system
You write search questions. Given a passage from a document, write {n} specific question(s) that the passage \
answers, one per line. A question must make sense on its own, without the passage: name what it is about. \
Reply with the question(s) only, each ending with a question mark.
### user
Passage: In fiscal 2022 the company opened 120 new stores in North America, bringing the total to 1,450 stores.
### assistant
How many stores did the company have in North America at the end of fiscal 2022?
### user
Passage: {passage}
"""


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


def load_prompt(path: str | None) -> Prompt:
    if path is None:
        return parse_prompt(DEFAULT_PROMPT, "(built-in)")
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
        return f"{self.model} at {self.base_url or 'the OpenAI API'}"


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
    """``text`` with the key (and anything that looks like a bearer token) masked."""
    key = os.environ.get(settings.api_key_env, "").strip()
    if key and len(key) >= 4:
        text = text.replace(key, "***")
    return re.sub(r"(Bearer\s+)\S+", r"\1***", text)


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
    choice = response.choices[0] if response.choices else None
    usage = getattr(response, "usage", None)
    return {
        "answer": (choice.message.content if choice and choice.message else None) or "",
        "finish_reason": choice.finish_reason if choice else None,
        "tokens_in": getattr(usage, "prompt_tokens", None),
        "tokens_out": getattr(usage, "completion_tokens", None),
        "seconds": round(time.perf_counter() - start, 3),
    }


# --- the answer cache ----------------------------------------------------------------------------
def answer_key(chunk_text: str, prompt: Prompt, settings: LLMSettings) -> str:
    payload = json.dumps([chunk_text, prompt.messages, settings.generation_key()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class AnswerCache:
    """Answers on disk, one JSON object per line, appended as they arrive (thread-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.torn = 0
        self._lock = threading.Lock()
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        good_end = 0
        for line in raw.splitlines(keepends=True):
            try:
                rec = json.loads(line)
                if not line.endswith(b"\n"):
                    raise ValueError("no newline: cut short")
            except ValueError:
                self.torn += 1
                break  # a kill mid-write leaves at most the last line torn; nothing after it is trusted
            self.records[rec["key"]] = rec
            good_end += len(line)
        if good_end < len(raw):  # drop the torn tail so that new answers start on a line of their own
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.records[record["key"]] = record
