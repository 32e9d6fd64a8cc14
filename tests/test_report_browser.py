"""report/report.html in a real headless Chromium (#34): it opens from a file, with no network, every picture
loads (naturalWidth > 0) and the console stays clean. A screenshot goes to TEST_ARTIFACTS_DIR (default
build/test-artifacts/). Skips, with the reason, only when no browser is installed and REQUIRE_BROWSER is unset."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "rag_eval"))
import serve_browser as browser  # noqa: E402
from test_report_pictures import full_report  # noqa: E402

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / "build" / "test-artifacts")


@pytest.fixture()
def chromium():
    why = browser.missing()
    if why:
        if os.environ.get("REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"REQUIRE_BROWSER is set, but {why}")
        pytest.skip(why)
    d = browser.driver(1200, 1400)
    try:
        yield d
    finally:
        d.quit()


def test_report_html_opens_offline_with_every_picture(chromium, tmp_path):
    paths = full_report(tmp_path / "report")
    # only the HTML travels (as to S3 or a laptop): the pictures must be inside it
    lone = tmp_path / "elsewhere" / "report.html"
    lone.parent.mkdir()
    lone.write_bytes(paths["html"].read_bytes())
    chromium.get(lone.as_uri())
    browser.wait(chromium, lambda d: d.execute_script("return document.readyState") == "complete")
    images = chromium.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
    )
    assert len(images) == 5
    assert all(complete and width > 0 for _, complete, width in images), images
    assert chromium.title.startswith("Retrieval report")
    assert "Per-question change" in chromium.find_element("tag name", "body").text
    requested = [u for u in browser.requested_urls(chromium) if not u.startswith(("data:", "file:"))]
    assert requested == []  # nothing fetched from a network
    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    height = chromium.execute_script("return document.body.scrollHeight")
    chromium.set_window_size(1200, min(height + 100, 6000))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report_html.png"
    chromium.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
