"""The README's demo table is checked: `make demo`'s job (`job run` on the embedded data, offline, the
bundled all-MiniLM-L6-v2) run on the locked versions must reproduce it to the fourth decimal.

Slow (about 5 minutes on 2 CPU cores); CI runs it. If it fails after `make lock`, an upstream release moved
the numbers: re-measure with `make demo` and update the README table (and say why in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from job.cli import main

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(0\.\d{4})\s*\|\s*(0\.\d{4})\s*\|")


def readme_demo_table() -> dict[int, tuple[float, float]]:
    """{dim: (baseline, fine-tuned)} from the first table after the README's two commands."""
    text = (ROOT / "README.md").read_text()
    start = text.index("| dim | baseline NDCG@10 | fine-tuned NDCG@10 |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        m = ROW.match(line)
        if not m:
            break
        rows[int(m[1])] = (float(m[2]), float(m[3]))
    return rows


def test_the_readme_table_is_parsed():
    table = readme_demo_table()
    assert list(table) == [384, 256, 128, 64, 32]


@pytest.mark.slow
def test_make_demo_reproduces_the_readme_table(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JOB_RUN_DIR", raising=False)
    code = main(["run", "--run-dir", str(tmp_path / "demo")])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    report = json.loads((tmp_path / "demo" / "report" / "metrics.json").read_text())
    measured = {int(r["dim"]): (round(r["baseline"], 4), round(r["finetuned"], 4)) for r in report["comparison"]}
    assert measured == readme_demo_table(), (
        "the demo's numbers on the locked versions differ from the README's table; "
        f"measured {measured}. If requirements/*.lock changed, update the README table and say why."
    )
