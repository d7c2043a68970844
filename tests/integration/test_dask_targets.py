"""Targets over machines, on loopback: a `distributed` scheduler and two worker processes, each
with its own empty `TAPEOUT_HOME`, started and stopped here; one build whose targets run on
both workers through prefect-dask's task runner; its bundles equal a thread-pool build's, file
for file, but for what records the run itself."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import git, make_project
from tapeout.artifacts.signature import statement_payload

pytestmark = [pytest.mark.server, pytest.mark.slow]

TARGETS = ("cpu", "npu-int8")
# What records the run rather than the build: who, when and by which invocation (provenance,
# and the signature over it), and the latencies and compile time measured on the machine
# that ran the target (the benchmark, and the gates that check latency).
RUN_RECORDS = {
    "provenance.json", "model.sig", "reports/benchmark.json", "reports/gates.json", "reports/gates.md", "reports/latency.png",
    # The bill of materials names the invocation and its time; each statement of the chain is
    # signed anew (ECDSA signatures are randomized): the statements themselves are compared.
    "sbom.cdx.json",
    *(f"attestations/{stage}.sigstore.json" for stage in ("export", "calibrate", "quantize", "compile", "evaluate")),
}
# The evaluation's tests carry the measured latency: the other statements are the build's.
BUILD_STATEMENTS = ("export", "calibrate", "quantize", "compile")


def _start(command: list[str], log: Path, **environment: str) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **environment},
        start_new_session=True,  # its own process group: stopped as a whole below
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _wait_for(condition, seconds: float, what: str, processes: list[subprocess.Popen]):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"{process.args[:4]} exited ({process.returncode}) while waiting for {what}")
        time.sleep(1)
    pytest.fail(f"timed out after {seconds}s waiting for {what}")


@pytest.fixture()
def dask_cluster(tmp_path):
    """A scheduler on a free loopback port and two single-threaded workers without a nanny
    (one process each), each in its own home; yields (scheduler address, worker homes)."""
    scheduler_file = tmp_path / "scheduler.json"
    python = [sys.executable, "-m"]
    processes = [
        _start(
            [*python, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(scheduler_file)],
            tmp_path / "scheduler.log",
        )
    ]
    homes = [tmp_path / f"worker-{index}-home" for index in (1, 2)]
    try:
        _wait_for(scheduler_file.exists, 120, "the scheduler's address", processes)
        for index, home in enumerate(homes, 1):
            processes.append(_start(
                [*python, "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
                 "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                 "--name", f"worker-{index}", "--local-directory", str(tmp_path / f"worker-{index}-dask"),
                 "--preload", "tapeout.flows.dask_worker"],
                tmp_path / f"worker-{index}.log", TAPEOUT_HOME=str(home),
            ))
        address = json.loads(scheduler_file.read_text())["address"]

        def both_workers() -> bool:
            from distributed import Client

            with Client(address, timeout=30) as client:
                return len(client.scheduler_info(n_workers=-1)["workers"]) == 2

        _wait_for(both_workers, 180, "two workers to join the scheduler", processes)
        yield address, homes
    finally:
        for process in reversed(processes):
            _stop(process)
        assert all(process.poll() is not None for process in processes)


def _files(bundle: Path) -> dict[str, str]:
    return {
        str(path.relative_to(bundle)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(bundle.rglob("*")) if path.is_file()
    }


def test_one_build_runs_its_targets_on_both_dask_workers_and_builds_what_threads_build(
    dask_cluster, prefect_harness, tmp_path
):
    from tapeout.flows.build import build

    address, worker_homes = dask_cluster
    pipeline = make_project(tmp_path)
    document = yaml.safe_load(pipeline.read_text())
    document["targets"] = [target for target in document["targets"] if target["name"] in TARGETS]
    pipeline.write_text(yaml.safe_dump(document, sort_keys=False))
    git(pipeline.parent, "commit", "-qam", "two targets")

    threads = build(pipeline, None, tmp_path / "threads-home")
    assert [outcome.verdict for outcome in threads.outcomes] == ["pass", "pass"], [o.message for o in threads.outcomes]

    said: list[str] = []
    on_dask = build(pipeline, None, tmp_path / "dask-home", said.append, dask_scheduler=address)
    assert f"targets run on the Dask workers of {address}" in said
    assert [outcome.verdict for outcome in on_dask.outcomes] == ["pass", "pass"], [o.message for o in on_dask.outcomes]
    assert on_dask.source == threads.source

    # Each target ran on one worker, in that worker's home, and both workers ran one.
    ran_in = {
        outcome.target: next(home for home in worker_homes if Path(outcome.bundle_path).is_relative_to(home))
        for outcome in on_dask.outcomes
    }
    assert set(ran_in.values()) == set(worker_homes)
    assert not (tmp_path / "dask-home" / "bundles").exists()
    for outcome in on_dask.outcomes:
        assert (ran_in[outcome.target] / "cache" / "compile").is_dir()

    # The same bytes as the thread-pool build, but for the run's own records.
    for by_threads, by_dask in zip(threads.outcomes, on_dask.outcomes, strict=True):
        ours, theirs = _files(Path(by_threads.bundle_path)), _files(Path(by_dask.bundle_path))
        assert ours.keys() == theirs.keys()
        differing = {name for name in ours if ours[name] != theirs[name]}
        assert differing <= RUN_RECORDS, differing
        assert {name for name in ours if name.startswith("compiled/") or name.startswith("model/")} & differing == set()
        for stage in BUILD_STATEMENTS:
            name = f"attestations/{stage}.sigstore.json"
            assert statement_payload(Path(by_threads.bundle_path) / name) == statement_payload(Path(by_dask.bundle_path) / name)
