"""Substitution through the registry: someone with write access to the MLflow store copies a
validly signed bundle into another version's artifact folder and retags `bundle_digest` to
match. The signature still verifies (the bundle is genuine) — but it was signed as another
model, or another commit, than the version it is served as. Every read refuses it, naming
the field, the signed value and the registry's value: verify, trace, promote, pull."""

from __future__ import annotations

import shutil

import pytest

from tapeout.artifacts.digest import bundle_digest
from tapeout.artifacts.signing import init_keys
from tapeout.flows.cli import main
from test_trust_promotion import empty_store, register

CPU = "digits-cnn-cpu"
NPU = "digits-cnn-npu-int8"


@pytest.fixture()
def home(tmp_path):
    """cpu versions 1..3 (commits 1..3) and one npu-int8 version, all signed by the home's key."""
    home = tmp_path / "home"
    keys, _ = init_keys(home / "keys")
    registry = empty_store(home / "mlflow.db")
    work = tmp_path / "work"
    for n in (1, 2, 3):
        register(registry, keys, work, n, target="cpu")
    register(registry, keys, work, 11, target="npu-int8")
    return {"home": home, "registry": registry, "work": work}


def stored_bundle(home, name: str, version: str):
    registered = home["registry"].get_version(name, version)
    return home["home"] / "artifacts" / "digits-cnn" / registered.run_id / "artifacts" / "bundle"


def substitute(home, source: tuple[str, str], target: tuple[str, str]) -> None:
    """Replace `target`'s stored bundle by `source`'s and retag its bundle_digest to match."""
    victim = stored_bundle(home, *target)
    shutil.rmtree(victim)
    shutil.copytree(stored_bundle(home, *source), victim)
    home["registry"]._client.set_model_version_tag(target[0], target[1], "bundle_digest", bundle_digest(victim))


def cli(home, *arguments) -> int:
    return main([*arguments, "--home", str(home["home"])])


def every_read_refuses(home, capsys, tmp_path, reference: str, expected: list[str]) -> None:
    for command in (["verify", reference], ["trace", reference], ["promote", reference, "--to", "production"]):
        assert cli(home, *command) == 1, command
        captured = capsys.readouterr()
        shown = captured.err + captured.out
        for text in expected:
            assert text in shown, (command, shown)
        assert "Traceback" not in shown
    output = tmp_path / "device"
    assert cli(home, "pull", reference, "-o", str(output)) == 1
    error = capsys.readouterr().err
    assert all(text in error for text in expected), error
    assert not output.exists()
    with pytest.raises(Exception):
        home["registry"].resolve(f"{CPU}@production")  # never promoted


def test_another_models_bundle_served_as_this_version_is_refused(home, capsys, tmp_path):
    assert cli(home, "verify", f"{CPU}@3") == 0
    capsys.readouterr()
    substitute(home, (NPU, "1"), (CPU, "3"))
    every_read_refuses(
        home, capsys, tmp_path, f"{CPU}@3",
        [f"registered name: the signed bundle says '{NPU}', the registry says '{CPU}'"],
    )


def test_an_older_bundle_replayed_as_a_newer_version_is_refused(home, capsys, tmp_path):
    substitute(home, (CPU, "1"), (CPU, "3"))
    every_read_refuses(
        home, capsys, tmp_path, f"{CPU}@3",
        [f"commit: the signed bundle says '{1:040x}', the registry says '{3:040x}'",
         f"config_digest: the signed bundle says '{1:064x}', the registry says '{3:064x}'"],
    )


def test_a_version_stripped_of_its_identity_tags_is_refused(home, capsys):
    home["registry"]._client.delete_model_version_tag(CPU, "2", "commit")
    assert cli(home, "verify", f"{CPU}@2") == 1
    assert f"commit: the signed bundle says '{2:040x}', the registry says '(no tag)'" in capsys.readouterr().err
