"""The accuracy-aware fallback on a model built so that one layer breaks int8."""

from __future__ import annotations

import json

import pytest

from outlier_model import CPU_TARGET, ETHOS_TARGET, NPU_TARGET, OUTLIER_LAYER, write_project
from tapeout.compilers.registry import load_compiler
from tapeout.flows import stages
from tapeout.flows.config import Threshold, load_pipeline
from tapeout.flows.fallback import accuracy_gate_failed, fallback_mode, search
from tapeout.flows.gates import check_gates
from tapeout.flows.sensitivity import analyse


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Everything up to the plain (all-int8) gate of the `cpu` target, without Prefect."""
    root = tmp_path_factory.mktemp("fallback")
    pipeline = load_pipeline(write_project(root / "project", CPU_TARGET + NPU_TARGET))
    model = stages.export_stage(pipeline, root / "export")
    calibrated = stages.calibrate_stage(pipeline, model, stages.calibration_set(pipeline, model), root / "calibrate")
    quantized = stages.quantize_stage(model, calibrated, root / "quantize")
    validation = stages.validation_set(pipeline, model)
    reference = stages.reference_stage(model, validation, root / "reference")
    sensitivity = analyse(
        model.path, quantized, validation, table=calibrated.table, top_k=3, workdir=root / "sensitivity"
    )
    return {
        "root": root, "pipeline": pipeline, "model": model, "calibrated": calibrated, "quantized": quantized,
        "validation": validation, "reference": reference, "sensitivity": sensitivity,
    }


def _plain(prepared, target_name: str):
    pipeline = prepared["pipeline"]
    target = next(t for t in pipeline.config.targets if t.name == target_name)
    profile = pipeline.target_profile(target)
    artifact = stages.compile_stage(prepared["quantized"], profile, prepared["root"] / f"compile-{target_name}")
    evaluation = stages.evaluate_stage(artifact, prepared["validation"], prepared["reference"])
    return target, profile, artifact, stages.gate_stage(pipeline, target, evaluation)


def _search(prepared, target_name: str, budget: int = 4, thresholds=None, capabilities=None):
    pipeline = prepared["pipeline"]
    target, profile, artifact, gated = _plain(prepared, target_name)

    def attempt(model, folder):
        compiled = stages.compile_stage(model, profile, folder)
        evaluation = stages.evaluate_stage(compiled, prepared["validation"], prepared["reference"])
        if thresholds is not None:
            return compiled, stages.Gated(evaluation, check_gates(thresholds, evaluation.metrics))
        return compiled, stages.gate_stage(pipeline, target, evaluation)

    if thresholds is not None:
        gated = stages.Gated(gated.evaluation, check_gates(thresholds, gated.evaluation.metrics))
    result = search(
        float_path=prepared["model"].path, table=prepared["calibrated"].table, quantized=prepared["quantized"],
        artifact=artifact, gated=gated, sensitivity=prepared["sensitivity"], profile=profile,
        capabilities=capabilities or load_compiler(profile.compiler).capabilities(), budget=budget, attempt_fn=attempt,
        workdir=prepared["root"] / f"fallback-{target_name}-{budget}",
    )
    return gated, result


def test_mode_comes_from_the_compilers_capabilities():
    assert fallback_mode(load_compiler("onnxruntime").capabilities())[0] == "fp32"
    mode, reason = fallback_mode(load_compiler("int8-ref").capabilities())
    assert mode == "int16" and "integer-only" in reason
    mode, reason = fallback_mode(load_compiler("ethos-u").capabilities())
    assert mode is None and "integer-only" in reason and "int16" in reason


def test_cpu_passes_by_keeping_exactly_the_outlier_layer_in_fp32(prepared):
    gated, result = _search(prepared, "cpu")
    assert not gated.passed and accuracy_gate_failed(gated.gates)  # the plain run fails the gate
    assert result.passed and result.chosen == 1
    assert result.kept_out == (OUTLIER_LAYER,)
    assert [attempt.kept_out for attempt in result.attempts] == [(), (OUTLIER_LAYER,)]  # smallest set: stop
    assert result.gated.passed and result.gated.evaluation.metrics["top1_agreement"] >= 0.97
    assert result.quantized.digest != prepared["quantized"].digest
    document = result.to_document()
    assert document["verdict"] == "pass" and document["attempts_made"] == 1
    assert document["kept_out"] == [
        {"node": OUTLIER_LAYER, "representation": "fp32", "why": result.reasons[OUTLIER_LAYER]}
    ]
    assert "median channel SQNR" in result.reasons[OUTLIER_LAYER]
    assert document["attempts"][0]["passed"] is False and document["attempts"][1]["passed"] is True
    json.dumps(document)


def test_integer_only_npu_passes_with_exactly_the_outlier_layer_in_int16(prepared):
    import onnx

    gated, result = _search(prepared, "npu-int8")
    assert not gated.passed and accuracy_gate_failed(gated.gates)
    assert result.passed and result.mode == "int16" and result.kept_out == (OUTLIER_LAYER,)
    assert result.gated.evaluation.metrics["top1_agreement"] >= 0.97
    assert result.to_document()["kept_out"][0]["representation"] == "int16"
    # The compiled model widens fc1's output (its fused Relu's) to int16, and nothing else.
    model = onnx.load(str(result.quantized.path))
    zero_points = {tensor.name: tensor.data_type for tensor in model.graph.initializer}
    widened = {
        node.input[0] for node in model.graph.node
        if node.op_type == "QuantizeLinear" and zero_points.get(node.input[2]) == onnx.TensorProto.INT16
    }
    assert widened == {"r1"}
    assert result.artifact.compiler == "int8-ref"


def test_a_target_without_float_or_int16_fails_with_its_plain_numbers(prepared):
    ethos = load_compiler("ethos-u").capabilities()  # integer-only, int8 alone
    gated, result = _search(prepared, "npu-int8", capabilities=ethos)
    assert not result.passed and result.chosen is None and result.best == 0
    assert len(result.attempts) == 1 and result.mode is None
    assert result.gated is gated  # the best attempt's numbers are the plain run's


def test_an_attempt_that_cannot_be_built_is_recorded_and_its_layer_left_out(prepared):
    from tapeout.compilers.errors import CompilationFailed

    pipeline = prepared["pipeline"]
    target, profile, artifact, gated = _plain(prepared, "cpu")
    calls = []

    def attempt(model, folder):  # the compiler refuses the first attempt's model
        calls.append(model.path)
        if len(calls) == 1:
            raise CompilationFailed(f"refused {model.path.name}")
        compiled = stages.compile_stage(model, profile, folder)
        evaluation = stages.evaluate_stage(compiled, prepared["validation"], prepared["reference"])
        return compiled, stages.Gated(evaluation, check_gates({"top1_agreement": Threshold(min=1.01)}, evaluation.metrics))

    said = []
    result = search(
        float_path=prepared["model"].path, table=prepared["calibrated"].table, quantized=prepared["quantized"],
        artifact=artifact, gated=gated, sensitivity=prepared["sensitivity"], profile=profile,
        capabilities=load_compiler("onnxruntime").capabilities(), budget=3, attempt_fn=attempt,
        workdir=prepared["root"] / "fallback-refused", progress=said.append,
    )
    first, second, third = (layer.node for layer in prepared["sensitivity"].ranked()[:3])
    assert [a.kept_out for a in result.attempts] == [(), (first,), (second,), (second, third)]
    assert "refused model.qdq.onnx" in result.attempts[1].error and result.attempts[1].quantized_sha256 is None
    assert result.to_document()["attempts"][1]["error"] == result.attempts[1].error
    # The progress line says why the layer was dropped, and why each layer is tried.
    assert f"[cpu] fallback attempt 1/3: {first} dropped, later attempts go on without it: it cannot be built " \
        "in fp32 (refused model.qdq.onnx)" in said
    assert any(line.startswith(f"[cpu] fallback attempt 2/3: {second} in fp32, adding ") and "SQNR" in line for line in said)
    assert any(line.startswith("[cpu] fallback attempt 2/3: still failing: top1_agreement") for line in said)


def test_no_passing_attempt_reports_the_best_within_the_budget(prepared):
    impossible = {"top1_agreement": Threshold(min=1.01)}
    gated, result = _search(prepared, "cpu", budget=2, thresholds=impossible)
    assert not result.passed and len(result.attempts) == 3  # the plain model and two attempts
    best = result.attempts[result.best]
    assert best.kept_out and best.metrics["top1_agreement"] == max(a.metrics["top1_agreement"] for a in result.attempts)
    assert result.gated.evaluation.metrics == best.metrics
    assert result.to_document()["verdict"] == "fail"


def test_budget_zero_makes_no_attempt(prepared):
    _, result = _search(prepared, "cpu", budget=0)
    assert not result.passed and len(result.attempts) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_each_target_repairs_itself_or_fails_with_its_reason(tmp_path, capsys):
    from conftest import git
    from tapeout.artifacts.registry import Registry
    from tapeout.flows.cli import main

    costed = "    cost_model: {energy_per_mac_pj: 0.5, energy_per_byte_pj: 10.0}\n"
    energy_gate = "  energy_per_inference_uj_estimate: {max: 1.0}\n"
    targets = CPU_TARGET + costed + NPU_TARGET + costed + ETHOS_TARGET + costed
    pipeline = write_project(tmp_path / "project", targets, extra=energy_gate)
    git(pipeline.parent, "init", "-q", "-b", "main")
    git(pipeline.parent, "add", "-A")
    git(pipeline.parent, "commit", "-qm", "outlier")
    home = tmp_path / "home"
    code = main(["run", str(pipeline), "--home", str(home), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 1
    cpu, npu, ethos = document["targets"]
    assert cpu["gate_verdict"] == "pass" and cpu["version"] == "1"
    assert f"kept {OUTLIER_LAYER} in fp32" in cpu["message"]
    assert npu["gate_verdict"] == "pass" and npu["version"] == "1"
    assert f"kept {OUTLIER_LAYER} in int16" in npu["message"]
    assert ethos["gate_verdict"] == "fail" and ethos["version"] is None
    assert "integer-only" in ethos["message"]

    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
    version = registry.resolve("outlier-cpu@candidate")
    assert version.tags["fallback_kept_out"] == OUTLIER_LAYER
    assert registry.resolve("outlier-npu-int8@candidate").tags["fallback_kept_out"] == OUTLIER_LAYER
    bundle = next((home / "bundles" / "outlier-cpu").iterdir())
    fallback = json.loads((bundle / "reports" / "fallback.json").read_text())
    assert [item["node"] for item in fallback["kept_out"]] == [OUTLIER_LAYER]
    assert fallback["attempts"][0]["passed"] is False  # the plain run failed the gate
    sensitivity = json.loads((bundle / "reports" / "sensitivity.json").read_text())
    assert sensitivity["layers"][0]["node"] == OUTLIER_LAYER
    markdown = (bundle / "reports" / "gates.md").read_text()
    assert f"`{OUTLIER_LAYER}` in fp32" in markdown and "an ESTIMATE**" in markdown
    energy = next(g for g in cpu["gates"] if g["metric"] == "energy_per_inference_uj_estimate")
    assert energy["passed"] and 0 < energy["observed"] < 1.0
    npu_bundle = next((home / "bundles" / "outlier-npu-int8").iterdir())
    npu_gates = json.loads((npu_bundle / "reports" / "gates.json").read_text())
    assert "lowered kernel program" in npu_gates["notes"]["energy_work_source"]  # int8-ref counted its own
    assert json.loads((npu_bundle / "reports" / "fallback.json").read_text())["mode"] == "int16"
    assert main(["verify", str(bundle), "--home", str(home)]) == 0  # the reports are signed too
    assert main(["explain", "outlier-cpu@1", "--home", str(home)]) == 0
    assert f"{OUTLIER_LAYER} in fp32" in capsys.readouterr().out

    experiment = registry._client.get_experiment_by_name("outlier").experiment_id
    (failed,) = registry._client.search_runs([experiment], "tags.target = 'ethos-u55'")
    assert failed.info.status == "FAILED"
    logged = {item.path for item in registry._client.list_artifacts(failed.info.run_id, "reports")}
    assert {"reports/gates.json", "reports/gates.md", "reports/fallback.json", "reports/sensitivity.json"} <= logged


def test_fallback_and_sensitivity_sections_are_validated(tmp_path):
    from tapeout.flows.config import ConfigError

    pipeline = write_project(tmp_path / "project", extra="fallback: {budget: 2, enabled: false}\nsensitivity: {top_k: 0}\n")
    config = load_pipeline(pipeline).config
    assert config.fallback.budget == 2 and not config.fallback.enabled and config.sensitivity.top_k == 0
    assert load_pipeline(write_project(tmp_path / "defaults")).config.fallback.budget == 4
    pipeline.write_text(pipeline.read_text().replace("budget: 2", "budget: -1"))
    with pytest.raises(ConfigError, match=r"fallback\.budget"):
        load_pipeline(pipeline)
    pipeline.write_text(pipeline.read_text().replace("budget: -1", "tries: 3"))
    with pytest.raises(ConfigError, match="unknown field"):
        load_pipeline(pipeline)
