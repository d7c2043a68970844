"""A model imported already signed by its maker (here an fp32 ONNX file signed with
model-signing's own signer and a certificate from the maker's CA): the signature is checked
against the trust policy's `imports` before anything is exported, becomes the first material
of the chain and is kept in the bundle. An unsigned model where the policy requires a
signature, a maker the policy does not name and a model changed after it was signed are each
refused with the reason, before a version exists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import EXAMPLE, git
from tapeout.artifacts.digest import file_digest
from tapeout.artifacts.keys import init_keys
from tapeout.flows.cli import main
from test_trust_signing import make_ca

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

NAME = "digits-cnn-cpu"
CPU = '  - name: cpu\n    compiler: onnxruntime\n    firmware_revision: "1.32.0"\n'


@pytest.fixture(scope="module")
def maker(tmp_path_factory):
    """The maker's CA and the one release certificate it signs models with, and a stranger
    whose CA issued a certificate with the same name."""
    folder = tmp_path_factory.mktemp("maker-pki")
    return {
        "release": make_ca(folder / "maker", "Maker")["leaf"]("maker release", sans=("models@maker.example",)),
        "stranger": make_ca(folder / "stranger", "Maker")["leaf"]("maker release", sans=("models@maker.example",)),
    }


def project(root: Path, exported_model, maker, *, sign_with=None) -> dict:
    """The example's exported fp32 model imported as an ONNX source, signed by `sign_with`
    (a certificate signer) beside it, under a policy that requires signed imports by the
    maker's release certificate; committed, with a home whose key the policy trusts."""
    folder = root / "project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", "model.py", "weights.pt"))
    # Under model/, as the bundle's own fp32 model is named: the chain tells the two apart.
    (folder / "model").mkdir()
    shutil.copyfile(exported_model.path, folder / "model" / "model.onnx")
    pipeline = folder / "pipeline.yaml"
    text = pipeline.read_text()
    start, end = text.index("  source:\n"), text.index("  inputs:\n")
    text = text[:start] + "  source: {onnx: model/model.onnx}\n" + text[end:]
    text = text[: text.index("targets:\n")] + "targets:\n" + CPU + text[text.index("\ngates:"):]
    pipeline.write_text(text.replace("signing:\n", "signing:\n  policy: trust-policy.yaml\n", 1))
    shutil.copytree(Path(maker["release"].certificate).parent, folder / "pki")
    home = root / "home"
    keys, _ = init_keys(home / "keys")
    (folder / "trust-policy.yaml").write_text(
        f"version: 1\nmodels:\n  - match: 'digits-cnn-*'\n    keys: [{keys.public_key}]\n"
        "imports:\n  require_signed: true\n  signers:\n    - match: 'digits-*'\n"
        "      certificates: {roots: [pki/root.pem], sans: [models@maker.example]}\n"
    )
    if sign_with is not None:
        sign_model(folder / "model" / "model.onnx", sign_with)
    git(folder, "init", "-q", "-b", "main")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "the example, imported")
    return {"pipeline": pipeline, "home": home, "project": folder}


def sign_model(path: Path, certificate) -> Path:
    """As the maker would, with model-signing itself: `<file>.sig` over the one file."""
    from model_signing import signing

    signature = path.with_name(path.name + ".sig")
    signing.Config().use_certificate_signer(
        private_key=certificate.private_key, signing_certificate=certificate.certificate,
        certificate_chain=list(certificate.chain),
    ).sign(path, signature)
    return signature


def run(world, capsys) -> tuple[int, str]:
    code = main(["run", str(world["pipeline"]), "--home", str(world["home"])])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def assert_nothing_built(world) -> None:
    assert not (world["home"] / "bundles" / NAME).exists()


def test_a_signed_import_is_the_first_link_of_the_chain(tmp_path, exported_model, maker, capsys):
    world = project(tmp_path, exported_model, maker, sign_with=maker["release"])
    code, err = run(world, capsys)
    assert code == 0, err
    code = main(["verify", f"{NAME}@1", "--chain", "--json", "--home", str(world["home"]),
                 "--policy", str(world["project"] / "trust-policy.yaml")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    signature = world["project"] / "model" / "model.onnx.sig"
    imported = document["imported"]
    assert imported["file"] == "model/model.onnx" and imported["signed"] and imported["verified"]
    assert imported["signer"].startswith("x509:") and "models@maker.example" in imported["signer"]
    export = document["chain"][0]
    assert export["stage"] == "export"
    # The maker's signature is the chain's first material, the model file it signs another.
    assert next(iter(export["materials"].items())) == ("model/model.onnx.sig", file_digest(signature))
    assert export["materials"]["model/model.onnx"] == file_digest(world["project"] / "model" / "model.onnx")
    (bundle,) = (world["home"] / "bundles" / NAME).iterdir()
    assert (bundle / "attestations" / "imported-model.sig").read_bytes() == signature.read_bytes()

    # An auditor rebuilds it from the commit: the rebuild checks the import against the
    # commit's own policy, as the build did.
    code = main(["reproduce", f"{NAME}@1", "--home", str(world["home"])])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "files identical to the signed bundle" in captured.out

    # The kept signature is checked again offline: a stranger's in its place breaks the link.
    from tapeout.artifacts.signing import sign_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    model = tmp_path / "stranger" / "model.onnx"
    model.parent.mkdir()
    shutil.copyfile(world["project"] / "model" / "model.onnx", model)
    shutil.copyfile(sign_model(model, maker["stranger"]), copy / "attestations" / "imported-model.sig")
    (copy / "model.sig").unlink()
    sign_bundle(copy, world["home"] / "keys" / "signing-key.pem")
    code = main(["verify", str(copy), "--chain", "--home", str(world["home"]),
                 "--policy", str(world["project"] / "trust-policy.yaml")])
    err = capsys.readouterr().err
    assert code == 1
    assert "export: attestations/imported-model.sig: sha256 " in err
    assert "export: attestations/imported-model.sig: " in err and "certificate" in err


def test_an_unsigned_import_is_refused_when_the_policy_requires_a_signature(tmp_path, exported_model, maker, capsys):
    world = project(tmp_path, exported_model, maker)
    code, err = run(world, capsys)
    assert code == 1
    assert err.startswith("error: ")
    assert "model.onnx: verification failed: the imported model is not signed (no model.onnx.sig or model.sig beside it)" in err
    assert "requires signed imports (imports.require_signed)" in err
    assert_nothing_built(world)


def test_an_import_signed_by_a_maker_outside_the_policy_is_refused(tmp_path, exported_model, maker, capsys):
    world = project(tmp_path, exported_model, maker, sign_with=maker["stranger"])
    code, err = run(world, capsys)
    assert code == 1
    assert "model/model.onnx: verification failed: signature is invalid or not made by the pinned certificate roots" in err
    assert_nothing_built(world)


def test_an_import_changed_after_it_was_signed_is_refused(tmp_path, exported_model, maker, capsys):
    world = project(tmp_path, exported_model, maker, sign_with=maker["release"])
    model = world["project"] / "model" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    git(world["project"], "commit", "-qam", "a byte more")
    code, err = run(world, capsys)
    assert code == 1
    assert "model/model.onnx: verification failed: " in err and "Hash mismatch" in err
    assert_nothing_built(world)
