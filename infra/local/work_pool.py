"""A `tapeout-process` work pool on loopback, with workers that share no disk: used by the
integration test (tests/integration/test_workers.py) and the worker benchmark
(benchmarks/pipeline.py --workers) on the servers `services.sh` starts.

- `deploy`: the pool, and infra/prefect.yaml's `on-commit-digits-cnn` deployed to it with
  `prefect deploy` (the cron watcher is left out: a schedule firing mid-test builds nothing
  the test asked for);
- `start_worker`: `prefect worker start` with its own `TAPEOUT_HOME` and `PREFECT_HOME`, in a
  session of its own so that `stop_workers` ends it with every flow run it started;
- `wait_online`: until every worker has reported to the server;
- `emit`: `model.committed` for several commits at once, as concurrent git hooks would;
- `wait_for_runs`: until every commit's flow run has ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
POOL = "tapeout-process"
DEPLOYMENT = "on-commit-digits-cnn"
ENDED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Worker:
    name: str
    home: Path
    process: subprocess.Popen
    log: Path


def _run(command: Sequence[str], environment: Mapping[str, str], what: str) -> None:
    completed = subprocess.run(
        list(command), env=dict(environment), cwd=REPOSITORY, capture_output=True, text=True, timeout=600
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed ({completed.returncode}): {completed.stdout[-2000:]}{completed.stderr[-2000:]}")


def deploy(environment: Mapping[str, str]) -> None:
    """Create the pool and deploy the commit-triggered build from infra/prefect.yaml."""
    prefect = str(_BIN / "prefect")
    _run([prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"], environment, "creating the pool")
    _run(
        [prefect, "--no-prompt", "deploy", "--prefect-file", str(REPOSITORY / "infra" / "prefect.yaml"),
         "--name", DEPLOYMENT],
        environment, "prefect deploy",
    )


def start_worker(name: str, home: Path, environment: Mapping[str, str], log: Path, limit: int = 1) -> Worker:
    """A process worker polling the pool, running at most `limit` flow runs at a time, each
    with `home` as its TAPEOUT_HOME (created empty)."""
    home.mkdir(parents=True)
    with log.open("w") as stream:
        process = subprocess.Popen(
            [str(_BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process",
             "--name", name, "--limit", str(limit)],
            env={**environment, "TAPEOUT_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
                 "PREFECT_WORKER_QUERY_SECONDS": "2"},
            stdout=stream, stderr=subprocess.STDOUT, cwd=home, start_new_session=True,
        )
    return Worker(name, home, process, log)


def stop_workers(workers: Sequence[Worker]) -> None:
    """End each worker and what it started (its session), politely, then for sure."""
    for worker in workers:
        _signal(worker.process, signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        _signal(worker.process, signal.SIGKILL)  # flow runs left in its session
        worker.process.wait(timeout=30)


def _signal(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        pass


def wait_online(api: str, workers: Sequence[Worker], seconds: float) -> None:
    """Until every worker has reported to the server (its first heartbeat): commits emitted
    before then could all go to the worker that started first.

    Raises:
        RuntimeError: a worker exited, or `seconds` passed.
    """
    deadline = time.monotonic() + seconds
    wanted = {worker.name for worker in workers}
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            f"{api}/work_pools/{POOL}/workers/filter", data=b"{}", headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            online = {found["name"] for found in json.loads(response.read()) if found.get("status") == "ONLINE"}
        if wanted <= online:
            return
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited ({worker.process.returncode}): {_tail(worker.log)}")
        time.sleep(2)
    raise RuntimeError(f"timed out after {seconds}s waiting for workers {sorted(wanted)} to come online")


def emit(project: Path, pipeline: str, shas: Sequence[str], environment: Mapping[str, str]) -> None:
    """`model.committed` for every commit, all at once (one process each, as hooks run)."""
    emitters = [
        subprocess.Popen(
            [sys.executable, "-m", "tapeout.flows.triggers", "emit", "--repo", str(project),
             "--pipeline", pipeline, "--sha", sha, "--branch", "main"],
            env=dict(environment), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for sha in shas
    ]
    for emitter in emitters:
        output, _ = emitter.communicate(timeout=300)
        if emitter.returncode != 0:
            raise RuntimeError(f"emitting model.committed failed: {output[-2000:]}")


def flow_runs(api: str, shas: Sequence[str]) -> list[dict]:
    """The flow runs of the deployed build for these commits, whatever their state."""
    request = urllib.request.Request(
        f"{api}/flow_runs/filter", data=json.dumps({"limit": 200}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return [run for run in json.loads(response.read()) if run["parameters"].get("sha") in shas]


def wait_for_runs(api: str, shas: Sequence[str], workers: Sequence[Worker], seconds: float) -> list[dict]:
    """Every commit's flow run, once each has ended.

    Raises:
        RuntimeError: a worker exited, or `seconds` passed (its log's tail is in the message).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = flow_runs(api, shas)
        ended = [run for run in runs if run["state_type"] in ENDED]
        if {run["parameters"]["sha"] for run in ended} >= set(shas):
            return runs
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited ({worker.process.returncode}): {_tail(worker.log)}")
        time.sleep(3)
    logs = "; ".join(f"{worker.name}: {_tail(worker.log)}" for worker in workers)
    raise RuntimeError(f"timed out after {seconds}s waiting for the flow runs of {len(shas)} commits; {logs}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
