"""The job's steps over a run directory: prepare -> baseline -> train -> evaluate.

Every step writes its outputs to a staging place and moves them in only when it has succeeded, so
a failure leaves earlier outputs intact. Each step ends by writing a small JSON "done" record with
the configuration values its outputs depend on; ``job run`` skips a step whose record matches the
current configuration and refuses (rather than silently mixing) one that does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from job import steps as registry
from job import storage
from job.config import (
    EMBEDDED_DATA,
    PREPARE_FIELDS,
    JobConfig,
    fields_where,
    fingerprint_digest,
    fingerprints_match,
)
from job.data import prepare as data
from job.errors import JobError
from job.evaluate import card, guard
from job.evaluate.report import markdown_table, write_report
from job.evaluate.retrieval import VALIDATION, build_evaluator, evaluate_model, evaluation_options, per_dim_metrics
from job.export.portable import carry_prompts, make_portable
from job.layout import (
    CHECKPOINT_FINGERPRINT,
    DATA,
    IR,
    MODEL,
    RunDir,
    changed_outputs,
    output_stamp,
    replace_dir,
    run_lock,
    write_json,
)
from job.models import load_model, resolve_best_dim, resolve_dims, resolve_model_name
from job.train import checkpoints, merge

logger = logging.getLogger(__name__)

Echo = Callable[[str], None]


def _require(rd: RunDir, step: str, for_step: str) -> dict[str, Any]:
    rec = rd.record(step)
    if rec is None:
        raise JobError(
            f"{for_step} needs the output of `job {step}`, which {rd.done_file(step)} does not hold yet.",
            f"run `job {step} --run-dir {rd.root}` first, or `job run` for every step.",
        )
    return rec


def input_files(cfg: JobConfig) -> dict[str, Path]:
    """The local files and folders the prepare step reads (a Hub dataset id has none)."""
    out: dict[str, Path] = {}
    for name in ("data", "eval_data"):
        value = getattr(cfg, name)
        if name == "data" and value == EMBEDDED_DATA:
            out[name] = data.embedded_data_path()
        elif value and Path(value).expanduser().exists():
            out[name] = Path(value).expanduser()
    return out


def input_digests(cfg: JobConfig, known: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """SHA-256 of every local input, with the size and mtime of its files: when those match ``known``
    (the prepare record's), its digest is reused instead of reading the data again."""
    out = {}
    for name, path in input_files(cfg).items():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        stats = [
            (p.relative_to(path).as_posix() if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in files
        ]
        previous = (known or {}).get(name) or {}
        if previous.get("stats") == [list(s) for s in stats]:
            out[name] = previous
            continue
        h = hashlib.sha256()
        for p, (rel, _, _) in zip(files, stats):
            h.update(rel.encode() + b"\0")
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        out[name] = {"path": str(path), "sha256": h.hexdigest(), "stats": [list(s) for s in stats]}
    return out


def step_fingerprint(cfg: JobConfig, rd: RunDir, step: str) -> dict[str, Any]:
    """What ``step``'s outputs depend on: its configuration fields and the data digest of the prepare step it
    reads (a step with its own :attr:`Step.fingerprint`: that)."""
    s = registry.get(step)
    own = s.own_fingerprint(cfg, rd)
    if own is not None:
        return own
    records = {need: _require(rd, need, f"job {step}") for need in s.needs}
    out = cfg.fingerprint(s.fields_for(cfg))
    if "prepare" in records:
        out["data_digest"] = records["prepare"]["data_digest"]
    return out


def prepare_fingerprint(cfg: JobConfig, rd: RunDir) -> dict[str, Any]:
    """The prepare step's: its fields and the SHA-256 of each local input file (an edited file re-runs it)."""
    known = (rd.record("prepare") or {}).get("inputs")
    return {
        **cfg.fingerprint(PREPARE_FIELDS),
        "inputs": {k: v["sha256"] for k, v in input_digests(cfg, known).items()},
    }


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# --- synthesize (job run --docs) ------------------------------------------------------------------
def with_synthesized_data(cfg: JobConfig, rd: RunDir) -> JobConfig:
    """With --docs, the steps train on the run's synthesized pairs file (its content digest is an input of
    prepare, so new pairs re-run every later step); without, ``cfg`` as it is."""
    if not cfg.docs:
        return cfg
    return dataclasses.replace(cfg, data=str(rd.synth_pairs))


def synthesize_step(cfg: JobConfig, rd: RunDir, echo: Echo, force: bool = False) -> dict[str, Any]:
    """`job run --docs`: the synthesize step, skipped when its summary matches the documents and settings
    (a changed document or setting re-runs it; unchanged chunks come from the answer cache)."""
    from job.synth.synthesize import side_files, synth_fingerprint, synthesize

    assert cfg.docs, "the synthesize step runs with --docs only"
    docs = cfg.docs

    summary_path = side_files(rd.synth_pairs)["summary"]
    if summary_path.is_file() and rd.synth_pairs.is_file() and not force:
        rec = json.loads(summary_path.read_text())
        if rec.get("fingerprint") == synth_fingerprint(cfg, docs):
            echo(f"synthesize: already done for these documents and settings, skipping ({summary_path})")
            return rec
    with storage.storage_errors(rd.root, "the synthesized pairs"):
        return synthesize(cfg, docs, rd.synth_pairs, echo)


def require_synthesized(cfg: JobConfig, rd: RunDir) -> JobConfig:
    """For a single step run with --docs: the run's synthesized pairs must exist."""
    if cfg.docs and not rd.synth_pairs.is_file():
        raise JobError(
            f"--docs is given but {rd.synth_pairs} does not exist yet.",
            f"run `job synthesize --docs ... --run-dir {rd.root}` (or `job run --docs ...`) first.",
        )
    return with_synthesized_data(cfg, rd)


# --- prepare -------------------------------------------------------------------------------------
def prepare(cfg: JobConfig, rd: RunDir, echo: Echo = print, model=None) -> dict[str, Any]:
    """Prepare the data; given the base model, also check the dims and count truncated texts
    so that a bad setting fails here, before any expensive step."""
    if model is not None:
        resolve_best_dim(cfg, resolve_dims(cfg, model))
    inputs = input_digests(cfg)  # before reading: an edit while this step runs shows as a change next time
    records = data.load_records(cfg.data, cfg.data_split)
    columns = list(dict.fromkeys(k for row in records.rows[:1000] for k in row if k != "__line__"))
    q_col, p_col = data.detect_columns(columns, cfg.question_column, cfg.passage_column, records.source)
    n_cols = data.detect_negative_columns(columns, cfg.negative_columns, q_col, p_col, records.source)
    validated = data.validate_pairs(
        records, q_col, p_col, drop_invalid=cfg.drop_invalid, check_column_order=cfg.check_column_order,
        negative_columns=n_cols,
    )  # fmt: skip
    pooled, negatives_dropped = data.pool_negatives(validated.pairs)  # a question's negatives, on all its pairs
    pairs, n_duplicates = data.dedupe_pairs(pooled)
    test_fraction = 0.0 if cfg.eval_data else cfg.test_fraction
    splits = data.split_pairs(pairs, cfg.val_fraction, test_fraction, cfg.seed, cfg.split_by)
    if not cfg.eval_data and not splits["test"]:
        raise JobError(
            f"The split leaves zero test rows: {len(pairs)} pairs x test_fraction {cfg.test_fraction} rounds to 0.",
            "raise --test-fraction, add data, or give a separate test set with --eval-data.",
        )
    if cfg.val_fraction > 0 and not splits["validation"]:
        raise JobError(
            f"The split leaves zero validation rows: {len(pairs)} pairs x val_fraction {cfg.val_fraction} rounds to 0.",
            "raise --val-fraction or add data (--val-fraction 0 trains without model selection).",
        )
    if len(splits["train"]) < 2:
        raise JobError(
            f"The split leaves {len(splits['train'])} training pairs.", "add data or lower the held-out fractions."
        )

    corpus, passage_ids = data.build_ir_corpus(splits)
    ir_sets: dict[str, data.IRData] = {}
    if splits["validation"]:
        queries, qrels = data.build_ir_queries(splits["validation"], passage_ids, "qv")
        ir_sets["validation"] = data.IRData(corpus, queries, qrels)
    if cfg.eval_data:
        ir_sets["test"] = data.load_beir(cfg.eval_data, cfg.eval_split)
    else:
        queries, qrels = data.build_ir_queries(splits["test"], passage_ids, "qt")
        ir_sets["test"] = data.IRData(corpus, queries, qrels)

    truncation = {}
    if model is not None:
        limit = model.max_seq_length
        truncation = {
            "max_seq_length": limit,
            "questions_truncated": data.count_truncated([p.question for p in pairs], model.tokenizer, limit),
            "passages_truncated": data.count_truncated(list(passage_ids), model.tokenizer, limit),
        }

    stage = rd.root / ".prepare.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "data").mkdir(parents=True)
    for split, split_pairs in splits.items():
        data.write_pairs(stage / "data" / f"{split}.jsonl", split_pairs)
    for split, ir in ir_sets.items():
        data.write_beir(stage / "ir" / split, ir, split)
    leakage = data.leakage_report(splits) if splits["test"] else data.leakage_against_test_set(splits, ir_sets["test"])
    write_json(stage / "data" / "leakage.json", leakage)
    digest_src: dict[str, Any] = {
        s: [(p.question, p.passage, *([p.negatives] if p.negatives else [])) for p in v] for s, v in splits.items()
    }
    digest_src["test_ir"] = [sorted(ir_sets["test"].qrels.items()), len(ir_sets["test"].corpus)]
    summary = {
        "source": records.source,
        "columns": {"question": q_col, "passage": p_col, **({"negatives": n_cols} if n_cols else {})},
        "rows_read": len(records.rows),
        "rows_dropped_invalid": {k: len(v) for k, v in validated.dropped_rows.items()},
        "duplicate_pairs_dropped": n_duplicates,
        "pairs": len(pairs),
        **data.data_shape(pairs),
        "given_negatives_dropped_as_positives": negatives_dropped,
        "splits": {s: len(v) for s, v in splits.items()},
        "corpus_size": len(corpus),
        "test_queries": len(ir_sets["test"].relevant_docs(cfg.relevance_threshold)),
        "test_corpus_size": len(ir_sets["test"].corpus),
        "test_graded_relevance": ir_sets["test"].graded,
        "validation_queries": len(ir_sets["validation"].relevant_docs(cfg.relevance_threshold))
        if "validation" in ir_sets
        else 0,
        "truncation": truncation,
        "leakage": {k: v for k, v in leakage.items() if k != "examples"},
        "data_digest": fingerprint_digest(digest_src),
        "inputs": inputs,
        "fingerprint": {**cfg.fingerprint(PREPARE_FIELDS), "inputs": {k: v["sha256"] for k, v in inputs.items()}},
    }
    summary["outputs"] = {
        **output_stamp(stage / "data", DATA),
        **{k: v for split in ir_sets for k, v in output_stamp(stage / "ir" / split, f"{IR}/{split}").items()},
    }
    write_json(stage / "data" / "prepare.json", summary)
    rd.root.mkdir(parents=True, exist_ok=True)
    (rd.root / "ir").mkdir(exist_ok=True)
    for split in ir_sets:
        replace_dir(stage / "ir" / split, rd.ir(split))
    for split in set(data.SPLITS) - set(ir_sets):
        shutil.rmtree(rd.ir(split), ignore_errors=True)
    replace_dir(stage / "data", rd.data)
    shutil.rmtree(stage, ignore_errors=True)

    dropped = validated.rows_dropped  # rows: one with two problems is under both reasons but is one row
    trunc = (
        f", {truncation['passages_truncated']} of them over {truncation['max_seq_length']} tokens (truncated)"
        if truncation
        else ""
    )
    if cfg.eval_data:
        corpora = (
            f"corpus of the pairs {len(corpus)} passages{trunc}; test set {cfg.eval_data}: {summary['test_queries']} "
            f"questions, {summary['test_corpus_size']} documents"
        )
        leaks = (
            f"leakage: {leakage['test_relevant_documents_in_train']} of {leakage['test_relevant_documents']} "
            "test-relevant "
            f"documents and {leakage['test_queries_also_in_train']} test questions also in train"
        )
    else:
        corpora = f"corpus {len(corpus)} passages{trunc}"
        leaks = f"leakage: {leakage.get('test_pairs_whose_passage_is_in_train', 0)} test passages also in train"
    richer = "".join(
        f"{text}; "
        for n, text in (
            (summary["questions_with_several_positives"], f"{summary['questions_with_several_positives']} of "
             f"{summary['questions']} questions with several positives"),
            (summary["given_negatives"], f"{summary['given_negatives']} given hard negatives for "
             f"{summary['questions_with_given_negatives']} questions"),
        )
        if n
    )  # fmt: skip
    echo(
        f"prepare: {len(records.rows)} rows -> {len(pairs)} pairs "
        f"({n_duplicates} duplicates, {dropped} invalid dropped); {richer}"
        f"train/validation/test {len(splits['train'])}/{len(splits['validation'])}/{summary['test_queries']} "
        f"questions, {corpora}; {leaks}; {peak_memory()} -> {rd.data}"
    )
    return summary


def peak_memory() -> str:
    """This process's peak resident memory so far, for the steps' summary lines."""
    import resource

    return f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB"


def load_split(rd: RunDir, split: str) -> data.IRData | None:
    d = rd.ir(split)
    return data.load_beir(d, split) if d.is_dir() else None


def require_split(rd: RunDir, split: str) -> data.IRData:
    """The prepared ``split``; its absence (a run directory whose data/ was removed by hand) is a JobError."""
    loaded = load_split(rd, split)
    if loaded is None:
        raise JobError(
            f"The run directory {rd.root} has no prepared {split} split ({rd.ir(split)} is missing).",
            f"run `job prepare --run-dir {rd.root} --force` (or `job run`), which writes it again.",
        )
    return loaded


# --- baseline ------------------------------------------------------------------------------------
def baseline(cfg: JobConfig, rd: RunDir, echo: Echo = print) -> dict[str, Any]:
    fingerprint = step_fingerprint(cfg, rd, "baseline")
    test = require_split(rd, "test")
    model = load_model(cfg.model, max_seq_length=cfg.max_seq_length)
    dims = resolve_dims(cfg, model)
    start = time.perf_counter()
    metrics = _score(cfg, model, test, dims, "test")
    record = {
        "model": resolve_model_name(cfg.model),
        "dims": dims,
        "split": "test",
        "queries": len(test.relevant_docs(cfg.relevance_threshold)),
        "corpus_size": len(test.corpus),
        "seconds": round(time.perf_counter() - start, 2),
        "metrics": {str(d): m for d, m in metrics.items()},
        "fingerprint": fingerprint,
    }
    write_json(rd.done_file("baseline"), record)
    ndcg = ", ".join(f"{d}: {m['ndcg@10']:.4f}" for d, m in metrics.items())
    echo(
        f"baseline: NDCG@10 on {record['queries']} test questions by dim {{{ndcg}}}; "
        f"{peak_memory()} -> {rd.done_file('baseline')}"
    )
    return record


def _score(cfg: JobConfig, model, ir: data.IRData, dims: list[int], name: str) -> dict[int, dict[str, float]]:
    return evaluate_model(model, ir, dims, name, **evaluation_options(cfg), show_progress_bar=True)


# --- train ---------------------------------------------------------------------------------------
def train(
    cfg: JobConfig, rd: RunDir, echo: Echo = print, resume: bool = False, force: bool = False, callbacks=None
) -> dict[str, Any]:
    from job.train import distributed
    from job.train.finetune import train_model

    merge.check_merge(cfg)  # before any training: --merge-base auto needs the guard's train/dev queries
    fingerprint = step_fingerprint(cfg, rd, "train")
    if not distributed.inside_torchrun():
        nproc = distributed.resolve_nproc(cfg)
        if nproc > 1:
            check_checkpoints(rd, fingerprint, resume, force, echo=echo)
            echo(f"train: starting {nproc} processes (torchrun, DDP)")
            code = distributed.launch_training(cfg, rd.root, nproc, resume=resume, force=force)
            if code != 0:
                errors = distributed.rank_errors(rd.root)
                raise JobError(
                    f"Distributed training ({nproc} processes) failed with exit code {code}"
                    + (f": {errors[0]}" if errors else "; its output is above."),
                    "fix the error shown by the failing rank; `job train --resume` continues from the last checkpoint.",
                )
            record = _require(rd, "train", "job train")
            _echo_train(echo, rd, record)
            return record
        check_checkpoints(rd, fingerprint, resume, force, echo=echo)
    else:  # a torchrun rank (`torchrun --nnodes ... -m job train` included): the global batch must split evenly
        distributed.check_batch_split(cfg.batch_size, 1, distributed.world_size())
        if distributed.is_main_process():
            # torchrun rank 0: the launcher already checked the checkpoints (and --force cleared them)
            check_checkpoints(rd, fingerprint, resume=resume, force=force, echo=echo)

    model = load_model(cfg.model, max_seq_length=cfg.max_seq_length, train=True)
    dims = resolve_dims(cfg, model)
    best_dim = resolve_best_dim(cfg, dims)
    train_pairs = data.read_pairs(rd.data / "train.jsonl")
    validation = load_split(rd, "validation")
    before = _validation_before(cfg, rd, model, dims, validation, echo) if distributed.is_main_process() else None
    result = train_model(
        cfg,
        model,
        dims,
        best_dim,
        train_pairs,
        validation,
        rd.checkpoints,
        resume=resume,
        callbacks=callbacks,
        source=str(rd.data / "train.jsonl"),
    )
    base_name = resolve_model_name(cfg.model)
    base_id = card.base_model_id(cfg.model, base_name)
    record = {
        "base_model": base_name, "base_model_id": base_id, "dims": dims, "best_dim": best_dim, **result.summary,
        "validation_before": before, "fingerprint": fingerprint,
    }  # fmt: skip
    if not distributed.is_main_process():
        return record  # exactly one model is written, by rank 0
    card.describe_model(model, base_id, card.title(base_id, base_name, cfg.data, dims))
    if validation is not None:  # the card and the record show the saved model's numbers, not the last evaluation's
        averaged = result.summary.get("checkpoint_average") or {}
        merged = (result.summary.get("merge_base") or {}).get("chosen", 1.0) < 1.0
        if averaged.get("kept") and not merged:  # the average was just scored by this evaluator: no second pass
            scored = averaged["validation_scores"]
        else:
            evaluator = build_evaluator(validation, dims, VALIDATION, **evaluation_options(cfg))
            scored = card.rescore_for_card(model, evaluator)
        record["validation_saved_model"] = {d: m["ndcg@10"] for d, m in per_dim_metrics(scored, VALIDATION).items()}
    stage = rd.root / ".model.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    carry_prompts(model, cfg.query_prompt, cfg.passage_prompt)  # encode_query/encode_document apply them elsewhere
    model.save(str(stage))
    # the module list and configs in the format sentence-transformers 3.x-6.x, infinity-emb and TEI all read
    record["portable"] = make_portable(stage, model)
    record["outputs"] = output_stamp(stage, MODEL, skip=("training.json", "README.md"))  # the card: evaluate edits it
    write_json(stage / "training.json", record)
    replace_dir(stage, rd.model)
    _echo_train(echo, rd, record)
    return record


def _validation_before(
    cfg: JobConfig, rd: RunDir, model, dims: list[int], validation, echo: Echo
) -> dict[int, float] | None:
    """The base model's validation NDCG@10 by dim: the reference for the validation gain. Scored once,
    before training, and kept with the checkpoints so a resumed training reports it too."""
    if validation is None:
        return None
    path = rd.checkpoints / "validation_before.json"
    if path.is_file():
        return {int(d): v for d, v in json.loads(path.read_text()).items()}
    scores = {
        d: m["ndcg@10"]
        for d, m in per_dim_metrics(
            build_evaluator(validation, dims, VALIDATION, **evaluation_options(cfg))(model), VALIDATION
        ).items()
    }
    write_json(path, {str(d): v for d, v in scores.items()})
    echo("train: base model, validation NDCG@10 by dim {" + ", ".join(f"{d}: {v:.4f}" for d, v in scores.items()) + "}")
    return scores


def _echo_train(echo: Echo, rd: RunDir, record: dict[str, Any]) -> None:
    best_dim = record["best_dim"]
    best = (
        f", best validation NDCG@10@{best_dim} {record['best_metric']:.4f}" if record["best_metric"] is not None else ""
    )
    averaged = record.get("checkpoint_average") or {}
    if averaged.get("validation_score") is not None:
        best += f"; average of {len(averaged['checkpoints'])} checkpoints {averaged['validation_score']:.4f}: " + (
            "saved instead" if averaged["kept"] else "not kept"
        )
    elif averaged:
        best += f"; no checkpoint average ({averaged['why']})"
    procs = f" on {record['world_size']} processes" if record.get("world_size", 1) > 1 else ""
    echo(
        f"train: {record['global_steps']} steps over {record['train_pairs']} pairs{procs} "
        f"in {record['train_seconds']:.0f} s "
        f"({record['pairs_per_second']:.1f} pairs/s){best}; {peak_memory()} -> {rd.model}"
    )


def check_checkpoints(
    rd: RunDir, fingerprint: dict[str, Any], resume: bool, force: bool, fix: str | None = None, echo: Echo = print
) -> None:
    """Resume only checkpoints of this configuration; never discard unfinished ones without --force."""
    marker = rd.checkpoints / CHECKPOINT_FINGERPRINT
    if resume:
        old = json.loads(marker.read_text()) if marker.is_file() else fingerprint
        if not fingerprints_match(old, fingerprint):
            raise JobError(
                f"The checkpoints in {rd.checkpoints} were made with a different configuration "
                f"(changed: {', '.join(changed_fields(old, fingerprint))}).",
                fix or "resume with the original settings, or pass --force to start training afresh.",
            )
    elif rd.checkpoints.exists():
        if checkpoints.newest(rd.checkpoints) is not None and not force:
            old = json.loads(marker.read_text()) if marker.is_file() else {}
            changed = changed_fields(old, fingerprint) if old else []
            what = (
                f"made with a different configuration (changed: {', '.join(changed)})"
                if changed
                else "of an earlier, unfinished training run"
            )
            raise JobError(
                f"{rd.checkpoints} holds checkpoints {what}.",
                fix
                or "pass --force to discard them and start afresh (`job train --resume` continues a run with its "
                "original settings).",
            )
        if force:
            shutil.rmtree(rd.checkpoints)
        else:  # only incomplete checkpoints (a crash mid-save): kept aside, named, never deleted silently
            for path in checkpoints.checkpoint_dirs(rd.checkpoints):
                echo(f"train: {path.name} is incomplete; moved it to {checkpoints.set_aside(path)}")
            for path in rd.checkpoints.iterdir():
                if path.name != checkpoints.INCOMPLETE:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
    write_json(marker, fingerprint)


# --- evaluate ------------------------------------------------------------------------------------
def evaluate(cfg: JobConfig, rd: RunDir, echo: Echo = print, *, strict_exports: bool = True) -> dict[str, Any]:
    """Score the base and fine-tuned models (and with --export, every export), then write the report and the
    card. An export that fails costs only itself: its row says why, the report and card are written, and then,
    with ``strict_exports``, :class:`job.export.onnx.ExportsFailed` names it (`job run` raises it after every step)."""
    fingerprint = step_fingerprint(cfg, rd, "evaluate")
    training = _require(rd, "train", "job evaluate")
    guard.check_guard(cfg)  # a guard folder that is not BEIR, or NanoBEIR offline, fails before any scoring
    test = require_split(rd, "test")
    dims = training["dims"]
    base_rec = rd.record("baseline")
    base_model = None
    if base_rec is not None and fingerprints_match(base_rec["fingerprint"], step_fingerprint(cfg, rd, "baseline")):
        base_metrics = {int(d): m for d, m in base_rec["metrics"].items()}
    else:
        echo("evaluate: no matching baseline record; scoring the base model now")
        base_model = load_model(cfg.model, max_seq_length=cfg.max_seq_length)
        base_metrics = _score(cfg, base_model, test, dims, "test")
    tuned = load_model(str(rd.model), max_seq_length=cfg.max_seq_length)
    memo = None
    if cfg.export:
        from job.evaluate.export_scores import Memo

        memo = Memo(tuned)  # keeps the PyTorch passage vectors for the exports' questions-only scores
    tuned_metrics = _score(cfg, memo or tuned, test, dims, "test")
    exports = _exports(cfg, rd, tuned, memo, base_model, test, dims, tuned_metrics, echo) if cfg.export else None
    from job.evaluate.report import per_question

    base_model = base_model or load_model(cfg.model, max_seq_length=cfg.max_seq_length)
    options = evaluation_options(cfg)  # each test question under both models, for the per-question picture
    options = {k: options[k] for k in ("batch_size", "query_prompt", "passage_prompt") if k in options}
    per_q = per_question(base_model, tuned, test, training.get("best_dim") or dims[0], **options)
    guarded = None
    if cfg.guard_data or cfg.guard_nanobeir:
        base_model = base_model or load_model(cfg.model, max_seq_length=cfg.max_seq_length)
        guarded = guard.guard_scores(cfg, base_model, tuned, dims, echo)
    prepared = rd.record("prepare") or {}
    meta = {
        "model": rd.root.name,
        "base_model": training.get("base_model_id") or Path(training["base_model"]).name,
        "data": card.data_label(cfg.data),
        "dims": dims,
        "test_queries": len(test.relevant_docs(cfg.relevance_threshold)),
        "relevance_threshold": cfg.relevance_threshold,
        "corpus_size": len(test.corpus),
        "leakage": prepared.get("leakage"),
        "hard_negatives": training.get("hard_negatives"),
        "validation_before": training.get("validation_before"),
        "validation_saved_model": training.get("validation_saved_model"),
        "checkpoint_average": training.get("checkpoint_average"),
        "merge_base": training.get("merge_base"),
        "training": {
            k: training.get(k)
            for k in (
                "train_pairs",
                "global_steps",
                "train_seconds",
                "pairs_per_second",
                "best_checkpoint",
                "best_metric",
                "best_metric_name",
            )
        },
        "guard": guarded,
        "per_question": per_q,
        "portable": training.get("portable") or (exports or {}).get("portable"),
        "exports": (exports or {}).get("table"),
        "fingerprint": fingerprint,
    }
    paths = write_report(rd.report, base_metrics, tuned_metrics, meta, training)
    card.add_test_results(rd.model, tuned_metrics, card.data_label(cfg.eval_data or cfg.data))
    card.add_plot(rd.model, paths["plot"])
    card.add_evaluation_section(rd.model, paths["markdown"].read_text(), dims)
    table = markdown_table(base_metrics, tuned_metrics)
    echo(table)
    echo(f"evaluate: report {paths['markdown']}, metrics {paths['json']}, plot {paths['plot']}; {peak_memory()}")
    record = json.loads(paths["json"].read_text())
    if strict_exports:
        check_exports(rd, record)
    return record


def check_exports(rd: RunDir, record: dict[str, Any] | None, results: dict[str, Any] | None = None) -> None:
    """The evaluate record's failed exports as one error (exit 2), raised once everything else is written."""
    from job.evaluate.export_scores import failed_exports
    from job.export.onnx import ExportsFailed

    failures = failed_exports((record or {}).get("exports"))
    if not failures:
        return
    names = list(dict.fromkeys(n.split(" ")[0] for n in failures))
    requested = [n for n in (record or {})["exports"].get("models", {}) if n != "pytorch"]
    scored = [n for n in requested if n not in names]
    without = f"--export {','.join(scored)}" if scored else "without --export"
    grouped: dict[str, list[str]] = {}  # the base model's export often fails for the same reason: said once
    for name, why in failures.items():
        grouped.setdefault(why.removeprefix("it failed when it was made: "), []).append(name)
    listed = "; ".join(f"{' and '.join(names_)}: {why}" for why, names_ in grouped.items())
    error = ExportsFailed(
        f"The run finished (model, {rd.report / 'report.md'}, metrics.json and the model card are written and list "
        f"each export's status), but {len(failures)} export(s) failed: {listed}",
        "the PyTorch model and the other exports are unaffected: serve with `rag-eval serve --backend auto` (it "
        f"skips a failed export) or torch; `job export --run-dir {rd.root} --export {','.join(requested)} --force` "
        f"tries again; to finish without it, evaluate with the exports that work (`job evaluate --run-dir {rd.root} "
        f"{without}`); `job push` publishes the run as it is",
        failures,
    )
    error.results = results or {}
    raise error


def _exports(cfg: JobConfig, rd: RunDir, tuned, memo, base_model, test, dims, tuned_metrics, echo: Echo):
    """--export: make the fine-tuned model's exports (and the base model's, for `rag-eval serve`), then score them.
    A failed or crashed export is recorded in the table with the reason; nothing here stops the evaluate step."""
    from job.evaluate.export_scores import score_exports
    from job.export.onnx import export_model, failure_reason, status

    exports = cfg.export or []  # (called with --export only)
    crashed: dict[str, str] = {}
    portable = None
    try:
        portable = export_model(rd.model, exports, model=tuned, echo=echo, strict=False).get("portable")
    except Exception as exc:  # noqa: BLE001 - the exports fail, the evaluation does not
        why = _why(exc)
        crashed = {name: f"the exporter stopped: {why}" for name in exports}
        echo(f"evaluate: exporting {rd.model} FAILED: {why}")
    base_name = resolve_model_name(cfg.model)
    base: dict[str, dict[str, str]] = {}
    try:
        export_model(
            base_name, exports, model=base_model or load_model(cfg.model, max_seq_length=cfg.max_seq_length),
            out=rd.base_export, echo=echo, strict=False,
        )  # fmt: skip
        for name in exports:
            state = status(rd.base_export, name, Path(base_name))
            base[name] = {"status": "ok"} if state == "ok" else {
                "status": "failed", "why": failure_reason(rd.base_export, name) if state == "failed" else state,
            }  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the base model's exports only serve rag-eval serve's baseline column
        why = _why(exc)
        base = {name: {"status": "failed", "why": f"the exporter stopped: {why}"} for name in exports}
        echo(f"evaluate: exporting the base model {base_name} FAILED: {why}")
    table = score_exports(
        memo, rd.model, exports, test, dims, tuned_metrics, evaluation_options(cfg), cfg.export_max_drop, echo,
        crashed=crashed, base=base,
    )  # fmt: skip
    return {"table": table, "portable": portable}


def _why(exc: BaseException) -> str:
    if isinstance(exc, JobError):
        return exc.message
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# --- run -----------------------------------------------------------------------------------------
def run(
    cfg: JobConfig,
    rd: RunDir,
    echo: Echo = print,
    force: bool = False,
    *,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
    train_step: Callable[[bool], dict[str, Any]] | None = None,
    mismatch_fix: str | None = None,
    steps: tuple[str, ...] | None = None,
    strict_exports: bool = True,
) -> dict[str, Any]:
    """Every step in order (or those of ``steps``); a step whose done record matches the configuration is skipped.

    ``on_step(step, result)`` sees every step's result, skipped ones included; ``train_step(resume)``
    replaces the training call (the SageMaker container runs its own, with its callbacks);
    ``mismatch_fix`` replaces the advice given when the run dir holds another configuration's output;
    ``steps`` limits the run to the steps named (another machine of a multi-machine job runs
    :func:`job.steps.worker_steps`); the order is always :func:`job.steps.steps`'.
    With ``strict_exports`` (the default), an export that failed (now, or when the evaluate step ran) is raised
    as :class:`job.export.onnx.ExportsFailed` once every step has finished and ``on_step`` has seen it (its ``results``
    holds the steps' results); without, the caller reads the failures from the evaluate record
    (:func:`job.evaluate.export_scores.failed_exports`).
    """
    storage.probe_writable(rd.root)  # before any model is loaded
    guard.check_guard(cfg)  # a bad --guard-data fails now, not after training
    merge.check_merge(cfg)  # --merge-base auto needs the guard's train/dev queries
    with run_lock(rd.root, "job run"):  # one writer per run directory (nested holds pass through)
        results = _run_steps(cfg, rd, echo, force, on_step, train_step, mismatch_fix, steps)
    if strict_exports and "evaluate" in results:  # a failed export (now or when the step ran): said at the very end
        check_exports(rd, results["evaluate"], results)
    return results


def _run_steps(cfg, rd, echo, force, on_step, train_step, mismatch_fix, steps) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if cfg.docs:
        results["synthesize"] = synthesize_step(cfg, rd, echo, force)
        cfg = with_synthesized_data(cfg, rd)
    ran_earlier_step = False  # once a step runs, every later step must run on its new output
    inputs_changed = False if force else _inputs_changed(cfg, rd, echo)
    for step in (n for n in registry.names() if steps is None or n in steps):
        rec = rd.record(step)
        if rec is not None and not force and not ran_earlier_step and not inputs_changed:
            want = step_fingerprint(cfg, rd, step)
            if not fingerprints_match(rec.get("fingerprint") or {}, want):
                changed = changed_fields(rec.get("fingerprint", {}), want)
                only_evaluation = step == "evaluate" and set(changed) <= set(fields_where(step="evaluate"))
                raise JobError(
                    f"{rd.root} already holds `{step}` output made with a different configuration "
                    f"(changed: {', '.join(changed)}).",
                    mismatch_fix
                    or (
                        f"only evaluation settings changed: redo the evaluation alone with `job evaluate --run-dir "
                        f"{rd.root}` and these settings (`job export --run-dir {rd.root}` for --export), or pass "
                        "--force to redo every step."
                        if only_evaluation
                        else "pass --force to redo the steps (the old outputs are replaced only when each step "
                        "succeeds), or use a new --run-dir."
                    ),
                )
            damaged = changed_outputs(rd.root, rec)  # a done record never vouches for files changed under it
            if not damaged:
                hint = "; --force redoes it" if mismatch_fix is None else ""
                echo(f"{step}: already done for this configuration, skipping ({rd.done_file(step)}){hint}")
                results[step] = rec
                if on_step:
                    on_step(step, rec)
                continue
            echo(f"{step}: {', '.join(damaged[:3])} changed since the step wrote it: running {step} again")
        ran_earlier_step = True
        with storage.storage_errors(rd.root, f"the {step} step's outputs"):
            results[step] = _run_step(step, cfg, rd, echo, force, inputs_changed, train_step)
        if on_step:
            on_step(step, results[step])
    return results


def _run_step(
    step: str, cfg: JobConfig, rd: RunDir, echo: Echo, force: bool, inputs_changed: bool, train_step
) -> dict[str, Any]:
    return registry.get(step).run(registry.Run(cfg, rd, echo, force, inputs_changed, train_step))


# --- the steps' bodies (job/steps.py names them) -------------------------------------------------------------
def prepare_in_run(r: registry.Run) -> dict[str, Any]:
    return prepare(r.cfg, r.rd, r.echo, model=load_model(r.cfg.model, max_seq_length=r.cfg.max_seq_length))


def baseline_in_run(r: registry.Run) -> dict[str, Any]:
    return baseline(r.cfg, r.rd, r.echo)


def evaluate_in_run(r: registry.Run) -> dict[str, Any]:
    return evaluate(r.cfg, r.rd, r.echo, strict_exports=r.alone)  # in `job run`: a failed export is said at the end


def train_in_run(r: registry.Run) -> dict[str, Any]:
    """The train step inside `job run`: checkpoints of old data moved aside, then resume from this
    configuration's newest complete checkpoint (none with --force)."""
    cfg, rd, echo = r.cfg, r.rd, r.echo
    if r.inputs_changed and rd.checkpoints.exists():  # made on the old data: of no use, but not deleted
        stale = rd.root / f"{rd.checkpoints.name}.before-{time.strftime('%Y%m%d-%H%M%S')}"
        rd.checkpoints.rename(stale)
        echo(f"train: the checkpoints were made on the old data; moved them to {stale}")
    resume_from = None if r.force else _resume_point(cfg, rd, echo)
    if resume_from is not None:
        echo(f"train: resuming from {resume_from}")
    resume = resume_from is not None
    return r.train_step(resume) if r.train_step else train(cfg, rd, echo, resume=resume, force=r.force)


def _inputs_changed(cfg: JobConfig, rd: RunDir, echo: Echo) -> bool:
    """True (and says so) when the only difference from the prepared run is the content of its local
    inputs: an edited data file re-runs every step instead of being silently ignored."""
    rec = rd.record("prepare")
    if rec is None or "inputs" not in rec.get("fingerprint", {}):
        return False
    old, new = rec["fingerprint"], step_fingerprint(cfg, rd, "prepare")
    if old == new or changed_fields(old, new) != ["inputs"]:
        return False
    changed = sorted(k for k in set(old["inputs"]) | set(new["inputs"]) if old["inputs"].get(k) != new["inputs"].get(k))
    names = ", ".join(f"{k} ({input_files(cfg)[k]})" if k in input_files(cfg) else k for k in changed)
    echo(f"{names} changed since prepare: re-running prepare, baseline, train, evaluate")
    return True


def _resume_point(cfg: JobConfig, rd: RunDir, echo: Echo) -> str | None:
    """The newest complete checkpoint of this configuration's training, if there is one; incomplete
    checkpoints newer than it (a crash or a full disk mid-save) are moved aside and named."""
    marker = rd.checkpoints / CHECKPOINT_FINGERPRINT
    if not marker.is_file() or not fingerprints_match(
        json.loads(marker.read_text()), step_fingerprint(cfg, rd, "train")
    ):
        return None
    return checkpoints.newest_complete(rd.checkpoints, echo=echo)
