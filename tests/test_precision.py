"""--mixed-precision auto|no|fp16|bf16: what each resolves to on each kind of machine, and the refusals.

There is no GPU here: the GPUs are described to :func:`job.train.finetune.resolve_precision` as
:class:`job.train.finetune.Accelerator` values (its one input about the hardware, which
:func:`job.train.finetune.detect_accelerator` fills from torch on a real machine); nothing inside torch or
transformers is faked. The trainer's own check (transformers' TrainingArguments) runs for real for the CPU cases only.
"""

from __future__ import annotations

import dataclasses

import pytest

from job.cli import main
from job.config import JobConfig
from job.errors import JobError
from job.train.finetune import Accelerator, detect_accelerator, resolve_precision, training_arguments

H100 = Accelerator("cuda", "NVIDIA H100 80GB HBM3", (9, 0), native_bf16=True)
A10G = Accelerator("cuda", "NVIDIA A10G", (8, 6), native_bf16=True)
T4 = Accelerator("cuda", "Tesla T4", (7, 5), native_bf16=False)  # ml.g4dn
V100 = Accelerator("cuda", "Tesla V100-SXM2-16GB", (7, 0), native_bf16=False)  # ml.p3
CPU = Accelerator("cpu", "CPU")
MPS = Accelerator("mps", "Apple MPS")


@pytest.mark.parametrize(
    ("mode", "acc", "dtype", "tf32"),
    [
        ("auto", H100, "bf16", True),
        ("auto", A10G, "bf16", True),
        ("auto", T4, "fp16", False),  # no native bf16: fp16 with loss scaling, not emulated bf16
        ("auto", V100, "fp16", False),
        ("auto", CPU, "fp32", False),
        ("auto", MPS, "fp32", False),
        ("no", H100, "fp32", False),  # no: fp32 everywhere, tf32 off too
        ("no", T4, "fp32", False),
        ("no", CPU, "fp32", False),
        ("fp16", H100, "fp16", True),
        ("fp16", T4, "fp16", False),
        ("bf16", H100, "bf16", True),
        ("bf16", CPU, "bf16", False),
    ],
)
def test_each_mode_resolves_per_machine(mode, acc, dtype, tf32):
    p = resolve_precision(mode, acc)
    assert (p.requested, p.dtype, p.tf32) == (mode, dtype, tf32)
    flags = p.trainer_flags()
    assert flags == {"bf16": dtype == "bf16", "fp16": dtype == "fp16", "tf32": tf32}
    assert p.record()["loss_scaling"] == (dtype == "fp16")
    assert p.record()["resolved"] == dtype
    assert p.use_cpu == (dtype == "bf16" and acc.kind == "cpu")  # CPU autocast: transformers needs use_cpu


def test_the_record_names_the_device():
    assert resolve_precision("auto", T4).record() == {
        "requested": "auto", "resolved": "fp16", "loss_scaling": True, "tf32": False,
        "device": "Tesla T4 (compute capability 7.5)",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "acc", "needles"),
    [
        ("fp16", CPU, ["fp16 needs a CUDA GPU", "CPU", "Fix: use --mixed-precision auto"]),
        ("fp16", MPS, ["fp16 needs a CUDA GPU", "Apple MPS"]),
        ("bf16", T4, ["Tesla T4 (compute capability 7.5) has no native bf16", "Fix: use --mixed-precision fp16"]),
        ("bf16", V100, ["no native bf16", "ml.p3"]),
        ("bf16", MPS, ["not supported on Apple MPS", "Fix: use --mixed-precision auto or no"]),
    ],
)
def test_a_precision_the_machine_cannot_do_is_refused_with_the_fix(mode, acc, needles):
    with pytest.raises(JobError) as info:
        resolve_precision(mode, acc)
    assert info.value.exit_code == 2
    for needle in needles:
        assert needle in info.value.message


def test_this_machine_is_detected():
    import torch

    acc = detect_accelerator()
    if torch.cuda.is_available():  # pragma: no cover - the test machines have no GPU
        assert acc.kind == "cuda" and acc.capability == torch.cuda.get_device_capability()
    else:
        assert acc.kind in ("cpu", "mps") and acc.capability is None


@pytest.mark.parametrize("mode", ["no", "bf16"])
def test_the_trainer_accepts_what_a_cpu_resolves_to(tmp_path, mode):
    """transformers' own check: bf16 on a CPU is allowed only with use_cpu, which the resolution sets."""
    cfg = dataclasses.replace(JobConfig(), report_to="none", mixed_precision=mode)
    args = training_arguments(
        cfg, None, tmp_path / "checkpoints", 8, {"eval_strategy": "no"}, ["anchor", "positive"],
        resolve_precision(mode, CPU),
    )  # fmt: skip
    assert (args.bf16, args.fp16) == (mode == "bf16", False)
    assert args.use_cpu == (mode == "bf16")


def _args(run_dir, model, data, *extra):
    fast = ("--batch-size", "8", "--matryoshka-dims", "32,16", "--hard-negatives", "0", "--max-steps", "2")
    return [str(a) for a in ("--run-dir", run_dir, "--model", model, "--data", data, *fast, *extra)]


@pytest.mark.parametrize("command", ["run", "train"])
def test_fp16_on_cpu_is_refused_before_any_step(tmp_path, tiny_model_path, pairs_file, capsys, command):
    import torch

    if torch.cuda.is_available():  # pragma: no cover
        pytest.skip("this machine has a GPU: fp16 is allowed")
    run_dir = tmp_path / "run"
    code = main([command, *_args(run_dir, tiny_model_path, pairs_file, "--mixed-precision", "fp16")])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "error: --mixed-precision fp16 needs a CUDA GPU" in err and "Fix:" in err, err
    assert "Traceback" not in err
    assert not (run_dir / "data").exists()  # refused before prepare
