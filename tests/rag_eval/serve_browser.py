"""A real headless Chromium driven by selenium, for `rag-eval serve`'s page; also a screenshot tool.

The browser is Debian's (`apt-get install -y chromium chromium-driver`); selenium gets the driver's
path, so it downloads nothing. Override the paths with CHROME_BIN / CHROMEDRIVER.

    python tests/rag_eval/serve_browser.py http://127.0.0.1:7860/ docs/serve.png --question "..." --dim 128

loads the page, asks the question (or picks a held-out one with --heldout N) and saves a screenshot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

CHROME_BIN = os.environ.get("CHROME_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARGS = (
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
)  # fmt: skip


def missing() -> str | None:
    """Why no browser test can run here, or None when Chromium, its driver and selenium are all present."""
    absent = [p for p in (CHROME_BIN, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        absent.append("the selenium package")
    if absent:
        return (
            f"no headless browser ({', '.join(absent)} missing): "
            "apt-get install -y chromium chromium-driver; pip install selenium"
        )
    return None


def driver(width: int = 1400, height: int = 1600, headers: dict[str, str] | None = None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROME_BIN
    for arg in ARGS:
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    d.set_page_load_timeout(60)
    if headers:  # what a browser sends after its basic-auth prompt
        d.execute_cdp_cmd("Network.enable", {})
        d.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
    return d


def requested_urls(d) -> list[str]:
    """Every URL the page asked for since the last call (from Chrome's performance log)."""
    urls = []
    for entry in d.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def response_status(d, url: str) -> int | None:
    """The HTTP status of the last response for ``url`` in Chrome's performance log."""
    status = None
    for entry in d.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived" and message["params"]["response"]["url"] == url:
            status = message["params"]["response"]["status"]
    return status


# --- page actions ----------------------------------------------------------------------------------
def wait(d, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.1).until(condition)


def open_page(d, url: str):
    from selenium.webdriver.common.by import By

    d.get(url)
    return wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "#question textarea"), 60)


def results(d):
    from selenium.webdriver.common.by import By

    return d.find_element(By.ID, "results")


def answer_count(d) -> int:
    return int(d.execute_script("return window.__answers || 0"))


def _watch_results(d) -> None:
    """Count every change of the results box, so that a test can wait for the NEXT answer."""
    d.execute_script(
        """if (!window.__watching) { window.__watching = true; window.__answers = 0;
        new MutationObserver(() => { window.__answers += 1; }).observe(
            document.querySelector('#results'), {childList: true, subtree: true, characterData: true}); }"""
    )


def set_question(d, text: str) -> None:
    """Set the question box to ``text`` as typing would (fast even for 100,000 characters)."""
    d.execute_script(
        """const t = document.querySelector('#question textarea');
        Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set.call(t, arguments[0]);
        t.dispatchEvent(new Event('input', {bubbles: true}));""",
        text,
    )


def _after(d, action, selector: str, timeout: float = 30):
    """Run ``action`` and wait until the results box has changed and shows ``selector``."""
    from selenium.webdriver.common.by import By

    _watch_results(d)
    before = answer_count(d)
    action()
    wait(d, lambda d: answer_count(d) > before and d.find_elements(By.CSS_SELECTOR, f"#results {selector}"), timeout)
    time.sleep(0.2)  # let the last mutation of this render land
    return results(d)


def ask(d, question: str, *, typed: bool = True, expect: str = ".re-answer"):
    """Type a question and press Search; returns the results element once the answer is there."""
    from selenium.webdriver.common.by import By

    box = d.find_element(By.CSS_SELECTOR, "#question textarea")

    def action():
        if typed:
            box.clear()
            box.send_keys(question)
        else:
            set_question(d, question)
        d.find_element(By.ID, "search").click()

    return _after(d, action, expect)


def pick_dim(d, dim: int, expect: str | None = None):
    from selenium.webdriver.common.by import By

    label = next(x for x in d.find_elements(By.CSS_SELECTOR, "#dim label") if x.text.strip() == str(dim))
    return _after(d, label.click, expect or f'.re-answer[data-dim="{dim}"]')


def set_k(d, k: int) -> None:
    """Set top-k through the slider's number box (the next search uses it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = d.find_element(By.CSS_SELECTOR, "#k input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(k), Keys.TAB)
    time.sleep(0.3)


def heldout_options(d) -> list[str]:
    from selenium.webdriver.common.by import By

    d.find_element(By.CSS_SELECTOR, "#heldout input").click()
    options = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#heldout ul[role=listbox] li"))
    return [o.text for o in options]


def pick_heldout(d, text: str):
    """Open the held-out question list and click ``text``; returns the results once answered."""
    from selenium.webdriver.common.by import By

    heldout_options(d)
    option = next(o for o in d.find_elements(By.CSS_SELECTOR, "#heldout ul[role=listbox] li") if o.text.strip() == text)
    return _after(d, option.click, ".re-answer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("out", type=Path)
    ap.add_argument("--question", default=None)
    ap.add_argument("--heldout", type=int, default=None, help="pick the N-th held-out question (0-based) instead")
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1500)
    args = ap.parse_args()
    d = driver(args.width, args.height)
    try:
        open_page(d, args.url)
        if args.k:
            set_k(d, args.k)
        if args.dim:
            label = next(x for x in d.find_elements("css selector", "#dim label") if x.text.strip() == str(args.dim))
            label.click()
        if args.heldout is not None:
            pick_heldout(d, heldout_options(d)[args.heldout])
        elif args.question:
            ask(d, args.question)
        full = d.execute_script("return document.body.scrollHeight")
        d.set_window_size(args.width, min(max(args.height, full), 4000))
        time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(args.out))
        print(f"screenshot: {args.out}")
    finally:
        d.quit()


if __name__ == "__main__":
    main()
