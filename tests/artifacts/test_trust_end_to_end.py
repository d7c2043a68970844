"""One real build of the example signed with the `certificate` method (a CA made here) and
checked against a trust policy, then promoted, pulled and traced from a compiled file —
through the command line, as a release engineer and an auditor would."""

from __future__ import annotations

import json

import pytest

from conftest import git, make_project
from test_trust_signing import make_ca
from tapeout.artifacts.registry import Registry
from tapeout.flows.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
NAME = "digits-cnn-cpu"
DEFAULT_SIGNING = "signing:\n  method: key       # default key: <home>/keys/signing-key.pem, created on first run\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory, prefect_harness):
    root = tmp_path_factory.mktemp("trust-e2e")
    pipeline = make_project(root)
    project = pipeline.parent
    ca = make_ca(project / "pki")
    ca["leaf"]("tapeout release", sans=("release@example.com",))
    (project / "trust-policy.yaml").write_text(
        "version: 1\nmodels:\n  - match: 'digits-cnn-*'\n"
        "    certificates: {roots: [pki/root.pem], sans: [release@example.com]}\n"
    )
    text = pipeline.read_text()
    assert DEFAULT_SIGNING in text
    pipeline.write_text(text.replace(
        DEFAULT_SIGNING,
        "signing:\n  method: certificate\n  private_key: pki/tapeout-release.key\n"
        "  certificate: pki/tapeout-release.pem\n  certificate_chain: [pki/intermediate.pem]\n"
        "  policy: trust-policy.yaml\n",
    ))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "sign with the release certificate")
    home = root / "home"
    code = main(["run", str(pipeline), "--home", str(home), "--json"])
    return {"code": code, "project": project, "home": home, "root": root,
            "policy": ["--policy", str(project / "trust-policy.yaml")]}


def cli(built, *arguments) -> int:
    return main([*arguments, "--home", str(built["home"])])


def test_a_certificate_signed_build_is_promoted_pulled_and_traced(built, capsys):
    assert built["code"] == 0
    capsys.readouterr()
    registry = Registry(f"sqlite:///{built['home'] / 'mlflow.db'}", built["home"] / "artifacts")
    version = registry.resolve(f"{NAME}@candidate")
    assert version.tags["signing_method"] == "certificate"
    assert version.tags["signer"].startswith("x509:") and "release@example.com" in version.tags["signer"]
    assert len(version.tags["artifact_sha256"].split(",")[0]) == 64

    # The home's own key is not who signed this: the default policy refuses it.
    assert cli(built, "promote", f"{NAME}@{version.version}", "--to", "production") == 1
    assert "signer outside the policy" in capsys.readouterr().err
    assert cli(built, "promote", f"{NAME}@{version.version}", "--to", "production",
               "--reason", "release 1", *built["policy"]) == 0
    capsys.readouterr()

    deployed = built["root"] / "deployed"
    assert cli(built, "pull", f"{NAME}@production", "-o", str(deployed), *built["policy"]) == 0
    capsys.readouterr()
    field_file = deployed / "compiled" / "model.ort.onnx"
    report = built["root"] / "trace.html"
    assert cli(built, "trace", str(field_file), "--json", "--html", str(report), *built["policy"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["lookup"]["matches"] == [f"{NAME}@{version.version}"]
    assert record["verification"]["method"] == "certificate"
    assert record["source"]["commit"] == git(built["project"], "rev-parse", "HEAD")
    assert record["calibration_set"]["count"] == 300
    assert record["compiler"]["name"] == "onnxruntime" and record["firmware"]["revision"] == "1.32.0"
    assert record["gates"]["verdict"] == "pass"
    assert record["config"]["resolved"]["signing"]["method"] == "certificate"
    promotions = record["promotions"]["records"]
    assert [(r["action"], r["reason"]) for r in promotions if r["action"] == "promote"] == [("promote", "release 1")]
    assert "tapeout release" in report.read_text()
    assert record["chain"]["verified"] is True

    # Every statement of the chain is signed with the release certificate too.
    assert cli(built, "verify", str(deployed), "--chain", "--json", *built["policy"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [link["stage"] for link in document["chain"]] == ["export", "calibrate", "quantize", "compile", "evaluate"]
    assert {link["signer"] for link in document["chain"]} == {version.tags["signer"]}


def test_a_policy_that_does_not_admit_the_build_signer_stops_registration(built, capsys):
    project = built["project"]
    (project / "trust-policy.yaml").write_text(
        "models:\n  - certificates: {roots: [pki/root.pem], sans: [someone-else@example.com]}\n"
    )
    (project / "README.md").write_text("a new commit, so the target is built again\n")
    git(project, "commit", "-qam", "policy no longer admits the release certificate")
    code = main(["run", str(project / "pipeline.yaml"), "--home", str(built["home"]), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 1
    assert "signer outside the policy" in document["targets"][0]["message"]
    assert document["targets"][0]["version"] is None
