"""Crash safety, concurrency and registry faults, with real processes against real servers
(PostgreSQL, a Prefect server and an MLflow tracking server on loopback, started once for the
module by infra/local/services.sh):

- a run SIGKILLed during each stage in turn, then run again: the rerun completes; no
  registered version points at a missing, partial or unsigned bundle; no alias moved;
- four `tapeout run` of one commit and one of another, at once: one version per commit,
  nothing mixed between them;
- the MLflow server stopped during registration: the run fails clearly within a bounded
  time, and a rerun registers exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tapeout.flows.cli import main
from conftest import REPOSITORY, git
from hardening_support import TAPEOUT, cpu_project, pipeline_text, registry_state, subprocess_environment

pytestmark = [pytest.mark.server, pytest.mark.slow]

SERVICES = REPOSITORY / "infra" / "local" / "services.sh"
MODEL = "digits-cnn-cpu"
# The progress lines `tapeout run` prints on stderr as each stage starts, in order.
STAGES = ["export digits-cnn", "calibrate", "[cpu] compile", "[cpu] evaluate", "[cpu] bundle and sign", "[cpu] register"]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.fail("PostgreSQL is not installed: .ci/run installs it (apt-get install postgresql)")
    folder = tmp_path_factory.mktemp("services")
    # stopped even when a signal skips the teardown (infra/local/services.sh)
    environment = subprocess_environment(TAPEOUT_SERVICES_OWNER=str(os.getpid()))
    subprocess.run([str(SERVICES), "start", str(folder)], check=True, env=environment, timeout=400)
    try:
        values = dict(
            line.split("=", 1) for line in (folder / "services.env").read_text().split() if "=" in line
        )
        values["folder"] = folder
        yield values
    finally:
        subprocess.run([str(SERVICES), "stop", str(folder)], env=environment, timeout=120)


def project(root: Path, tracking_uri: str, latency_gate: int = 50) -> Path:
    text = pipeline_text(registry=f"  tracking_uri: {tracking_uri}")
    return cpu_project(root, text.replace("latency_p95_ms: {max: 50}", f"latency_p95_ms: {{max: {latency_gate}}}"))


def start(pipeline: Path, home: Path, services: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*TAPEOUT, "run", str(pipeline), "--home", str(home), *extra],
        env=subprocess_environment(PREFECT_API_URL=services["PREFECT_API_URL"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def watchdog(process: subprocess.Popen, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: process.poll() is None and os.killpg(process.pid, signal.SIGKILL))
    timer.daemon = True
    timer.start()
    return timer


def run_until(pipeline: Path, home: Path, services: dict, stage: str, action=None) -> tuple[int, list[str]]:
    """Run until the progress line of `stage`, then SIGKILL the process group (or call
    `action(process)` instead and let the run go on). Returns the exit code and the lines
    read (stderr, then stdout when the run went on)."""
    process = start(pipeline, home, services)
    timer = watchdog(process, 300)
    lines: list[str] = []
    try:
        for line in process.stderr:
            lines.append(line)
            if line.startswith("· ") and stage in line:
                if action is None:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    action(process)
                break
        if action is not None:
            out, err = process.communicate()
            lines += err.splitlines(keepends=True) + out.splitlines(keepends=True)
    finally:
        timer.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert any(stage in line for line in lines), "".join(lines)
    return process.returncode, lines


def finish(process: subprocess.Popen, seconds: float = 300) -> tuple[int, str, str]:
    timer = watchdog(process, seconds)
    try:
        out, err = process.communicate()
    finally:
        timer.cancel()
    return process.returncode, out, err


def versions_of(uri: str, home: Path, commit: str) -> list[str]:
    state = registry_state(uri, home / "artifacts").get(MODEL, {"versions": {}})
    return [number for number, version in state["versions"].items() if version["tags"].get("commit") == commit]


def check_nothing_unverified(uri: str, home: Path, commits: set[str], capsys) -> None:
    """Every version registered for `commits` (the server is shared by the module's tests,
    each signing with its own home's key) downloads, verifies and matches its digest tag;
    every bundle folder published in `home` verifies."""
    state = registry_state(uri, home / "artifacts")
    for number, version in state.get(MODEL, {"versions": {}})["versions"].items():
        if version["tags"].get("commit") not in commits:
            continue
        code = main(["verify", f"{MODEL}@{number}", "--tracking-uri", uri, "--home", str(home)])
        assert code == 0, capsys.readouterr().err
    published = home / "bundles" / MODEL
    for bundle in sorted(published.iterdir()) if published.is_dir() else []:
        code = main(["verify", str(bundle), "--home", str(home)])
        assert code == 0, capsys.readouterr().err
    capsys.readouterr()


def test_sigkill_during_each_stage_then_rerun(services, tmp_path, capsys):
    uri = services["MLFLOW_TRACKING_URI"]
    pipeline = project(tmp_path, uri)
    commit = git(pipeline.parent, "rev-parse", "HEAD")
    home = tmp_path / "home"
    before = registry_state(uri, home / "artifacts")
    aliases = {name: model["aliases"] for name, model in before.items()}
    for stage in STAGES:
        run_until(pipeline, home, services, stage)
        after = registry_state(uri, home / "artifacts")
        assert {name: model["aliases"] for name, model in after.items()} == aliases, f"killed in {stage}"
        assert len(versions_of(uri, home, commit)) <= 1
        check_nothing_unverified(uri, home, {commit}, capsys)

    code, out, err = finish(start(pipeline, home, services, "--json"))
    assert code == 0, err
    assert "Traceback" not in err
    [outcome] = json.loads(out)["targets"]
    assert versions_of(uri, home, commit) == [outcome["version"]]
    state = registry_state(uri, home / "artifacts")[MODEL]
    assert state["aliases"]["candidate"] == outcome["version"]
    check_nothing_unverified(uri, home, {commit}, capsys)
    # Whatever the kills left in the staging area was never published nor registered.
    registered = {v["tags"]["bundle_digest"] for v in state["versions"].values()}
    staging = home / "bundles" / ".staging"
    leftovers = list(staging.iterdir()) if staging.is_dir() else []
    from tapeout.artifacts.digest import bundle_digest

    assert not registered & {bundle_digest(folder) for folder in leftovers}


def test_four_runs_of_one_commit_and_one_of_another_at_once(services, tmp_path, capsys):
    uri = services["MLFLOW_TRACKING_URI"]
    first = project(tmp_path / "a", uri, latency_gate=48)
    second = project(tmp_path / "b", uri, latency_gate=47)
    commits = {first: git(first.parent, "rev-parse", "HEAD"), second: git(second.parent, "rev-parse", "HEAD")}
    home = tmp_path / "home"  # fresh: the concurrent runs also race to create the signing key
    runs = [(first, start(first, home, services, "--json")) for _ in range(4)]
    runs.append((second, start(second, home, services, "--json")))
    results = [(pipeline, *finish(process)) for pipeline, process in runs]
    for pipeline, code, out, err in results:
        assert code == 0, err
        assert "Traceback" not in err
    for pipeline, gate in ((first, 48), (second, 47)):
        versions = versions_of(uri, home, commits[pipeline])
        assert len(versions) == 1, f"{pipeline}: {versions}"
        reported = {json.loads(out)["targets"][0]["version"] for p, _, out, _ in results if p == pipeline}
        assert reported == set(versions)
        pulled = tmp_path / f"pulled-{gate}"
        assert main(["pull", f"{MODEL}@{versions[0]}", "-o", str(pulled), "--tracking-uri", uri, "--home", str(home)]) == 0
        provenance = json.loads((pulled / "provenance.json").read_text())
        source = provenance["predicate"]["buildDefinition"]["resolvedDependencies"][0]
        assert source["digest"]["gitCommit"] == commits[pipeline]
        assert f"max: {gate}" in (pulled / "config" / "pipeline.yaml").read_text().replace("max: {max", "")
        assert (pulled / "config" / "pipeline.yaml").read_text().count(f"max: {gate}") == 1
    capsys.readouterr()


def _stop_mlflow(folder: Path) -> list[str]:
    """Stop the MLflow server started by services.sh (children first); returns its command."""
    pid = int((folder / "mlflow.pid").read_text())
    command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
    os.kill(pid, signal.SIGKILL)
    return [part.decode() for part in command]


def _start_mlflow(folder: Path, command: list[str], uri: str) -> None:
    log = (folder / "mlflow-restarted.log").open("a")
    process = subprocess.Popen(
        command, env=subprocess_environment(MLFLOW_DISABLE_TELEMETRY="true"),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    (folder / "mlflow.pid").write_text(f"{process.pid}\n")  # services.sh stop ends this one
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5):
                return
        except OSError:
            time.sleep(1)
    pytest.fail("the MLflow server did not come back")


def test_mlflow_server_gone_during_registration_then_rerun_registers_once(services, tmp_path, capsys):
    uri, folder = services["MLFLOW_TRACKING_URI"], services["folder"]
    pipeline = project(tmp_path, uri, latency_gate=46)
    commit = git(pipeline.parent, "rev-parse", "HEAD")
    home = tmp_path / "home"
    stopped: dict = {}

    def stop_server(process):
        stopped["command"] = _stop_mlflow(folder)
        stopped["at"] = time.monotonic()

    try:
        code, lines = run_until(pipeline, home, services, "[cpu] register", action=stop_server)
        elapsed = time.monotonic() - stopped["at"]
    finally:
        if "command" in stopped:
            _start_mlflow(folder, stopped["command"], uri)
    text = "".join(lines)
    assert "Traceback" not in text
    assert code == 2, text
    assert f"ERROR cpu: MLflow at {uri}" in text, text
    assert elapsed < 120, f"registration retried for {elapsed:.0f} s"
    assert versions_of(uri, home, commit) == []

    code, out, err = finish(start(pipeline, home, services, "--json"))
    assert code == 0, err
    [outcome] = json.loads(out)["targets"]
    assert versions_of(uri, home, commit) == [outcome["version"]]
    assert registry_state(uri, home / "artifacts")[MODEL]["aliases"]["candidate"] == outcome["version"]
    check_nothing_unverified(uri, home, {commit}, capsys)
