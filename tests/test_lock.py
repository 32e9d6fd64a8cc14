"""The dependency lock: the exact versions the project is tested and measured with.

requirements/dev.lock (make setup, CI), requirements/image.lock (the Docker image) and
requirements/constraints.txt are written together by scripts/lock.py (`make lock`); pyproject.toml keeps
ranges for people who install the package as a library. These tests keep the four in agreement and check
that the environment the tests run in is the locked one.
"""

from __future__ import annotations

import re
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


def read_pins(path: Path) -> dict[str, str]:
    return {canonicalize_name(m[1]): m[2] for line in path.read_text().splitlines() if (m := PIN.match(line))}


@pytest.fixture(scope="module")
def dev():
    return read_lock(LOCKS / "dev.lock")


def test_every_locked_file_has_a_hash_and_torch_is_installed_on_its_own(dev):
    image = read_lock(LOCKS / "image.lock")
    for lock in (dev, image):
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


def test_every_install_path_uses_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements/dev.lock" in makefile and "--no-deps -e ." in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r /src/requirements/image.lock" in dockerfile
    assert "-c /src/requirements/constraints.txt" in dockerfile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
