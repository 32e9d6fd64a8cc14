"""Interpolation with the base model (--merge-base): the weights are exactly the lerp, the choice never looks at
the guard's reported (test) queries, and a crash mid-merge is recovered by the next run."""

from __future__ import annotations

import json

import pytest
import torch

from job.cli import main
from job.config import resolve_config
from job.errors import JobError
from job.train import merge

OTHER = {
    "g1": "Photosynthesis converts light energy into chemical energy in chloroplasts.",
    "g2": "The mitochondrion is the site of aerobic respiration in eukaryotic cells.",
    "g3": "Plate tectonics explains the movement of the lithosphere over the mantle.",
    "g4": "A neutron star is the collapsed core of a massive supergiant star.",
    "g5": "Antibodies bind antigens and mark pathogens for destruction.",
}
QUERIES = {
    "t1": "Where does photosynthesis happen?",
    "t2": "What do mitochondria do?",
    "t3": "What are antibodies for?",
    "h1": "Why do continents move?",
    "h2": "What is a neutron star?",
}


def guard_folder(path, test_rows="h1\tg3\t1\nh2\tg4\t1\n"):
    (path / "qrels").mkdir(parents=True, exist_ok=True)
    (path / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in OTHER.items()))
    (path / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    (path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nt1\tg1\t1\nt2\tg2\t1\nt3\tg5\t1\n")
    (path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + test_rows)
    return path


def test_interpolation_is_exactly_the_lerp():
    base = {"w": torch.tensor([0.0, 2.0, -4.0]), "b": torch.tensor([1.0]), "ids": torch.tensor([1, 2, 3])}
    tuned = {"w": torch.tensor([1.0, 0.0, 4.0]), "b": torch.tensor([3.0]), "ids": torch.tensor([7, 8, 9])}
    got = merge.interpolate(base, tuned, 0.25)
    assert torch.equal(got["w"], torch.tensor([0.25, 1.5, -2.0]))  # 0.25 * tuned + 0.75 * base
    assert torch.equal(got["b"], torch.tensor([1.5]))
    assert torch.equal(got["ids"], tuned["ids"])  # integer buffers are not interpolated
    assert torch.equal(merge.interpolate(base, tuned, 1.0)["w"], tuned["w"])
    half = merge.interpolate({"w": torch.ones(2, dtype=torch.float16)}, {"w": torch.zeros(2, dtype=torch.float16)}, 0.5)
    assert half["w"].dtype == torch.float16 and torch.equal(half["w"], torch.full((2,), 0.5, dtype=torch.float16))
    with pytest.raises(JobError, match="do not hold the same weights"):
        merge.interpolate({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, 0.5)


@pytest.mark.parametrize(
    ("value", "ok"), [("off", "off"), ("AUTO", "auto"), ("0.5", "0.5"), ("1", "1.0"), ("0", None), ("1.5", None),
                      ("half", None)],
)  # fmt: skip
def test_merge_base_values(value, ok):
    if ok is None:
        with pytest.raises(JobError, match="merge_base"):
            resolve_config(cli={"merge_base": value}, environ={})
    else:
        assert resolve_config(cli={"merge_base": value}, environ={}).merge_base == ok


def test_auto_needs_the_guards_own_choice_queries(tmp_path):
    g = guard_folder(tmp_path / "g")
    assert merge.choice_split(g, "test") == "train"
    (g / "qrels" / "train.tsv").unlink()
    with pytest.raises(JobError, match="holds no train.tsv or dev.tsv") as err:
        merge.choice_split(g, "test")
    assert "--merge-base ALPHA" in err.value.fix
    with pytest.raises(JobError, match="guard_split is train"):
        resolve_config(cli={"merge_base": "auto", "guard_data": str(g), "guard_split": "train"}, environ={})


def test_a_guard_set_with_choice_queries_turns_auto_on_unless_a_layer_says_otherwise(tmp_path):
    g = guard_folder(tmp_path / "g")
    assert resolve_config(cli={}, environ={}).merge_base == "off"  # no guard set (make demo): off
    assert resolve_config(cli={"guard_data": str(g)}, environ={}).merge_base == "auto"
    assert resolve_config(cli={"guard_data": str(g), "merge_base": "off"}, environ={}).merge_base == "off"
    assert resolve_config(cli={"guard_data": str(g)}, environ={"JOB_MERGE_BASE": "0.7"}).merge_base == "0.7"
    # the reported split is a choice split: nothing left to choose on, so the default stays off (no error)
    assert resolve_config(cli={"guard_data": str(g), "guard_split": "train"}, environ={}).merge_base == "off"
    (g / "qrels" / "train.tsv").unlink()  # a guard set with test queries only: reported, not chosen on
    assert resolve_config(cli={"guard_data": str(g)}, environ={}).merge_base == "off"


def _args(run_dir, model, data, *extra):
    return [str(a) for a in ("run", "--run-dir", run_dir, "--model", model, "--data", data, "--max-steps", "3",
                             "--batch-size", "8", "--matryoshka-dims", "32,16", "--eval-steps", "3",
                             "--hard-negatives", "0", *extra)]  # fmt: skip


def test_auto_with_a_guard_reports_every_alpha_and_never_reads_the_test_qrels(
    tmp_path, tiny_model_path, pairs_file, capsys
):
    records = []
    for i, test_rows in enumerate(("h1\tg3\t1\nh2\tg4\t1\n", "h1\tg4\t1\nh2\tg3\t1\n")):  # two different test qrels
        guard = guard_folder(tmp_path / f"guard{i}", test_rows)
        run_dir = tmp_path / f"run{i}"
        code = main(_args(run_dir, tiny_model_path, pairs_file, "--merge-base", "auto", "--merge-alphas",
                          "1,0.6,0.3", "--guard-data", guard, "--guard-max-drop", "1"))  # fmt: skip
        assert code == 0, capsys.readouterr().err
        training = json.loads((run_dir / "model" / "training.json").read_text())
        record = training["merge_base"]
        assert record["mode"] == "auto" and record["guard"]["split"] == "train" and record["guard"]["queries"] == 3
        assert [r["alpha"] for r in record["alphas"]] == [1.0, 0.6, 0.3]
        assert all(set(r) >= {"validation", "guard", "guard_drop_points", "within_guard"} for r in record["alphas"])
        records.append({k: v for k, v in record.items() if k not in ("guard", "why")})
        report = (run_dir / "report" / "report.md").read_text()
        assert "## Interpolation with the base model" in report and f"Kept alpha {record['chosen']:g}" in report
        assert "### In domain and outside it" in report
        assert "## Interpolation with the base model" in (run_dir / "model" / "README.md").read_text()
    assert records[0] == records[1]  # the reported (test) qrels changed; the choice and every score did not


def test_without_a_guard_the_best_validation_alpha_is_kept_and_said(tmp_path, tiny_model_path, pairs_file, capsys):
    run_dir = tmp_path / "run"
    code = main(_args(run_dir, tiny_model_path, pairs_file, "--merge-base", "auto", "--merge-alphas", "1,0.5"))
    assert code == 0, capsys.readouterr().err
    record = json.loads((run_dir / "model" / "training.json").read_text())["merge_base"]
    best = max(record["alphas"], key=lambda r: (r["validation"][str(32)], r["alpha"]))
    assert record["chosen"] == best["alpha"] and "no guard set" in record["why"]


def test_a_fixed_alpha_saves_exactly_the_interpolated_weights(tmp_path, tiny_model_path, pairs_file, capsys):
    from sentence_transformers import SentenceTransformer

    plain, merged = tmp_path / "plain", tmp_path / "merged"
    assert main(_args(plain, tiny_model_path, pairs_file)) == 0
    assert main(_args(merged, tiny_model_path, pairs_file, "--merge-base", "0.5")) == 0, capsys.readouterr().err
    base = SentenceTransformer(str(tiny_model_path)).state_dict()
    tuned = SentenceTransformer(str(plain / "model")).state_dict()
    got = SentenceTransformer(str(merged / "model")).state_dict()
    want = merge.interpolate(base, tuned, 0.5)
    assert all(torch.allclose(got[k].float(), want[k].float(), atol=1e-6) for k in want)


def test_a_crash_mid_merge_is_recovered_by_the_next_run(tmp_path, tiny_model_path, pairs_file, capsys, monkeypatch):
    guard = guard_folder(tmp_path / "guard")
    args = _args(tmp_path / "run", tiny_model_path, pairs_file, "--merge-base", "auto", "--merge-alphas",
                 "1,0.7,0.4", "--guard-data", guard, "--guard-max-drop", "1")  # fmt: skip
    reference = _args(tmp_path / "ref", tiny_model_path, pairs_file, *args[args.index("--merge-base") :])
    assert main(reference) == 0
    calls = {"n": 0}
    real = merge._scores

    def crash_on_the_fifth(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # base guard, alpha 1 (validation + guard), alpha 0.7 validation: then the crash
            raise KeyboardInterrupt("power cut")
        return real(*a, **kw)

    monkeypatch.setattr(merge, "_scores", crash_on_the_fifth)
    assert main(args) == 130
    assert not (tmp_path / "run" / "model").exists()
    cached = json.loads((tmp_path / "run" / "checkpoints" / merge.SCORES_FILE).read_text())["alphas"]
    assert set(cached) == {"0.0000", "1.0000"}  # what was scored before the crash is kept
    calls["n"] = 0
    monkeypatch.setattr(merge, "_scores", lambda *a, **kw: (calls.__setitem__("n", calls["n"] + 1), real(*a, **kw))[1])
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "checkpoint-3" in out and calls["n"] == 4  # only alphas 0.7 and 0.4 again
    got = json.loads((tmp_path / "run" / "model" / "training.json").read_text())["merge_base"]
    want = json.loads((tmp_path / "ref" / "model" / "training.json").read_text())["merge_base"]
    assert got["chosen"] == want["chosen"] and got["alphas"] == want["alphas"]
