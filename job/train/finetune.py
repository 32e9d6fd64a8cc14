"""Fine-tuning: (Cached)MultipleNegativesRankingLoss inside MatryoshkaLoss, SentenceTransformerTrainer,
no-duplicates batches, validation-only model selection, checkpoints and resume."""

from __future__ import annotations

import logging
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from job import layout, storage
from job.config import JobConfig
from job.data.prepare import IRData, Pair
from job.errors import JobError
from job.evaluate.retrieval import VALIDATION, build_evaluator, evaluation_options, metric_key, per_dim_metrics
from job.train import checkpoints, losses, memory, merge, soup
from job.train.collate import RowNamingCollator, failing_pair_named, raise_for_batch_failure, worker_signals_paused
from job.train.distributed import check_agreement, digest, is_main_process, on_first_node, world_size
from job.train.negatives import add_hard_negatives, negatives_per_pair
from job.train.sampler import LengthGroupedBatchSampler, no_duplicates_sampler
from job.train.token_cache import cached_trainer_class

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: Any
    summary: dict[str, Any]


@dataclass(frozen=True)
class Accelerator:
    """What the training precision depends on: where training runs (``cuda``, ``mps`` or ``cpu``), the device's
    name, its CUDA compute capability, and whether it computes in bf16 natively (not emulated)."""

    kind: str
    name: str
    capability: tuple[int, int] | None = None
    native_bf16: bool = False


def detect_accelerator() -> Accelerator:
    """This machine's training device, as the trainer will pick it (CUDA first, then Apple MPS, else CPU)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        # not torch.cuda.is_bf16_supported(): by default it also says yes where bf16 is only emulated (T4, V100)
        native = bool(torch.version.hip) or major >= 8
        return Accelerator("cuda", torch.cuda.get_device_name(), (major, minor), native)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return Accelerator("mps", "Apple MPS")
    return Accelerator("cpu", "CPU")


@dataclass(frozen=True)
class Precision:
    """The resolved ``--mixed-precision``: autocast in ``dtype`` (bf16, fp16 with loss scaling, or none: fp32)
    around fp32 master weights, tf32 matmuls or not, and whether the trainer must be told to stay on the CPU."""

    requested: str
    dtype: str
    tf32: bool
    device: str
    use_cpu: bool = False

    def trainer_flags(self) -> dict[str, bool]:
        return {"bf16": self.dtype == "bf16", "fp16": self.dtype == "fp16", "tf32": self.tf32}

    def describe(self) -> str:
        autocast = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}.get(self.dtype, "fp32")
        return autocast + (", tf32 matmuls" if self.tf32 else "")

    def record(self) -> dict[str, Any]:
        """What training.json keeps."""
        return {
            "requested": self.requested, "resolved": self.dtype, "loss_scaling": self.dtype == "fp16",
            "tf32": self.tf32, "device": self.device,
        }  # fmt: skip


def resolve_precision(mode: str, accelerator: Accelerator | None = None) -> Precision:
    """``--mixed-precision`` on this machine (``accelerator``: :func:`detect_accelerator` when not given).

    auto: bf16 where the GPU has it natively (compute capability 8.0+, or ROCm), fp16 with loss scaling on older
    CUDA GPUs (T4, V100: ml.g4dn, ml.p3), fp32 elsewhere. no: fp32. fp16 / bf16: as asked, or a JobError where
    the machine cannot (fp16 needs CUDA; bf16 needs native bf16 on a GPU, and runs on a CPU - transformers'
    CPU autocast, told by ``use_cpu`` - but not on Apple MPS). tf32 on 8.0+ GPUs, except with no."""
    acc = accelerator or detect_accelerator()
    where = f"{acc.name} (compute capability {acc.capability[0]}.{acc.capability[1]})" if acc.capability else acc.name
    tf32 = acc.kind == "cuda" and acc.capability is not None and acc.capability[0] >= 8 and mode != "no"
    if mode == "no":
        return Precision(mode, "fp32", False, where)
    if mode == "auto":
        dtype = "fp32" if acc.kind != "cuda" else "bf16" if acc.native_bf16 else "fp16"
        return Precision(mode, dtype, tf32, where)
    if mode == "fp16":
        if acc.kind != "cuda":
            raise JobError(
                f"--mixed-precision fp16 needs a CUDA GPU; this machine trains on {where}.",
                "use --mixed-precision auto (fp32 here, fp16 or bf16 on a GPU) or no"
                + (", or bf16 (slow unless the CPU has bf16 instructions)." if acc.kind == "cpu" else "."),
            )
        return Precision(mode, "fp16", tf32, where)
    if mode == "bf16":
        if acc.kind == "cuda" and not acc.native_bf16:
            raise JobError(
                f"--mixed-precision bf16: {where} has no native bf16 (it needs compute capability 8.0+: A10G, "
                "A100, L4, H100; T4 and V100 instances such as ml.g4dn and ml.p3 only emulate it, slowly).",
                "use --mixed-precision fp16 or auto (fp16 with loss scaling on this GPU), or a GPU with bf16.",
            )
        if acc.kind == "mps":
            raise JobError(
                "--mixed-precision bf16 is not supported on Apple MPS by this job.",
                "use --mixed-precision auto or no (fp32).",
            )
        return Precision(mode, "bf16", tf32, where, use_cpu=acc.kind == "cpu")
    raise JobError(f"--mixed-precision {mode!r} is not a precision.", "use one of: auto, no, fp16, bf16.")


def _param_checksums(model) -> list[float]:
    """Sum of all weights on every rank (one entry per rank): equal values mean the ranks stayed in sync."""
    import torch

    local = float(sum(p.detach().double().sum().item() for p in model.parameters()))
    if world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[float] = [0.0] * world_size()
        torch.distributed.all_gather_object(gathered, local)
        return gathered
    return [local]


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_loss(model, cfg: JobConfig, dims: list[int], guide=None):
    """MatryoshkaLoss around the configured in-batch-negatives loss (:mod:`job.train.losses`). The losses with a guide
    need ``guide`` (see :func:`load_guide`)."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    gather = world_size() > 1  # under DDP, every rank scores its queries against all ranks' passages
    inner = losses.get(cfg.loss).build(model, cfg, guide, gather)
    weights = cfg.matryoshka_weights
    if weights is not None and len(weights) != len(dims):
        raise JobError(
            f"matryoshka_weights has {len(weights)} values for the {len(dims)} Matryoshka dims {dims}.",
            "give one weight per dim, largest dim first, or set --matryoshka-dims to match.",
        )
    return MatryoshkaLoss(model, inner, matryoshka_dims=dims, matryoshka_weights=weights)


def load_guide(cfg: JobConfig, model):
    """The frozen guide model of the gist losses: ``guide_model``, or a copy of the base model.
    Checked before any mining or training: it must load, embed text, and read the same texts."""
    import copy

    from job.models import load_model, model_dim

    if not losses.get(cfg.loss).guide:
        return None
    if cfg.guide_model is None:
        guide = copy.deepcopy(model)
    else:
        try:
            guide = load_model(cfg.guide_model, max_seq_length=cfg.max_seq_length)
        except JobError as exc:
            raise JobError(f"The guide model could not be loaded: {exc.problem}", exc.fix) from None
        model_dim(guide)  # a sentence-embedding model
        if guide.max_seq_length < min(model.max_seq_length, 128):
            raise JobError(
                f"The guide model reads at most {guide.max_seq_length} tokens, "
                f"the model being trained {model.max_seq_length}.",
                "use a guide with at least the same --max-seq-length (a guide that truncates passages misjudges them).",
            )
        if type(guide.tokenizer).__name__ != type(model.tokenizer).__name__ and not getattr(
            guide.tokenizer, "is_fast", False
        ):
            raise JobError(
                "The guide model's tokenizer cannot re-tokenize the training texts (it is not a fast tokenizer).",
                "use a guide with a fast tokenizer, or the base model (drop --guide-model).",
            )
    guide.eval()
    for p in guide.parameters():
        p.requires_grad_(False)
    return guide


def set_attention_dropout(model, p: float | None) -> int:
    """Set the dropout on attention probabilities of a BERT-style model (``attention.self.dropout``, which
    transformers passes to the attention kernel as ``dropout_p``); returns how many layers were set."""
    if p is None:
        return 0
    layers = [m for name, m in model.named_modules() if name.endswith("attention.self") and hasattr(m, "dropout")]
    if not layers:
        raise JobError(
            "attention_dropout is set, but this model has no BERT-style attention layers (attention.self) "
            "to set it on.",
            "drop --attention-dropout for this model.",
        )
    for layer in layers:
        layer.dropout.p = p
    return len(layers)


def batch_sampler(cfg: JobConfig):
    """The trainer's ``batch_sampler`` argument (it is saved with every checkpoint, so it must pickle):
    sentence-transformers' no-duplicates sampler, hashed with the fast data pipeline. Length grouping
    is built by the trainer itself (:func:`build_trainer`), from the model's tokenizer."""
    from sentence_transformers.base.sampler import BatchSamplers

    return no_duplicates_sampler() if cfg.token_cache else BatchSamplers.NO_DUPLICATES


def token_counter(model):
    """Texts -> their token counts as the model will see them (truncated at its max_seq_length)."""

    def count(texts: list[str]) -> list[int]:
        encoded = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length, add_special_tokens=True)
        return [len(ids) for ids in encoded["input_ids"]]

    return count


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete checkpoint (:mod:`job.train.checkpoints`), or None."""
    return checkpoints.newest(Path(checkpoint_dir))


def space_needed(model, cfg: JobConfig) -> int:
    """Bytes a training run writes at its peak: the kept checkpoints plus the one being written (fp32
    weights and AdamW's two moments each) and the final model."""
    weights = sum(p.numel() for p in model.parameters()) * 4
    return int((kept_checkpoints(cfg) + 1) * 3 * weights + weights)


def kept_checkpoints(cfg: JobConfig) -> int:
    """The trainer's ``save_total_limit``: room for the checkpoints to average, plus the best one."""
    return max(cfg.save_total_limit, cfg.average_checkpoints + 1 if cfg.average_checkpoints else 0)


def train_model(
    cfg: JobConfig,
    model,
    dims: list[int],
    best_dim: int,
    train_pairs: list[Pair],
    validation: IRData | None,
    checkpoint_dir: Path,
    *,
    resume: bool = False,
    callbacks: list | None = None,
    source: str = "the training pairs",
) -> TrainResult:
    """Train ``model`` in place; with validation data, the best checkpoint (validation NDCG@10 at
    ``best_dim``) is loaded at the end. ``source`` names the file the pairs came from (one pair per
    line), for errors that point at a pair."""
    if len(train_pairs) < 2:
        raise JobError(
            f"Only {len(train_pairs)} training pair(s) remain after the split.",
            "give more data or lower the held-out fractions.",
        )
    checkpoint_dir = Path(checkpoint_dir)
    resume_from = None
    if resume:
        resume_from = checkpoints.newest_complete(checkpoint_dir, echo=logger.warning)
        if resume_from is None:
            raise JobError(
                f"--resume was given, but {checkpoint_dir} holds no complete checkpoint.",
                "drop --resume to start training afresh.",
            )
        logger.info("resuming from %s", resume_from)
    storage.check_free_space(checkpoint_dir, space_needed(model, cfg), "Training (checkpoints and the final model)")
    precision = resolve_precision(cfg.mixed_precision)  # before any mining: a precision refused costs nothing
    logger.info("mixed precision %s: %s on %s", precision.requested, precision.describe(), precision.device)
    if precision.use_cpu:
        logger.warning("bf16 autocast on the CPU: faster only on CPUs with bf16 instructions (AVX512-BF16, AMX)")

    import datasets

    datasets.disable_progress_bars()  # "Hashing dataset values" beside the training bar: one bar per phase
    if cfg.memory_check and not torch_cuda_available():  # the GPU retries after a real out-of-memory instead
        texts = 2 + negatives_per_pair(train_pairs, cfg.hard_negatives)  # given negatives count too
        cfg = memory.fit_cpu_training(cfg, model, min(cfg.batch_size, len(train_pairs)), texts)
    loss = build_loss(model, cfg, dims, load_guide(cfg, model))  # first: its settings errors come before any mining
    set_attention_dropout(model, cfg.attention_dropout)
    train_ds, negatives_stats = training_dataset(cfg, model, train_pairs, source)
    batch_size = min(cfg.batch_size, len(train_pairs))
    evaluator, select = model_selection(cfg, model, dims, best_dim, validation)
    # under torchrun, the arguments also start the process group that check_agreement gathers over
    args = training_arguments(cfg, model, checkpoint_dir, batch_size, select, train_ds.column_names, precision)
    check_agreement(  # under DDP, before the first step: every machine trains on the same pairs, from one point
        {
            "the training pairs (digest)": digest([(p.question, p.passage) for p in train_pairs]),
            "the checkpoint to resume from": Path(resume_from).name if resume_from else None,
        },
        "give every machine the same run directory: the same prepared data (the same data and flags), and the same "
        "checkpoints (SageMaker restores the checkpoint S3 prefix on every instance; on your own machines copy "
        "RUN_DIR/checkpoints from the first machine to the others, or use a shared folder).",
    )
    before = checkpoints.train_seconds(resume_from)  # training time of the sessions before this one
    finished = checkpoints.finished_state(resume_from, cfg.max_steps, cfg.epochs)
    if finished is not None and resume_from is not None:  # the run ended here: end as the uninterrupted run did
        summary = finished_summary(cfg, model, finished, resume_from, checkpoint_dir, before, len(train_pairs))
        best_metric = finished.get("best_metric")
    else:
        trace_dir = Path(tempfile.mkdtemp(prefix="job-batches-")) if cfg.dataloader_workers > 0 else None
        trainer = build_trainer(cfg, model, args, train_ds, loss, evaluator, callbacks, train_pairs, source, trace_dir)
        if torch_cuda_available():
            import torch

            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.job_clock = (before, start)  # each checkpoint's commit mark records the run's training time so far
        try:
            output = trainer.train(resume_from_checkpoint=resume_from)
        except Exception as error:  # noqa: BLE001 - each kind is translated below, or re-raised
            retry = _after_failure(error, cfg, trainer, batch_size, resume_from, checkpoint_dir, trace_dir, source)
            if retry is None:
                raise
            del trainer, loss
            _free_accelerator_memory()
            return train_model(
                retry, model, dims, best_dim, train_pairs, validation, checkpoint_dir, resume=False,
                callbacks=callbacks, source=source,
            )  # fmt: skip
        finally:
            if trace_dir is not None:
                shutil.rmtree(trace_dir, ignore_errors=True)
        seconds = before + time.perf_counter() - start
        summary = training_summary(
            cfg, trainer.state, trainer.model, output.training_loss, seconds, len(train_pairs),
            getattr(trainer, "final_param_checksums", None),
        )  # fmt: skip
        best_metric = trainer.state.best_metric
    summary.update(
        batch_size=batch_size, hard_negatives=negatives_stats, resumed_from=resume_from,
        best_metric_name=select.get("metric_for_best_model"), mixed_precision=precision.record(),
    )  # fmt: skip
    if cfg.average_checkpoints and is_main_process():
        summary["checkpoint_average"] = soup.try_soup(
            model, checkpoint_dir, cfg.average_checkpoints, evaluator,
            select.get("metric_for_best_model", "").removeprefix("eval_"), best_metric,
        )  # fmt: skip
    if cfg.merge_base != "off" and is_main_process():
        summary["merge_base"] = merge.merge_with_base(cfg, model, dims, best_dim, validation, checkpoint_dir)
    return TrainResult(model, summary)


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def training_dataset(cfg: JobConfig, model, train_pairs: list[Pair], source: str):
    """(anchor, positive[, negative_1..n]) rows: the negatives given with the data, and those mined by the base
    model when asked (:func:`job.train.negatives.add_hard_negatives`)."""
    import datasets

    if not cfg.hard_negatives and not any(p.negatives for p in train_pairs):  # negatives given in the data: used
        columns = {"anchor": [p.question for p in train_pairs], "positive": [p.passage for p in train_pairs]}
        return datasets.Dataset.from_dict(columns), None
    with failing_pair_named(train_pairs, model.preprocess, source):
        train_ds, stats = add_hard_negatives(
            train_pairs, model, cfg.hard_negatives, margin=cfg.hard_negative_margin, depth=cfg.hard_negative_depth,
            range_min=cfg.hard_negative_range_min, seed=cfg.seed, batch_size=cfg.eval_batch_size,
            query_prompt=cfg.query_prompt, passage_prompt=cfg.passage_prompt,
        )  # fmt: skip
    logger.info("hard negatives: %s", stats)
    return train_ds, stats


def model_selection(cfg: JobConfig, model, dims: list[int], best_dim: int, validation: IRData | None):
    """The validation evaluator and the trainer settings that keep the best checkpoint by it."""
    if validation is None:
        return None, {"eval_strategy": "no", "load_best_model_at_end": False}
    evaluator = build_evaluator(validation, dims, VALIDATION, **evaluation_options(cfg))
    select: dict[str, Any] = {
        "eval_strategy": "steps" if cfg.eval_steps else "epoch",
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_" + metric_key(VALIDATION, best_dim, model.similarity_fn_name),
        "greater_is_better": True,
    }
    if cfg.eval_steps:
        select["eval_steps"] = cfg.eval_steps
    return evaluator, select


def training_arguments(
    cfg: JobConfig, model, checkpoint_dir: Path, batch_size: int, select: dict, columns: list[str],
    precision: Precision | None = None,
):  # fmt: skip
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments

    precision = precision or resolve_precision(cfg.mixed_precision)

    world = world_size()
    extra: dict[str, Any] = {
        **precision.trainer_flags(),
        **({"use_cpu": True} if precision.use_cpu or (world > 1 and not torch.cuda.is_available()) else {}),
        **({"ddp_backend": "gloo"} if world > 1 and not torch.cuda.is_available() else {}),
        **select,
    }
    prompts = {k: v for k, v in (("anchor", cfg.query_prompt), ("positive", cfg.passage_prompt)) if v}
    if cfg.passage_prompt:  # mined negatives are passages too
        prompts.update({c: cfg.passage_prompt for c in columns if c.startswith("negative")})
    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=max(1, batch_size // world),
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        batch_sampler=batch_sampler(cfg),
        save_strategy="steps" if cfg.eval_steps else "epoch",
        save_steps=cfg.eval_steps or 500,
        save_total_limit=kept_checkpoints(cfg),
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=report_targets(cfg, checkpoint_dir),
        dataloader_num_workers=cfg.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        prompts=prompts or None,
        **extra,
    )


_TENSORBOARD_DIR_SET: dict[str, str] = {}  # the TENSORBOARD_LOGGING_DIR report_targets set in this process


def report_targets(cfg: JobConfig, checkpoint_dir: Path) -> str:
    """The trainer's ``report_to``: 'auto' is TensorBoard when installed (the dev, runtime and image locks hold
    it), else none. TensorBoard's event files go to RUN_DIR/logs, unless TENSORBOARD_LOGGING_DIR (transformers'
    own variable) names another folder: the SageMaker container sets it to SageMaker's TensorBoard output path
    (/opt/ml/output/tensorboard, infra.container.contract), and so may a user. A value this function set
    for an earlier run in the same process is replaced, not kept."""
    import importlib.util
    import os

    target = cfg.report_to
    if target == "auto":
        has_tb = any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))
        target = "tensorboard" if has_tb else "none"
    if target == "tensorboard":
        current = os.environ.get("TENSORBOARD_LOGGING_DIR")
        if current is None or current == _TENSORBOARD_DIR_SET.get("dir"):
            _TENSORBOARD_DIR_SET["dir"] = str(Path(checkpoint_dir).parent / layout.LOGS)
            os.environ["TENSORBOARD_LOGGING_DIR"] = _TENSORBOARD_DIR_SET["dir"]
    return target


def build_trainer(cfg: JobConfig, model, args, train_ds, loss, evaluator, callbacks, train_pairs, source, trace_dir):
    """The trainer: token cache (when on), failing pairs named, checkpoints marked complete when written."""
    from sentence_transformers import SentenceTransformerTrainer

    pair_index = {(p.question, p.passage): line for line, p in enumerate(train_pairs, 1)}
    base_class = cached_trainer_class() if cfg.token_cache else SentenceTransformerTrainer

    class Trainer(base_class):  # type: ignore[valid-type,misc]  # (a base chosen at run time)
        def get_data_collator(self, model, args, processing_class=None):
            inner = super().get_data_collator(model=model, args=args, processing_class=processing_class)
            return RowNamingCollator(inner, pair_index, source, trace_dir)

        def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
            if not cfg.length_grouping:
                return super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
            return LengthGroupedBatchSampler(
                dataset, batch_size, drop_last, valid_label_columns=valid_label_columns, generator=generator, seed=seed,
                pool_batches=cfg.length_grouping, text_lengths=token_counter(self.model),
            )  # fmt: skip

        def _load_best_model(self):
            # Every rank, before the best checkpoint replaces the weights: did the ranks stay in sync?
            self.final_param_checksums = _param_checksums(self.model)
            if on_first_node():  # the checkpoints are on the disk of the machine that holds global rank 0
                super()._load_best_model()

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
                before, start = getattr(self, "job_clock", (0.0, time.perf_counter()))
                checkpoints.mark_complete(folder, round(before + time.perf_counter() - start, 2))

    from job.progress import silenced

    # the trainer tokenizes for its model card ("Computing widget examples": a bar of its own, silenced)
    with failing_pair_named(train_pairs, model.preprocess, source), silenced():
        trainer = Trainer(
            model=model, args=args, train_dataset=train_ds, loss=loss, evaluator=evaluator, callbacks=callbacks
        )
    from transformers.trainer_callback import ProgressCallback

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(compact_progress(args.metric_for_best_model))
    if cfg.token_cache:
        trainer.warm_token_cache(train_ds)
    return trainer


def compact_progress(selection_metric: str | None):
    """transformers' progress bar, but each log as one short line: the loss, or the validation NDCG@10
    by dim and the checkpoint-selection metric by name (not sentence-transformers' wall of keys, whose
    ``eval_sequential_score`` is the smallest dim's score while the selection uses the largest)."""
    from transformers.trainer_callback import ProgressCallback

    class CompactProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or self.training_bar is None or not logs:
                return
            where = f"step {state.global_step}/{state.max_steps} (epoch {state.epoch or 0:.2f})"
            scores = per_dim_metrics(logs, VALIDATION)
            if scores:
                cells = ", ".join(f"{d}: {m['ndcg@10']:.4f}" for d, m in scores.items() if "ndcg@10" in m)
                line = f"{where}: validation NDCG@10 by dim {{{cells}}}"
                if selection_metric and selection_metric in logs:
                    best = state.best_metric if state.best_metric is not None else logs[selection_metric]
                    line += (
                        f"; selection ({selection_metric.removeprefix('eval_')}) {logs[selection_metric]:.4f}, "
                        f"best {max(best, logs[selection_metric]):.4f}"
                    )
            elif "loss" in logs:
                line = f"{where}: loss {logs['loss']:.4f}, learning rate {logs.get('learning_rate', 0):.2e}"
            elif "train_runtime" in logs:
                line = (
                    f"{where}: training took {logs['train_runtime']:.0f} s "
                    f"({logs.get('train_samples_per_second', 0):.1f} "
                    f"pairs/s), mean loss {logs.get('train_loss', float('nan')):.4f}"
                )
            else:
                return
            self.training_bar.write(line)

    return CompactProgress


def _after_failure(
    error, cfg: JobConfig, trainer, batch_size: int, resume_from, checkpoint_dir: Path, trace_dir, source
):
    """Decide what a failed ``trainer.train`` becomes: a retry configuration (out of memory before
    the first update: the cached loss), a JobError, or None (re-raise as it is)."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        twin = losses.get(cfg.loss).cached_twin
        if trainer.state.global_step == 0 and twin and not resume_from:
            # Nothing was updated yet: retry with GradCache, which keeps the same in-batch
            # negatives but only holds a mini-batch of activations at a time.
            mini = min(cfg.mini_batch_size, batch_size)
            logger.warning(
                "batch size %d does not fit in accelerator memory with %s; retrying with %s "
                "(same negatives, mini-batches of %d)",
                batch_size,
                cfg.loss,
                twin,
                mini,
            )
            return replace(cfg, loss=twin, mini_batch_size=mini)
        _free_accelerator_memory()
        raise JobError(
            f"Training ran out of accelerator memory at step {trainer.state.global_step} with batch size {batch_size} "
            f"and loss {cfg.loss} (mini-batch {cfg.mini_batch_size}).",
            "lower --mini-batch-size (cached_mnrl) or --batch-size, or --max-seq-length; "
            "`job train --resume` continues from the last checkpoint.",
        ) from None
    stored = storage.storage_error(error, checkpoint_dir, "a training checkpoint")
    if stored is not None:
        removed = checkpoints.remove_unmarked(checkpoint_dir) if storage.is_disk_full(error, checkpoint_dir) else []
        note = f" The half-written {', '.join(removed)} was removed." if removed else ""
        raise JobError(stored.problem + note, stored.fix) from error
    with worker_signals_paused():
        try:
            raise_for_batch_failure(error, trace_dir, source)
        except RuntimeError as late:  # torch's SIGCHLD handler, firing while the first error is handled
            raise_for_batch_failure(late, trace_dir, source)
            raise
    return None


def training_summary(
    cfg: JobConfig, state, model, train_loss, seconds: float, pairs: int, checksums: list | None = None
) -> dict[str, Any]:
    """The training record. ``seconds`` is the whole run's training time (every session, resumed ones too);
    pairs/s is the pairs trained on (epochs x pairs) over that time."""
    import torch

    history = [
        {k: v for k, v in entry.items() if k in ("epoch", "step") or k.endswith("ndcg@10") or k == "loss"}
        for entry in state.log_history
    ]
    return {
        "loss": cfg.loss,
        "train_pairs": pairs,
        "world_size": world_size(),
        "rank_param_checksums": checksums or _param_checksums(model),
        "global_steps": state.global_step,
        "epochs": state.epoch,
        "train_seconds": round(seconds, 2),
        "pairs_per_second": round(pairs * (state.epoch or 0) / seconds, 2) if seconds > 0 else 0.0,
        "train_loss": train_loss,
        "best_checkpoint": state.best_model_checkpoint,
        "best_metric": state.best_metric,
        "peak_host_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available()
        else None,
        "log_history": history,
    }


def finished_summary(
    cfg: JobConfig, model, state: dict, resume_from: str, checkpoint_dir: Path, seconds: float, pairs: int
) -> dict[str, Any]:
    """The end of a run whose last checkpoint is complete: what the trainer's own end of training does (the
    best checkpoint's weights loaded when selecting on validation, else the last one's), without another step."""
    from types import SimpleNamespace

    best = state.get("best_model_checkpoint")
    if best:  # the recorded path may be another machine's (a copied run directory): look in this one
        local = Path(checkpoint_dir) / Path(best).name
        best = str(local) if local.is_dir() else best
    weights_from = best if best and Path(best).is_dir() else resume_from
    model.load_state_dict(soup.checkpoint_weights(Path(weights_from)))
    logger.info("the run ended at %s: no further step; weights from %s", Path(resume_from).name, weights_from)
    logged = [e["loss"] for e in state.get("log_history", []) if "loss" in e]
    st = SimpleNamespace(
        global_step=state["global_step"], epoch=state.get("epoch"), best_model_checkpoint=best,
        best_metric=state.get("best_metric"), log_history=state.get("log_history", []),
    )  # fmt: skip
    return training_summary(cfg, st, model, sum(logged) / len(logged) if logged else None, seconds, pairs)
