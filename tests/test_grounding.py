"""The grounding filter (issue #32): a synthesized question may name only what its own passage names.

The four questions are the ones a 135M generator really wrote for biomedical abstracts with the old financial
few-shot example; the passages are abstracts' sentences of the kind they came from.
"""

from __future__ import annotations

import json

import pytest
from llm_servers import FakeChatServer, completion

from job.cli import main
from job.synth import grounding, llm
from job.synth.synthesize import example_pairs, side_files

OLD_EXAMPLE = (
    "In fiscal 2022 the company opened 120 new stores in North America, bringing the total to 1,450 stores.",
    "How many stores did the company have in North America at the end of fiscal 2022?",
)
BIO = {
    "How many pDCs did the company have in 2023?": (
        "Plasmacytoid dendritic cells (pDCs) produce large amounts of type I interferon after viral infection.",
        "2023",
    ),
    "How many cells did the company have in its PML nuclear subcompartment at the end of fiscal 2023?": (
        "The PML nuclear subcompartment recruits SUMOylated proteins in cells under oxidative stress.",
        "2023",
    ),
    "How many differentially methylated genes were identified in the 120 new stores?": (
        "We identified 312 differentially methylated genes in tumour samples compared with matched normal tissue.",
        "120",
    ),
    "How many vertical transmitted viruses did the company lose during pregnancy?": (
        "Vertically transmitted viruses during pregnancy include cytomegalovirus, rubella and Zika virus.",
        "the company",
    ),
}


@pytest.mark.parametrize("question", list(BIO))
def test_the_four_carried_over_questions_are_ungrounded(question):
    passage, term = BIO[question]
    assert grounding.ungrounded_term(question, passage, grounding.example_terms([OLD_EXAMPLE])) == term


@pytest.mark.parametrize(
    ("question", "passage"),
    [
        ("What do pDCs produce after viral infection?", BIO["How many pDCs did the company have in 2023?"][0]),
        ("How many differentially methylated genes were identified in tumour samples?",
         BIO["How many differentially methylated genes were identified in the 120 new stores?"][0]),
        ("What was Apple's net sales figure in fiscal 2023?", "Apple's net sales in fiscal 2023 were $383.3 billion."),
        ("How many stores did the company have at the end of 2022?",
         "At the end of 2022 the company operated 1,450 stores."),
        ("How much debt matures in 2031 at a 4.25% coupon?", "Senior notes of $500 million due 2031 carry 4.25%."),
        ("What share of the 31,400 employees work in manufacturing?",
         "About 31400 employees work in 24 countries, a third of them in manufacturing."),
    ],
)  # fmt: skip
def test_grounded_questions_pass(question, passage):
    assert grounding.ungrounded_term(question, passage, grounding.example_terms([OLD_EXAMPLE])) is None


def test_the_built_in_example_is_of_no_users_domain_and_its_subject_is_caught():
    prompt = llm.load_prompt(None)
    text = " ".join(t for _, t in prompt.messages).casefold()
    assert "company" not in text and "fiscal" not in text and "stores" not in text
    terms = grounding.example_terms(example_pairs(prompt))
    assert {"harwick bridge", "vehicles"} <= set(terms)
    q = "How many vehicles cross the Harwick Bridge in the PML nuclear subcompartment?"
    assert grounding.ungrounded_term(q, BIO[list(BIO)[1]][0], terms) in {"Harwick Bridge", "vehicles"}


def test_the_summary_counts_ungrounded_questions_and_the_dropped_file_names_the_term(tmp_path, tiny_model_path,
                                                                                      capsys):  # fmt: skip
    docs = tmp_path / "docs"
    docs.mkdir()
    studies = zip("ABCDEFGHIJ", range(20, 30))
    passages = [p for p, _ in BIO.values()] + [f"Study {c} measured interferon of {n} donors." for c, n in studies]
    for i, p in enumerate(passages):
        (docs / f"{i:02d}.txt").write_text(p)
    carried = dict(zip((p for p, _ in BIO.values()), BIO))

    def answer(request):
        passage = request["messages"][-1]["content"].split("Passage:", 1)[-1].strip()
        if passage in carried:
            return completion(carried[passage])
        return completion(f"How many donors did study {passage.split()[1]} measure for interferon responses?")

    out = tmp_path / "pairs.jsonl"
    args = ["synthesize", "--docs", str(docs), "--out", str(out), "--llm-base-url", "URL", "--llm-model", "m",
            "--model", str(tiny_model_path), "--consistency-top-k", "0", "--llm-max-retries", "0",
            "--chunk-tokens", "200"]  # fmt: skip
    with FakeChatServer(answer) as server:
        assert main([server.url if a == "URL" else a for a in args]) == 0, capsys.readouterr().err
        summary = json.loads(side_files(out)["summary"].read_text())
        assert summary["questions"]["dropped"]["ungrounded"] == 4 and summary["questions"]["kept"] == 10
        assert summary["grounding"]["enabled"] and summary["grounding"]["ungrounded_candidates"] == 4
        dropped = [json.loads(x) for x in side_files(out)["dropped"].read_text().splitlines()]
        assert sorted(d["term"] for d in dropped if d["reason"] == "ungrounded") == ["120", "2023", "2023",
                                                                                      "the company"]  # fmt: skip
        assert "ungrounded 4" in capsys.readouterr().out
        # off: kept, but still counted (the share of ungrounded questions in an unfiltered set)
        out2 = tmp_path / "off.jsonl"
        args2 = [str(out2) if a == str(out) else a for a in args] + ["--no-grounding-filter"]
        assert main([server.url if a == "URL" else a for a in args2]) == 0
    summary = json.loads(side_files(out2)["summary"].read_text())
    assert summary["questions"]["kept"] == 14 and summary["grounding"]["ungrounded_candidates"] == 4
    assert summary["grounding"]["ungrounded_share_of_rule_passing"] == pytest.approx(4 / 14, abs=1e-4)
