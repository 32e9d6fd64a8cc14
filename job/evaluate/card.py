"""The fine-tuned model's card (model/README.md): honest numbers, the base model, no local paths.

sentence-transformers writes the card when the model is saved, from what its trainer saw. Three
things are set right here:

* the evaluation block is the *saved* model's (the best checkpoint by validation), scored again
  after training, not the last evaluation of the run;
* the base model is named by its Hub id where one is known (the bundled all-MiniLM-L6-v2 included),
  and the title says what was fine-tuned on what;
* the evaluate step adds the held-out test NDCG@10 per dim to the card's ``model-index`` and a
  section with the baseline-vs-fine-tuned table and a usage snippet with ``encode_query``/``encode_document``,
  ``truncate_dim`` and normalisation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from job.config import AUTO_MODEL, EMBEDDED_DATA, OFFLINE_DEFAULT_MODEL, ONLINE_DEFAULT_MODEL
from job.layout import CARD_MARK

BUNDLED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_ID_PLACEHOLDER = "sentence_transformers_model_id"  # what sentence-transformers' card loads; `job push` fills it
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_model_id(configured: str, resolved: str) -> str | None:
    """The base model's Hub id: known for the bundled model and Hub ids; for a local folder, the id its
    own card or config names (if it looks like one); else None."""
    if configured == OFFLINE_DEFAULT_MODEL or (configured == AUTO_MODEL and resolved != ONLINE_DEFAULT_MODEL):
        return BUNDLED_HUB_ID
    folder = Path(resolved)
    if not folder.exists():
        return resolved
    readme = folder / "README.md"
    if readme.is_file():
        m = re.search(r"^base_model:\s*([^\s#]+)\s*$", readme.read_text(errors="replace").split("\n---", 1)[0], re.M)
        if m and _HUB_ID.match(m.group(1)):
            return m.group(1)
    config = folder / "config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("_name_or_path", "")
        if _HUB_ID.match(name) and not Path(name).exists():
            return name
    return None


def data_label(data: str) -> str:
    if data == EMBEDDED_DATA:
        return "the embedded Corvane Industries pairs"
    path = Path(data)
    return path.name if path.exists() else data


def title(base_id: str | None, resolved: str, data: str, dims: list[int]) -> str:
    base = base_id.split("/")[-1] if base_id else f"A local model ({Path(resolved).name})"
    return f"{base} fine-tuned for retrieval on {data_label(data)} (Matryoshka {', '.join(map(str, dims))})"


def describe_model(model, base_id: str | None, name: str) -> None:
    """Base model and title into the card data (written when the model is saved)."""
    card = model.model_card_data
    if base_id:
        card.base_model = base_id
    card.model_name = name


def rescore_for_card(model, evaluator) -> dict[str, float]:
    """Score the model as saved (the kept checkpoint) and make those the card's evaluation block,
    leaving the training log table as the trainer wrote it."""
    card = model.model_card_data
    logs = list(card.training_logs)
    card.eval_results_dict = {}
    metrics = evaluator(model)
    card.training_logs = logs
    return metrics


# The card's names where the plain capitalisation misleads: the evaluator's NDCG is binary, beside a graded one.
_CARD_NAMES = {"graded_ndcg@10": "Cosine Graded NDCG@10 (linear gains, as trec_eval)"}
_GRADED_NAMES = {"ndcg@10": "Cosine Ndcg@10 (binary relevance, the evaluator's)"}


def add_test_results(model_dir: Path, tuned: dict[int, dict[str, float]], test_name: str) -> None:
    """Add the held-out test NDCG@10 (and MRR@10, Recall@10) per dim to the card's model-index."""
    from huggingface_hub import EvalResult, ModelCard

    path = model_dir / "README.md"
    card = ModelCard.load(path)
    results = [r for r in card.data.eval_results or [] if not (r.dataset_type or "").startswith("test_dim")]
    for dim, metrics in tuned.items():
        names = {**_CARD_NAMES, **(_GRADED_NAMES if "graded_ndcg@10" in metrics else {})}
        for metric in ("ndcg@10", "graded_ndcg@10", "mrr@10", "recall@10"):  # graded: graded qrels only
            if metric in metrics:
                results.append(
                    EvalResult(
                        task_type="information-retrieval", task_name="Information Retrieval",
                        dataset_type=f"test_dim{dim}", dataset_name=f"{test_name} (held-out test, dim {dim})",
                        metric_type=f"cosine_{metric}", metric_name=names.get(metric, f"Cosine {metric.capitalize()}"),
                        metric_value=float(metrics[metric]),
                    )
                )  # fmt: skip
    card.data.eval_results = results
    card.save(path)


CARD_PLOT = "ndcg_by_dim.png"  # the one picture the card shows, copied into model/ (a relative link on the Hub)


def add_plot(model_dir: Path, plot: Path) -> None:
    """Copy the report's NDCG@10-by-dim plot into the model folder, beside the card that links it."""
    import shutil

    shutil.copyfile(plot, Path(model_dir) / CARD_PLOT)


def card_pictures(model_dir: Path, report_md: str) -> str:
    """The report's Markdown as the card shows it: the NDCG@10 plot kept where model/ holds its copy, every other
    picture and the per-question section (test questions' text) left to the report."""
    report_md = re.sub(r"\n## Per-question change.*?(?=\n## |\n<!-- |\Z)", "", report_md, flags=re.S)
    keep = f"![NDCG@10 by dim]({CARD_PLOT})" if (Path(model_dir) / CARD_PLOT).is_file() else ""
    report_md = report_md.replace(f"![NDCG@10 by dim]({CARD_PLOT})", "\0")
    return re.sub(r"!\[[^\]]*\]\([^)]*\)\n?", "", report_md).replace("\0", keep)


def add_evaluation_section(model_dir: Path, report_md: str, dims: list[int]) -> None:
    """Replace the card's held-out evaluation section (after :data:`CARD_MARK`) with the report's tables
    and a usage snippet that loads the model at a reduced dim."""
    card = model_dir / "README.md"
    text = card.read_text() if card.is_file() else ""
    text = text.split(CARD_MARK)[0].rstrip()
    section = (
        card_pictures(model_dir, report_md)
        .replace("\n## ", "\n### ")
        .replace("# Retrieval report", "## Held-out evaluation", 1)
        .replace("SentenceTransformer(MODEL,", f'SentenceTransformer("{MODEL_ID_PLACEHOLDER}",')  # the exports
    )
    small = dims[min(2, len(dims) - 1)]
    usage = "\n\n### Usage at a reduced dimension\n\n" + usage_snippet(model_dir, dims, small) + "\n"
    card.write_text(f"{text}\n\n{CARD_MARK}\n{section.strip()}{usage}")


def usage_snippet(model_dir: Path, dims: list[int], small: int) -> str:
    """The card's usage snippet: ``encode_query``/``encode_document`` (which apply the prompts saved with the model),
    ``truncate_dim`` and normalisation (truncated vectors are not unit length: a dot-product store needs them
    normalised again)."""
    config = Path(model_dir) / "config_sentence_transformers.json"
    prompts = (json.loads(config.read_text()).get("prompts") or {}) if config.is_file() else {}
    saved = ", ".join(f"{k} {v!r}" for k, v in prompts.items() if v)
    note = f"# encode_query / encode_document apply the prompts saved with the model: {saved}\n" if saved else ""
    return (
        "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
        f'model = SentenceTransformer("{MODEL_ID_PLACEHOLDER}", truncate_dim={small})  # any of {dims}\n{note}'
        'queries = model.encode_query(["What was the order backlog at year end?"], normalize_embeddings=True)\n'
        'passages = model.encode_document(["The order backlog was 5.3 billion dollars at year end."], '
        "normalize_embeddings=True)\n"
        "scores = queries @ passages.T  # unit vectors: the dot product is the cosine\n```"
    )


def summary_lines(meta: dict[str, Any]) -> list[str]:
    """The report's header facts: base model, data, leakage, mined negatives, validation before/after."""
    out = []
    if meta.get("base_model"):
        out.append(f"- Base model: `{meta['base_model']}`; fine-tuned on {meta.get('data', 'the training pairs')}.")
    leak = meta.get("leakage") or {}
    if "test_relevant_documents_in_train" in leak:
        out.append(
            f"- Leakage: {leak['test_relevant_documents_in_train']} of {leak['test_relevant_documents']} "
            "test-relevant documents "
            f"and {leak.get('test_queries_also_in_train', 0)} test questions also appear in the training pairs."
        )
    elif "test_pairs_whose_passage_is_in_train" in leak:
        out.append(
            f"- Leakage: {leak['test_pairs_whose_passage_is_in_train']} of {leak.get('test_pairs', '?')} "
            "test questions have a "
            "passage that also has a training question (`--split-by passage` avoids it)."
        )
    negatives = meta.get("hard_negatives") or {}
    if negatives:
        out.append(
            f"- Hard negatives: {negatives.get('negatives_per_pair')} per pair, mined for "
            f"{negatives.get('pairs_with_mined_negatives')} pairs; "
            f"{negatives.get('pairs_with_random_fallback')} got a random "
            "training passage instead (no candidate below the margin)."
        )
    before, after = meta.get("validation_before") or {}, meta.get("validation_saved_model") or {}
    if before and after:
        cells = ", ".join(f"{d}: {before[d]:.4f} -> {after[d]:.4f}" for d in after if d in before)
        out.append(f"- Validation NDCG@10, base model -> saved checkpoint, by dim: {cells}.")
    from job.export.portable import describe

    out += describe(meta.get("portable"))
    averaged = meta.get("checkpoint_average") or {}
    if averaged.get("validation_score") is not None:
        verdict = "saved (it beat" if averaged["kept"] else "not kept (it did not beat"
        names = ", ".join(averaged["checkpoints"])
        out.append(
            f"- Checkpoint average of {names}: validation {averaged['validation_score']:.4f} at the selection "
            f"metric, {verdict} the best single checkpoint's {averaged['best_single']:.4f})."
        )
    return out
