"""Where a benchmark's numbers come from: the CPU (model name, the SIMD flags that decide the kernels, cores), the
load before, the versions that matter. Every bench script records it beside its absolute numbers, which hold only
on that CPU; ratios measured in the same run travel.

Imported by the scripts in this folder (``python bench/x.py`` puts it on the path).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_facts() -> dict:
    """The CPU: its model name, the SIMD flags that decide ONNX Runtime's and PyTorch's kernels (AVX2, AVX-512,
    VNNI: int8 dot products), and the cores this process may use."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in (platform.processor(), platform.machine()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": name, "flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count(),
            "usable_cores": usable, "avx512": "avx512f" in flags,
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags}  # fmt: skip


def machine(packages: tuple[str, ...] = ("onnxruntime", "torch", "chromadb")) -> dict:
    """The CPU, the load average before the run, the Python and package versions."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"node": platform.node(), **cpu_facts(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": versions, "load_average_before": os.getloadavg()}  # fmt: skip


def cpu_label(facts: dict | None = None) -> str:
    """One line for a printed table: ``AMD EPYC 7B13, 2 cores, AVX-512 VNNI``."""
    f = facts or cpu_facts()
    simd = (
        "AVX-512" + (" VNNI" if f["vnni"] else "") if f["avx512"] else ("AVX2" if "avx2" in f["flags"] else "no AVX2")
    )
    return f"{f['cpu']}, {f['usable_cores']} cores, {simd}"
