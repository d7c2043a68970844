"""Which process owns a run or a folder, and whether it is still alive.

A process killed with SIGKILL cannot end its MLflow run or remove its staging folder, and a
pid alone is reused. So an owner is `host:pid:start`, the start being the process's start
time in clock ticks since boot (`/proc/<pid>/stat`, field 22): a later process with the same
pid has another start. Off Linux the start is unknown ("0") and only the pid is compared.
"""

from __future__ import annotations

import os
import socket

OWNER_TAG = "tapeout.owner"


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
