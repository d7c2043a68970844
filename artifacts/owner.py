"""Which process owns a run or a folder, whether it is still alive, and which worker it is.

A process killed with SIGKILL cannot end its MLflow run or remove its staging folder, and a
pid alone is reused. So an owner is `host:pid:start`, the start being the process's start
time in clock ticks since boot (`/proc/<pid>/stat`, field 22): a later process with the same
pid has another start. Off Linux the start is unknown ("0") and only the pid is compared.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

OWNER_TAG = "tapeout.owner"
WORKER_TAG = "tapeout.worker"


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            stat = stream.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19]  # field 22 of the whole line


def current_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or '0'}"


def owner_alive(owner: str) -> bool | None:
    """True or False for an owner on this host; None when it cannot be told (another host,
    or not an owner string)."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    host, pid, start = parts[0], int(parts[1]), parts[2]
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    found = _start_time(pid)
    return found is None or start == "0" or found == start


@dataclass(frozen=True)
class Worker:
    """The process doing the work, as a reader elsewhere needs to name it: the host, the
    process (`host:pid:start`, as `current_owner`), and, in a flow run a Prefect worker
    started, that worker's name and the flow run (the environment a Prefect worker gives
    the runs it starts: PREFECT__WORKER_NAME, PREFECT__FLOW_RUN_ID)."""

    host: str
    process: str
    prefect_worker: str = ""
    flow_run: str = ""

    def describe(self) -> str:
        parts = [f"host {self.host}"]
        if self.prefect_worker:
            parts.append(f"Prefect worker {self.prefect_worker}")
        if self.flow_run:
            parts.append(f"flow run {self.flow_run}")
        parts.append(f"process {self.process.split(':')[1]}")
        return ", ".join(parts)

    def name(self) -> str:
        """A short name, usable in an MLflow tag key: the Prefect worker and its host (the
        pods of one Kubernetes worker share its name, each with a disk of its own), else host
        and pid."""
        short = f"{self.prefect_worker}.{self.host}" if self.prefect_worker else f"{self.host}-{self.process.split(':')[1]}"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", short)


def current_worker() -> Worker:
    return Worker(
        socket.gethostname(), current_owner(),
        os.environ.get("PREFECT__WORKER_NAME", ""), os.environ.get("PREFECT__FLOW_RUN_ID", ""),
    )
