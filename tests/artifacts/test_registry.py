"""The MLflow registry layer against a real MLflow store (SQLite in a temporary folder)."""

from __future__ import annotations

import pytest

from tapeout.artifacts.registry import (
    Registry,
    RegistryUnavailable,
    ReferenceNotFound,
)
from tapeout.compilers.errors import InvalidInput


@pytest.fixture
def registry(tmp_path):
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")


@pytest.fixture
def run_with_bundle(registry, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "provenance.json").write_text("{}\n")
    run_id = registry.start_run("digits-cnn", "abc-cpu", {"commit": "abc"})
    registry.log_directory(run_id, bundle, "bundle")
    return run_id


def test_register_tags_the_version_and_moves_candidate(registry, run_with_bundle, tmp_path):
    version = registry.register("digits-cnn-cpu", run_with_bundle, {"commit": "abc", "gate_verdict": "pass"})
    assert version.version == "1"
    assert version.source == f"runs:/{run_with_bundle}/bundle"
    assert version.tags["commit"] == "abc"
    assert registry.resolve("digits-cnn-cpu@candidate").version == "1"
    assert registry.resolve("digits-cnn-cpu@1").run_id == run_with_bundle
    downloaded = registry.download_bundle(version, tmp_path / "download")
    assert (downloaded / "provenance.json").read_text() == "{}\n"
    assert registry.find_version("digits-cnn-cpu", {"commit": "abc"}).version == "1"
    assert registry.find_version("digits-cnn-cpu", {"commit": "def"}) is None


def test_a_version_whose_alias_cannot_be_set_is_deleted_again(registry, run_with_bundle, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("store went away")

    monkeypatch.setattr(registry._client, "set_registered_model_alias", refuse)
    with pytest.raises(RegistryUnavailable, match="nothing was registered"):
        registry.register("digits-cnn-cpu", run_with_bundle, {"commit": "abc"})
    assert registry._client.search_model_versions("name = 'digits-cnn-cpu'") == []


def test_references_that_name_nothing_are_clear(registry, run_with_bundle):
    registry.register("digits-cnn-cpu", run_with_bundle, {})
    with pytest.raises(ReferenceNotFound, match="digits-cnn-cpu@7"):
        registry.resolve("digits-cnn-cpu@7")
    with pytest.raises(ReferenceNotFound, match="digits-cnn-cpu@production"):
        registry.resolve("digits-cnn-cpu@production")
    with pytest.raises(InvalidInput, match="expected MODEL-TARGET@VERSION"):
        registry.resolve("digits-cnn-cpu")



def test_registrations_of_the_same_build_converge_on_the_lowest_version(registry, tmp_path):
    """Two runs of one (commit, config) register concurrently: the later one finds the earlier
    version, deletes its own, and both report the same version; the alias never points at
    the deleted one."""
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "f").write_text("x")
    identity = {"commit": "abc", "config_digest": "d1"}
    runs = []
    for name in ("first", "second"):
        run_id = registry.start_run("digits-cnn", name, {})
        registry.log_directory(run_id, bundle, "bundle")
        runs.append(run_id)
    first = registry.register("digits-cnn-cpu", runs[0], identity, unique_by=identity)
    second = registry.register("digits-cnn-cpu", runs[1], identity, unique_by=identity)
    assert first.version == second.version == "1"
    assert second.run_id == runs[0]
    versions = registry._client.search_model_versions("name = 'digits-cnn-cpu'")
    assert [str(v.version) for v in versions] == ["1"]
    assert registry.resolve("digits-cnn-cpu@candidate").version == "1"
    other = registry.register("digits-cnn-cpu", runs[1], {"commit": "def", "config_digest": "d1"},
                              unique_by={"commit": "def", "config_digest": "d1"})
    assert int(other.version) > 1  # MLflow never reuses a deleted version number
