"""Several "machines" on one: processes that meet on loopback, in a network namespace of their own.

torchrun's rendezvous store and the container's job-status store listen on every interface. Run as
root (CI, and the smoke test), the processes share a private network namespace holding only
loopback - a holder process (``unshare --net sleep``) keeps it, and each process enters it with
``nsenter`` - so nothing listens on the machine's own network. Elsewhere they use the machine's
loopback as they are.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time


class Loopback:
    def __init__(self) -> None:
        self.holder: subprocess.Popen | None = None
        self.prefix: list[str] = []

    def __enter__(self) -> Loopback:
        if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip"):
            holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
            prefix = ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
            time.sleep(0.2)
            if subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=False).returncode == 0:
                self.holder, self.prefix = holder, prefix
            else:
                holder.kill()
                holder.wait()
        return self

    @property
    def private(self) -> bool:
        return self.holder is not None

    def free_port(self) -> int:
        """A port with the next one free too (the rendezvous port and the job-status store's)."""
        if self.private:
            return 29500  # nothing else lives in this namespace
        for _ in range(50):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
        raise RuntimeError("no two adjacent free ports on loopback")

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        """``cmd`` in the namespace (nsenter execs it: the returned PID is the command's own)."""
        return subprocess.Popen([*self.prefix, *cmd], **kw)

    def __exit__(self, *exc) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
