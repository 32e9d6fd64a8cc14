"""The job's one typed configuration.

Every way of setting an option maps onto :class:`JobConfig`. Precedence, lowest to highest:

1. the dataclass defaults below;
2. the named preset (``preset: blog``), if any;
3. the YAML file (``--config FILE``);
4. environment variables ``JOB_<FIELD>`` (e.g. ``JOB_EPOCHS=2``);
5. command-line flags (``--epochs 2``).

The preset itself may be chosen at any of levels 3-5; it is applied beneath the YAML file, the
environment and the flags, so an explicit value always beats a preset value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from job.errors import JobError
from job.redact import KEY_SHAPED, redact_url
from job.synth.llm import check_base_url
from job.train import losses

ENV_PREFIX = "JOB_"
# transformers' SchedulerType values that need no extra arguments
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
REPORT_TO = ("auto", "none", "tensorboard", "mlflow", "wandb", "trackio")
LOSSES = losses.REGISTRY  # name -> entry (job/train/losses.py): a loss registered there is a valid --loss
LOSS_DIRECTIONS = ("query_to_doc", "doc_to_query", "query_to_query", "doc_to_doc")
EMBEDDED_DATA = "embedded"
AUTO_MODEL = "auto"
ONLINE_DEFAULT_MODEL = "BAAI/bge-base-en-v1.5"
OFFLINE_DEFAULT_MODEL = "bundled:all-MiniLM-L6-v2"
# `--export`: what job/export/onnx.py writes into model/ (OpenVINO's exporter, optimum-intel, needs transformers < 5.6)
EXPORT_NAMES = ("onnx", "onnx-int8")


@dataclass(frozen=True)
class Check:
    """A field's own constraint, declared beside it (``_opt(..., check=...)``): ``ok(value)``, the words for what the
    value must be, and the fix (``{flag}`` is the field's flag). An optional field left unset (None) passes."""

    ok: Callable[[Any], bool]
    want: str
    fix: str


def at_least(low: float, example: str | None = None, *, want: str | None = None, fix: str | None = None) -> Check:
    if example is None and fix is None:  # the error's fix would read "pass e.g. --flag None"
        raise TypeError("at_least() needs an example value or a fix")
    words = want or ("0 or more" if low == 0 else f"at least {low}")
    return Check(lambda v: v >= low, words, fix or f"pass e.g. {{flag}} {example}.")


def positive(example: str, *, want: str = "positive") -> Check:
    return Check(lambda v: v > 0, want, f"pass e.g. {{flag}} {example}.")


def fraction(example: str) -> Check:
    return Check(lambda v: 0 <= v < 1, "in [0, 1)", f"pass e.g. {{flag}} {example}.")


def between(low: float, high: float, example: str) -> Check:
    return Check(lambda v: low <= v <= high, f"in [{low}, {high}]", f"pass e.g. {{flag}} {example}.")


_NO_LEGACY = object()


def _opt(
    default: Any,
    help: str,
    *,
    step: str | tuple[str, ...] = (),
    group: str | None = None,
    section: str | None = None,
    legacy: Any = _NO_LEGACY,
    check: Check | None = None,
    **extra: Any,
) -> Any:
    """A configuration field and everything about it, in one place:

    - ``step``: the steps whose outputs depend on it (``prepare``, ``model`` - the base model as baseline and training
      load it -, ``train``), so a change re-runs them and a new field cannot be left out of a fingerprint;
    - ``group``: ``publish`` for publishing destinations, ``local`` for what only makes sense on this machine, neither
      travels to a SageMaker job; ``synthesize`` for `job synthesize`'s own;
    - ``section``: its `--help` section when it is not the one its steps imply (:func:`help_section`);
    - ``legacy``: for a field added after run directories existed, the value that reproduces what a run did before
      it existed (a fingerprint recorded without the field matches a configuration with that value);
    - ``check``: its own constraint (:class:`Check`); rules across fields stay in :func:`validate_config`;
    - ``choices``, ``normalize`` (a function applied to every value read, e.g. lower-casing), ``destination``
      (a publishing field that names a destination: set means publish there): in ``extra``."""
    meta = {"help": help, "steps": (step,) if isinstance(step, str) else tuple(step), "group": group, **extra}
    meta.update({k: v for k, v in (("section", section), ("check", check)) if v is not None})
    if legacy is not _NO_LEGACY:
        meta["legacy"] = legacy
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# --- presets ------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    # The recipe this project is modelled on: MNRL in MatryoshkaLoss, batch 32 x accumulation 16,
    # lr 2e-5, 4 epochs, cosine schedule with 10 % warm-up.
    "blog": {
        "loss": "mnrl",
        "batch_size": 32,
        "gradient_accumulation_steps": 16,
        "learning_rate": 2e-5,
        "epochs": 4.0,
        "warmup_ratio": 0.1,
        "lr_scheduler": "cosine",
        "hard_negatives": 0,
    },
}


def normal_merge_base(value: str) -> str:
    """merge_base as every reader compares it: 'off', 'auto' or an alpha written as a float (' AUTO' -> 'auto',
    '.5' -> '0.5'); a value that is none of these is returned as given, for :func:`validate_merge` to name."""
    mode = value.strip().lower()
    try:
        return mode if mode in ("off", "auto") else str(float(mode))
    except ValueError:
        return value


@dataclass(frozen=True)
class JobConfig:
    # --- where things go -------------------------------------------------------------------
    run_dir: str = _opt(
        "runs/default",
        "Run directory: prepared data, metrics, checkpoints, model, report.",
        group="local",
        section="Run",
    )
    # --- model -----------------------------------------------------------------------------
    model: str = _opt(
        AUTO_MODEL,
        "Base model: a Hugging Face Hub id or a local path. 'auto' means "
        f"{ONLINE_DEFAULT_MODEL} online and the bundled all-MiniLM-L6-v2 when HF_HUB_OFFLINE=1. "
        f"'{OFFLINE_DEFAULT_MODEL}' always means the bundled copy.",
        step="model",
    )
    matryoshka_dims: list[int] | None = _opt(
        None,
        "Matryoshka dims, e.g. 768,512,256,128,64. Default: derived from the model's dimension.",
        step="model",
    )
    matryoshka_weights: list[float] | None = _opt(
        None,
        "Loss weight of each Matryoshka dim, largest dim first (e.g. 1,1,1,2,2). Default: all 1.",
        step="train",
    )
    max_seq_length: int | None = _opt(
        None,
        "Token limit for texts; longer texts are truncated. Default: the model's.",
        step="model",
        check=at_least(
            8,
            "128",
            want="at least 8 tokens (or left out: the model's own)",
            fix="pass e.g. {flag} 128, or leave it out.",
        ),
    )
    query_prompt: str | None = _opt(
        None, "Text prepended to every question (baseline and fine-tuned alike).", step="model"
    )
    passage_prompt: str | None = _opt(
        None, "Text prepended to every passage (baseline and fine-tuned alike).", step="model"
    )
    # --- synthesize: documents -> pairs (job synthesize, job run --docs) -------------------
    docs: list[str] | None = _opt(
        None,
        "Documents to synthesize training pairs from (folders or files of .txt, .md, .html, .pdf, .jsonl, .csv): "
        "`job run --docs` writes questions for their chunks with --llm-model, then trains on them (instead of --data).",
        step="synthesize",
        group="synthesize",
    )
    text_column: str | None = _opt(
        None, "Column holding the text in .jsonl/.csv documents. Default: text, content, context, passage, ...",
        step="synthesize", group="synthesize",
    )  # fmt: skip
    chunk_tokens: int | None = _opt(
        None, "Chunk size in the base model's tokens. Default: the model's max_seq_length - 2.",
        step="synthesize", group="synthesize",
        check=at_least(8, "256"),
    )  # fmt: skip
    chunk_overlap: int = _opt(
        0, "Tokens that neighbouring chunks share.", step="synthesize", group="synthesize", check=at_least(0, "32")
    )
    llm_base_url: str | None = _opt(
        None,
        "OpenAI-compatible endpoint that writes the questions (vLLM, Ollama, llama.cpp server, TGI, a gateway), "
        "e.g. http://127.0.0.1:8080/v1. Default: OPENAI_BASE_URL, else OpenAI's API.",
        step="synthesize",
        group="synthesize",
    )
    llm_model: str | None = _opt(
        None, "The LLM's model name at that endpoint (e.g. gpt-4o-mini).", step="synthesize", group="synthesize"
    )
    llm_api_key_env: str = _opt(
        "OPENAI_API_KEY",
        "Environment variable that holds the endpoint's API key (the key itself is never a flag).",
        group="synthesize",
    )
    questions_per_chunk: int = _opt(
        1, "Questions asked per chunk.", step="synthesize", group="synthesize", check=at_least(1, "1")
    )
    prompt_file: str | None = _opt(
        None,
        "Prompt template replacing the built-in one: text with {passage} (and {n}), optionally in '### system' / "
        "'### user' / '### assistant' sections for few-shot examples.",
        step="synthesize",
        group="synthesize",
    )
    llm_temperature: float = _opt(
        0.0, "Sampling temperature of the LLM.", step="synthesize", group="synthesize", check=between(0, 2, "0")
    )
    llm_max_tokens: int | None = _opt(
        None,
        "Answer length limit in tokens. Default: 64 per question.",
        step="synthesize",
        group="synthesize",
        check=at_least(1, "64"),
    )
    llm_concurrency: int = _opt(4, "LLM requests in flight at once.", group="synthesize", check=at_least(1, "4"))
    llm_timeout: float = _opt(
        60.0,
        "Seconds one LLM request may take before it is retried.",
        group="synthesize",
        check=positive("60", want="positive (seconds)"),
    )
    llm_max_retries: int = _opt(
        5,
        "Retries (exponential back-off) on 429, 5xx, timeouts and dropped connections.",
        group="synthesize",
        check=at_least(0, "5"),
    )
    llm_price_in: float | None = _opt(
        None,
        "Price per million input tokens, for the cost line (e.g. 0.15).",
        group="synthesize",
        check=at_least(0, "0.15"),
    )
    llm_price_out: float | None = _opt(
        None, "Price per million output tokens.", group="synthesize", check=at_least(0, "0.6")
    )
    consistency_top_k: int = _opt(
        5,
        "Round-trip filter: keep a generated question only when the base model ranks its own chunk within the top k "
        "of all chunks (0: off).",
        step="synthesize",
        group="synthesize",
        check=at_least(0, "5", want="0 (off) or more"),
    )
    query_form: str = _opt(
        "question",
        "What the LLM writes for each chunk, in the form your users search with: 'question' (kept when it ends in "
        "'?' or starts like one) or 'statement' (a claim or search phrase, e.g. SciFact's claims: any line is "
        "kept; the built-in prompt then asks for statements).",
        step="synthesize",
        group="synthesize",
        choices=("question", "statement"),
    )
    grounding_filter: bool = _opt(
        True,
        "Grounding filter: drop a generated question that names a number, a year, a name or a domain phrase ('the "
        "company', 'fiscal', the prompt example's subject) that its passage does not contain.",
        step="synthesize",
        group="synthesize",
    )
    # --- data ------------------------------------------------------------------------------
    data: str = _opt(
        EMBEDDED_DATA,
        "Training pairs: a CSV/JSON/JSONL/Parquet file, a Hub dataset id, or 'embedded' for the bundled "
        "Corvane Industries annual-report pairs.",
        step="prepare",
    )
    data_split: str = _opt("train", "Split to read when --data is a Hub dataset id.", step="prepare")
    question_column: str | None = _opt(
        None, "Column holding the question (anchor). Default: auto-detect.", step="prepare"
    )
    passage_column: str | None = _opt(
        None, "Column holding the passage (positive). Default: auto-detect.", step="prepare"
    )
    negative_columns: list[str] = _opt(
        ["auto"],
        "Columns holding hard negatives given with the data (each a string or a list of strings). 'auto': "
        "negative, negatives, neg, hard_negative(s) and numbered ones (negative_1, ...); 'off': none.",
        step="prepare",
        legacy=["auto"],
    )
    check_column_order: bool = _opt(
        True,
        "Refuse data whose 'questions' are much longer than its 'passages' (columns likely swapped).",
        step="prepare",
    )
    drop_invalid: bool = _opt(
        False, "Drop rows with empty or non-text values (and report them) instead of failing.", step="prepare"
    )
    eval_data: str | None = _opt(
        None,
        "BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) used for the test evaluation "
        "instead of a held-out split of --data.",
        step="prepare",
    )
    eval_split: str = _opt("test", "qrels split to read from --eval-data.", step="prepare")
    guard_data: str | None = _opt(
        None,
        "A BEIR folder from outside the training domain: the evaluate step scores base and fine-tuned models on it "
        "too and warns when fine-tuning costs more than --guard-max-drop points.",
        step="evaluate",
        section="Evaluation and checkpoints",
        legacy=None,
    )
    guard_split: str = _opt(
        "test",
        "qrels split to read from --guard-data.",
        step="evaluate",
        section="Evaluation and checkpoints",
        legacy="test",
    )
    guard_nanobeir: list[str] | None = _opt(
        None,
        "NanoBEIR datasets (online) to guard with, e.g. msmarco,nq,scifact (scored at the full dim).",
        step="evaluate",
        section="Evaluation and checkpoints",
        legacy=None,
    )
    guard_max_drop: float = _opt(
        2.0,
        "Warn when a guard set's NDCG@10 drops by more than this many points.",
        step="evaluate",
        section="Evaluation and checkpoints",
        legacy=2.0,
        check=at_least(0, "2", want="0 or more (NDCG@10 points)"),
    )
    export: list[str] | None = _opt(
        None,
        "Exports written into model/ and scored beside the PyTorch model at every dim (NDCG@10, encode speed): "
        "onnx (float32), onnx-int8 (dynamic int8), comma-separated; the base model is exported too, for "
        "`rag-eval serve --backend`. `job export` does the same for a finished run.",
        step="evaluate",
        section="Evaluation and checkpoints",
        legacy=None,
    )
    export_max_drop: float = _opt(
        1.0,
        "Flag an export whose NDCG@10 is more than this many points below the PyTorch model's at any dim "
        "(`rag-eval serve` does not pick a flagged export by default).",
        step="evaluate",
        section="Evaluation and checkpoints",
        legacy=1.0,
        check=at_least(0, "1", want="0 or more (NDCG@10 points)"),
    )
    val_fraction: float = _opt(
        0.1, "Fraction of pairs held out for validation (model selection).", step="prepare", check=fraction("0.1")
    )
    test_fraction: float = _opt(
        0.1,
        "Fraction of pairs held out for the final test (ignored with --eval-data).",
        step="prepare",
        check=fraction("0.1"),
    )
    split_by: str = _opt(
        "pair",
        "'pair' splits pairs at random; 'passage' keeps all questions of one passage in one split (no leakage).",
        choices=("pair", "passage"),
        step="prepare",
    )
    seed: int = _opt(
        42,
        "Seed for the split, the sampler and the model initialisation.",
        step=("prepare", "train"),
        section="Data",
        check=Check(lambda v: 0 <= v < 2**32, "in [0, 2**32)", "pass e.g. {flag} 42."),
    )
    # --- training recipe -------------------------------------------------------------------
    preset: str | None = _opt(None, "Named recipe: see `job presets`.", choices=tuple(PRESETS), section="Run")
    loss: str = _opt(
        "mnrl",
        losses.help_text(),
        choices=LOSSES,
        step="train",
    )
    mini_batch_size: int = _opt(
        32, "Mini-batch size for the cached losses.", step="train", check=at_least(1, fix="pass a positive {flag}.")
    )
    loss_directions: list[str] = _opt(
        ["query_to_doc"],
        "Which similarities the (cached) MNRL loss contrasts: query_to_doc, plus doc_to_query for the symmetric loss "
        "(passage-to-question too), query_to_query, doc_to_doc.",
        step="train",
        legacy=["query_to_doc"],
    )
    loss_scale: float = _opt(
        20.0,
        "Inverse temperature of the (cached) MNRL loss (similarities are multiplied by it).",
        step="train",
        legacy=20.0,
        check=positive("20"),
    )
    guide_model: str | None = _opt(
        None,
        "Guide for the gist losses: a Hub id or local path. Default: a frozen copy of the base model.",
        step="train",
        legacy=None,
    )
    hard_negatives: int = _opt(
        1,
        "Hard negatives per pair: mined from the training passages with the base model before training, for the "
        "places the negatives given with the data (--negative-columns) leave (0: no mining).",
        step="train",
        check=at_least(0, "1"),
    )
    hard_negative_margin: float = _opt(
        0.05,
        "Relative margin: a mined negative must score below (1 - margin) x the positive's score.",
        step="train",
    )
    hard_negative_depth: int = _opt(
        0,
        "How many of the base model's top-ranked passages per question mining looks through for negatives that pass "
        "the margin (0: the library's default, 10 per negative + 1); a pair with too few gets random passages.",
        step="train",
        legacy=0,
    )
    hard_negative_range_min: int = _opt(
        0,
        "Mining skips each question's N top-ranked passages (a guard against false negatives: unlabelled passages "
        "that answer the question rank first); they count in --hard-negative-depth, and the default depth adds them.",
        step="train",
        legacy=0,
        check=at_least(0, "3"),
    )
    epochs: float = _opt(4.0, "Training epochs.", step="train")
    max_steps: int = _opt(-1, "Stop after this many optimizer steps (-1: run all epochs).", step="train")
    batch_size: int = _opt(
        32,
        "Pairs per batch: every other passage in the batch is a negative.",
        step="train",
        check=at_least(1, fix="pass a positive {flag}."),
    )
    length_grouping: int = _opt(
        0,
        "Group each batch's rows by passage length (pools of N batches sorted by length, batch order shuffled) so "
        "that little of a step is padding; 0: random no-duplicates batches.",
        step="train",
        section="Speed and hardware",
        legacy=0,
        check=at_least(0, "16", want="0 (off) or more"),
    )
    gradient_accumulation_steps: int = _opt(
        1,
        "Optimizer steps every N batches (does not add negatives).",
        step="train",
        check=at_least(1, fix="pass a positive {flag}."),
    )
    attention_dropout: float | None = _opt(
        None,
        "Dropout on the attention probabilities while training (0 lets PyTorch's fused attention skip storing the "
        "seq x seq matrices: about half the training memory). Default: the model's own (0.1 for BERT models).",
        step="train",
        legacy=None,
        check=fraction("0"),
    )
    learning_rate: float = _opt(1e-4, "Peak learning rate.", step="train", check=positive("1e-4"))
    warmup_ratio: float = _opt(
        0.1, "Fraction of steps spent warming up the learning rate.", step="train", check=fraction("0.1")
    )
    lr_scheduler: str = _opt(
        "cosine", "Learning-rate schedule (transformers' lr_scheduler_type).", step="train", choices=LR_SCHEDULERS
    )
    weight_decay: float = _opt(0.0, "AdamW weight decay.", step="train")
    best_model_dim: int | None = _opt(
        None,
        "Dim whose validation NDCG@10 picks the best checkpoint. Default: the largest Matryoshka dim.",
        step="train",
        section="Evaluation and checkpoints",
    )
    eval_steps: int | None = _opt(
        None,
        "Validate and checkpoint every N steps instead of every epoch.",
        step="train",
        section="Evaluation and checkpoints",
        check=at_least(1, fix="pass a positive {flag} or leave it unset."),
    )
    average_checkpoints: int = _opt(
        0,
        "Average the weights of the last N checkpoints (a model soup, N >= 2) and keep the average only when it beats "
        "the best single checkpoint on validation; 0: off. Keeps N + 1 checkpoints on disk.",
        step="train",
        section="Evaluation and checkpoints",
        legacy=0,
    )
    merge_base: str = _opt(
        "off",
        "Interpolate the fine-tuned weights with the base model's (alpha * fine-tuned + (1 - alpha) * base) against "
        "forgetting general retrieval: 'off', an alpha in (0, 1], or 'auto' (every --merge-alphas scored on validation "
        "and, with --guard-data, on the guard set's train/dev queries; kept: the best in-domain alpha whose guard drop "
        "is within --guard-max-drop). Default: off, and auto when --guard-data has train or dev queries to choose on.",
        step="train",
        section="Evaluation and checkpoints",
        legacy="off",
        normalize=normal_merge_base,
    )
    merge_alphas: list[float] = _opt(
        [1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
        "The alphas --merge-base auto tries.",
        step="train",
        section="Evaluation and checkpoints",
        legacy=[1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
    )
    eval_batch_size: int = _opt(
        64,
        "Batch size for encoding during evaluation.",
        section="Evaluation and checkpoints",
        check=at_least(1, fix="pass a positive {flag}."),
    )
    relevance_threshold: int = _opt(
        1,
        "On graded qrels (BEIR scores above 1): the grade from which a passage counts as relevant for the binary "
        "metrics (the evaluator's NDCG@10, MRR, MAP, recall; model selection). 1: every grade > 0; TREC-DL uses 2. "
        "Graded NDCG@10 (linear gains) is reported beside them either way; binary qrels ignore it.",
        step="model",
        section="Evaluation and checkpoints",
        legacy=1,
        check=at_least(1, fix="pass a positive {flag}."),
    )
    save_total_limit: int = _opt(
        2, "Checkpoints kept on disk (the best one is always kept).", section="Evaluation and checkpoints"
    )
    logging_steps: int = _opt(
        10,
        "Log the training loss every N steps.",
        section="Evaluation and checkpoints",
        check=at_least(1, fix="pass a positive {flag}."),
    )
    report_to: str = _opt(
        "auto",
        "Where the trainer logs metrics: tensorboard (into RUN_DIR/logs), mlflow, wandb, trackio or none; 'auto' is "
        "tensorboard when it is installed, else none.",
        choices=REPORT_TO,
        section="Evaluation and checkpoints",
    )
    log_format: str = _opt(
        "text",
        "What the job prints on stdout: 'text' (lines for people), or 'json' (one JSON object per event: steps, "
        "losses, validation NDCG@10 by dim, phase timings, errors with their fix; for a log collector).",
        choices=("text", "json"),
        group="local",
        section="Run",
    )
    progress_seconds: float = _opt(
        30.0,
        "Where the output is not a terminal (a file, docker logs, CI, CloudWatch), progress bars print one line "
        "every N seconds and one when they end, instead of redrawing; 0: only the line at the end.",
        group="local",
        section="Run",
        check=Check(lambda v: 0 <= v < math.inf, "0 or more", "pass e.g. {flag} 30."),
    )
    mixed_precision: str = _opt(
        "auto",
        "Training precision (autocast; master weights stay fp32): 'auto' is bf16 on GPUs that have it (compute "
        "capability 8.0+: A10G, A100, L4, H100), fp16 with loss scaling on older ones (T4 of ml.g4dn, V100 of ml.p3), "
        "fp32 on CPU; 'no' is fp32 everywhere; 'fp16' and 'bf16' are refused where the machine cannot do them "
        "(fp16 needs CUDA; bf16 runs on CPU, slowly unless the CPU has bf16 instructions). tf32 matmuls on 8.0+ "
        "unless 'no'. training.json records what was used.",
        choices=("auto", "no", "fp16", "bf16"),
        step="train",
        section="Speed and hardware",
    )
    dataloader_workers: int = _opt(0, "DataLoader worker processes.", section="Speed and hardware")
    memory_check: bool = _opt(
        True,
        "On the CPU, estimate a training step's memory before training: switch to the cached loss when the plain one "
        "would not fit, stop with the fix when nothing would (the GPU retries after a real out-of-memory instead).",
    )
    nproc: int = _opt(
        0,
        "Training processes (DDP through torchrun); 0 = one per visible GPU, 1 on CPU.",
        section="Speed and hardware",
        check=at_least(0, "2", want="0 (one per GPU) or more"),
    )
    token_cache: bool = _opt(
        True,
        "Fast data pipeline: tokenize each distinct training text once (not in every batch of every epoch) and "
        "check batch duplicates on integer ids. Same batches and tensors as sentence-transformers' own pipeline.",
        section="Speed and hardware",
    )
    # --- publishing ------------------------------------------------------------------------
    s3_uri: str | None = _opt(
        None,
        "Publish model and report under this s3://bucket/prefix, one sub-prefix per run (`job push`, or after "
        "`job run`).",
        group="publish",
        destination=True,
    )
    hub_repo: str | None = _opt(
        None,
        "Push the model (with its evaluation card) to this Hugging Face Hub repo, NAMESPACE/NAME (`job push`, or "
        "after `job run`).",
        group="publish",
        destination=True,
    )
    hub_private: bool = _opt(True, "Create the Hub repo as private (default) or public.", group="publish")
    publish_dir: str | None = _opt(
        None,
        "Copy model and report into this folder (a mounted volume, NFS; one sub-folder per run, every file verified, "
        "manifest last; `job push`, or after `job run`).",
        group="publish",
        destination=True,
    )

    # ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def shown(self) -> dict[str, Any]:
        """:meth:`to_dict` as it may be shown or stored: URLs with their credentials masked (the credentials
        change no output, so fingerprints need not hold them)."""
        d = self.to_dict()
        for name in URL_FIELDS:
            d[name] = redact_url(d[name])
        return d

    def fingerprint(self, names: typing.Iterable[str]) -> dict[str, Any]:
        """The values of ``names``: what a step's outputs depend on."""
        d = self.shown()
        return {n: d[n] for n in sorted(names)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.shown(), sort_keys=False)


FIELDS = {f.name: f for f in fields(JobConfig)}
URL_FIELDS = tuple(n for n in FIELDS if n.endswith("_url"))  # may carry credentials: see JobConfig.shown


def fields_where(*, step: str | None = None, group: str | None = None) -> tuple[str, ...]:
    """Names of the fields that ``step`` depends on, or that belong to ``group``, in declaration order."""
    return tuple(
        name
        for name, f in FIELDS.items()
        if (step is not None and step in f.metadata["steps"]) or (group is not None and f.metadata["group"] == group)
    )


# What each step's outputs depend on (its fingerprint); the train step also depends on the model's fields.
PREPARE_FIELDS = fields_where(step="prepare")
MODEL_FIELDS = fields_where(step="model")
TRAIN_FIELDS = MODEL_FIELDS + fields_where(step="train")
EVALUATE_FIELDS = TRAIN_FIELDS + fields_where(step="evaluate")
# Fields added after run directories existed, with the value that reproduces what a run did before the field
# existed (each field's ``legacy=``): a fingerprint recorded without the field matches a configuration with that value.
LEGACY_VALUES: dict[str, Any] = {name: f.metadata["legacy"] for name, f in FIELDS.items() if "legacy" in f.metadata}


def fingerprints_match(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Equal, or differing only by fields the record predates whose current value is their legacy one."""
    if recorded == current:
        return True
    missing = set(current) - set(recorded) - {"inputs"}  # input digests: recorded since they exist
    if set(recorded) - set(current) or any(k not in LEGACY_VALUES or current[k] != LEGACY_VALUES[k] for k in missing):
        return False
    return all(recorded[k] == current[k] for k in recorded)  # (a record without input digests cannot tell)


# `--help` sections, in order; a field's section follows from what it affects unless its ``section=`` names one.
HELP_SECTIONS = (
    "Run",
    "Synthesize",
    "Data",
    "Model",
    "Recipe",
    "Evaluation and checkpoints",
    "Speed and hardware",
    "Publishing",
)


def help_section(name: str) -> str:
    meta = FIELDS[name].metadata
    if meta.get("section"):
        return meta["section"]
    if meta["group"] == "publish":
        return "Publishing"
    if meta["group"] == "synthesize":
        return "Synthesize"
    steps = meta["steps"]
    return "Data" if "prepare" in steps else "Model" if "model" in steps else "Recipe"


# Publishing destinations: checked before `job run` starts, used after it ends; never sent to a job.
PUBLISH_FIELDS = fields_where(group="publish")
# the publishing fields that each name a destination (set: publish there; infra.publish.destinations.DESTINATIONS)
DESTINATION_FIELDS = tuple(n for n in PUBLISH_FIELDS if FIELDS[n].metadata.get("destination"))
# `job synthesize`: runs where the documents and the LLM endpoint are (never inside a SageMaker job).
SYNTH_GROUP_FIELDS = fields_where(group="synthesize")
SYNTH_FIELDS = fields_where(step="synthesize")
# Fields a SageMaker job (or its container) decides itself: where the run lives, and publishing.
LOCAL_FIELDS = fields_where(group="local") + PUBLISH_FIELDS + SYNTH_GROUP_FIELDS
_HINTS = typing.get_type_hints(JobConfig)


def field_kind(name: str) -> tuple[type, bool, bool]:
    """(base type, is_list, is_optional) of a config field."""
    hint = _HINTS[name]
    optional = False
    args = typing.get_args(hint)
    if type(None) in args:
        optional = True
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True, optional
    return hint, False, optional


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _scalar(base: type, value: Any) -> Any:
    """int/float/str conversion that never truncates: 1.5 is not an int, nan/inf are not numbers."""
    if base in (int, float) and isinstance(value, bool):
        raise ValueError(value)
    if base is int:
        if isinstance(value, int):
            return value
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    if base is float:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(value)
        return number
    return base(value)


def coerce(name: str, value: Any, source: str) -> Any:
    """Convert ``value`` (a string from env/argv/hyperparameters, or a YAML scalar) to the field's type."""
    if name not in FIELDS:
        import difflib

        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f"did you mean '{close[0]}'? Else " if close else ""
        raise JobError(
            f"Unknown configuration key '{name}' in {source}.",
            f"{hint}use one of: {', '.join(sorted(FIELDS))}.",
        )
    base, is_list, optional = field_kind(name)
    where = f"'{name}' from {source}"
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
        if optional:
            return None
        raise JobError(f"{where} must not be empty.", f"give a {base.__name__} value.")
    out: Any
    try:
        if is_list:
            items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
            out = [_scalar(base, item) for item in items if str(item) != ""]
        elif base is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).strip().lower() in _TRUE:
                out = True
            elif str(value).strip().lower() in _FALSE:
                out = False
            else:
                raise ValueError(value)
        else:
            out = _scalar(base, value)
    except (TypeError, ValueError):
        kind = f"comma-separated list of {base.__name__}" if is_list else base.__name__
        raise JobError(f"{where} has the value {value!r}, which is not a valid {kind}.", f"give a {kind}.") from None
    if base is str and not is_list and not optional and not out.strip():
        raise JobError(f"{where} must not be empty.", "give a value.")
    normalize = FIELDS[name].metadata.get("normalize")
    if normalize is not None:
        out = normalize(out)
    choices = FIELDS[name].metadata.get("choices")
    if choices and out not in choices and name != "preset":  # an unknown preset is named by resolve_config
        raise JobError(f"{where} is {out!r}.", f"use one of: {', '.join(choices)}.")
    return out


def _apply(values: dict[str, Any], updates: dict[str, Any], source: str) -> None:
    for key, value in updates.items():
        key = key.replace("-", "_")
        values[key] = coerce(key, value, source)


MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of option: value lines; 1 MiB is far beyond any real one
MAX_CONFIG_NODES = 100_000  # values in the file once YAML aliases are expanded (a "billion laughs" is 10**9)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise JobError(f"Config file {p} does not exist or is not a file.", "pass the path of a YAML file to --config.")
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise JobError(
            f"Config file {p} is {size / 2**20:.1f} MiB; a config file is a short YAML mapping of option: value "
            f"(at most {MAX_CONFIG_BYTES // 2**20} MiB is read).",
            "pass the YAML config file to --config (see `job config` for the keys); data goes to --data.",
        )
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JobError(
            f"Config file {p} is not UTF-8 text ({exc.reason} at byte {exc.start}): it looks like a binary file.",
            "pass a UTF-8 YAML file of option: value lines to --config (`job config` prints one).",
        ) from None
    try:
        data = _safe_load(text, p) or {}
    except yaml.YAMLError as exc:
        raise JobError(f"Config file {p} is not valid YAML: {exc}.", "fix the YAML syntax.") from None
    except RecursionError:
        raise JobError(
            f"Config file {p} nests YAML lists or mappings too deeply to read.",
            "write the config as a flat mapping of option: value lines (`job config` prints one).",
        ) from None
    if not isinstance(data, dict):
        raise JobError(f"Config file {p} must hold a mapping of option: value.", "see `job config` for the keys.")
    return data


def _safe_load(text: str, path: Path) -> Any:
    """``yaml.safe_load``, with the document's size once its aliases are expanded checked before it is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose aliases expand to more than MAX_CONFIG_NODES values (or refer to themselves):
    the "billion laughs", a few lines that become 10**9 values when read, which would hang the job. Counted on the
    node graph, each shared node once, without expanding anything."""
    size: dict[int, int] = {}  # id(node) -> expanded size
    active: set[int] = set()  # on the current path: a node met again there is an alias to itself
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            kids = _children(node)
            size[key] = min(1 + sum(size[id(k)] for k in kids), MAX_CONFIG_NODES + 1)
            if size[key] > MAX_CONFIG_NODES:
                break
            continue
        if key in size:
            continue
        if key in active:
            size[id(root)] = MAX_CONFIG_NODES + 1  # a value that contains itself: endless when expanded
            break
        active.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)
    if max(size.values(), default=0) > MAX_CONFIG_NODES:
        raise JobError(
            f"Config file {path} expands, through its YAML aliases (*name), to more than {MAX_CONFIG_NODES:,} values "
            "(or to a value that contains itself); a config file is a short mapping of option: value.",
            "write the options out without nested aliases (`job config` prints a complete file).",
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


# JOB_* variables the program reads outside the configuration (never a misspelt field)
OWN_ENV = ("debug", "run_lock_held")
_WARNED_ENV: set[str] = set()


def env_values(environ: typing.Mapping[str, str] | None = None) -> dict[str, str]:
    """The configuration fields set as JOB_<FIELD> variables. A JOB_* variable that is no field but close to one
    (JOB_EPOCH, JOB_LEARNINGRATE) is a warning naming the field it resembles, once per process; other JOB_*
    variables (JOB_NAME from a CI system) are left alone."""
    import difflib

    environ = os.environ if environ is None else environ
    out = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in FIELDS:
                out[name] = value
            elif name not in OWN_ENV and key not in _WARNED_ENV:
                close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.8)
                if close:
                    _WARNED_ENV.add(key)
                    logging.getLogger(__name__).warning(
                        "%s is not a configuration variable and is ignored; did you mean %s%s?",
                        key, ENV_PREFIX, close[0].upper(),
                    )  # fmt: skip
    return out


def resolve_config(
    yaml_path: str | os.PathLike | None = None,
    cli: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> JobConfig:
    """Merge defaults < preset < YAML < environment < CLI into one validated :class:`JobConfig`."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if yaml_path:
        layers.append((f"config file {yaml_path}", load_yaml(yaml_path)))
    layers.append(("the environment (JOB_*)", env_values(environ)))
    layers.append(("the command line", {k: v for k, v in (cli or {}).items() if v is not None}))

    explicit: dict[str, Any] = {}
    for source, layer in layers:
        _apply(explicit, layer, source)

    values: dict[str, Any] = {}
    preset = explicit.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise JobError(f"Unknown preset '{preset}'.", f"use one of: {', '.join(sorted(PRESETS))} (or no preset).")
        _apply(values, PRESETS[preset], f"preset '{preset}'")
    values.update(explicit)
    report_split = values.get("guard_split", "test")
    if (
        "merge_base" not in explicit
        and report_split not in CHOICE_SPLITS
        and guard_choice_split(values.get("guard_data"), report_split)
    ):
        # measured (BENCHMARKS.md, forgetting): with a guard set to choose on, interpolating with the base model keeps
        # general retrieval for a fraction of a domain point, so a guard set turns it on unless a layer says otherwise
        values["merge_base"] = "auto"
    cfg = JobConfig(**values)
    validate_config(cfg)
    return cfg


def resolve_fields(
    names: typing.Iterable[str], cli: dict[str, Any] | None = None, environ: typing.Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Some fields alone, for a command that reads only those (`job push`: the publishing fields): defaults <
    environment (JOB_*) < command line, each value coerced and checked as :func:`resolve_config` does."""
    names = tuple(names)
    values: dict[str, Any] = {}
    for name in names:
        f = FIELDS[name]
        values[name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    env = env_values(environ)
    _apply(values, {k: v for k, v in env.items() if k in names}, "the environment (JOB_*)")
    _apply(values, {k: v for k, v in (cli or {}).items() if k in names and v is not None}, "the command line")
    return values


CHOICE_SPLITS = ("train", "dev")  # a guard set's queries that --merge-base auto may choose alpha on


def guard_choice_split(guard_dir: str | os.PathLike | None, report_split: str) -> str | None:
    """The guard set's split to choose alpha on (train, else dev; never the reported one), or None."""
    if not guard_dir:
        return None
    qrels = Path(guard_dir).expanduser() / "qrels"
    return next((s for s in CHOICE_SPLITS if s != report_split and (qrels / f"{s}.tsv").is_file()), None)


def flag(name: str) -> str:
    """A field's command-line flag (``hub_repo`` -> ``--hub-repo``)."""
    return "--" + name.replace("_", "-")


def check_fields(cfg: JobConfig) -> None:
    """Each field's own constraint (its ``check=``): the first value that breaks one is a JobError."""
    for name, f in FIELDS.items():
        check, value = f.metadata.get("check"), getattr(cfg, name)
        if check is not None and value is not None and not check.ok(value):
            raise JobError(f"{name} is {value}; it must be {check.want}.", check.fix.format(flag=flag(name)))


def validate_config(cfg: JobConfig) -> None:
    """Checks a configuration; never changes it (resolved values are derived in :func:`resolve_config` and by
    :func:`coerce`). Each field's own constraint first, then the rules across fields."""
    check_fields(cfg)
    validate_synthesize(cfg)
    validate_merge(cfg)
    if cfg.hard_negative_depth and cfg.hard_negative_depth <= cfg.hard_negatives:
        raise JobError(
            f"hard_negative_depth is {cfg.hard_negative_depth}; mining {cfg.hard_negatives} negative(s) per pair must "
            "look through more passages than that (and 0 is the library's default).",
            f"pass e.g. --hard-negative-depth {max(50, 10 * cfg.hard_negatives + 1)}, or 0.",
        )
    if cfg.hard_negative_depth and cfg.hard_negative_depth - cfg.hard_negative_range_min < cfg.hard_negatives:
        raise JobError(
            f"hard_negative_depth {cfg.hard_negative_depth} less the {cfg.hard_negative_range_min} top-ranked "
            f"passages that hard_negative_range_min skips leaves fewer than the {cfg.hard_negatives} negative(s) "
            "mining picks per pair.",
            f"pass e.g. --hard-negative-depth {cfg.hard_negative_range_min + max(50, 10 * cfg.hard_negatives + 1)}, "
            "or 0 (the library's default depth, which adds the skipped passages).",
        )
    if cfg.average_checkpoints < 0 or cfg.average_checkpoints == 1:
        raise JobError(
            f"average_checkpoints is {cfg.average_checkpoints}; it must be 0 (off) or at least 2.",
            "pass e.g. --average-checkpoints 3, or 0 to keep the best single checkpoint.",
        )
    bad = [d for d in cfg.loss_directions if d not in LOSS_DIRECTIONS]
    if bad or not cfg.loss_directions or "query_to_doc" not in cfg.loss_directions:
        raise JobError(
            f"loss_directions {cfg.loss_directions} must include query_to_doc and only name: "
            f"{', '.join(LOSS_DIRECTIONS)}.",
            "pass e.g. --loss-directions query_to_doc,doc_to_query (the symmetric loss).",
        )
    loss = losses.get(cfg.loss)
    if cfg.loss_directions != ["query_to_doc"] and not loss.directions:
        raise JobError(
            f"loss_directions applies to {', '.join(n for n, e in losses.REGISTRY.items() if e.directions)}, not to "
            f"{cfg.loss}.",
            "drop --loss-directions or use --loss mnrl.",
        )
    if cfg.guide_model and not loss.guide:
        raise JobError(
            f"guide_model is set but loss is {cfg.loss}; only "
            f"{', '.join(n for n, e in losses.REGISTRY.items() if e.guide)} use a guide.",
            "pass --loss gist, or drop --guide-model.",
        )
    if cfg.export is not None:
        unknown = [e for e in cfg.export if e not in EXPORT_NAMES]
        if unknown or not cfg.export:
            why = (
                " (OpenVINO's exporter, optimum-intel, cannot be installed beside transformers 5)"
                if "openvino" in unknown
                else ""
            )
            raise JobError(
                f"export {cfg.export} names {', '.join(unknown) or 'nothing'}{why}.",
                f"pass one or more of {', '.join(EXPORT_NAMES)}, e.g. --export onnx,onnx-int8 (or leave it out).",
            )
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise JobError(
            f"max_steps is {cfg.max_steps}; it must be at least 1, or -1 to train all epochs.",
            "pass e.g. --max-steps 100, or leave it out.",
        )
    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        raise JobError(f"epochs is {cfg.epochs}; it must be positive.", "pass --epochs > 0 or --max-steps > 0.")
    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise JobError(
            f"val_fraction + test_fraction = {cfg.val_fraction + cfg.test_fraction:g} leaves no training data.",
            "lower them so that their sum is below 1 (e.g. 0.1 and 0.1).",
        )
    if cfg.matryoshka_dims is not None:
        if not cfg.matryoshka_dims or any(d < 1 for d in cfg.matryoshka_dims):
            raise JobError(
                f"matryoshka_dims {cfg.matryoshka_dims} must be positive integers.", "pass e.g. 384,256,128,64,32."
            )
        if len(set(cfg.matryoshka_dims)) != len(cfg.matryoshka_dims):
            raise JobError(f"matryoshka_dims {cfg.matryoshka_dims} repeats a dim.", "list each dim once.")
    if cfg.matryoshka_weights is not None:
        if not cfg.matryoshka_weights or any(w <= 0 for w in cfg.matryoshka_weights):
            raise JobError(
                f"matryoshka_weights {cfg.matryoshka_weights} must be positive numbers.", "pass e.g. 1,1,1,2,2."
            )
        if cfg.matryoshka_dims is not None and len(cfg.matryoshka_weights) != len(cfg.matryoshka_dims):
            raise JobError(
                f"matryoshka_weights has {len(cfg.matryoshka_weights)} values "
                f"for {len(cfg.matryoshka_dims)} matryoshka_dims.",
                "give one weight per dim, in the same order (largest dim first).",
            )


def validate_merge(cfg: JobConfig) -> None:
    mode = cfg.merge_base
    if mode not in ("off", "auto"):
        try:
            alpha = float(mode)
        except ValueError:
            alpha = None
        if alpha is None or not 0 < alpha <= 1 or mode != str(alpha):
            raise JobError(
                f"merge_base is {cfg.merge_base!r}; it must be off, auto, or an alpha in (0, 1].",
                "pass e.g. --merge-base auto, --merge-base 0.5, or --merge-base off.",
            )
    if not cfg.merge_alphas or any(not 0 < a <= 1 for a in cfg.merge_alphas):
        raise JobError(
            f"merge_alphas {cfg.merge_alphas} must be numbers in (0, 1].", "pass e.g. --merge-alphas 1,0.8,0.6,0.5,0.4."
        )
    if cfg.guard_split in ("train", "dev") and mode == "auto" and cfg.guard_data:
        raise JobError(
            f"guard_split is {cfg.guard_split}: --merge-base auto chooses on the guard's train/dev queries, so the "
            "report must score another split.",
            "keep --guard-split test (the default).",
        )


def validate_synthesize(cfg: JobConfig) -> None:
    if cfg.docs is not None and not cfg.docs:
        raise JobError("docs is empty.", "pass --docs FOLDER_OR_FILES (comma-separated), or leave it out.")
    if cfg.docs and cfg.data != EMBEDDED_DATA:
        raise JobError(
            f"Both --docs ({','.join(cfg.docs)}) and --data ({cfg.data}) are given; a run trains on one of them.",
            "drop --data to train on pairs synthesized from the documents, or drop --docs to train on your pairs.",
        )
    if cfg.chunk_tokens is not None and cfg.chunk_overlap >= cfg.chunk_tokens:
        raise JobError(
            f"chunk_overlap ({cfg.chunk_overlap}) must be below chunk_tokens ({cfg.chunk_tokens}).",
            "pass a smaller --chunk-overlap.",
        )
    name = cfg.llm_api_key_env
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name) or KEY_SHAPED.search(name):
        # never echo the value: it is often the key itself, pasted where its variable's name belongs
        looks = "looks like an API key itself" if KEY_SHAPED.search(name) or len(name) > 40 else "is not one"
        raise JobError(
            f"--llm-api-key-env takes the NAME of an environment variable, and the value given ({len(name)} "
            f"characters, not shown) {looks}.",
            "put the key in the environment (export OPENAI_API_KEY=...) and pass its name, e.g. --llm-api-key-env "
            "OPENAI_API_KEY; if the key was typed on a command line, rotate it.",
        )
    check_base_url(cfg.llm_base_url)


def fingerprint_digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_dims(model_dim: int) -> list[int]:
    """Matryoshka dims for a model: the usual lists for 384/768/1024, else halvings down to dim/16 (at least 8).

    768 -> 768, 512, 256, 128, 64;   384 -> 384, 256, 128, 64, 32;   1024 -> 1024, 768, 512, 256, 128, 64.
    """
    table = {768: [768, 512, 256, 128, 64], 384: [384, 256, 128, 64, 32], 1024: [1024, 768, 512, 256, 128, 64]}
    if model_dim in table:
        return table[model_dim]
    dims = [model_dim]
    d = 1 << (model_dim.bit_length() - 1)
    if d == model_dim:
        d //= 2
    while d >= max(8, model_dim // 16) and len(dims) < 6:
        dims.append(d)
        d //= 2
    return dims
