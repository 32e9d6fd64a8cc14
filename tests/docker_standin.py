"""A STAND-IN for Docker and Docker Compose, for `job launch local` tests on machines without Docker.

It is not Docker: ``install(bin_dir, ...)`` writes two small executables, ``docker`` and
``docker-compose``, that answer what the launcher and the SageMaker SDK's local mode ask of them:

* ``docker version`` / ``docker image inspect IMAGE`` answer as a daemon holding ``images`` would
  (or, with ``daemon=False``, fail as a client that cannot reach its daemon); ``docker compose``
  is "not a docker command", so the SDK falls back to ``docker-compose``, as with Debian's 1.29;
* ``docker-compose -f FILE up ...`` reads the compose file the SDK really wrote and runs the one
  service's "container" as a local process: ``python -m infra.container`` with NO arguments (as the
  SDK starts the image), its environment from the file, and the file's bind mounts mapped onto a
  folder laid out like /opt/ml (symlinks; channels through SM_CHANNEL_*), so the job reads and
  writes the very folders the SDK gathers its artifacts from. Its exit code is the container's.
  ``run="help"`` runs ``--help`` instead: an image that does not train when started without
  arguments (the old image's ``CMD ["--help"]``).

What it cannot show - the image itself, root-owned mounts, users, the network - the Docker smoke
test (scripts/docker_smoke.sh -> tests/test_docker_local_mode.py) checks with the real thing.
Every call is appended to ``calls.log`` in ``log_dir``; each compose file is copied there.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCKER = r"""#!{python}
import os, sys
args = sys.argv[1:]
log = {log!r}
with open(os.path.join(log, "calls.log"), "a") as fh:
    fh.write("docker " + " ".join(args) + "\n")
if not {daemon!r} and args[:1] != ["compose"]:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    sys.exit(
        print(f"Cannot connect to the Docker daemon at {{host}}. Is the docker daemon running?", file=sys.stderr) or 1
    )
if args[:1] == ["version"]:
    print("20.10.24-standin")
elif args[:1] == ["compose"]:
    sys.exit(print("docker: 'compose' is not a docker command.", file=sys.stderr) or 1)
elif args[:2] == ["image", "inspect"]:
    if args[-1] not in {images!r}:
        sys.exit(print(f"Error: No such image: {{args[-1]}}", file=sys.stderr) or 1)
    print("sha256:0123456789abcdef")
elif args[:1] == ["images"]:
    print("")
else:
    sys.exit(print(f"docker stand-in: unsupported: {{args}}", file=sys.stderr) or 1)
"""

COMPOSE = r"""#!{python}
import os, shutil, subprocess, sys, tempfile, yaml
args = sys.argv[1:]
log = {log!r}
with open(os.path.join(log, "calls.log"), "a") as fh:
    fh.write("docker-compose " + " ".join(args) + "\n")
if args[:1] in (["version"], ["--version"]):
    sys.exit(print("docker-compose version 1.29.2-standin") or 0)
if "down" in args:
    sys.exit(0)  # nothing to remove: the "container" was a process
compose_file = args[args.index("-f") + 1]
shutil.copyfile(compose_file, os.path.join(log, "compose.yaml"))
(host, service), = yaml.safe_load(open(compose_file))["services"].items()
if service["image"] not in {images!r}:
    sys.exit(print(f"pull access denied for {{service['image']}}") or 1)
opt_ml = tempfile.mkdtemp(prefix="standin-opt-ml-")
env = {{k: v for k, v in os.environ.items() if not k.startswith(("SM_", "OPT_ML"))}}
env.update(item.split("=", 1) for item in service.get("environment", []))
for volume in service["volumes"]:
    source, target = volume[:-2].rsplit(":", 1) if volume.endswith(":z") else volume.rsplit(":", 1)
    rel = target[len("/opt/ml/"):]
    if rel.startswith("input/data/"):
        env["SM_CHANNEL_" + rel.split("/")[2].upper()] = source
    elif rel != "output/data":  # inside the output mount already, as in the real layout
        link = os.path.join(opt_ml, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(source, link)
env["OPT_ML"] = opt_ml
argv = ["--help"] if {run!r} == "help" else []
print(f"Creating {{host}} ... done", flush=True)
code = subprocess.call([sys.executable, "-m", "infra.container", *argv], env=env)
print(f"{{host}} exited with code {{code}}", flush=True)
shutil.rmtree(opt_ml, ignore_errors=True)
sys.exit(code)
"""


def install(bin_dir: Path, log_dir: Path, images: tuple[str, ...], *, daemon: bool = True, compose: bool = True,
            run: str = "train") -> Path:  # fmt: skip
    """Write the stand-in ``docker`` (and ``docker-compose`` unless ``compose=False``) into ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    fill = {"python": sys.executable, "log": str(log_dir), "images": list(images), "daemon": daemon, "run": run}
    scripts = {"docker": DOCKER} | ({"docker-compose": COMPOSE} if compose else {})
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text.format(**fill))
        path.chmod(0o755)
    return bin_dir
