"""A `tapeout run` that cannot finish — killed with SIGKILL, or out of disk — as a separate
process, the way an operator meets it:

- SIGKILL: Prefect's temporary API server (~190 MB) used to outlive the run forever; it now
  stops with it. What the run left (a staging folder, a RUNNING MLflow run) is cleaned by
  `tapeout gc`, and the rerun registers the version.
- a full disk (a 64 KiB tmpfs mounted on the artifact store, in a user and mount namespace):
  one `error:` line instead of thousands of lines of tracebacks, exit 2, no RUNNING run
  and nothing registered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hardening_support import TAPEOUT, cpu_project, registry_state, subprocess_environment

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def runs_by_status(home: Path) -> dict[str, list[str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    found: dict[str, list[str]] = {}
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    for run in client.search_runs(experiments, max_results=1000) if experiments else []:
        found.setdefault(run.info.status, []).append(run.info.run_id)
    return found


def test_sigkill_leaves_no_prefect_server_and_gc_cleans_what_the_run_left(tmp_path):
    pipeline = cpu_project(tmp_path)
    home = tmp_path / "home"
    process = subprocess.Popen(
        [*TAPEOUT, "run", str(pipeline), "--home", str(home)],
        env=subprocess_environment(), stderr=subprocess.PIPE, text=True,
    )
    below: set[int] = set()
    try:
        for line in process.stderr:
            below |= descendants(process.pid)  # the Prefect server is up by the first stage
            if "[cpu] bundle and sign" in line:
                break
        assert below, "no Prefect server was started"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.5)
        orphans = [pid for pid in below if alive(pid)]
        assert not orphans, f"processes outlived the killed run: {orphans}"
    finally:
        for pid in below | {process.pid}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.wait()

    environment = subprocess_environment()
    collected = subprocess.run(
        [*TAPEOUT, "gc", "--home", str(home), "--json"], capture_output=True, text=True, env=environment, timeout=120
    )
    assert collected.returncode == 0, collected.stderr
    report = json.loads(collected.stdout)
    assert not list((home / "bundles" / ".staging").glob("*"))
    assert "RUNNING" not in runs_by_status(home), report
    rerun = subprocess.run(
        [*TAPEOUT, "run", str(pipeline), "--home", str(home)], capture_output=True, text=True, env=environment, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    versions = registry_state(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")["digits-cnn-cpu"]["versions"]
    assert len(versions) == 1


def _can_mount_tmpfs(folder: Path) -> bool:
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {folder}"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_a_full_disk_gives_one_line_and_leaves_no_running_run(tmp_path):
    pipeline = cpu_project(tmp_path)
    home = tmp_path / "home"
    store = home / "artifacts"
    store.mkdir(parents=True)
    try:
        if not _can_mount_tmpfs(store):
            pytest.skip("cannot mount a tmpfs in a user namespace here (unshare --user --mount)")
    except FileNotFoundError:
        pytest.skip("no unshare(1)")
    # The artifact store fills up when the bundle is uploaded; the tracking database (in the
    # home, on the real disk) still works, so the run can and must be ended.
    completed = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"', str(store),
         *TAPEOUT, "run", str(pipeline), "--home", str(home)],
        capture_output=True, text=True, env=subprocess_environment(), timeout=600,
    )
    output = completed.stderr + completed.stdout
    assert completed.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0], output
    assert len(completed.stderr.splitlines()) < 20, output  # progress lines and the one error
    assert "RUNNING" not in runs_by_status(home)
    assert registry_state(f"sqlite:///{home / 'mlflow.db'}", store) == {}
    assert not list((home / "bundles" / ".staging").glob("*"))
