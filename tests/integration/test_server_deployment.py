"""The scale-out deployment for real, on loopback: PostgreSQL, a Prefect server and an MLflow
tracking server started by the project's own script (infra/local/services.sh); `tapeout watch`
serving the deployments; a git commit whose hook emits `model.committed`; the event trigger
building that commit; the version checked through MLflow's REST API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from conftest import git, make_project
from loopback import services  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.server, pytest.mark.slow]


def mlflow_get(base: str, endpoint: str, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def versions_of(base: str, name: str) -> list[dict]:
    found = mlflow_get(base, "model-versions/search", filter=f"name='{name}'")
    return found.get("model_versions", [])


def wait_until(condition, seconds: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        if process is not None and process.poll() is not None:
            pytest.fail(f"the serving process exited ({process.returncode}) while waiting for {what}")
        time.sleep(2)
    pytest.fail(f"timed out after {seconds}s waiting for {what}")


def test_a_commit_hook_event_builds_and_registers_once_on_the_servers(services, tmp_path):
    api, tracking = services["PREFECT_API_URL"], services["MLFLOW_TRACKING_URI"]
    pipeline = make_project(tmp_path)
    project = pipeline.parent
    pipeline.write_text(pipeline.read_text().replace("registry: {}", f"registry:\n  tracking_uri: {tracking}"))
    git(project, "commit", "-qam", "register on the tracking server")
    tapeout = [sys.executable, "-m", "tapeout.flows.cli"]
    environment = {**os.environ, "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    home = tmp_path / "home"
    subprocess.run(
        [*tapeout, "hook", "install", str(project), "--pipeline", "pipeline.yaml", "--api-url", api, "--home", str(home)],
        check=True, env=environment,
    )
    log = (tmp_path / "watch.log").open("w")
    serving = subprocess.Popen(
        [*tapeout, "watch", str(project), "--pipeline", "pipeline.yaml", "--cron", "0 0 1 1 *", "--home", str(home)],
        env=environment, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def deployments():
            request = urllib.request.Request(
                f"{api}/deployments/filter", data=b"{}", headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                names = {d["name"] for d in json.loads(response.read())}
            return {"watch-digits-cnn", "on-commit-digits-cnn"} <= names

        wait_until(deployments, 180, "the deployments to be served", serving)
        (project / "NOTES.md").write_text("a commit that fires the hook\n")
        pipeline.write_text(pipeline.read_text().replace("latency_p95_ms: {max: 50}", "latency_p95_ms: {max: 45}"))
        git(project, "add", "-A")
        git(project, "commit", "-qm", "tighter latency gate")  # the post-commit hook emits the event
        sha = git(project, "rev-parse", "HEAD")

        def registered():
            return [v for v in versions_of(tracking, "digits-cnn-cpu")
                    if {"key": "commit", "value": sha} in v.get("tags", [])]

        versions = wait_until(registered, 420, f"version of {sha[:12]} in MLflow", serving)
        assert len(versions) == 1
        aliases = mlflow_get(tracking, "registered-models/get", name="digits-cnn-cpu")["registered_model"]
        assert {"alias": "candidate", "version": versions[0]["version"]} in aliases.get("aliases", [])

        # The same commit triggered twice more: the builds report the existing version.
        for _ in range(2):
            subprocess.run(
                [sys.executable, "-m", "tapeout.flows.triggers", "emit", "--repo", str(project),
                 "--pipeline", "pipeline.yaml", "--sha", sha, "--branch", "main"],
                check=True, env=environment,
            )

        def runs_finished():
            request = urllib.request.Request(
                f"{api}/flow_runs/filter",
                data=json.dumps({"flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                runs = [r for r in json.loads(response.read()) if r["parameters"].get("sha") == sha]
            return runs if len(runs) >= 3 else None

        runs = wait_until(runs_finished, 300, "the repeated triggers to finish", serving)
        assert {run["state_type"] for run in runs} == {"COMPLETED"}
        assert len(registered()) == 1
    finally:
        serving.terminate()
        try:
            serving.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serving.kill()
        log.close()
        shutil.rmtree(home / "worktrees", ignore_errors=True)
