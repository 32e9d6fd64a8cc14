"""bench/quality.py's results file: rows measured over several sessions share one file, and a run that
names only some of them must not drop the others (a lost row costs up to hours of CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from quality import check_same_protocol, merge_rows, resolve_row, row_fingerprint  # noqa: E402

from job.config import resolve_config  # noqa: E402

PROTOCOL = {"rows": 7000, "epochs_override": 1.0, "max_seq_length": 128, "reduced": True}


def _file(*names: str) -> dict:
    return {"protocol": dict(PROTOCOL), "results": [{"name": n, "measured": "before"} for n in names]}


def test_rows_not_named_by_this_run_stay_in_their_place():
    previous = _file("base", "gist", "sym")
    now = [{"name": "base", "measured": "now"}, {"name": "default", "measured": "now"}]
    merged = merge_rows(previous, now)
    assert [r["name"] for r in merged] == ["base", "gist", "sym", "default"]
    assert [r["measured"] for r in merged] == ["now", "before", "before", "now"]


def test_a_first_run_writes_its_rows_in_order():
    now = [{"name": "base"}, {"name": "default"}]
    assert merge_rows({}, now) == now


def test_rows_of_another_protocol_are_refused_with_the_fix(capsys):
    previous = _file("base", "gist")
    with pytest.raises(SystemExit) as stop:
        check_same_protocol(previous, {**PROTOCOL, "max_seq_length": None}, ["base", "default"], "out.json")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "gist" in err and "max_seq_length" in err and "pass a new --out" in err


def test_another_protocol_is_accepted_when_every_row_is_measured_again():
    previous = _file("base", "gist")
    assert check_same_protocol(previous, {**PROTOCOL, "max_seq_length": None}, ["base", "gist"], "out.json") == {}
    # same protocol: always fine, and the file is built on
    assert check_same_protocol(previous, dict(PROTOCOL), ["default"], "out.json") == previous


def test_show_prints_a_results_file_without_running(tmp_path):
    import json
    import subprocess

    row = {"name": "default", "train_seconds": 12.5, "peak_host_memory_mib": 10}
    row |= {"validation_ndcg@10": {"64": 0.7}, "test_ndcg@10": {"64": 0.5}, "test_ndcg@10_dedup": {"64": 0.55}}
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"protocol": PROTOCOL, "results": [row]}))
    script = Path(__file__).resolve().parents[1] / "bench" / "quality.py"
    shown = subprocess.run([sys.executable, str(script), "--show", str(results)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "| default | 12.5 | - | 0.500 (0.550) |" in shown.stdout
    assert "| default | 0.700 |" in shown.stdout
    missing = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert missing.returncode == 2 and "--data is required" in missing.stderr


def test_a_publishing_option_added_later_changes_no_row_s_fingerprint():
    """Rows measured before --publish-dir existed must still be kept: where a run publishes changes no number.
    The recipe still counts."""
    protocol = {"rows": 10, "machine": "anything"}
    fp = lambda cli: resolve_row("default", {"seed": 42, **cli}, protocol, {}, "x", lambda m: None)[2]  # noqa: E731
    assert fp({}) == fp({"publish_dir": "/mnt/models"})
    assert fp({}) != fp({"learning_rate": 1e-5})
    # the fingerprint of a row recorded before the field existed: the same configuration without it
    cfg = resolve_config(cli={"seed": 42}, environ={}).to_dict()
    cfg.pop("publish_dir")
    assert fp({}) == row_fingerprint(protocol, {"row": "default", **cfg})
