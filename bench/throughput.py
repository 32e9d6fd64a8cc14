"""Training throughput: pairs/s and where each step's time goes.

    python bench/throughput.py --data ../shared/data/financial-qa-10k/Financial-QA-10k.csv \
        [--parts pipeline,tiny,minilm] [--steps 20] [--batch-size 32] [--threads 1]

Parts:
  pipeline  the data pipeline alone, no model: the no-duplicates batch sampler, the row fetch and
            the collator's tokenization, as the trainer's DataLoader runs them (one process), with the
            job's fast pipeline (token cache + id-based sampler); pipeline-nocache: sentence-transformers'
            own (row lookups in the sampler, tokenization in every batch).
  tiny      full training steps with a tiny random BERT (the host-side cost dominates).
  minilm    full training steps with all-MiniLM-L6-v2 (the bundled offline copy).
  padding   tokens computed per epoch vs real tokens (padding) for random and length-grouped batches.
  samplers  the no-duplicates batch samplers alone: sentence-transformers' (plain and hashed) and the job's.
  recipes   the blog recipe (`preset: blog`) and the job's default, trained one after the other in this run on
            all-MiniLM-L6-v2 over the same pairs, each for about --steps batches of its own size (the blog
            preset accumulates 16): pairs/s of each and default / blog, the ratio that holds on another CPU.
            The default's time includes mining its hard negatives (as `job run` does); --set applies to both.
On CUDA the model parts run on the GPU. Each prints pairs/s, the split of a step into waiting for
data vs forward + loss + backward / optimizer / the rest, and peak host (and GPU) memory.
--profile N adds a torch.profiler pass over N steps: the share of step time inside PyTorch
operators (the remainder is Python: trainer, loss, data path) and the top operators. Profiling
slows the steps it covers, so take timings from a run without it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from machine import machine  # noqa: E402 - bench/machine.py
from transformers import TrainerCallback  # noqa: E402

from job.config import resolve_config  # noqa: E402
from job.data import prepare as data  # noqa: E402
from job.models import load_model, resolve_dims  # noqa: E402
from job.train.finetune import train_model  # noqa: E402


def load_pairs(path: str, limit: int | None) -> list[data.Pair]:
    records = data.load_records(path)
    q, p = data.detect_columns(list(records.rows[0]), None, None, records.source)
    pairs = data.validate_pairs(records, q, p, drop_invalid=True).pairs
    return pairs[:limit] if limit else pairs


def bench_pipeline(pairs: list[data.Pair], model, batch_size: int, token_cache: bool, epochs: int = 2) -> dict:
    """Sampler + fetch + tokenize/collate exactly as the job's trainer builds its DataLoader;
    epoch 1 includes tokenizing into the cache (when on), later epochs show the steady state."""
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from job.train.sampler import no_duplicates_sampler
    from job.train.token_cache import cached_trainer_class

    ds = datasets.Dataset.from_dict({"anchor": [p.question for p in pairs], "positive": [p.passage for p in pairs]})
    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch_size,
            batch_sampler=no_duplicates_sampler() if token_cache else BatchSamplers.NO_DUPLICATES,
            report_to="none", use_cpu=not torch.cuda.is_available(),
        )  # fmt: skip
        cls = cached_trainer_class() if token_cache else SentenceTransformerTrainer
        trainer = cls(model=model, args=args, train_dataset=ds, loss=MultipleNegativesRankingLoss(model))
        t0 = time.perf_counter()
        if token_cache:
            trainer.warm_token_cache(ds)
        warm_s = time.perf_counter() - t0
        loader = trainer.get_train_dataloader()
        t0 = time.perf_counter()
        n_batches = sum(1 for _ in loader.batch_sampler)
        sampler_s = time.perf_counter() - t0
        per_epoch = []
        for epoch in range(epochs):
            loader.batch_sampler.set_epoch(epoch) if hasattr(loader.batch_sampler, "set_epoch") else None
            t0 = time.perf_counter()
            n = sum(batch["anchor_input_ids"].shape[0] for batch in loader)
            per_epoch.append(round(n / (time.perf_counter() - t0 + (warm_s if epoch == 0 else 0.0)), 1))
    return {
        "token_cache": token_cache,
        "pairs": len(pairs),
        "batches": n_batches,
        "sampler_only_pairs_per_s": round(len(pairs) / sampler_s, 1),
        "tokenize_into_cache_seconds": round(warm_s, 2),
        "pairs_per_s_by_epoch": per_epoch,
    }


def bench_samplers(pairs: list[data.Pair], batch_size: int, epochs: int = 3, seed: int = 42) -> dict:
    """The no-duplicates batch samplers alone, on (anchor, positive, negative) rows: sentence-transformers'
    NO_DUPLICATES (row lookups) and NO_DUPLICATES_HASHED (xxhash values precomputed with datasets.map),
    the job's id-based sampler, and its length-grouped one. Seconds to build (first epoch) and per later epoch."""
    import random

    import datasets
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    from job.train.sampler import LengthGroupedBatchSampler

    rng = random.Random(seed)
    passages = [p.passage for p in pairs]
    ds = datasets.Dataset.from_dict(
        {"anchor": [p.question for p in pairs], "positive": passages, "negative": [rng.choice(passages) for _ in pairs]}
    )
    makers = {
        "sentence-transformers NO_DUPLICATES": lambda: NoDuplicatesBatchSampler(
            ds, batch_size, False, generator=torch.Generator(), seed=seed
        ),
        "sentence-transformers NO_DUPLICATES_HASHED": lambda: NoDuplicatesBatchSampler(
            ds, batch_size, False, generator=torch.Generator(), seed=seed, precompute_hashes=True, precompute_num_proc=1
        ),
        "job LengthGroupedBatchSampler (chars)": lambda: LengthGroupedBatchSampler(
            ds, batch_size, False, generator=torch.Generator(), seed=seed, pool_batches=16
        ),
    }  # fmt: skip
    out = {}
    for name, make in makers.items():
        t0 = time.perf_counter()
        sampler = make()
        times = []
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            t1 = time.perf_counter()
            n = sum(len(b) for b in sampler)
            times.append(time.perf_counter() - (t0 if epoch == 0 else t1))
        out[name] = {
            "first_epoch_s_incl_setup": round(times[0], 3),
            "later_epoch_s": round(statistics.mean(times[1:]), 3),
            "pairs_per_s_later_epochs": round(n / statistics.mean(times[1:]), 1),
        }
    return out


def bench_padding(pairs: list[data.Pair], model, batch_size: int, pools: list[int], seed: int = 42) -> dict:
    """Tokens one epoch computes (each column padded to its longest text) against the real tokens,
    for random no-duplicates batches and for length-grouped pools. Deterministic; a random training
    passage stands in for each pair's mined negative (mining needs a model pass)."""
    import random

    import datasets
    import numpy as np

    from job.train.finetune import token_counter
    from job.train.sampler import LengthGroupedBatchSampler, no_duplicates_sampler

    rng = random.Random(seed)
    passages = [p.passage for p in pairs]
    columns = {
        "anchor": [p.question for p in pairs],
        "positive": passages,
        "negative": [rng.choice(passages) for _ in pairs],
    }
    ds = datasets.Dataset.from_dict(columns)
    limit = model.max_seq_length
    lengths = {
        c: np.array([min(limit, len(ids)) for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"]])
        for c, texts in columns.items()
    }
    real = int(sum(v.sum() for v in lengths.values()))

    def padded(sampler) -> int:
        return int(sum(len(b) * lengths[c][b].max() for b in sampler for c in lengths))

    out = {"max_seq_length": limit, "real_tokens_per_epoch": real}
    samplers = {"random": no_duplicates_sampler()(ds, batch_size, False, generator=torch.Generator(), seed=seed)}
    for pool in pools:
        for by, counter in (("tokens", token_counter(model)), ("chars", None)):
            samplers[f"length_grouping={pool} by {by}"] = LengthGroupedBatchSampler(
                ds, batch_size, False, generator=torch.Generator(), seed=seed, pool_batches=pool, text_lengths=counter
            )
    for name, sampler in samplers.items():
        total = padded(sampler)
        out[name] = {"computed_tokens": total, "real_share": round(real / total, 3)}
    base = out["random"]["computed_tokens"]
    for name in samplers:
        out[name]["vs_random"] = round(out[name]["computed_tokens"] / base, 3)
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Splits wall time into 'inside the step' and 'between steps' (waiting for the next batch:
    sampling, fetching, tokenizing, collating, host-to-device), and the inside into forward +
    loss + backward (step begin -> before the optimizer), the optimizer step, and the rest (lr
    scheduler, zero_grad, the trainer's bookkeeping up to step end)."""

    def __init__(self):
        self.inside: list[float] = []
        self.between: list[float] = []
        self.parts: dict[str, list[float]] = {"forward_loss_backward": [], "optimizer": [], "after_optimizer": []}
        self._t = self._pre = self._opt = self._end = None
        self.skip_next_gap = False  # set by OpProfile: its shutdown falls between two steps

    def on_step_begin(self, args, state, control, **kw):
        now = time.perf_counter()
        if self._end is not None and not self.skip_next_gap:
            self.between.append(now - self._end)
        self.skip_next_gap = False
        self._t = now

    def on_pre_optimizer_step(self, args, state, control, **kw):
        _sync()
        self._pre = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kw):
        _sync()
        self._opt = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        _sync()
        self._end = time.perf_counter()
        self.inside.append(self._end - self._t)
        if self._pre is not None and self._opt is not None:
            self.parts["forward_loss_backward"].append(self._pre - self._t)
            self.parts["optimizer"].append(self._opt - self._pre)
            self.parts["after_optimizer"].append(self._end - self._opt)


class OpProfile(TrainerCallback):
    """torch.profiler over ``steps`` steps after ``warmup``: the share of step time spent in
    PyTorch operators (the rest is Python in the trainer, the loss and the data path) and the
    operators that dominate."""

    def __init__(self, warmup: int, steps: int, timer: StepTimer | None = None):
        self.warmup, self.steps, self.timer = warmup, steps, timer
        self.prof = None
        self.result: dict | None = None
        self._t0 = None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.warmup and self.prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()
            self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self.prof is not None and self.result is None and state.global_step >= self.warmup + self.steps:
            _sync()
            wall = time.perf_counter() - self._t0
            self.prof.__exit__(None, None, None)
            if self.timer is not None:
                self.timer.skip_next_gap = True
            events = self.prof.key_averages()
            # top-level operator time: what PyTorch itself spends (self times of all ops add up to it)
            op_seconds = sum(e.self_cpu_time_total for e in events) / 1e6
            top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
            self.result = {
                "profiled_steps": self.steps,
                "ms_per_step_wall": round(wall / self.steps * 1000, 1),
                "ms_per_step_in_torch_ops": round(op_seconds / self.steps * 1000, 1),
                "torch_op_share": round(op_seconds / wall, 3),
                "top_ops_ms_per_step": {e.key: round(e.self_cpu_time_total / 1000 / self.steps, 2) for e in top},
            }


def bench_training(
    pairs: list[data.Pair], model_name: str, batch_size: int | None, steps: int, extra: dict, profile: int = 0
) -> dict:
    """``steps`` optimizer steps; ``batch_size`` None: the configuration's (a preset's) own."""
    cli = {"model": model_name, "max_steps": steps, "logging_steps": 1000, **extra}
    if batch_size is not None:
        cli["batch_size"] = batch_size
    cfg = resolve_config(cli=cli, environ={})
    batch_size = cfg.batch_size * cfg.gradient_accumulation_steps  # pairs per optimizer step
    model = load_model(cfg.model, max_seq_length=cfg.max_seq_length, train=True)
    dims = resolve_dims(cfg, model)
    timer = StepTimer()
    callbacks: list[TrainerCallback] = [timer]
    profiler = OpProfile(warmup=2, steps=profile, timer=timer) if profile else None
    if profiler is not None:
        callbacks.append(profiler)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train_model(cfg, model, dims, dims[0], pairs, None, Path(tmp), callbacks=callbacks)
        wall = time.perf_counter() - t0
    inside = timer.inside[2:] or timer.inside  # drop warm-up steps
    between = timer.between[2:] or timer.between or [0.0]
    step = statistics.mean(inside) + statistics.mean(between)
    return {
        "model": model_name,
        "steps": result.summary["global_steps"],
        "batch_size": batch_size,
        "wall_seconds_incl_setup": round(wall, 2),
        "trainer_pairs_per_s": result.summary["pairs_per_second"],
        "steady_pairs_per_s": round(batch_size / step, 1),
        "ms_per_step_compute": round(statistics.mean(inside) * 1000, 1),
        "ms_per_step_waiting_for_data": round(statistics.mean(between) * 1000, 1),
        "data_share": round(statistics.mean(between) / step, 3),
        "ms_per_step_by_phase": {k: round(statistics.mean(v[2:] or v) * 1000, 1) for k, v in timer.parts.items() if v},
        "profile": profiler.result if profiler is not None else None,
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
        "config": {k: getattr(cfg, k) for k in RECIPE_KEYS},
    }


RECIPE_KEYS = ("loss", "batch_size", "gradient_accumulation_steps", "hard_negatives", "token_cache", "max_seq_length",
               "mixed_precision", "learning_rate")  # fmt: skip


def bench_recipes(pairs: list[data.Pair], model_name: str, batches: int, extra: dict) -> dict:
    """The blog preset and the job's default on the same pairs in one run: pairs/s of each and their ratio."""
    out = {}
    for name, preset in (("blog", {"preset": "blog"}), ("default", {})):
        cfg = resolve_config(cli={"model": model_name, **preset, **extra}, environ={})
        steps = max(1, -(-batches // cfg.gradient_accumulation_steps))  # about `batches` batches of its own size
        out[name] = bench_training(pairs, model_name, None, steps, {**preset, **extra})
        print(f"recipes/{name}:", json.dumps(out[name]), flush=True)
    for key in ("trainer_pairs_per_s", "steady_pairs_per_s"):
        out[f"default_over_blog_{key}"] = round(out["default"][key] / out["blog"][key], 3)
    out["default_over_blog_wall_incl_setup"] = round(
        out["default"]["wall_seconds_incl_setup"] / out["blog"]["wall_seconds_incl_setup"], 3
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--parts", default="pipeline-nocache,pipeline,tiny,minilm")
    ap.add_argument("--limit", type=int, default=None, help="use the first N valid pairs")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--tiny-model", default=None, help="path of a tiny model (default: build one)")
    ap.add_argument("--minilm", default="bundled:all-MiniLM-L6-v2", help="all-MiniLM-L6-v2: the bundled copy or a path")
    ap.add_argument("--set", action="append", default=[], help="extra config KEY=VALUE for training parts")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        help="torch.profiler over N steps (after 2 warm-up steps) of each training part",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = dict(kv.split("=", 1) for kv in args.set)
    pairs = load_pairs(args.data, args.limit)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()} threads"
    info = {"machine": f"{platform.machine()} {device}", "torch": torch.__version__, "pairs": len(pairs),
            **machine()}  # fmt: skip
    print("setup:", json.dumps(info), flush=True)
    out = {"setup": info}
    tiny = args.tiny_model
    if "tiny" in args.parts:
        if tiny is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from conftest import build_tiny_model

            texts = [p.question for p in pairs[:2000]] + [p.passage for p in pairs[:2000]]
            tiny = str(build_tiny_model(Path(tempfile.mkdtemp()), texts))
    for part in args.parts.split(","):
        if part in ("pipeline", "pipeline-nocache"):
            model = load_model(args.minilm)  # its tokenizer; no forward pass is run
            res = bench_pipeline(pairs, model, args.batch_size, token_cache=part == "pipeline")
        elif part == "samplers":
            res = bench_samplers(pairs, args.batch_size)
        elif part == "padding":
            res = bench_padding(
                pairs,
                load_model(args.minilm, max_seq_length=extra.get("max_seq_length") and int(extra["max_seq_length"])),
                args.batch_size,
                [4, 16, 64],
            )
        elif part == "tiny":
            res = bench_training(pairs, tiny, args.batch_size, args.steps, extra, args.profile)
        elif part == "recipes":
            res = bench_recipes(pairs, args.minilm, args.steps, extra)
        elif part == "minilm":
            res = bench_training(pairs, args.minilm, args.batch_size, args.steps, extra, args.profile)
        else:
            raise SystemExit(f"unknown part {part!r}")
        res["peak_host_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        out[part] = res
        print(f"{part}:", json.dumps(res), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
