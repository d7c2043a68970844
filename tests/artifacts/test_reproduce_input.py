"""What `tapeout reproduce` refuses before it rebuilds anything, against a real MLflow store
with bundles signed by hand (tests/artifacts/test_trust_promotion.py): a bundle that does not
verify, and a signed bundle whose provenance is not a tapeout build's. The rebuilds
themselves are in tests/flows/test_reproduce.py."""

from __future__ import annotations

import pytest

from tapeout.flows.cli import main
from test_trust_promotion import NAME, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("reproduce-input"))


def reproduce(world, capsys, version: str, tmp_path) -> tuple[int, str]:
    kept = tmp_path / "rebuild"
    code = main(["reproduce", f"{NAME}@{version}", "--keep", str(kept), "--home", str(world["home"])])
    assert not kept.exists() or not any(kept.iterdir())  # nothing checked out, nothing built
    return code, capsys.readouterr().err


def test_a_bundle_that_does_not_verify_is_not_rebuilt(world, capsys, tmp_path):
    code, error = reproduce(world, capsys, world["versions"]["tampered"], tmp_path)
    assert code == 1 and "verification failed" in error and "Hash mismatch for 'reports/gates.json'" in error


def test_a_signed_bundle_without_a_builds_provenance_is_bad_input(world, capsys, tmp_path):
    code, error = reproduce(world, capsys, world["versions"]["good1"], tmp_path)
    assert code == 2
    assert "provenance.json: expected a tapeout build's provenance (source commit, target, config digest, compiler" in error


def test_keep_must_be_a_new_or_empty_folder(world, capsys, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("mine\n")
    code = main(["reproduce", f"{NAME}@1", "--keep", str(tmp_path / "busy"), "--home", str(world["home"])])
    assert code == 2 and "--keep" in capsys.readouterr().err and (tmp_path / "busy" / "file").is_file()
