"""Where a build's targets run (docs/scale-out.md, "Targets over machines").

By default they are concurrent task runs in threads of the build's own process. With a Dask
scheduler named (`runner.dask_scheduler` in pipeline.yaml, or `tapeout run --dask-scheduler`),
the flow hands them to prefect-dask's task runner, and each target runs on whichever
`distributed` worker the scheduler picks. The shared stages (export, calibration,
quantization, the fp32 reference) still run once, in the build's process; a worker reads their
files by path, and compiles, evaluates, bundles and signs in its own home: the `TAPEOUT_HOME`
it was started with (`tapeout.flows.dask_worker`). Where the targets ran changes no byte of
what they build, so the runner is not part of the config digest (flows/config.py).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tapeout.compilers.errors import InvalidInput

CONNECT_SECONDS = 5.0


def dask_task_runner(address: str, field: str):
    """prefect-dask's task runner on the scheduler at `address` (`tcp://HOST:PORT`), checked to
    answer first: `field` names where the address came from, for the error.

    Raises:
        InvalidInput: the dask extra is not installed, or no scheduler answers at `address`.
    """
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as error:
        raise InvalidInput(
            f"{field}: {address}: needs the dask extra (pip install 'tapeout[dask]'): {error}"
        ) from error
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.port is None:
        raise InvalidInput(f"{field}: expected a scheduler address tcp://HOST:PORT, found {address!r}")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_SECONDS):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InvalidInput(f"{field}: no Dask scheduler answers at {address} ({reason})") from error
    return DaskTaskRunner(address=address)


def target_home(build_home: Path) -> Path:
    """The home a target keeps its files in: on a Dask worker, the worker's own
    (`TAPEOUT_HOME`), else the build's. distributed is only asked when something imported it:
    a thread-pool build never loads it."""
    if "distributed" not in sys.modules:
        return build_home
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:  # not inside a worker: the build's own process
        return build_home
    from tapeout.flows.environment import tapeout_home

    return tapeout_home()


def require_readable(paths: dict[str, Path]) -> None:
    """Fail one target clearly when the shared stages' files are not where the build wrote them
    (a worker on another machine with neither a shared volume nor a stage store).

    Raises:
        InvalidInput: names the first missing file and what it is.
    """
    for what, path in paths.items():
        if not Path(path).exists():
            raise InvalidInput(
                f"{path}: the {what} the build's shared stages wrote is not readable on this worker "
                f"({socket.gethostname()}); give the workers the build's home on a shared volume"
            )
