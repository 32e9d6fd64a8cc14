"""`make docs-images`: docs/serve.png from the demo run, by one command.

Runs what is missing (`job run` for the demo, `rag-eval index` and `rag-eval score` over it), starts `rag-eval serve`
on 127.0.0.1 (a free port), asks a held-out question in headless Chromium, screenshots the page and stops the
server by its PID. Before the picture replaces docs/serve.png it is checked: the page names the models, not file
paths, and shows the README table's numbers (baseline and fine-tuned NDCG@10 at every dim, to the fourth decimal);
otherwise the old picture stays and the command fails, saying which.

    .venv/bin/python scripts/docs_images.py [--run-dir runs/demo] [--out docs/serve.png]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests" / "rag_eval"))
sys.path.insert(0, str(ROOT / "tests"))

QUESTION = "How big was Lumetric before Corvane bought it, and where is it reported?"
PATH_HINTS = ("site-packages", "/.venv/", "/home/", "/root/", "/tmp/")


def run(*cmd: str) -> None:
    print("docs-images:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"docs-images: rag-eval serve exited with {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"docs-images: rag-eval serve did not answer {url} within {timeout:.0f} s")


def problems(text: str, table: dict[int, tuple[float, float]]) -> list[str]:
    """What the page shows that docs/ must not: file paths, numbers other than the README's."""
    found = [f"a file path ({hint!r})" for hint in PATH_HINTS if hint in text]
    if str(ROOT) in text:
        found.append(f"the checkout's path ({ROOT})")
    shown = set(re.findall(r"\b0\.\d{4}\b", text))
    for dim, (base, tuned) in table.items():
        for name, value in (("baseline", base), ("fine-tuned", tuned)):
            if f"{value:.4f}" not in shown:
                found.append(f"no {name} NDCG@10 {value:.4f} at dim {dim} (the README's table)")
    return found


def screenshot(url: str, out: Path, dim: int, question: str) -> str:
    import serve_browser as browser

    why = browser.missing()
    if why:
        raise SystemExit(f"docs-images: {why} (`make browser` installs them)")
    d = browser.driver(1400, 1500)
    try:
        browser.open_page(d, url)
        label = next(x for x in d.find_elements("css selector", "#dim label") if x.text.strip() == str(dim))
        label.click()  # no answer yet to wait for: the question below is asked at this dim
        browser.ask(d, question)
        full = d.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
        d.set_window_size(1400, min(max(1500, full + 150), 4000))  # + the window's own bars: the page whole
        time.sleep(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(out))
        return d.execute_script("return document.body.innerText")
    finally:
        d.quit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=Path(os.environ.get("RUN_DIR", "runs/demo")))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serve.png")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--question", default=QUESTION)
    args = ap.parse_args()
    from test_readme_numbers import readme_demo_table

    run_dir = args.run_dir
    if not (run_dir / "report" / "metrics.json").is_file():
        run(str(BIN / "job"), "run", "--run-dir", str(run_dir))
    if not (run_dir / "rag_eval" / "metrics.json").is_file():
        run(str(BIN / "rag-eval"), "index", "--model", str(run_dir))
        run(str(BIN / "rag-eval"), "score", "--model", str(run_dir))

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = (ROOT / "build" / "docs-images-serve.log").resolve()
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "rag-eval"), "serve", "--model", str(run_dir), "--host", "127.0.0.1", "--port", str(port)]
    print("docs-images:", " ".join(cmd), f"(log {log.relative_to(ROOT)})", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(url, proc)
        tmp = args.out.with_name(f".{args.out.stem}.new.png")
        text = screenshot(url, tmp, args.dim, args.question)
    finally:
        if proc.poll() is None:  # stop the server we started, by its PID
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    found = problems(text, readme_demo_table())
    if found:
        print(f"docs-images: {args.out} NOT replaced (the new picture is {tmp}): the page shows", "; ".join(found))
        return 1
    tmp.replace(args.out)
    print(f"docs-images: {args.out} written (port {port}, server {proc.pid} stopped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
