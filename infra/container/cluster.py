"""Several instances in one training job (``job launch sagemaker --instance-count N``, the SDK's local
mode with N containers): this host's part, how torchrun starts on it, and how the hosts end together.

Every host runs the same container; ``resourceconfig.json`` names the hosts and this one
(:class:`~infra.container.contract.Cluster`). The first host is node 0:

* **node 0** runs every step (prepare, baseline, train, evaluate), holds global rank 0 (the only
  process that writes checkpoints, the model, the card and the report) and exports the result;
* **the other nodes** prepare the same data (the split is seeded) and take part in training only;
  they write nothing to ``/opt/ml/model`` or ``/opt/ml/output/data`` (SageMaker, and the SDK's local
  mode, merge every host's folders: one model, whole, comes from node 0).

torchrun on each host: ``--nnodes N --node-rank R --master-addr <first host>`` (static rendezvous:
node ranks follow the host order, so global rank 0 is on the first host), one process per GPU, one
on CPU (gloo). The job's end: node 0 hosts a small key-value store (torch's ``TCPStore``, on the
rendezvous port + 1). The other nodes connect to it when they start and, after training, wait there
for node 0's result, so no container ends before the model is exported (the SDK's local mode stops
every container as soon as one exits). When node 0 fails, or its store goes away, the other nodes
stop their torchrun and fail with its reason; when another node fails during training, node 0's
ranks lose their peer, torchrun stops, and node 0 fails with the reason written - no hang until
``max_run``. A relaunch with the same checkpoint location resumes every node from the same checkpoint.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from infra.container.contract import RENDEZVOUS_PORT, Cluster
from infra.container.hooks import SIGTERM
from job.errors import JobError
from job.train import distributed

Echo = Callable[[str], None]

RESULT, OK = "job/result", "ok"
TRAIN, GO = "job/train", "go"  # node 0's signal that every host starts torchrun now (anything else: do not)
CONNECT_TIMEOUT_S = 900  # how long the hosts wait for each other to start (instances come up minutes apart)
ACK_TIMEOUT_S = 60  # how long node 0 waits for the others to read its result before it exits
WAIT_FOR_RESULT = timedelta(days=28)  # SageMaker's longest max_run


class TrainingFailed(Exception):
    """Training under torchrun failed, or node 0 ended the job: the message is the failure reason."""


def port(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    return int(env.get("MASTER_PORT") or RENDEZVOUS_PORT)


class Node:
    """This host's part in the job. For one host it does nothing; for several it holds (node 0) or
    watches (the others) the job's result. Use it as a context manager around the job's steps."""

    def __init__(self, cluster: Cluster, echo: Echo, environ: Mapping[str, str] | None = None,
                 connect_timeout_s: float | None = None) -> None:  # fmt: skip
        self.cluster = cluster
        self.echo = echo
        self.port = port(environ)
        self.connect_timeout_s = connect_timeout_s or CONNECT_TIMEOUT_S
        self.store: Any = None  # a torch.distributed.TCPStore once joined (torch is imported late)
        self.result: str | None = None  # node 0's result, as another node saw it
        self.in_training = False
        self._watcher: threading.Thread | None = None

    @property
    def is_main(self) -> bool:
        return self.cluster.is_main

    @property
    def nodes(self) -> distributed.Nodes:
        c = self.cluster
        return distributed.Nodes(count=c.size, rank=c.rank, master_addr=c.main_host, master_port=self.port)

    def describe(self) -> str:
        c = self.cluster
        if c.size == 1:
            return ""
        role = "node 0: trains, evaluates and exports" if c.is_main else "prepares and trains; node 0 exports"
        return f"; host {c.current_host}, node {c.rank} of {c.size} ({', '.join(c.hosts)}; {role})"

    def network_env(self) -> dict[str, str]:
        """gloo / NCCL on the interface SageMaker names, when this container has it and nothing is set."""
        name = self.cluster.interface
        if self.cluster.size == 1 or not name or not Path("/sys/class/net", name).exists():
            return {}
        return {k: name for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if not os.environ.get(k)}

    # --- the job's result --------------------------------------------------------------------------
    def __enter__(self) -> Node:
        if self.cluster.size == 1:
            return self
        from torch.distributed import TCPStore

        c = self.cluster
        if c.is_main:
            self.store = TCPStore("127.0.0.1", self.port + 1, None, True, timedelta(seconds=30), wait_for_workers=False)
            return self
        try:
            self.store = TCPStore(c.main_host, self.port + 1, None, False, timedelta(seconds=self.connect_timeout_s))
        except Exception as exc:  # noqa: BLE001 - DistStoreError, RuntimeError, TimeoutError
            raise JobError(
                f"Host {c.current_host} could not reach the first host {c.main_host} on port {self.port + 1} within "
                f"{self.connect_timeout_s:.0f} s ({_first_line(exc)}).",
                "let the job's instances reach each other on every TCP port (with a VPC: a security group that "
                "allows all traffic between its own members); in your own setup, start every host of the job.",
            ) from None
        self.store.set_timeout(WAIT_FOR_RESULT)
        # A client serves one request at a time: the watcher blocks in its own connection.
        watch = TCPStore(c.main_host, self.port + 1, None, False, timedelta(seconds=self.connect_timeout_s))
        watch.set_timeout(WAIT_FOR_RESULT)
        self.store.set(f"job/joined/{c.rank}", c.current_host)
        self._watcher = threading.Thread(target=self._watch, args=(watch,), name="job-result", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.store is None or not self.is_main:
            return
        reason = OK if exc is None else (getattr(exc, "message", None) or str(exc) or exc_type.__name__)
        try:
            if not self.store.check([TRAIN]):  # hosts waiting to train: there is no training to wait for
                self.store.set(TRAIN, "ended")
            self.store.set(RESULT, reason)
            joined = [f"job/ack/{r}" for r in range(1, self.cluster.size) if self.store.check([f"job/joined/{r}"])]
            if joined:  # a failed job need not wait long: a host that misses the result fails anyway
                self.store.wait(joined, timedelta(seconds=ACK_TIMEOUT_S if reason == OK else 5))
        except Exception as err:  # noqa: BLE001 - the others stop on their own when the store goes away
            self.echo(f"container: the other hosts did not all read the job's result ({_first_line(err)})")

    def _watch(self, store) -> None:
        """Another node: block until node 0 publishes its result (or its store goes away); if this node is
        still training then, stop torchrun here."""
        try:
            self.result = store.get(RESULT).decode(errors="replace")
            store.set(f"job/ack/{self.cluster.rank}", "1")
        except Exception as exc:  # noqa: BLE001
            self.result = f"the connection to it was lost ({_first_line(exc)})"
        child = SIGTERM.child
        if (self.result != OK or self.in_training) and child is not None and child.poll() is None:
            child.terminate()

    def before_training(self) -> bool:
        """Every host starts torchrun at once: node 0 when every host has joined (its baseline may take a
        while; the others wait for it here, not in torchrun's rendezvous), the others when node 0 says so.
        False: node 0 finished the job without training (its run was further on); nothing to train here."""
        c = self.cluster
        if self.store is None:
            return True
        if c.is_main:
            joined = [f"job/joined/{r}" for r in range(1, c.size)]
            try:
                self.store.wait(joined, timedelta(seconds=self.connect_timeout_s))
            except Exception:  # noqa: BLE001 - a timeout
                missing = [c.hosts[r] for r in range(1, c.size) if not self.store.check([f"job/joined/{r}"])]
                raise JobError(
                    f"Host{'s' if len(missing) > 1 else ''} {', '.join(missing)} did not join the job within "
                    f"{self.connect_timeout_s:.0f} s (no connection to {c.main_host} on port {self.port + 1}).",
                    "let the job's instances reach each other on every TCP port (with a VPC: a security group that "
                    "allows all traffic between its own members); in your own setup, start every host of the job.",
                ) from None
            self.store.set(TRAIN, GO)
            return True
        try:
            go = self.store.get(TRAIN).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - node 0's store went away
            go = f"the connection to it was lost ({_first_line(exc)})"
        if go == GO:
            return True
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        if self.result == OK:
            return False
        raise TrainingFailed(f"The first host {c.main_host} ended the job before training: {self.result or go}")

    def wait_for_main(self) -> None:
        """Another node, after training: wait until node 0 has finished (exported the model), then end."""
        if self._watcher is None:
            return
        self.echo(f"container: training done on {self.cluster.current_host}; waiting for {self.cluster.main_host} "
                  "to evaluate and export the model")  # fmt: skip
        self._watcher.join()
        if self.result != OK:
            raise TrainingFailed(f"The first host {self.cluster.main_host} failed: {self.result}")

    def training_failed(self, code: int, errors: list[str]) -> TrainingFailed:
        """Why torchrun ended with ``code`` on this host, as the failure reason."""
        c = self.cluster
        if self.result is not None and self.result != OK:
            return TrainingFailed(f"The first host {c.main_host} ended the job: {self.result}")
        if errors:  # a rank's own error paragraph says what and how to fix it
            where = f"across {c.size} hosts, on {c.current_host}" if c.size > 1 else f"(torchrun exit code {code})"
            return TrainingFailed(f"Distributed training failed {where}: {errors[0]}")
        if c.size == 1:
            return TrainingFailed(f"Distributed training failed (torchrun exit code {code}); see the ranks' output.")
        return TrainingFailed(
            f"Training across {c.size} hosts ({', '.join(c.hosts)}) stopped: torchrun on {c.current_host} exited with "
            f"code {code}. A process failed on one of the hosts, or a host was lost (stopped, out of memory, "
            "network); each host's log shows which. A new job with the same checkpoint location resumes from the "
            "last complete checkpoint."
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
