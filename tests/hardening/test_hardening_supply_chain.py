"""Supply chain inside the bundle: symlinks and escaping paths are refused by verify and pull;
PyTorch weights load only with weights_only=True; no pickle anywhere in an artifact or in the
code paths that read one; the signing key is never logged, never copied into a bundle, MLflow
or Prefect's stores."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tapeout.flows.cli import main
from conftest import REPOSITORY, git
from hardening_support import cpu_project

sys.path.insert(0, str(REPOSITORY / "fuzz"))
import targets  # noqa: E402


@pytest.fixture
def signed(tmp_path):
    return targets.signed_bundle(tmp_path / "signed")


def verify(capsys, bundle: Path, public_key: Path, home: Path) -> tuple[int, str]:
    code = main(["verify", str(bundle), "--public-key", str(public_key), "--home", str(home)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


# -- symlinks and paths that escape -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file-to-identical-copy-outside", "file-to-secret-outside", "directory", "to-inside"])
def test_verify_refuses_a_symlink_in_the_bundle(kind, signed, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(signed.path, bundle)
    victim = bundle / "compiled" / "model.bin"
    if kind == "file-to-identical-copy-outside":
        outside = tmp_path / "model.bin"
        outside.write_bytes(victim.read_bytes())  # same bytes: only the link itself is wrong
        victim.unlink()
        victim.symlink_to(outside)
    elif kind == "file-to-secret-outside":
        victim.unlink()
        victim.symlink_to("/etc/hostname")
    elif kind == "directory":
        moved = tmp_path / "compiled"
        shutil.move(bundle / "compiled", moved)
        (bundle / "compiled").symlink_to(moved, target_is_directory=True)
    else:
        victim.unlink()
        victim.symlink_to(bundle / "reports" / "gates.json")
    code, error = verify(capsys, bundle, signed.public_key, tmp_path / "home")
    assert code == 1
    assert "symbolic links are not allowed" in error and "compiled" in error


def test_verify_refuses_a_file_added_beside_the_signed_ones(signed, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(signed.path, bundle)
    (bundle / ".git").mkdir()
    (bundle / ".git" / "config").write_text("[core]\n")
    code, error = verify(capsys, bundle, signed.public_key, tmp_path / "home")
    assert code == 1 and ".git/config" in error


def _registered_bundle(home: Path, signed, bundle: Path) -> str:
    """Register `bundle` (a copy of `signed`) in home's local registry; returns the run id."""
    from tapeout.artifacts.digest import bundle_digest
    from tapeout.artifacts.registry import Registry

    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
    run_id = registry.start_run("digits-cnn", "planted", {})
    registry.log_directory(run_id, bundle, "bundle")
    registry.register(
        "digits-cnn-cpu", run_id, {"bundle_digest": bundle_digest(bundle), "commit": "0" * 40, "config_digest": "c" * 64}
    )
    registry.end_run(run_id, "FINISHED")
    return run_id


def _stored_bundle(home: Path, run_id: str) -> Path:
    [stored] = list((home / "artifacts").glob(f"*/{run_id}/artifacts/bundle"))
    return stored


@pytest.mark.parametrize("kind", ["symlink-to-outside", "symlink-inside", "extra-file"])
def test_pull_refuses_what_was_planted_in_the_artifact_store(kind, signed, tmp_path, capsys):
    home = tmp_path / "home"
    run_id = _registered_bundle(home, signed, signed.path)
    stored = _stored_bundle(home, run_id)
    if kind == "symlink-to-outside":
        (stored / "compiled" / "model.bin").unlink()
        (tmp_path / "evil.bin").write_bytes(b"not what was signed")
        (stored / "compiled" / "model.bin").symlink_to(tmp_path / "evil.bin")
    elif kind == "symlink-inside":
        (stored / "reports" / "extra.json").symlink_to(stored / "reports" / "gates.json")
    else:
        (stored / "compiled" / "backdoor.bin").write_bytes(b"\x00")
    output = tmp_path / "pulled"
    code = main(["pull", "digits-cnn-cpu@1", "-o", str(output), "--public-key", str(signed.public_key), "--home", str(home)])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert "Traceback" not in captured.err
    assert not output.exists()  # nothing is written unless the whole bundle verified
    assert not list(tmp_path.glob(".pulled-pull-*"))


def _as_built(signed, folder: Path) -> Path:
    """A copy of `signed` that says what it was built as, the way a build's bundle does
    (provenance naming digits-cnn-cpu, commit 0…0, config c…c; the compiler record; the
    calibration manifest), signed again with the same key: pull compares these signed
    claims with the version it serves the bundle as."""
    from tapeout.artifacts.provenance import SourceRevision, provenance_statement
    from tapeout.artifacts.signing import sign_bundle

    shutil.copytree(signed.path, folder)
    (folder / "model.sig").unlink()
    statement = provenance_statement(
        subjects={}, materials=[], source=SourceRevision("/src", "0" * 40, False),
        resolved_config={"model": {"name": "digits-cnn"}}, target="cpu", config_digest="c" * 64,
        invocation_id="pull", started_on="2026-01-01T00:00:00+00:00", finished_on="2026-01-01T00:01:00+00:00",
    )
    (folder / "provenance.json").write_text(json.dumps(statement))
    (folder / "compiled" / "compiler.json").write_text(json.dumps({"compiler": "onnxruntime", "files": ["model.bin"]}))
    (folder / "calibration").mkdir()
    (folder / "calibration" / "manifest.json").write_text(json.dumps({"digest": "d" * 64}))
    sign_bundle(folder, signed.public_key.parent / "signing-key.pem")
    return folder


def test_pull_of_an_untouched_bundle_works(signed, tmp_path, capsys):
    home = tmp_path / "home"
    _registered_bundle(home, signed, _as_built(signed, tmp_path / "as-built"))
    output = tmp_path / "pulled"
    code = main(["pull", "digits-cnn-cpu@1", "-o", str(output), "--public-key", str(signed.public_key), "--home", str(home)])
    assert code == 0, capsys.readouterr().err
    assert (output / "model.sig").is_file()


# -- pickle ---------------------------------------------------------------------------------------

PACKAGES = ["flows", "artifacts", "compilers", "calibration"]
FORBIDDEN = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib|shelve)\b", re.M), "imports a pickle library"),
    (re.compile(r"\bpickle\.loads?\("), "unpickles"),
    (re.compile(r"allow_pickle\s*=\s*True"), "lets numpy unpickle"),
    (re.compile(r"\bmlflow\.\w+\.log_model\(|\bload_model\("), "uses MLflow model flavours (pickled)"),
]


def test_no_code_path_unpickles():
    findings = []
    for package in PACKAGES:
        for path in sorted((REPOSITORY / package).rglob("*.py")):
            text = path.read_text()
            for pattern, what in FORBIDDEN:
                for match in pattern.finditer(text):
                    line = text[: match.start()].count("\n") + 1
                    findings.append(f"{path.relative_to(REPOSITORY)}:{line}: {what}")
            for match in re.finditer(r"\btorch\.load\(", text):
                call = text[match.start(): text.find(")", match.start()) + 1]
                if "weights_only=True" not in call:
                    line = text[: match.start()].count("\n") + 1
                    findings.append(f"{path.relative_to(REPOSITORY)}:{line}: torch.load without weights_only=True")
    assert findings == []


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_pytorch_weights_carrying_code_are_refused_without_running_it(tmp_path, capsys):
    import torch

    marker = tmp_path / "marker"
    pipeline = cpu_project(tmp_path)
    torch.save({"conv.weight": _Payload(marker)}, pipeline.parent / "weights.pt")
    git(pipeline.parent, "commit", "-qam", "weights that carry code")
    code = main(["run", str(pipeline), "--home", str(tmp_path / "home")])
    error = capsys.readouterr().err
    assert code == 2
    assert "weights.pt: not a loadable state dict" in error and "Traceback" not in error
    assert not marker.exists()


def _is_pickle(data: bytes) -> bool:
    import pickletools

    if not data or data[0] != 0x80 or len(data) < 2 or data[1] > 5:
        return False
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception:  # noqa: BLE001 - not a well-formed pickle stream
        return False
    return True


# -- a real build: no pickle in it, no key anywhere --------------------------------------------------


@pytest.fixture(scope="module")
def build(tmp_path_factory, prefect_harness):
    import contextlib
    import io

    root = tmp_path_factory.mktemp("supply-chain")
    pipeline = cpu_project(root)
    home = root / "home"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(pipeline), "--home", str(home), "--debug"])
    return {"code": code, "home": home, "log": out.getvalue() + err.getvalue()}


@pytest.mark.slow
def test_no_pickle_in_any_file_of_the_bundle(build):
    assert build["code"] == 0, build["log"]
    [bundle] = list((build["home"] / "bundles" / "digits-cnn-cpu").iterdir())
    for path in sorted(bundle.rglob("*")):
        if not path.is_file():
            continue
        assert path.suffix not in (".pt", ".pth", ".pkl", ".pickle", ".joblib"), path
        data = path.read_bytes()
        assert not _is_pickle(data), path
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    assert not _is_pickle(archive.read(member)), f"{path}:{member}"
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:  # raises on an object array
                for name in archive.files:
                    assert archive[name].dtype != object


@pytest.mark.slow
def test_the_signing_key_is_never_logged_nor_copied(build, caplog):
    assert build["code"] == 0, build["log"]
    home = build["home"]
    pem = (home / "keys" / "signing-key.pem").read_bytes()
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    der = base64.b64decode(body)
    needles = {
        "PEM body": body[16:64],  # any stretch of the base64 body
        "DER": der[-32:],  # the raw key bytes, as stored in a DER/PKCS#8 encoding
        "DER (hex)": der[-32:].hex().encode(),
    }
    assert body[16:64].decode() not in build["log"]
    assert body[16:64].decode() not in caplog.text
    places = [home / "bundles", home / "artifacts", home / "mlflow.db", home / "cache", home / "prefect"]
    for place in places:
        files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]
        for path in files:
            data = path.read_bytes()
            for what, needle in needles.items():
                assert needle not in data, f"the signing key ({what}) is in {path}"
    [bundle] = list((home / "bundles" / "digits-cnn-cpu").iterdir())
    names = {p.name for p in bundle.rglob("*")}
    assert not names & {"signing-key.pem", "signing-key.pub"}
    assert (home / "keys" / "signing-key.pem").stat().st_mode & 0o077 == 0
