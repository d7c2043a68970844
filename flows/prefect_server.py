"""Prefect's temporary API server, tied to the process that needs it.

With no Prefect API configured, Prefect 3 starts a temporary server on first use
(`prefect.server.api.server.SubprocessASGIServer`: `python -m uvicorn --factory
prefect.server.api.server:create_app ...` in a subprocess, stopped by an `atexit` hook). A
`tapeout run` killed with SIGKILL runs no atexit hook, so that server (~190 MB) lived on,
orphaned, one per killed run.

`prefect_api()` starts the same server the same way, but under a small supervisor
(`python -m tapeout.flows.prefect_server PARENT_PID -- COMMAND`) that stops it as soon as its
parent process is gone, however the parent ended; the build then talks to it through
`PREFECT_API_URL`. A configured API (a Prefect server, or a test harness) is used as is.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_POLL_SECONDS = 0.2


@contextmanager
def prefect_api() -> Iterator[None]:
    """Point Prefect at a server for the duration: the configured one, else a temporary
    server that dies with this process.

    Raises:
        RuntimeError: the temporary server did not answer in time (Prefect's own error).
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield
        return
    import prefect

    # What SubprocessASGIServer._run_uvicorn_command passes (prefect 3.9).
    environment = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    deadline = time.monotonic() + PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    while True:
        port = _free_port()
        command = [
            sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
            "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "error", "--lifespan", "on",
        ]
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "tapeout.flows.prefect_server", str(os.getpid()), "--", *command],
            env=environment,
        )
        url = f"http://127.0.0.1:{port}/api"
        try:
            if _healthy(url, supervisor, deadline):
                break
        except BaseException:
            _stop(supervisor)
            raise
        _stop(supervisor)  # exited early (the port was taken meanwhile): try another
        if time.monotonic() > deadline:
            raise RuntimeError(f"Timed out while attempting to connect to the temporary Prefect API server at {url}")
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield
    finally:
        _stop(supervisor)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url: str, supervisor: subprocess.Popen, deadline: float) -> bool:
    """True once the server answers; False if it exited first."""
    import httpx

    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if supervisor.poll() is not None:
                return False
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"Timed out while attempting to connect to the temporary Prefect API server at {url}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def supervise(parent: int, command: list[str]) -> int:
    """Run `command` until it exits or `parent` is gone (this process is re-parented), then
    stop it. SIGTERM stops it too; SIGINT is left to the command (a terminal's Ctrl-C
    reaches the whole process group)."""
    import signal

    server = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while server.poll() is None:
        if os.getppid() != parent:
            _stop(server)
            break
        time.sleep(_POLL_SECONDS)
    return server.wait()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    separator = arguments.index("--")
    sys.exit(supervise(int(arguments[0]), arguments[separator + 1 :]))
