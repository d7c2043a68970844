"""`tapeout gc` against a real home: what a killed build leaves (a staging folder nobody holds,
a RUNNING MLflow run whose process is gone) is cleaned; what a live process holds is not;
bundles and stored calibration sets no version points to go; the cache is bounded, least
recently used first. Killed builds are real processes killed with SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from tapeout.artifacts.gc import home_in_use
from tapeout.artifacts.set_store import STORE_EXPERIMENT, find_stored, store_set
from tapeout.artifacts.stage_store import LAST_USED_TAG, StageStore
from tapeout.flows.cli import main
from test_trust_promotion import NAME, make_world

HOLD_STAGING = """
import os, sys, time
from pathlib import Path
from tapeout.artifacts.bundle import staging_folder
with staging_folder(Path(sys.argv[1])) as folder:
    (folder / "half-written.bin").write_bytes(b"x" * 1000)
    print(folder, flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), 9)
    time.sleep(120)
"""

START_RUN = """
import os, sys, time
from pathlib import Path
from tapeout.artifacts.registry import Registry
registry = Registry(sys.argv[1], Path(sys.argv[2]))
print(registry.start_run("digits-cnn", sys.argv[3], {}), flush=True)
if sys.argv[3] == "killed":
    os.kill(os.getpid(), 9)
time.sleep(120)
"""


def started(script: str, *arguments: str) -> tuple[subprocess.Popen, str]:
    """A Python process running `script`, and the first line it prints."""
    process = subprocess.Popen([sys.executable, "-c", script, *arguments], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def gc(world, capsys, *arguments) -> dict:
    assert main(["gc", "--home", str(world["home"]), "--json", *arguments]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture()
def world(tmp_path):
    return make_world(tmp_path, only_good=True)


@pytest.mark.slow  # four Python processes that import MLflow
def test_what_killed_processes_left_is_cleaned_and_what_live_ones_hold_is_not(world, capsys):
    bundles = world["home"] / "bundles"
    uri = f"sqlite:///{world['home'] / 'mlflow.db'}"
    dead_staging_process, dead_staging = started(HOLD_STAGING, str(bundles), "die")
    live_staging_process, live_staging = started(HOLD_STAGING, str(bundles), "live")
    dead_run_process, dead_run = started(START_RUN, uri, str(world["home"] / "artifacts"), "killed")
    live_run_process, live_run = started(START_RUN, uri, str(world["home"] / "artifacts"), "alive")
    try:
        dead_staging_process.wait(30)
        dead_run_process.wait(30)
        client = world["registry"]._client
        assert client.get_run(dead_run).info.status == "RUNNING"

        preview = gc(world, capsys, "--dry-run")
        assert preview["staging"] == [dead_staging] and [r.split()[1] for r in preview["killed_runs"]] == [dead_run]
        assert os.path.isdir(dead_staging) and client.get_run(dead_run).info.status == "RUNNING"

        done = gc(world, capsys)
        assert done["staging"] == [dead_staging] and not os.path.exists(dead_staging)
        assert os.path.isdir(live_staging)
        assert client.get_run(dead_run).info.status == "KILLED"
        assert client.get_run(live_run).info.status == "RUNNING"
    finally:
        for process in (live_staging_process, live_run_process):
            process.kill()
            process.wait()


def test_a_run_whose_owner_cannot_be_checked_is_left_alone(world, capsys):
    client = world["registry"]._client
    run_id = world["registry"].start_run("digits-cnn", "elsewhere", {})
    client.set_tag(run_id, "tapeout.owner", "another-host:1:1")
    done = gc(world, capsys)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert any(run_id in item and "cannot be checked" in item for item in done["left_alone"])


def test_bundles_and_stored_sets_no_version_points_to_are_removed(world, capsys, tmp_path):
    registry = world["registry"]
    version = registry.get_version(NAME, world["versions"]["good1"])
    bundles = world["home"] / "bundles" / NAME
    kept = bundles / version.tags["bundle_digest"][:16]
    orphan = bundles / ("f" * 16)
    for folder in (kept, orphan):
        folder.mkdir(parents=True)
        (folder / "model.sig").write_text("{}")
    sets = []
    for seed in (1, 2):
        path = tmp_path / f"set-{seed}.npz"
        np.savez(path, image=np.random.default_rng(seed).random((4, 1, 16, 16)).astype("float32"))
        sets.append(store_set(registry, path, f"{seed}" * 64))
    registry._client.set_model_version_tag(NAME, version.version, "calibration_set_digest", "1" * 64)

    recent = gc(world, capsys)  # everything is younger than a day: nothing goes
    assert recent["bundles"] == [] and recent["calibration_sets"] == []
    done = gc(world, capsys, "--keep-recent", "0")
    assert done["bundles"] == [str(orphan)] and kept.is_dir() and not orphan.exists()
    assert [item.split()[0] for item in done["calibration_sets"]] == [f"sha256:{'2' * 16}"]
    assert find_stored(registry, "1" * 64) is not None and find_stored(registry, "2" * 64) is None
    stored_files = world["home"] / "artifacts" / STORE_EXPERIMENT / sets[1].run_id
    assert not stored_files.exists()


def test_the_cache_is_bounded_least_recently_used_first(world, capsys):
    cache = world["home"] / "cache"
    now = time.time()
    for stage, key, used in (("export", "old", now - 3600), ("calibrate", "older", now - 7200), ("export", "new", now)):
        folder = cache / stage / key
        folder.mkdir(parents=True)
        (folder / "data.bin").write_bytes(b"\0" * 600_000)
        marker = cache / stage / f".{key}.finished"
        marker.touch()
        os.utime(folder, (used - 60, used - 60))
        os.utime(marker, (used, used))
    done = gc(world, capsys, "--cache-limit", "1300K")
    assert done["cache_entries"] == [str(cache / "calibrate" / "older")]
    assert done["cache_bytes"] == [1_800_000, 1_200_000]
    assert (cache / "export" / "old").is_dir() and not (cache / "calibrate" / ".older.finished").exists()


def test_a_running_build_keeps_gc_away_from_the_homes_outputs(world, capsys):
    orphan = world["home"] / "bundles" / NAME / ("e" * 16)
    orphan.mkdir(parents=True)
    with home_in_use(world["home"]):
        done = gc(world, capsys, "--keep-recent", "0")
    assert orphan.is_dir() and done["bundles"] == []
    assert any("a build is running in this home" in item for item in done["left_alone"])


def test_the_stage_store_is_bounded_least_recently_used_first(world, capsys, tmp_path):
    registry = world["registry"]
    store = StageStore(registry)
    now = time.time()
    runs = {}
    # (key, uploaded, last fetched): "old" was uploaded first but fetched since
    for key, uploaded, fetched in (("old", now - 14400, now - 3600), ("older", now - 10800, now - 7200), ("new", now, None)):
        folder = tmp_path / "cache" / "export" / key
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"\0" * 600_000)
        runs[key] = store.publish("export", key, folder).run_id
        registry._client.set_terminated(runs[key], "FINISHED", end_time=int(uploaded * 1000))
        if fetched is not None:
            registry.log(runs[key], tags={LAST_USED_TAG: f"{fetched:.0f}"})
    claim = store.fetch_or_claim("export", "failed", tmp_path / "cache" / "export" / "failed")
    claim.abandon()  # an upload that never became an entry
    files = {key: Path(unquote(urlparse(registry._client.get_run(run).info.artifact_uri).path)) for key, run in runs.items()}

    recent = gc(world, capsys, "--stage-store-limit", "1300K")  # everything was used within a day
    assert recent["stage_store_entries"] == [] and recent["stage_store_bytes"] == [1_800_000, 1_800_000]
    done = gc(world, capsys, "--stage-store-limit", "1300K", "--keep-recent", "0")
    assert [item.split()[0] for item in done["stage_store_entries"]] == ["export/failed", "export/older"]
    assert done["stage_store_bytes"] == [1_800_000, 1_200_000]
    assert store.find("export", "older") is None and not files["older"].exists()
    assert store.find("export", "old") is not None and store.find("export", "new") is not None
    assert main(["gc", "--home", str(world["home"]), "--stage-store-limit", "lots"]) == 2
    assert "error: --stage-store-limit: expected a size like 500M or 5G, found 'lots'" in capsys.readouterr().err
