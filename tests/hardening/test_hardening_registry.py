"""Registry faults that need no server: a registration a killed process left half done is
finished by the rerun, exactly once; a registry that cannot be reached is an error, not
"nothing registered"."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tapeout.artifacts.registry import Registry, RegistryUnavailable
from tapeout.flows.cli import main
from tapeout.flows.config import load_pipeline
from conftest import git
from hardening_support import cpu_project


def test_a_version_left_without_its_alias_by_a_killed_run_is_finished_by_the_rerun(tmp_path, capsys):
    """SIGKILL between MLflow's create_model_version and the candidate alias leaves a version
    whose run is still RUNNING and no alias. The rerun must not report it as done as is."""
    pipeline = cpu_project(tmp_path)
    home = tmp_path / "home"
    loaded = load_pipeline(pipeline)
    commit = git(pipeline.parent, "rev-parse", "HEAD")
    identity = {"commit": commit, "config_digest": loaded.digest(loaded.config.targets[0])}
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "provenance.json").write_text("{}\n")
    run_id = registry.start_run("digits-cnn", "killed", identity)
    registry.log_directory(run_id, bundle, "bundle")
    client = registry._client
    client.create_registered_model("digits-cnn-cpu")
    client.create_model_version(
        "digits-cnn-cpu", f"runs:/{run_id}/bundle", run_id=run_id,
        tags={**identity, "source_dirty": "false", "bundle_digest": "f" * 64},  # as a clean build tags it
    )  # ... and the process died here

    code = main(["run", str(pipeline), "--home", str(home), "--json"])
    assert code == 0, capsys.readouterr().err
    assert registry.resolve("digits-cnn-cpu@candidate").version == "1"
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [str(v.version) for v in client.search_model_versions("name = 'digits-cnn-cpu'")] == ["1"]

    # A later rerun changes nothing.
    assert main(["run", str(pipeline), "--home", str(home), "--json"]) == 0
    assert [str(v.version) for v in client.search_model_versions("name = 'digits-cnn-cpu'")] == ["1"]


def test_find_version_on_an_unreachable_server_raises_instead_of_finding_nothing(tmp_path):
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = Registry(f"http://127.0.0.1:{port}", tmp_path)
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=f"MLflow at http://127.0.0.1:{port}: cannot look up a-b"):
        registry.find_version("a-b", {"commit": "0" * 40})
    assert time.monotonic() - start < 30


def test_concurrent_first_runs_create_one_signing_key_and_never_read_half_of_it(tmp_path):
    """Four `tapeout run` in a fresh home all call init_keys at once."""
    from tapeout.artifacts.signing import init_keys, public_key_for

    failures: list[str] = []
    for trial in range(10):
        keys = tmp_path / f"keys-{trial}"
        barrier = threading.Barrier(6)
        created = []

        def first_run() -> None:
            barrier.wait()
            try:
                pair, made = init_keys(keys)
                created.append(made)
                public_key_for(pair.private_key)
                assert pair.public_key.read_bytes() == public_key_for(pair.private_key)
            except BaseException as error:  # noqa: BLE001 - any failure is the finding
                failures.append(repr(error))

        threads = [threading.Thread(target=first_run) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert created.count(True) <= 1
        assert (keys / "signing-key.pem").stat().st_mode & 0o777 == 0o600
        assert sorted(path.name for path in keys.iterdir()) == ["signing-key.pem", "signing-key.pub"]
    assert failures == []
