"""A process work pool for real, on loopback: PostgreSQL, the Prefect server and the MLflow
server (infra/local/services.sh); infra/prefect.yaml deployed to `tapeout-process` with
`prefect deploy`; two `prefect worker start` processes, each with its own empty TAPEOUT_HOME
and the one signing key from its environment (one as PEM text, one from a Prefect Secret
block); `model.committed` emitted for three commits at once.

Each (commit, target) is registered exactly once, both workers build, stages one worker built
are fetched from the stage store by the other (counted on the store's entries), and every
version verifies against the key's public half and traces to the worker that signed it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import git, make_project
from loopback import REPOSITORY, services  # noqa: F401 (the fixture)

sys.path.insert(0, str(REPOSITORY / "infra" / "local"))
import work_pool  # noqa: E402 — infra/local/work_pool.py, shared with benchmarks/pipeline.py

pytestmark = [pytest.mark.server, pytest.mark.slow]

TARGETS = ("cpu", "npu-int8")
SECRET_BLOCK = "tapeout-signing-key"


def two_target_project(root: Path, tracking_uri: str) -> Path:
    """The example on two targets, registering on the tracking server; returns pipeline.yaml."""
    pipeline = make_project(root)
    document = yaml.safe_load(pipeline.read_text())
    document["targets"] = [target for target in document["targets"] if target["name"] in TARGETS]
    document["registry"] = {"tracking_uri": tracking_uri}
    pipeline.write_text(yaml.safe_dump(document, sort_keys=False))
    git(pipeline.parent, "commit", "-qam", "two targets, on the tracking server")
    return pipeline


def tapeout(*arguments: str, environment: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tapeout.flows.cli", *arguments], env=environment, capture_output=True, text=True,
        timeout=300,
    )


def test_two_workers_without_a_shared_disk_build_commits_once_and_share_stages(services, tmp_path):
    from tapeout.artifacts.keys import init_keys
    from tapeout.artifacts.registry import Registry
    from tapeout.artifacts.stage_store import StageStore
    from tapeout.artifacts.worker_key import KEY_VARIABLE, SECRET_VARIABLE

    api, tracking = services["PREFECT_API_URL"], services["MLFLOW_TRACKING_URI"]
    environment = {
        **os.environ, "PREFECT_API_URL": api, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for name in ("TAPEOUT_HOME", KEY_VARIABLE, SECRET_VARIABLE):
        environment.pop(name, None)
    pipeline = two_target_project(tmp_path, tracking)
    project = pipeline.parent
    shas = []
    for bound in (49, 48, 47):  # three commits that each change a gate: a new config per target
        pipeline.write_text(pipeline.read_text().replace(f"max: {bound + 1}", f"max: {bound}"))
        git(project, "commit", "-qam", f"latency gate {bound} ms")
        shas.append(git(project, "rev-parse", "HEAD"))

    # The key lives outside every worker's home; it reaches them through their environment.
    key = init_keys(tmp_path / "secrets")[0]
    subprocess.run(
        [sys.executable, "-c", "import sys; from prefect.blocks.system import Secret; "
         "Secret(value=open(sys.argv[1]).read()).save(sys.argv[2], overwrite=True)",
         str(key.private_key), SECRET_BLOCK],
        env=environment, check=True, timeout=300,
    )
    work_pool.deploy(environment)
    workers = []
    try:
        workers.append(work_pool.start_worker(
            "worker-a", tmp_path / "home-a", {**environment, KEY_VARIABLE: key.private_key.read_text()},
            tmp_path / "worker-a.log",
        ))
        workers.append(work_pool.start_worker(
            "worker-b", tmp_path / "home-b", {**environment, SECRET_VARIABLE: SECRET_BLOCK}, tmp_path / "worker-b.log",
        ))
        work_pool.wait_online(api, workers, seconds=300)
        work_pool.emit(project, "pipeline.yaml", shas, environment)
        runs = work_pool.wait_for_runs(api, shas, workers, seconds=1500)
    finally:
        work_pool.stop_workers(workers)
        for worker in workers:
            shutil.rmtree(worker.home / "worktrees", ignore_errors=True)

    assert sorted(run["parameters"]["sha"] for run in runs) == sorted(shas)  # one run per event
    assert {run["state_type"] for run in runs} == {"COMPLETED"}, [run["state"] for run in runs]

    registry = Registry(tracking, tmp_path / "reader-artifacts")
    signed_on = set()
    reader = {**environment, "TAPEOUT_HOME": str(tmp_path / "reader")}
    for target in TARGETS:
        name = f"digits-cnn-{target}"
        versions = registry.search_versions(f"name = '{name}'")
        assert sorted(version.tags["commit"] for version in versions) == sorted(shas)  # each exactly once
        for version in versions:
            reference = f"{name}@{version.version}"
            verified = tapeout("verify", reference, "--tracking-uri", tracking, "--public-key", str(key.public_key),
                               environment=reader)
            assert verified.returncode == 0, verified.stderr
            traced = tapeout("trace", reference, "--tracking-uri", tracking, "--public-key", str(key.public_key),
                             "--json", environment=reader)
            assert traced.returncode == 0, traced.stderr
            record = json.loads(traced.stdout)
            assert record["verification"]["verified"] and record["source"]["commit"] == version.tags["commit"]
            assert record["registry"]["tags"]["signed_on"] == version.tags["signed_on"]
            signed_on.add(version.tags["signed_on"].split("Prefect worker ")[1].split(",")[0])
    assert signed_on == {"worker-a", "worker-b"}  # both workers built, with the one key

    uses = StageStore(registry).uses()
    assert {use.stage for use in uses} >= {"export", "calibrate", "quantize", "compile", "evaluate"}
    assert len({(use.stage, use.key) for use in uses}) == len(uses)  # one entry per stage input
    assert {use.built_by.split(".")[0] for use in uses} <= {"worker-a", "worker-b"}  # worker.host
    assert sum(use.used_elsewhere for use in uses) >= 1  # built by one worker, fetched by the other
    # Neither home was given a key file: the PEM one became a private file, the other too.
    for home in (tmp_path / "home-a", tmp_path / "home-b"):
        assert not (home / "keys" / "signing-key.pem").exists()
        for written in (home / "keys" / "from-environment").glob("*.pem"):
            assert written.stat().st_mode & 0o077 == 0
