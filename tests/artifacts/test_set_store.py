"""Calibration sets above the embed size: stored once in the artifact store, pointed to from
bundles, fetched back and checked — against a real MLflow store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from tapeout.artifacts.registry import Registry
from tapeout.artifacts.set_store import (
    STORE_EXPERIMENT,
    fetch_set,
    find_stored,
    pointer_document,
    read_pointer,
    store_set,
)
from tapeout.calibration.dataset import load_sample_set
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TensorSpec
from conftest import EXAMPLE, git, make_project

IMAGE = (TensorSpec("image", (1, 1, 16, 16), "float32"),)


@pytest.fixture()
def registry(tmp_path):
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")


def _store_runs(registry: Registry) -> list:
    experiment = registry._client.get_experiment_by_name(STORE_EXPERIMENT)
    return registry._client.search_runs([experiment.experiment_id], "")


def test_a_set_is_stored_once_and_fetched_back_checked(registry, tmp_path):
    samples = load_sample_set(EXAMPLE / "data" / "calibration.npz", IMAGE)
    first = store_set(registry, samples.path, samples.digest)
    copy = tmp_path / "elsewhere" / "calibration.npz"
    copy.parent.mkdir()
    shutil.copyfile(samples.path, copy)
    again = store_set(registry, copy, samples.digest)  # another run, the same set
    assert again == first and len(_store_runs(registry)) == 1
    assert find_stored(registry, "0" * 64) is None
    pointer = pointer_document(first, samples.manifest())
    assert pointer["uri"] == f"runs:/{first.run_id}/set" and pointer["count"] == samples.count
    fetched = fetch_set(registry, pointer, tmp_path / "fetched")
    assert fetched.read_bytes() == samples.path.read_bytes()
    assert load_sample_set(fetched, IMAGE).digest == samples.digest


def test_a_folder_set_keeps_its_folder(registry, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    for index in range(3):
        np.save(folder / f"{index}.npy", np.full((1, 16, 16), index, np.float32))
    samples = load_sample_set(folder, IMAGE)
    stored = store_set(registry, folder, samples.digest)
    assert sorted(stored.files) == ["set/0.npy", "set/1.npy", "set/2.npy"]
    fetched = fetch_set(registry, pointer_document(stored, samples.manifest()), tmp_path / "out")
    assert fetched == tmp_path / "out" / "set" and load_sample_set(fetched, IMAGE).digest == samples.digest


def test_a_changed_stored_file_is_named(registry, tmp_path):
    samples = load_sample_set(EXAMPLE / "data" / "calibration.npz", IMAGE)
    stored = store_set(registry, samples.path, samples.digest)
    (stored_file,) = (tmp_path / "artifacts").rglob("set/calibration.npz")
    data = bytearray(stored_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored_file.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match=r"calibration\.npz: expected sha256 [0-9a-f]{64}, found [0-9a-f]{64}"):
        fetch_set(registry, pointer_document(stored, samples.manifest()), tmp_path / "fetched")
    assert not (tmp_path / "fetched" / "calibration.npz").exists()  # nothing half-fetched is left


def test_a_broken_pointer_is_named(tmp_path):
    pointer = tmp_path / "calibration" / "pointer.json"
    pointer.parent.mkdir()
    assert read_pointer(tmp_path) is None
    pointer.write_text(json.dumps({"schema": "something/else"}))
    with pytest.raises(InvalidInput, match="schema: expected 'tapeout.calibration-set-pointer/v1', found 'something/else'"):
        read_pointer(tmp_path)
    pointer.write_text(json.dumps({"schema": "tapeout.calibration-set-pointer/v1", "digest": "a", "files": {}}))
    with pytest.raises(InvalidInput, match="run_id: expected a value"):
        read_pointer(tmp_path)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_bundles_of_two_commits_point_to_one_stored_set(tmp_path, capsys):
    from tapeout.flows.cli import main

    pipeline = make_project(tmp_path)
    config = yaml.safe_load(pipeline.read_text())
    config["targets"] = [target for target in config["targets"] if target["name"] == "cpu"]
    config["calibration"]["embed_max_bytes"] = 0  # every set goes to the store
    pipeline.write_text(yaml.safe_dump(config, sort_keys=False))
    git(pipeline.parent, "commit", "-qam", "one target, sets in the store")
    home = tmp_path / "home"
    bundles = []
    for gate in (50, 40):  # two commits, the same calibration set
        pipeline.write_text(pipeline.read_text().replace("latency_p95_ms:\n    max: 50", f"latency_p95_ms:\n    max: {gate}"))
        git(pipeline.parent, "commit", "-qam", f"latency gate {gate}", "--allow-empty")
        assert main(["run", str(pipeline), "--home", str(home), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        bundles.append(home / "bundles" / "digits-cnn-cpu" / result["targets"][0]["bundle_path"].rsplit("/", 1)[1])
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
    assert registry.resolve("digits-cnn-cpu@candidate").version == "2"
    pointers = [read_pointer(bundle) for bundle in bundles]
    assert pointers[0]["run_id"] == pointers[1]["run_id"] and len(_store_runs(registry)) == 1
    for bundle in bundles:
        assert not (bundle / "calibration" / "calibration.npz").exists()
        assert main(["verify", str(bundle), "--home", str(home)]) == 0  # the pointer is signed
    capsys.readouterr()
    assert main(["trace", str(bundles[0]), "--home", str(home)]) == 0
    assert f"stored at runs:/{pointers[0]['run_id']}/set" in capsys.readouterr().out
    assert main(["--home", str(home), "calib", "fetch", str(bundles[1]), "-o", str(tmp_path / "fetched")]) == 0
    assert "matches the bundle's manifest" in capsys.readouterr().out
    assert (tmp_path / "fetched" / "calibration.npz").read_bytes() == (EXAMPLE / "data" / "calibration.npz").read_bytes()
