"""End to end: `job run` with the offline all-MiniLM-L6-v2 on a slice of the embedded data."""

from __future__ import annotations

import json

import pytest

from job.cli import main
from job.data.prepare import embedded_data_path

pytestmark = pytest.mark.slow


def test_job_run_end_to_end_with_minilm(tmp_path, capsys, minilm_path):
    rows = embedded_data_path().read_text().splitlines()[:120]
    data = tmp_path / "slice.jsonl"
    data.write_text("\n".join(rows) + "\n")
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", run_dir, "--data", data, "--model", "bundled:all-MiniLM-L6-v2",
            "--max-steps", "3", "--eval-steps", "3", "--batch-size", "16", "--max-seq-length", "128"]  # fmt: skip
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| dim | baseline NDCG@10 | fine-tuned NDCG@10 |" in out
    assert out.strip().splitlines()[-1].startswith("evaluate: report ")
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert report["dims"] == [384, 256, 128, 64, 32]
    assert report["training"]["global_steps"] == 3
    # the test split is 10 % of the slice; every metric is a probability
    assert report["test_queries"] == 12
    for model in ("baseline", "finetuned"):
        for dim, metrics in report[model].items():
            assert 0.0 < metrics["ndcg@10"] <= 1.0, (model, dim)
    # the fine-tuned model loads as a plain sentence-transformers model at a truncated dim
    from sentence_transformers import SentenceTransformer

    tuned = SentenceTransformer(str(run_dir / "model"), truncate_dim=64)
    assert tuned.encode(["What was total revenue?"]).shape == (1, 64)
    # a second run skips every step
    assert main([str(a) for a in args]) == 0
    assert capsys.readouterr().out.count("skipping") == 4
