"""The whole flow end to end through the command line: the example model from a commit to
a signed, registered bundle; a rerun; a failing gate; a tampered bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tapeout.artifacts.registry import Registry
from tapeout.flows.cli import main
from conftest import git, make_project

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

BUNDLE_FILES = {
    "model/model.onnx",
    "model/model.qdq.onnx",
    "calibration/calibration.npz",
    "calibration/manifest.json",
    "calibration/table.json",
    "compiled/model.ort.onnx",
    "compiled/session.json",
    "compiled/compiler.json",
    "reports/gates.json",
    "reports/benchmark.json",
    "reports/gates.md",  # the gate report people read (docs/accuracy.md)
    "reports/latency.png",
    "reports/accuracy.png",
    "reports/sensitivity.json",
    "reports/sensitivity.png",
    "config/pipeline.yaml",
    "provenance.json",
    # The chain of attestations, the bill of materials and the bundle's format (docs/trust.md).
    *(f"attestations/{stage}.sigstore.json" for stage in ("export", "calibrate", "quantize", "compile", "evaluate")),
    "sbom.cdx.json",
    "bundle.json",
    "model.sig",
}


def run_json(capsys, *arguments: str) -> tuple[int, dict]:
    code = main(["run", *arguments, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out)


@pytest.fixture(scope="module")
def built(tmp_path_factory, prefect_harness):
    """One real build of the example, shared by the tests that inspect its results."""
    root = tmp_path_factory.mktemp("e2e")
    pipeline = make_project(root)
    home = root / "home"
    code = main(["run", str(pipeline), "--home", str(home), "--json"])
    return {"code": code, "pipeline": pipeline, "home": home, "root": root}


def test_run_registers_a_signed_bundle_with_every_design_file(built, capsys):
    assert built["code"] == 0
    registry = Registry(f"sqlite:///{built['home'] / 'mlflow.db'}", built["home"] / "artifacts")
    version = registry.resolve("digits-cnn-cpu@candidate")
    commit = git(built["pipeline"].parent, "rev-parse", "HEAD")
    assert version.version == "1"
    assert version.tags["commit"] == commit
    assert version.tags["gate_verdict"] == "pass"
    assert version.tags["compiler"] == "onnxruntime"
    assert version.tags["firmware_revision"] == "1.32.0"
    assert version.tags["signer"].startswith("key:sha256:")
    bundle = next((built["home"] / "bundles" / "digits-cnn-cpu").iterdir())
    files = {path.relative_to(bundle).as_posix() for path in bundle.rglob("*") if path.is_file()}
    assert files == BUNDLE_FILES
    provenance = json.loads((bundle / "provenance.json").read_text())
    assert provenance["predicateType"] == "https://slsa.dev/provenance/v1"
    dependencies = provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert dependencies[0]["digest"]["gitCommit"] == commit
    assert {"onnx", "onnxruntime", "torch", "python", "tapeout"} <= set(
        provenance["predicate"]["buildDefinition"]["internalParameters"]["environment"]
    )
    gates = json.loads((bundle / "reports" / "gates.json").read_text())
    assert gates["verdict"] == "pass"
    assert {gate["metric"] for gate in gates["gates"]} == {"accuracy_drop", "top1_agreement", "latency_p95_ms"}


def test_reports_open_and_match_the_mlflow_metrics(built):
    from PIL import Image

    registry = Registry(f"sqlite:///{built['home'] / 'mlflow.db'}", built["home"] / "artifacts")
    version = registry.resolve("digits-cnn-cpu@candidate")
    metrics = registry._client.get_run(version.run_id).data.metrics
    bundle = next((built["home"] / "bundles" / "digits-cnn-cpu").iterdir())
    for plot in ("latency.png", "accuracy.png", "sensitivity.png"):
        with Image.open(bundle / "reports" / plot) as image:
            assert image.format == "PNG" and image.size[0] > 100
    gates = json.loads((bundle / "reports" / "gates.json").read_text())
    markdown = (bundle / "reports" / "gates.md").read_text()
    assert "**Verdict: PASS**" in markdown and gates["validation_set_digest"] in markdown
    for gate in gates["gates"]:
        assert gate["observed"] == pytest.approx(metrics[gate["metric"]], rel=1e-12)
        assert f"| {gate['metric']} | " in markdown and f"{metrics[gate['metric']]:.6g}" in markdown
    for metric in ("latency_p99_ms", "throughput_per_s", "warmup_ms", "output_sqnr_db", "output_cosine"):
        assert f"| {metric} | {metrics[metric]:.6g} |" in markdown
    sensitivity = json.loads((bundle / "reports" / "sensitivity.json").read_text())
    assert sensitivity["data"]["samples_used"] == 200
    assert {layer["node"] for layer in sensitivity["layers"]} >= {"node_conv2d", "node_linear_1"}


def test_build_summary_compares_every_target_with_the_numbers_their_runs_logged(built):
    from PIL import Image

    commit = git(built["pipeline"].parent, "rev-parse", "HEAD")
    (folder,) = (built["home"] / "reports" / commit[:12]).iterdir()  # this build's own folder
    with Image.open(folder / "accuracy-per-target.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    markdown = (folder / "summary.md").read_text()
    registry = Registry(f"sqlite:///{built['home'] / 'mlflow.db'}", built["home"] / "artifacts")
    client = registry._client
    experiment = client.get_experiment_by_name("digits-cnn")
    (summary,) = client.search_runs([experiment.experiment_id], f"tags.build_summary = '{commit}'")
    for target in ("cpu", "npu-int8", "ethos-u55", "x86-openvino", "cpu-fp16"):
        version = registry.resolve(f"digits-cnn-{target}@candidate")
        logged = client.get_run(version.run_id).data.metrics
        assert summary.data.metrics[f"{target}.accuracy"] == logged["accuracy"]
        assert f"| {target} | pass | {version.version} | — |" in markdown
        assert f"| {target} | {logged['accuracy']:.4g} |" in markdown
    # The budget of npu-int8 became a gate on the memory plan's peak.
    npu = client.get_run(registry.resolve("digits-cnn-npu-int8@candidate").run_id).data.metrics
    bundle = next((built["home"] / "bundles" / "digits-cnn-npu-int8").iterdir())
    gates = {gate["metric"]: gate for gate in json.loads((bundle / "reports" / "gates.json").read_text())["gates"]}
    assert gates["peak_memory_bytes"]["threshold"] == 65536 and gates["peak_memory_bytes"]["observed"] == npu["peak_memory_bytes"]


def test_verify_and_trace_by_registry_reference(built, capsys):
    home = ["--home", str(built["home"])]
    assert main(["verify", "digits-cnn-cpu@candidate", *home]) == 0
    assert "files match the signature" in capsys.readouterr().out
    assert main(["trace", "digits-cnn-cpu@1", "--json", *home]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source"]["commit"] == git(built["pipeline"].parent, "rev-parse", "HEAD")
    assert record["calibration_set"]["count"] == 300
    assert record["compiler"]["name"] == "onnxruntime"
    assert record["firmware"]["revision"] == "1.32.0"
    assert record["verification"]["verified"] is True
    assert record["registry"]["bundle_digest_matches_tag"] is True
    assert main(["trace", "digits-cnn-cpu@1", *home]) == 0
    text = capsys.readouterr().out
    assert "calibration set" in text and "verified now" in text


def test_rerun_of_the_same_commit_reports_the_existing_version(built, capsys):
    code, document = run_json(capsys, str(built["pipeline"]), "--home", str(built["home"]))
    assert code == 0
    assert document["targets"][0]["reused"] is True
    assert document["targets"][0]["version"] == "1"


def test_tampered_bundle_fails_verify_naming_the_file(built, capsys, tmp_path):
    import shutil

    bundle = next((built["home"] / "bundles" / "digits-cnn-cpu").iterdir())
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    table = copy / "calibration" / "table.json"
    table.write_text(table.read_text().replace("0.", "1.", 1))
    code = main(["verify", str(copy), "--home", str(built["home"])])
    error = capsys.readouterr().err
    assert code == 1
    assert "calibration/table.json" in error and "Traceback" not in error


def test_failing_gate_exits_1_records_the_run_and_registers_nothing(built, capsys):
    project = built["pipeline"].parent
    pipeline = built["pipeline"]
    pipeline.write_text(pipeline.read_text().replace("top1_agreement: {min: 0.97}", "top1_agreement: {min: 1.01}"))
    git(project, "commit", "-qam", "impossible agreement gate")
    home = built["home"]
    code, document = run_json(capsys, str(pipeline), "--home", str(home))
    assert code == 1
    target = document["targets"][0]
    assert target["gate_verdict"] == "fail" and target["version"] is None
    assert "top1_agreement" in target["message"] and "off by" in target["message"]
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
    commit = git(project, "rev-parse", "HEAD")
    assert registry.find_version("digits-cnn-cpu", {"commit": commit}) is None
    assert registry.resolve("digits-cnn-cpu@candidate").version == "1"
    runs = registry._client.search_runs(
        [registry._client.get_experiment_by_name("digits-cnn").experiment_id],
        f"tags.commit = '{commit}'",
    )
    assert len(runs) == len(document["targets"])  # one run per target, each recorded as failed
    assert {run.info.status for run in runs} == {"FAILED"}
    assert all("top1_agreement" in run.data.tags["failed_gates"] for run in runs)


def test_not_a_git_repository_is_refused_with_what_to_do(tmp_path, capsys):
    import shutil

    from conftest import EXAMPLE

    project = tmp_path / "loose"
    shutil.copytree(EXAMPLE, project)
    for extra in ([], ["--commit", "abc123"]):  # a commit cannot be named outside a repository
        code = main(["run", str(project / "pipeline.yaml"), "--home", str(tmp_path / "home"), *extra])
        assert code == 2
        assert "not inside a git repository; tapeout builds commits (git init" in capsys.readouterr().err
