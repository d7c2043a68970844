"""The stage store: stage output folders in a real MLflow artifact store (SQLite tracking, a
local artifact root), fetched back checked, concurrent uploads converging on one entry, and
claims that make a second worker wait instead of building the same stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tapeout.artifacts.owner import current_worker
from tapeout.artifacts.registry import Registry
from tapeout.artifacts.stage_store import STAGE_EXPERIMENT, Claim, StageStore
from tapeout.compilers.errors import InvalidInput

@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One store for the module (a new SQLite store takes seconds): each test has its own key."""
    root = tmp_path_factory.mktemp("store")
    return Registry(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")


@pytest.fixture()
def key() -> str:
    return uuid.uuid4().hex


def stage_folder(root: Path, key: str, content: str) -> Path:
    folder = root / "cache" / "export" / key
    (folder / "nested").mkdir(parents=True)
    (folder / "model.onnx").write_text(content)
    (folder / "nested" / "exported.json").write_text(json.dumps({"content": content}))
    return folder


def runs_of(registry: Registry, key: str, status: str | None = None) -> list:
    query = f"tags.stage_key = 'export/{key}'" + (f" and attributes.status = '{status}'" if status else "")
    return registry.search_runs(STAGE_EXPERIMENT, query)


def stored_files(registry: Registry, run_id: str) -> Path:
    """Where the local artifact store keeps a run's files."""
    return Path(unquote(urlparse(registry._client.get_run(run_id).info.artifact_uri).path))


def test_a_published_stage_is_fetched_into_another_home_checked(registry, key, tmp_path):
    store = StageStore(registry)
    built = stage_folder(tmp_path / "home-a", key, "weights")
    stored = store.publish("export", key, built)
    assert store.publish("export", key, built) == stored  # stored once
    assert sorted(stored.files) == [f"{key}/model.onnx", f"{key}/nested/exported.json"]

    elsewhere = tmp_path / "home-b" / "cache" / "export" / key
    assert store.fetch("export", key, elsewhere) == stored
    assert (elsewhere / "model.onnx").read_text() == "weights"
    assert (elsewhere / "nested" / "exported.json").is_file()
    assert [p.name for p in elsewhere.parent.iterdir()] == [key]  # no download scratch left
    assert store.fetch("export", "f" * 32, tmp_path / "nothing") is None
    (uses,) = [item for item in store.uses() if item.key == key]
    assert uses.stage == "export" and uses.key == key and uses.built_by == stored.built_by
    assert uses.used_by == (stored.built_by,) and uses.used_elsewhere == 0  # one process: one worker


def test_a_changed_file_in_the_store_is_named_and_nothing_is_put_in_place(registry, key, tmp_path):
    store = StageStore(registry)
    stored = store.publish("export", key, stage_folder(tmp_path / "home-a", key, "weights"))
    (stored_files(registry, stored.run_id) / "stage" / key / "model.onnx").write_text("tampered")
    target = tmp_path / "home-b" / "cache" / "export" / key
    with pytest.raises(InvalidInput, match=rf"{key}/model.onnx: expected sha256 [0-9a-f]{{64}}, found [0-9a-f]{{64}}"):
        store.fetch("export", key, target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_file_list_changed_in_the_store_is_refused_against_its_tag(registry, key, tmp_path):
    store = StageStore(registry)
    stored = store.publish("export", key, stage_folder(tmp_path / "home-a", key, "weights"))
    listing = stored_files(registry, stored.run_id) / "files.json"
    files = json.loads(listing.read_text())
    files[f"{key}/model.onnx"] = "0" * 64
    listing.write_text(json.dumps(files))
    with pytest.raises(InvalidInput, match=r"files.json: expected sha256 [0-9a-f]{64} \(its files_digest tag\)"):
        store.find("export", key)


def test_two_uploads_of_one_key_end_with_the_first_finished_as_the_one_entry(registry, key, tmp_path):
    store = StageStore(registry)
    # Both workers claimed and built before either uploaded; b finishes first.
    claim_a = Claim(store, "export", key, store._begin("export", key))
    claim_b = Claim(store, "export", key, store._begin("export", key))
    from_b = claim_b.publish(stage_folder(tmp_path / "home-b", key, "built by b"))
    from_a = claim_a.publish(stage_folder(tmp_path / "home-a", key, "built by a"))
    assert from_a == from_b and from_b.run_id == claim_b.run_id
    assert [run.run_id for run in runs_of(registry, key)] == [claim_b.run_id]
    superseded = registry._client.get_run(claim_a.run_id)
    assert superseded.info.lifecycle_stage == "deleted" and superseded.data.tags["superseded_by"] == claim_b.run_id
    fetched = tmp_path / "reader" / key
    store.fetch("export", key, fetched)
    assert (fetched / "model.onnx").read_text() == "built by b"


def test_a_second_worker_waits_for_a_claimed_stage_and_fetches_it(registry, key, tmp_path):
    store = StageStore(registry, heartbeat_seconds=0.2, poll_seconds=0.1)
    claim = store.fetch_or_claim("export", key, tmp_path / "home-a" / key)
    assert isinstance(claim, Claim)
    said: list[str] = []
    results: list[object] = []
    waiter = threading.Thread(
        target=lambda: results.append(store.fetch_or_claim("export", key, tmp_path / "home-b" / key, said.append))
    )
    waiter.start()
    time.sleep(1.0)  # several beats and polls: still waiting
    assert waiter.is_alive() and results == []
    assert said == [f"waiting for worker {current_worker().name()}, which is building it"]  # said once
    published = claim.publish(stage_folder(tmp_path / "home-a", key, "weights"))
    waiter.join(timeout=30)
    assert results == [published]
    assert (tmp_path / "home-b" / key / "model.onnx").read_text() == "weights"
    assert len(runs_of(registry, key)) == 1  # the waiter never made a run


def test_a_claim_whose_heartbeat_stopped_is_passed_over(registry, key, tmp_path):
    store = StageStore(registry, heartbeat_seconds=3600, stale_seconds=0.5, poll_seconds=0.1)
    stuck = store.fetch_or_claim("export", key, tmp_path / "a" / key)
    assert isinstance(stuck, Claim)
    time.sleep(0.7)  # no beat since: a worker that hangs or died on another host
    taken = store.fetch_or_claim("export", key, tmp_path / "b" / key)
    assert isinstance(taken, Claim) and taken.run_id != stuck.run_id
    stuck.abandon()
    taken.abandon()


def test_a_claim_of_a_dead_process_on_this_host_is_passed_over_at_once(registry, key, tmp_path):
    """The claim is made in a child process that exits without publishing or abandoning it,
    as a worker killed mid-stage does; its heartbeat is still fresh."""
    code = (
        "from pathlib import Path\n"
        "from tapeout.artifacts.registry import Registry\n"
        "from tapeout.artifacts.stage_store import StageStore\n"
        f"store = StageStore(Registry({registry.tracking_uri!r}, Path({str(registry.artifacts_root)!r})))\n"
        f"claim = store.fetch_or_claim('export', {key!r}, Path({str(tmp_path / 'dead')!r}))\n"
        "import os; os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ)
    (dead,) = runs_of(registry, key, "RUNNING")
    taken = StageStore(registry, stale_seconds=3600).fetch_or_claim("export", key, tmp_path / "b" / key)
    assert isinstance(taken, Claim) and taken.run_id != dead.run_id
    taken.abandon()


def test_an_abandoned_claim_lets_the_next_worker_build(registry, key, tmp_path):
    store = StageStore(registry, poll_seconds=0.1)
    first = store.fetch_or_claim("export", key, tmp_path / "a" / key)
    first.abandon()  # the stage failed
    second = store.fetch_or_claim("export", key, tmp_path / "b" / key)
    assert isinstance(second, Claim) and second.run_id != first.run_id
    second.abandon()
