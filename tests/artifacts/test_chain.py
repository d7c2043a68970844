"""The chain of attestations and the bill of materials of a real build of the example, signed
with the home's key, checked through the command line as an auditor would: every link
verifies; a tampered link is refused with its stage and what differs, even when whoever
tampered could sign the bundle again; a bundle made before the chain verifies and says it has
none; a bundle of a newer format is refused by name; the bill of materials is CycloneDX 1.6 by
the library's own schema, covered by the signature."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import EXAMPLE, git
from tapeout.artifacts.digest import file_digest
from tapeout.artifacts.signature import statement_payload
from tapeout.artifacts.signing import KeySigner, init_keys, sign_bundle
from tapeout.flows.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

NAME = "digits-cnn-cpu"
CPU = '  - name: cpu\n    compiler: onnxruntime\n    firmware_revision: "1.32.0"\n'
STAGES = ["export", "calibrate", "quantize", "compile", "evaluate"]
REMOTE = "https://github.com/example/digits.git"


@pytest.fixture(scope="module")
def built(tmp_path_factory, prefect_harness):
    """The example with its cpu target, built once; the bundle as registered, and the key."""
    root = tmp_path_factory.mktemp("chain")
    project = root / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = project / "pipeline.yaml"
    text = pipeline.read_text()
    pipeline.write_text(text[: text.index("targets:\n")] + "targets:\n" + CPU + text[text.index("\ngates:"):])
    git(project, "init", "-q", "-b", "main")
    git(project, "remote", "add", "origin", REMOTE)  # never fetched: only named in the evidence
    git(project, "add", "-A")
    git(project, "commit", "-qm", "the example")
    home = root / "home"
    assert main(["run", str(pipeline), "--home", str(home), "--json"]) == 0
    (bundle,) = (home / "bundles" / NAME).iterdir()
    return {"root": root, "home": home, "bundle": bundle, "project": project,
            "key": home / "keys" / "signing-key.pem"}


def cli(built, capsys, *arguments) -> tuple[int, str, str]:
    code = main([*arguments, "--home", str(built["home"])])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def copy(built, tmp_path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(built["bundle"], folder)
    return folder


def resign(built, bundle: Path) -> Path:
    """Sign the bundle again with the build's own key, as an insider who changed it would."""
    (bundle / "model.sig").unlink()
    sign_bundle(bundle, built["key"])
    return bundle


def test_every_transformation_is_a_signed_link(built, capsys):
    code, out, _ = cli(built, capsys, "verify", f"{NAME}@1", "--chain", "--json")
    assert code == 0
    document = json.loads(out)
    links = {link["stage"]: link for link in document["chain"]}
    assert [link["stage"] for link in document["chain"]] == STAGES
    assert {link["signer"] for link in document["chain"]} == {document["signer"]}
    assert document["signer"].startswith("key:sha256:")

    bundle = built["bundle"]
    commit = git(built["project"], "rev-parse", "HEAD")
    export = links["export"]
    assert export["subjects"] == {"model/model.onnx": file_digest(bundle / "model" / "model.onnx")}
    # The source by the repository's remote URL, not the path it was built in.
    assert export["materials"][f"git+{REMOTE}@{commit}"] == commit
    assert export["materials"]["weights.pt"] == file_digest(EXAMPLE / "weights.pt")
    assert export["materials"]["model.py"] == file_digest(EXAMPLE / "model.py")
    assert document["imported"] == {"file": "weights.pt", "signed": False}
    # Each stage's output is the next one's input, with the digest of the bundle's file.
    assert links["calibrate"]["materials"]["model/model.onnx"] == export["subjects"]["model/model.onnx"]
    manifest = json.loads((bundle / "calibration" / "manifest.json").read_text())
    assert links["calibrate"]["materials"]["calibration-set"] == manifest["digest"]
    assert links["quantize"]["materials"]["calibration/table.json"] == file_digest(bundle / "calibration" / "table.json")
    assert links["compile"]["materials"]["model/model.qdq.onnx"] == file_digest(bundle / "model" / "model.qdq.onnx")
    assert "urn:tapeout:compiler:onnxruntime@1.32.0" in links["compile"]["materials"]
    compiled = json.loads((bundle / "compiled" / "compiler.json").read_text())["files"]
    assert sorted(links["compile"]["subjects"]) == sorted(f"compiled/{name}" for name in compiled)
    assert links["evaluate"]["subjects"] == links["compile"]["subjects"]
    gates = json.loads((bundle / "reports" / "gates.json").read_text())
    assert links["evaluate"]["materials"]["validation-set"] == gates["validation_set_digest"]

    # The statements are in-toto Statement v1: SLSA provenance per transformation, and the
    # evaluation a test result whose tests are the gates.
    for stage in STAGES:
        statement = statement_payload(bundle / "attestations" / f"{stage}.sigstore.json")
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        expected = "https://in-toto.io/attestation/test-result/v0.1" if stage == "evaluate" else "https://slsa.dev/provenance/v1"
        assert statement["predicateType"] == expected
    result = statement_payload(bundle / "attestations" / "evaluate.sigstore.json")["predicate"]
    assert result["result"] == "PASSED" and len(result["passedTests"]) == len(gates["gates"]) and not result["failedTests"]

    code, out, _ = cli(built, capsys, "verify", f"{NAME}@1", "--chain")
    assert code == 0 and "5 links verified" in out and "import     weights.pt: unsigned" in out


def _swap_quantized(built, bundle: Path) -> None:
    (bundle / "model" / "model.qdq.onnx").write_bytes((bundle / "model" / "model.onnx").read_bytes())


def _edit_statement(built, bundle: Path) -> None:
    """Change the quantize statement's payload (its subject digest), keeping its signature."""
    path = bundle / "attestations" / "quantize.sigstore.json"
    document = json.loads(path.read_text())
    import base64

    payload = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
    payload["subject"][0]["digest"]["sha256"] = "0" * 64
    document["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    path.write_text(json.dumps(document))


def _foreign_signer(built, bundle: Path) -> None:
    """The compile statement signed again, as it was, by a key the policy does not name."""
    from in_toto_attestation.v1.statement import Statement

    path = bundle / "attestations" / "compile.sigstore.json"
    statement = statement_payload(path)
    keys, _ = init_keys(bundle.parent / "other-keys")
    path.unlink()
    KeySigner(keys.private_key).sign_statement(
        Statement(_subjects(statement), statement["predicateType"], statement["predicate"]), path
    )


def _subjects(statement: dict):
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor

    return [ResourceDescriptor(name=item["name"], digest=item["digest"]).pb for item in statement["subject"]]


def _statement_of_another_stage(built, bundle: Path) -> None:
    shutil.copyfile(bundle / "attestations" / "calibrate.sigstore.json", bundle / "attestations" / "quantize.sigstore.json")


def _link_left_out(built, bundle: Path) -> None:
    index = json.loads((bundle / "bundle.json").read_text())
    index["chain"] = [entry for entry in index["chain"] if entry["stage"] != "evaluate"]
    (bundle / "bundle.json").write_text(json.dumps(index))
    (bundle / "attestations" / "evaluate.sigstore.json").unlink()


def _verdict_changed(built, bundle: Path) -> None:
    gates = json.loads((bundle / "reports" / "gates.json").read_text())
    gates["gates"][0]["passed"] = False
    gates["verdict"] = "fail"
    (bundle / "reports" / "gates.json").write_text(json.dumps(gates))


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_swap_quantized, ["quantize: model/model.qdq.onnx: the statement says sha256 ", "compile: model/model.qdq.onnx: the statement says sha256 "]),
        (_edit_statement, ["quantize: attestations/quantize.sigstore.json: signature is invalid"]),
        (_foreign_signer, ["compile: attestations/compile.sigstore.json: signer outside the policy"]),
        (_statement_of_another_stage, ["quantize: expected build type urn:tapeout:build-type:quantize:v1, found 'urn:tapeout:build-type:calibrate:v1'"]),
        (_link_left_out, ["evaluate: no statement in bundle.json's chain"]),
        (_verdict_changed, ["evaluate: result 'PASSED', but reports/gates.json's verdict is 'fail'"]),
    ],
    ids=["output-swapped", "statement-edited", "foreign-signer", "other-stage", "link-left-out", "verdict-changed"],
)
def test_a_tampered_link_is_refused_with_the_reason(built, capsys, tmp_path, tamper, expected):
    bundle = copy(built, tmp_path)
    tamper(built, bundle)
    # Whoever changed it without the key: the bundle's signature names the file.
    code, _, err = cli(built, capsys, "verify", str(bundle), "--chain")
    assert code == 1 and err.startswith("error: ") and "verification failed" in err
    # Whoever could sign the bundle again: the chain still refuses, naming the stage.
    resign(built, bundle)
    code, _, err = cli(built, capsys, "verify", str(bundle))
    assert code == 0, err
    code, _, err = cli(built, capsys, "verify", str(bundle), "--chain")
    assert code == 1, err
    for text in expected:
        assert text in err, err


def test_a_bundle_made_before_the_chain_verifies_and_says_it_has_none(built, capsys, tmp_path):
    bundle = copy(built, tmp_path)
    # Format 1, as tapeout wrote bundles before the chain: no bundle.json, attestations or BOM.
    for name in ("bundle.json", "sbom.cdx.json"):
        (bundle / name).unlink()
    shutil.rmtree(bundle / "attestations")
    resign(built, bundle)
    code, out, _ = cli(built, capsys, "verify", str(bundle))
    assert code == 0 and "files match the signature" in out
    code, _, err = cli(built, capsys, "verify", str(bundle), "--chain")
    assert code == 1
    assert "no chain of attestations: the bundle is format 1, made before tapeout recorded one" in err
    code, _, err = cli(built, capsys, "trace", str(bundle), "--sbom")
    assert code == 2 and "no sbom.cdx.json: the bundle was made before tapeout wrote one (format 1)" in err
    code, out, _ = cli(built, capsys, "trace", str(bundle), "--json")
    assert code == 0
    assert json.loads(out)["chain"]["format"] == 1


def test_a_bundle_of_a_newer_format_is_refused_by_name(built, capsys, tmp_path):
    bundle = copy(built, tmp_path)
    index = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**index, "format": 3}))
    resign(built, bundle)
    code, _, err = cli(built, capsys, "verify", str(bundle), "--chain")
    assert code == 2
    assert "bundle.json: format 3 is newer than this tapeout reads (formats 1 to 2)" in err


def test_the_bill_of_materials_is_cyclonedx_covered_by_the_signature(built, capsys, tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    code, out, _ = cli(built, capsys, "trace", f"{NAME}@1", "--sbom")
    assert code == 0
    assert out == (built["bundle"] / "sbom.cdx.json").read_text()
    validator = JsonStrictValidator(SchemaVersion.V1_6)
    assert validator.validate_str(out) is None
    document = json.loads(out)
    assert document["specVersion"] == "1.6"
    model = document["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["name"] == "digits-cnn"
    assert model["version"] == git(built["project"], "rev-parse", "HEAD")
    files = {item["name"]: item["hashes"][0]["content"] for item in model["components"]}
    for name in ("model/model.onnx", "model/model.qdq.onnx", "compiled/model.ort.onnx"):
        assert files[name] == file_digest(built["bundle"] / name)
    card = model["modelCard"]
    assert card["modelParameters"]["task"] == "classification"
    assert {metric["type"] for metric in card["quantitativeAnalysis"]["performanceMetrics"]} >= {"accuracy_drop"}
    components = {item["bom-ref"]: item for item in document["components"]}
    manifest = json.loads((built["bundle"] / "calibration" / "manifest.json").read_text())
    gates = json.loads((built["bundle"] / "reports" / "gates.json").read_text())
    assert components["data:calibration"]["hashes"][0]["content"] == manifest["digest"]
    assert components["data:validation"]["hashes"][0]["content"] == gates["validation_set_digest"]
    assert components["compiler"]["name"] == "onnxruntime" and components["compiler"]["version"] == "1.32.0"
    assert components["runtime"]["type"] == "firmware" and components["runtime"]["version"] == "1.32.0"
    from importlib.metadata import version

    assert components[f"pkg:pypi/onnxruntime@{version('onnxruntime')}"]["purl"] == f"pkg:pypi/onnxruntime@{version('onnxruntime')}"

    # The schema check is not vacuous: a model card field of the wrong type is refused.
    model["modelCard"]["modelParameters"]["datasets"] = "calibration"
    assert validator.validate_str(json.dumps(document)) is not None

    # The signature covers it: a changed bill of materials is not printed.
    bundle = copy(built, tmp_path)
    (bundle / "sbom.cdx.json").write_text(json.dumps(document))
    code, out, err = cli(built, capsys, "trace", str(bundle), "--sbom")
    assert code == 1 and out == "" and "sbom.cdx.json" in err


def test_trace_draws_the_chain(built, capsys, tmp_path):
    report = tmp_path / "trace.html"
    code, out, _ = cli(built, capsys, "trace", f"{NAME}@1", "--json", "--html", str(report))
    assert code == 0
    record = json.loads(out)
    assert record["chain"]["format"] == 2 and record["chain"]["verified"] is True
    assert [link["stage"] for link in record["chain"]["links"]] == STAGES
    page = report.read_text()
    commit = git(built["project"], "rev-parse", "HEAD")
    # One node per thing the chain links, each with its digest and whether its link verified.
    for node in ("commit", "fp32 model", "calibration set", "calibration table", "QDQ model", "compiled",
                 "gates", "bundle", "version"):
        assert f"<b>{node}</b>" in page, node
    assert commit[:12] in page and f"git+{REMOTE}@{commit}" in page
    assert str(built["project"]) not in page
    assert file_digest(built["bundle"] / "model" / "model.qdq.onnx")[:12] in page
    assert page.count("class=\"node ok\"") >= 8 and "class=\"node bad\"" not in page
    # The resolved config as YAML, not one line of JSON.
    assert "<pre class=yaml>" in page and "compiler: onnxruntime" in page

    bundle = copy(built, tmp_path)
    _swap_quantized(built, bundle)
    resign(built, bundle)
    code, out, _ = cli(built, capsys, "trace", str(bundle), "--html", str(report))
    assert code == 1
    assert "chain           BROKEN: quantize: model/model.qdq.onnx" in out
    assert "class=\"node bad\"" in report.read_text()
