"""The general-retrieval guard: base vs fine-tuned on a BEIR set from outside the training domain."""

from __future__ import annotations

import json

import pytest

from job.cli import main
from job.config import resolve_config
from job.errors import JobError
from job.evaluate import guard

OTHER_DOMAIN = {
    "g1": "Photosynthesis converts light energy into chemical energy in chloroplasts.",
    "g2": "The mitochondrion is the site of aerobic respiration in eukaryotic cells.",
    "g3": "Plate tectonics explains the movement of the lithosphere over the mantle.",
    "g4": "A neutron star is the collapsed core of a massive supergiant star.",
}
QUESTIONS = {
    "h1": "Where does photosynthesis happen?",
    "h2": "What do mitochondria do?",
    "h3": "Why do continents move?",
}


@pytest.fixture()
def guard_beir(tmp_path):
    d = tmp_path / "guard"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in OTHER_DOMAIN.items()))
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUESTIONS.items()))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nh1\tg1\t1\nh2\tg2\t1\nh3\tg3\t1\n")
    return d


def test_guard_set_is_scored_and_reported(tmp_path, tiny_model_path, pairs_file, guard_beir, capsys):
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", run_dir, "--model", tiny_model_path, "--data", pairs_file, "--max-steps", "2",
            "--batch-size", "8", "--matryoshka-dims", "32,16", "--guard-data", guard_beir,
            "--guard-max-drop", "50"]  # fmt: skip
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    (scored,) = report["guard"]["sets"]
    assert scored["name"] == str(guard_beir) and scored["queries"] == 3 and set(scored["finetuned"]) == {"32", "16"}
    assert report["guard"]["warnings"] == [] and report["guard"]["max_drop_points"] is not None
    md = (run_dir / "report" / "report.md").read_text()
    assert "## General-retrieval guard" in md and "No drop beyond 50 points." in md
    assert "General retrieval: not measured" not in md


def test_a_drop_beyond_the_limit_warns(monkeypatch):
    scores = {
        "base": {32: {"ndcg@10": 0.60}, 16: {"ndcg@10": 0.50}},
        "tuned": {32: {"ndcg@10": 0.55}, 16: {"ndcg@10": 0.51}},
    }
    one_query = guard.data.IRData({"d": "x"}, {"q": "y"}, {"q": {"d": 1}})
    monkeypatch.setattr(guard.data, "load_beir", lambda *a, **k: one_query)
    monkeypatch.setattr(guard, "evaluate_model", lambda model, *a, **k: scores[model])
    cfg = resolve_config(None, {"guard_data": "somewhere", "guard_max_drop": "2"}, {})
    said = []
    result = guard.guard_scores(cfg, "base", "tuned", [32, 16], said.append)
    assert result["max_drop_points"] == pytest.approx(5.0) and result["max_drop_at"]["dim"] == 32
    assert result["warnings"] == ["fine-tuning lost 5.0 NDCG@10 points on somewhere at dim 32 (limit 2)"]
    assert said and "WARNING" in said[0]


def test_guard_data_that_is_not_beir_fails_before_any_step(tmp_path, tiny_model_path, pairs_file, capsys):
    not_beir = tmp_path / "notes"
    not_beir.mkdir()
    (not_beir / "corpus.jsonl").write_text("{}\n")
    code = main(["run", "--run-dir", str(tmp_path / "run"), "--model", str(tiny_model_path), "--data", str(pairs_file),
                 "--guard-data", str(not_beir)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "(given with --guard-data) is not a BEIR folder: it lacks queries.jsonl" in err
    assert not (tmp_path / "run" / "data").exists()  # nothing ran


def test_nanobeir_offline_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(JobError, match="--guard-nanobeir downloads the NanoBEIR datasets"):
        guard.check_guard(resolve_config(None, {"guard_nanobeir": "msmarco,nq"}, {}))
