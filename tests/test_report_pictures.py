"""The report's pictures (#34): one PNG per picture, each shown in report.md; report.html self-contained; the
per-question scores; the quality x storage frontier joined to a run's report after `rag-eval score`; the model card
showing the NDCG@10 plot with no broken link."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from job.evaluate import card, plots
from job.evaluate.report import FRONTIER_START, attach_frontier, per_query_ndcg, per_question, write_report
from job.evaluate.report_html import write_html

DIMS = [64, 32]
PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(value: float) -> dict[int, dict[str, float]]:
    keys = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10")
    return {d: {k: value - (64 - d) / 1000 for k in keys} for d in DIMS}


def _training() -> dict:
    history = [
        {"loss": 3.0, "step": 5},
        {"eval_validation_dim64_cosine_ndcg@10": 0.7, "eval_validation_dim32_cosine_ndcg@10": 0.6, "step": 6},
        {"loss": 1.0, "step": 10},
        {"eval_validation_dim64_cosine_ndcg@10": 0.8, "eval_validation_dim32_cosine_ndcg@10": 0.7, "step": 12},
    ]
    return {
        "log_history": history,
        "best_checkpoint": "runs/x/checkpoints/checkpoint-12",
        "validation_before": {"64": 0.5, "32": 0.4},
        "checkpoint_average": {"kept": True, "checkpoints": ["checkpoint-6", "checkpoint-12"],
                               "validation_score": 0.81, "best_single": 0.8},
    }  # fmt: skip


def _merge() -> dict:
    rows = [
        {"alpha": a, "validation": {"64": 0.6 + 0.2 * a}, "guard": {"64": 0.7 - 0.05 * a},
         "guard_drop_points": {"64": 5 * a, "32": 4 * a}, "within_guard": 5 * a <= 2}
        for a in (1.0, 0.6, 0.4, 0.2)
    ]  # fmt: skip
    return {"mode": "auto", "chosen": 0.4, "why": "best validation within the guard", "best_dim": 64,
            "guard": {"set": "/data/scifact", "split": "train", "queries": 50}, "base_guard": {"64": 0.7},
            "limit_points": 2.0, "alphas": rows}  # fmt: skip


def _mining() -> dict:
    stats = {"count": 40, "mean": 0.6, "median": 0.6, "std": 0.1, "min": 0.2, "25%": 0.5, "50%": 0.6, "75%": 0.7,
             "max": 0.9}  # fmt: skip
    return {
        "negatives_per_pair": 1, "relative_margin": 0.05, "pairs_with_mined_negatives": 30,
        "pairs_with_random_fallback": 10,
        "mining_scores": {"positive": stats, "negative": {**stats, "count": 30, "mean": 0.4, "25%": 0.3, "50%": 0.4,
                                                           "median": 0.4, "75%": 0.5}, "notes": []},
    }  # fmt: skip


def _per_question() -> dict:
    rows = [
        {"query_id": f"q{i}", "question": f"Question {i} | with a pipe?", "baseline": 0.5, "finetuned": 0.5 + d}
        for i, d in enumerate([-0.4, -0.1, 0.0, 0.2, 0.3])
    ]
    return {"dim": 64, "rows": rows}


def _meta(**extra) -> dict:
    return {"model": "run", "test_queries": 5, "corpus_size": 20, "dims": DIMS, **extra}


def _images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


class _Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]


def _links(html_text: str) -> list[str]:
    parser = _Sources()
    parser.feed(html_text)
    return parser.links


def full_report(out: Path) -> dict[str, Path]:
    meta = _meta(hard_negatives=_mining(), merge_base=_merge(), per_question=_per_question())
    return write_report(out, _metrics(0.6), _metrics(0.8), meta, _training())


def test_every_picture_is_a_png_shown_in_the_report_and_stamped(tmp_path):
    paths = full_report(tmp_path)
    names = {"ndcg_by_dim.png", "training_curves.png", "mining_scores.png", "merge_tradeoff.png",
             "per_question_change.png"}  # fmt: skip
    assert {p.name for p in tmp_path.glob("*.png")} == names
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == PNG and (tmp_path / name).stat().st_size > 5000
    md = paths["markdown"].read_text()
    assert set(_images(md)) == names
    # the worst questions with their text, worst first, the pipe escaped so the table holds
    assert "Of 5 test questions, 2 got better, 2 got worse and 1 did not change" in md
    worst = md.index("| -40.0 | 0.500 | 0.100 | Question 0 \\| with a pipe? |")
    assert worst < md.index("| -10.0 | 0.500 | 0.400 | Question 1") and "| +20.0 | 0.500 |" not in md
    record = json.loads(paths["json"].read_text())
    assert {f"{tmp_path.name}/{n}" for n in names} | {f"{tmp_path.name}/report.html"} <= set(record["outputs"])
    assert record["per_question"]["rows"][0]["query_id"] == "q0"


def test_report_html_is_self_contained(tmp_path):
    paths = full_report(tmp_path)
    page = paths["html"].read_text()
    links = _links(page)
    images = [x for x in links if x.startswith("data:image/png;base64,")]
    assert len(images) == 5 and all(base64.b64decode(x.split(",", 1)[1])[:8] == PNG for x in images)
    assert set(links) - set(images) == {"data:,"}  # the favicon: nothing else is fetched
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "<table>" in page and "Per-question change" in page and page.count("<img") == 5


def test_without_records_only_the_ndcg_plot_and_stale_pictures_go(tmp_path):
    (tmp_path / "merge_tradeoff.png").write_bytes(PNG)  # from an earlier run with a guard set
    paths = write_report(tmp_path, _metrics(0.6), _metrics(0.8), _meta(), None)
    assert [p.name for p in tmp_path.glob("*.png")] == ["ndcg_by_dim.png"]
    assert _images(paths["markdown"].read_text()) == ["ndcg_by_dim.png"]
    assert _links(paths["html"].read_text()).count("data:,") == 1


def test_merge_tradeoff_needs_a_guard(tmp_path):
    assert plots.merge_tradeoff({**_merge(), "guard": None}, tmp_path / "m.png") is None
    assert plots.merge_tradeoff({"mode": "fixed", "chosen": 0.5, "alphas": []}, tmp_path / "m.png") is None
    assert plots.mining_scores({"negatives_per_pair": 1}, tmp_path / "n.png") is None
    assert plots.training_curves({"log_history": [{"epoch": 1.0, "step": 3}]}, tmp_path / "t.png") is None
    assert not list(tmp_path.iterdir())


class _FakeModel:
    """encode(): fixed vectors by text, so the rankings are known."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def encode(self, texts, batch_size=32, prompt=None, convert_to_numpy=True):
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_per_question_scores_from_each_models_ranking():
    from job.data.prepare import IRData

    ir = IRData(corpus={"a": "pa", "b": "pb", "c": "pc"}, queries={"q1": "x", "q2": "y"},
                qrels={"q1": {"a": 1}, "q2": {"b": 1}})  # fmt: skip
    base = _FakeModel({"pa": [1, 0, 0], "pb": [0, 1, 0], "pc": [0, 0, 1], "x": [0, 0.1, 1], "y": [0, 1, 0]})
    tuned = _FakeModel({"pa": [1, 0, 0], "pb": [0, 1, 0], "pc": [0, 0, 1], "x": [1, 0, 0.1], "y": [0, 1, 0]})
    # base: q1 ranks c, b, a (relevant third: 1/log2(4) = 0.5); tuned ranks a first (1.0); q2 first under both
    assert per_query_ndcg(base, ir, 3) == pytest.approx({"q1": 0.5, "q2": 1.0})
    record = per_question(base, tuned, ir, 3)
    assert record["dim"] == 3 and [r["query_id"] for r in record["rows"]] == ["q2", "q1"]
    assert record["rows"][1] == {"query_id": "q1", "question": "x", "baseline": pytest.approx(0.5), "finetuned": 1.0}


def _frontier_rows() -> list[dict]:
    rows = []
    for dim in (64, 32):
        for precision, rescore, size in (("float32", None, 4 * dim), ("int8", False, dim), ("int8", True, dim),
                                         ("binary", False, dim // 8), ("binary", True, dim // 8)):  # fmt: skip
            ndcg = (
                0.8
                - (64 - dim) / 1000
                - {"float32": 0, "int8": 0.002, "binary": 0.05}[precision] / (2 if rescore else 1)
            )
            rows.append({"model": "fine-tuned", "dim": dim, "precision": precision, "rescore": rescore,
                         "rescore_multiplier": 4 if rescore else None, "ndcg@10": ndcg, "bytes_per_vector": size,
                         "ms_per_query": 0.1, "corpus": 20, "retained_vs_float32": 1.0})  # fmt: skip
    return rows


def test_frontier_picture_joins_the_runs_report_once(tmp_path):
    from rag_eval import frontier

    rows = _frontier_rows()
    rec = frontier.recommend(rows, 64)
    assert rec["config"] == "dim 64 int8 + rescoring x4"
    picture = tmp_path / "rag_eval" / "frontier.png"
    picture.parent.mkdir()
    frontier.plot(rows, [rec], picture)
    assert picture.read_bytes()[:8] == PNG and picture.stat().st_size > 5000

    report = tmp_path / "report"
    full_report(report)
    section = ["## Quality x storage", "", "table", "", "![Quality x storage](frontier.png)", ""]
    attach_frontier(report, picture, section)
    attach_frontier(report, picture, section)  # scored again: replaced, not added twice
    md = (report / "report.md").read_text()
    assert md.count(FRONTIER_START) == 1 and "frontier.png" in _images(md)
    assert (report / "frontier.png").read_bytes() == picture.read_bytes()
    assert (report / "report.html").read_text().count("data:image/png;base64,") == 6

    # `job evaluate` again writes the report anew: the frontier section and picture stay
    full_report(report)
    md = (report / "report.md").read_text()
    assert md.count(FRONTIER_START) == 1 and "frontier.png" in _images(md)
    assert (report / "report.html").read_text().count("data:image/png;base64,") == 6
    assert "report/frontier.png" in json.loads((report / "metrics.json").read_text())["outputs"]


def test_attach_frontier_without_a_report_does_nothing(tmp_path):
    attach_frontier(tmp_path / "report", tmp_path / "frontier.png", ["x"])
    assert not (tmp_path / "report").exists()


def test_card_shows_the_plot_and_renders_without_broken_links(tmp_path):
    markdown = pytest.importorskip("markdown")
    report, model = tmp_path / "report", tmp_path / "model"
    model.mkdir()
    (model / "README.md").write_text("---\nlibrary_name: sentence-transformers\n---\n\n# A model\n")
    paths = full_report(report)
    card.add_plot(model, paths["plot"])
    card.add_evaluation_section(model, paths["markdown"].read_text(), DIMS)
    text = (model / "README.md").read_text()
    assert (model / "ndcg_by_dim.png").read_bytes() == paths["plot"].read_bytes()
    assert _images(text) == ["ndcg_by_dim.png"]  # the card's one picture; the others stay in the report
    assert "Per-question change" not in text and "Question 0" not in text  # test questions stay in the report
    assert "## Interpolation with the base model" in text or "### Interpolation with the base model" in text

    body = text.split("\n---\n", 1)[1]  # the YAML front matter is the Hub's metadata, not rendered
    rendered = markdown.markdown(body, extensions=["tables", "fenced_code"])
    links = _links(rendered)
    assert "ndcg_by_dim.png" in links
    for link in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", link) or link.startswith("#"):
            continue  # absolute URLs and anchors
        assert (model / link.split("#")[0]).is_file(), f"broken link in the card: {link}"


def test_card_without_the_copy_shows_no_picture(tmp_path):
    (tmp_path / "README.md").write_text("# A model\n")
    card.add_evaluation_section(tmp_path, "# Retrieval report: x\n\n![NDCG@10 by dim](ndcg_by_dim.png)\n", DIMS)
    assert _images((tmp_path / "README.md").read_text()) == []


def test_write_html_inlines_and_refuses_a_missing_picture(tmp_path):
    (tmp_path / "report.md").write_text("# T\n\n![a](a.png)\n")
    with pytest.raises(FileNotFoundError):
        write_html(tmp_path)
    (tmp_path / "a.png").write_bytes(PNG)
    assert "data:image/png;base64," in write_html(tmp_path).read_text()


def test_a_run_writes_the_pictures_html_and_the_cards_plot(tmp_path, tiny_model_path, pairs_file):
    from job.config import resolve_config
    from job.pipeline import RunDir, run

    values = {"run_dir": str(tmp_path / "run"), "model": str(tiny_model_path), "data": str(pairs_file),
              "batch_size": 8, "epochs": 1, "eval_batch_size": 16, "logging_steps": 1, "hard_negatives": 1,
              "matryoshka_dims": [32, 16]}  # fmt: skip
    cfg = resolve_config(cli=values, environ={})
    rd = RunDir(cfg.run_dir)
    report = run(cfg, rd, echo=lambda m: None)["evaluate"]
    for name in ("ndcg_by_dim.png", "training_curves.png", "mining_scores.png", "per_question_change.png"):
        assert (rd.report / name).read_bytes()[:8] == PNG, name
        assert f"]({name})" in (rd.report / "report.md").read_text()
    assert not (rd.report / "merge_tradeoff.png").exists()  # no guard set
    assert (rd.report / "report.html").read_text().count("data:image/png;base64,") == 4
    # the per-question scores are the evaluator's: their mean is its NDCG@10 at that dim
    per_q = report["per_question"]
    rows = per_q["rows"]
    assert len(rows) == report["test_queries"]
    for key in ("baseline", "finetuned"):
        mean = sum(r[key] for r in rows) / len(rows)
        assert mean == pytest.approx(report[key][str(per_q["dim"])]["ndcg@10"], abs=1e-4)
    assert (rd.model / "ndcg_by_dim.png").read_bytes() == (rd.report / "ndcg_by_dim.png").read_bytes()
    assert _images((rd.model / "README.md").read_text()) == ["ndcg_by_dim.png"]


def test_docs_images_refuses_paths_and_numbers_other_than_the_readmes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_images", Path(__file__).parents[1] / "scripts/docs_images.py")
    docs_images = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs_images)
    table = {384: (0.6992, 0.8206), 128: (0.6451, 0.7824)}
    good = "baseline sentence-transformers/all-MiniLM-L6-v2 vs fine-tuned demo 0.6992 0.8206 0.6451 0.7824"
    assert docs_images.problems(good, table) == []
    stale = good.replace("0.8206", "0.8400") + " baseline /work/x/.venv/lib/python3.11/site-packages/m/model"
    found = docs_images.problems(stale, table)
    assert "no fine-tuned NDCG@10 0.8206 at dim 384 (the README's table)" in found
    assert any("site-packages" in f for f in found)
