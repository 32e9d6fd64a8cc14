"""Training across several machines, for real: two "hosts" as two processes on loopback.

* The container (``python -m infra.container train``) twice, each with its own /opt/ml and a
  ``resourceconfig.json`` naming both hosts - what SageMaker gives each instance of a two-instance
  job: one model, whole, from the first host; the ranks in sync; the other host exports nothing.
* One host killed mid-training: the other fails on its own with the reason written (no hang); a
  relaunch on the same checkpoints (restored on every host, as SageMaker restores the checkpoint S3
  prefix) resumes both from the same checkpoint and finishes.
* Hosts whose data differ: both fail before the first step, naming what differs.
* The README recipe without SageMaker: two plain ``torchrun --nnodes 2`` agents running ``job train``.

The hosts are ``127.0.0.1`` and ``localhost`` (two names for one loopback); as root they share a
network namespace of their own (tests/loopback.py). gloo on CPU, the tiny BERT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_pairs
from loopback import Loopback

from infra.container import contract
from infra.container import inputs as container_inputs
from infra.container.cluster import Node
from job.errors import JobError

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ["127.0.0.1", "localhost"]
FAST = {"max_steps": "4", "batch_size": "8", "eval_batch_size": "16", "logging_steps": "1",
        "matryoshka_dims": "[32, 16]"}  # fmt: skip


def host_layout(tmp_path: Path, host: str, model: Path, hps: dict, pairs: list[dict] | None = None) -> Path:
    root = tmp_path / f"opt_ml-{host}"
    (root / "input" / "config").mkdir(parents=True)
    train = root / "input" / "data" / "train"
    train.mkdir(parents=True)
    (train / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (pairs or make_pairs(5))))
    shutil.copytree(model, root / "input" / "data" / "model")
    config = root / "input" / "config"
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {}, "model": {}}))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": host, "hosts": HOSTS, "network_interface_name": "eth-none"})
    )
    return root


def node_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "SM_"))}
    return env | {
        "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }  # fmt: skip


def start_hosts(net: Loopback, roots: list[Path], port: int) -> list[subprocess.Popen]:
    return [
        net.popen(
            [sys.executable, "-m", "infra.container", "train", "--opt-ml", str(r)],
            cwd=ROOT,
            env=node_env(port),
            stdout=open(r / "log.txt", "w"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for r in roots
    ]


def kill_host(proc: subprocess.Popen) -> None:
    """A lost instance: every process of the host at once (the container process, torchrun, and its ranks,
    which torchrun starts in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                kill_host(q)
            raise AssertionError(f"the hosts did not end within {timeout:.0f} s") from None
    return codes


def log(root: Path) -> str:
    return (root / "log.txt").read_text()


# --- the resource configuration ------------------------------------------------------------------
def test_resourceconfig_places_this_host(tmp_path):
    paths = contract.ContainerPaths.create(tmp_path)
    assert container_inputs.read_cluster(paths) == contract.Cluster()  # no file: one host
    paths.resource_config.parent.mkdir(parents=True)
    paths.resource_config.write_text(json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"],
                                                 "network_interface_name": "eth0"}))  # fmt: skip
    cluster = container_inputs.read_cluster(paths)
    assert (cluster.size, cluster.rank, cluster.main_host, cluster.is_main) == (3, 1, "algo-1", False)
    node = Node(cluster, print, environ={"MASTER_PORT": "31000"})
    args = node.nodes.torchrun_args()
    assert ["--nnodes=3", "--node-rank=1", "--master-addr=algo-1", "--master-port=31000"] == args[:4]
    assert "--max-restarts=0" in args and "--standalone" not in args
    assert "host algo-2, node 1 of 3" in node.describe()


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"current_host": "algo-3", "hosts": ["algo-1", "algo-2"]}, "'current_host' ('algo-3') is not one of"),
        ({"current_host": "algo-1", "hosts": ["algo-1", "algo-1"]}, "names a host twice"),
        ({"current_host": "algo-1", "hosts": "algo-1"}, "not a list of host names"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_a_bad_resourceconfig_is_a_clear_error(tmp_path, raw, needle):
    paths = contract.ContainerPaths.create(tmp_path)
    paths.resource_config.parent.mkdir(parents=True)
    paths.resource_config.write_text(json.dumps(raw))
    with pytest.raises(JobError, match="cannot be read as SageMaker's resource configuration") as err:
        container_inputs.read_cluster(paths)
    assert needle in err.value.message and "Fix: " in err.value.message


def test_another_host_that_cannot_reach_the_first_is_a_clear_error():
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on (and the next one)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1] - 1
    cluster = contract.Cluster(("127.0.0.1", "localhost"), "localhost")
    node = Node(cluster, print, environ={"MASTER_PORT": str(port)}, connect_timeout_s=2)
    with pytest.raises(JobError, match=f"could not reach the first host 127.0.0.1 on port {port + 1} within 2 s"):
        node.__enter__()


# --- two hosts, for real -------------------------------------------------------------------------
@pytest.mark.slow
def test_two_hosts_train_one_model_with_negatives_from_both(tmp_path, tiny_model_path):
    roots = [host_layout(tmp_path, h, tiny_model_path, FAST) for h in HOSTS]
    with Loopback() as net:
        codes = wait_all(start_hosts(net, roots, net.free_port()), timeout=600)
    main, other = roots
    assert codes == [0, 0], log(main)[-3000:] + log(other)[-3000:]
    assert "2 nodes x 1 process = 2 processes, this is node 0, rendezvous 127.0.0.1:" in log(main)
    assert "global batch 8 (4 pairs per process), in-batch negatives gathered across all 2 processes" in log(main)
    assert "this is node 1" in log(other) and "waiting for 127.0.0.1 to evaluate and export" in log(other)
    training = json.loads((main / "model" / "training.json").read_text())
    assert training["world_size"] == 2 and training["global_steps"] == 4
    a, b = training["rank_param_checksums"]
    assert a == pytest.approx(b, rel=1e-12)  # one model: the ranks stayed in sync across hosts
    assert (main / "model" / "model.safetensors").is_file()
    assert (main / "output" / "data" / "report" / "metrics.json").is_file()
    assert "METRIC test_ndcg@10_dim32=" in log(main) and "METRIC" not in log(other)
    # the other host: trained (its RNG state is in its checkpoint folder), wrote no model, report or failure
    assert list((other / "model").iterdir()) == [] and list((other / "output" / "data").iterdir()) == []
    assert not (other / "output" / "failure").exists() and not (other / "checkpoints" / "run" / "model").exists()
    assert list((other / "checkpoints" / "run" / "checkpoints").glob("checkpoint-4/rng_state_1.pth"))


@pytest.mark.slow
def test_a_killed_host_fails_the_job_and_a_relaunch_resumes_both(tmp_path, tiny_model_path):
    hps = {**FAST, "max_steps": "40", "eval_steps": "4"}
    roots = [host_layout(tmp_path, h, tiny_model_path, hps) for h in HOSTS]
    main, other = roots
    checkpoints = [r / "checkpoints" / "run" / "checkpoints" for r in roots]
    with Loopback() as net:
        port = net.free_port()
        procs = start_hosts(net, roots, port)
        deadline = time.monotonic() + 600
        while not (checkpoints[0] / "checkpoint-4" / "job_checkpoint_complete.json").is_file():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), log(main)[-3000:]
            time.sleep(0.2)
        kill_host(procs[1])  # the second instance is lost
        killed_at = time.monotonic()
        codes = wait_all(procs, timeout=300)
        assert codes[0] == 1, log(main)[-3000:]
        assert time.monotonic() - killed_at < 120  # the first host noticed on its own
        reason = (main / "output" / "failure").read_text()
        assert "Training across 2 hosts (127.0.0.1, localhost) stopped: torchrun on 127.0.0.1 exited" in reason
        assert "resumes from the last complete checkpoint" in reason
        assert not (main / "model" / "modules.json").exists()

        # Relaunch: every host gets the same checkpoints (SageMaker restores the S3 prefix on each).
        for a, b in ((checkpoints[0], checkpoints[1]), (checkpoints[1], checkpoints[0])):
            for ckpt in a.glob("checkpoint-*"):
                shutil.copytree(ckpt, b / ckpt.name, dirs_exist_ok=True)
        (main / "output" / "failure").unlink()
        codes = wait_all(start_hosts(net, roots, port), timeout=600)
    assert codes == [0, 0], log(main)[-3000:] + log(other)[-3000:]
    training = json.loads((main / "model" / "training.json").read_text())
    resumed = Path(training["resumed_from"]).name
    assert training["global_steps"] == 40 and resumed.startswith("checkpoint-")
    assert f"train: resuming from {checkpoints[1] / resumed}" in log(other)  # the same checkpoint on both
    assert (main / "output" / "data" / "report" / "metrics.json").is_file()


@pytest.mark.slow
def test_hosts_with_different_data_fail_before_the_first_step(tmp_path, tiny_model_path):
    roots = [
        host_layout(tmp_path, HOSTS[0], tiny_model_path, FAST),
        host_layout(tmp_path, HOSTS[1], tiny_model_path, FAST, pairs=make_pairs(5)[:-6]),
    ]
    with Loopback() as net:
        codes = wait_all(start_hosts(net, roots, net.free_port()), timeout=600)
    assert codes[0] != 0 and codes[1] != 0
    reason = (roots[0] / "output" / "failure").read_text()
    assert reason.startswith(
        "Distributed training failed across 2 hosts, on 127.0.0.1: rank 0: The training processes disagree on the "
        "training pairs (digest) (ranks 0:"
    ), reason
    assert "give every machine the same run directory" in reason
    assert not (roots[0] / "model" / "modules.json").exists()


@pytest.mark.slow
def test_a_host_that_never_joins_is_a_clear_error(tmp_path, tiny_model_path):
    """Only the first host starts (the other never reaches it): a JobError after the join timeout (900 s in
    the container, 3 s here), not torchrun waiting at its rendezvous."""
    root = host_layout(tmp_path, HOSTS[0], tiny_model_path, FAST)
    code = (
        "import sys; from infra.container import cluster; cluster.CONNECT_TIMEOUT_S = 3; "
        "from infra.container.entry import main; sys.exit(main(['train', '--opt-ml', sys.argv[1]]))"
    )
    with Loopback() as net:
        proc = net.popen([sys.executable, "-c", code, str(root)], cwd=ROOT, env=node_env(net.free_port()),
                         stdout=open(root / "log.txt", "w"), stderr=subprocess.STDOUT)  # fmt: skip
        assert wait_all([proc], timeout=300) == [2], log(root)[-3000:]
    reason = (root / "output" / "failure").read_text()
    assert reason.startswith("Host localhost did not join the job within 3 s (no connection to 127.0.0.1 on port")
    assert "Fix: let the job's instances reach each other on every TCP port" in reason


# --- without SageMaker: plain torchrun on two machines -------------------------------------------
@pytest.mark.slow
def test_the_plain_torchrun_recipe_on_two_nodes(tmp_path, tiny_model_path, pairs_file):
    """docs/cloud.md's recipe: `job prepare` on each machine, one `torchrun --nnodes 2` agent each, then
    `job evaluate` on the first."""
    flags = ["--data", str(pairs_file), "--model", str(tiny_model_path), "--max-steps", "3", "--batch-size", "8",
             "--eval-batch-size", "16", "--matryoshka-dims", "32,16"]  # fmt: skip
    runs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    with Loopback() as net:
        port = net.free_port()
        env = node_env(port)
        for run in runs:
            done = net.popen([sys.executable, "-m", "job", "prepare", "--run-dir", str(run), *flags], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
            assert done.wait(timeout=300) == 0, done.stdout.read()
        agents = [
            net.popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes",
                    "2",
                    "--node-rank",
                    str(rank),
                    "--nproc-per-node",
                    "1",
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    str(port),
                    "-m",
                    "job",
                    "train",
                    "--run-dir",
                    str(run),
                    *flags,
                ],
                cwd=ROOT,
                env=env,
                stdout=open(run.parent / "log.txt", "w"),
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            for rank, run in enumerate(runs)
        ]
        codes = wait_all(agents, timeout=600)
    logs = [(r.parent / "log.txt").read_text() for r in runs]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    training = json.loads((runs[0] / "model" / "training.json").read_text())
    assert training["world_size"] == 2 and training["global_steps"] == 3
    assert training["rank_param_checksums"][0] == pytest.approx(training["rank_param_checksums"][1], rel=1e-12)
    assert not (runs[1] / "model").exists()  # one model, on the first machine
    done = subprocess.run([sys.executable, "-m", "job", "evaluate", "--run-dir", str(runs[0]), *flags], cwd=ROOT,
                          env=node_env(port), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (runs[0] / "report" / "metrics.json").is_file()
