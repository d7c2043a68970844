"""Ops Vela leaves on the CPU: reported with their MACs, allowed with `*`, gated by the NPU's share
of MACs, and shown by `tapeout compat --compiler ethos-u` before any build."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("ethosu.vela")
pytest.importorskip("flatbuffers")
pytest.importorskip("ai_edge_litert")

from ethos_u_models import conv_node, make_model, quantize_model, tensor, weight  # noqa: E402
from onnx import helper  # noqa: E402

from tapeout.compilers.errors import CompilationFailed, InvalidInput  # noqa: E402
from tapeout.compilers.ethos_u import EthosUCompiler, resolve_options  # noqa: E402
from tapeout.compilers.interface import QuantizedModel, TargetProfile, TensorSpec  # noqa: E402

# Vela runs a depthwise convolution of stride 4 on the CPU (its constraint: stride 1 to 3).
CONV_MACS = (4 * 16 * 16) * (3 * 3 * 3)  # output elements x (kernel height x width x input channels)
STRIDED_MACS = (4 * 4 * 4) * (4 * 4)     # output elements x (kernel height x width)


@pytest.fixture(scope="module")
def strided_model(tmp_path_factory) -> QuantizedModel:
    """A 3x3 convolution (NPU), then a depthwise 4x4 convolution of stride 4 (CPU)."""
    directory = tmp_path_factory.mktemp("strided")
    conv, weights = conv_node()
    strided = helper.make_node("Conv", ["c", "s_w", "s_b"], ["y"], group=4, kernel_shape=[4, 4], strides=[4, 4],
                               name="strided")
    model = make_model([conv, strided], [tensor("x", [1, 3, 16, 16])], [tensor("y", [1, 4, 4, 4])],
                       [*weights, weight("s_w", [4, 1, 4, 4], 3), weight("s_b", [4], 4)])
    path = quantize_model(model, directory)
    return QuantizedModel(path, hashlib.sha256(path.read_bytes()).hexdigest(), path,
                          (TensorSpec("x", (1, 3, 16, 16), "float32"),), (TensorSpec("y", (1, 4, 4, 4), "float32"),))


def target(**options) -> TargetProfile:
    return TargetProfile("ethos-u55", "ethos-u", "25.08", {"accelerator_config": "ethos-u55-128", **options})


@pytest.fixture(scope="module")
def anything_on_cpu(strided_model, tmp_path_factory):
    return EthosUCompiler().compile(strided_model, target(allowed_cpu_ops="*"), tmp_path_factory.mktemp("any"))


def test_star_allows_any_op_and_the_report_lists_each_with_its_macs(anything_on_cpu):
    report = anything_on_cpu.report
    assert report["cpu_operators"] == [
        {"op": "DEPTHWISE_CONV_2D", "output": "y_QuantizeLinear_Output", "macs": STRIDED_MACS}
    ]
    assert report["macs_total"] == CONV_MACS + STRIDED_MACS and report["macs_on_cpu"] == STRIDED_MACS
    assert report["npu_mac_share"] == pytest.approx(CONV_MACS / (CONV_MACS + STRIDED_MACS))
    assert report["vela_estimate"]["cpu_operators"] == ["DEPTHWISE_CONV_2D"]


def test_without_star_the_cpu_op_fails_the_compile(strided_model, tmp_path):
    with pytest.raises(CompilationFailed, match=r"expected every op on the NPU.*DEPTHWISE_CONV_2D \(output "
                                                r"'y_QuantizeLinear_Output'\)"):
        EthosUCompiler().compile(strided_model, target(), tmp_path)


def test_star_is_all_or_nothing():
    assert resolve_options({"allowed_cpu_ops": " * "}).allowed_cpu_ops == ("*",)
    with pytest.raises(InvalidInput, match="option allowed_cpu_ops"):
        resolve_options({"allowed_cpu_ops": "*,SOFTMAX"})


def test_npu_mac_share_is_a_gate(anything_on_cpu, strided_model, tmp_path):
    from tapeout.calibration.dataset import load_sample_set
    from tapeout.flows.config import Threshold
    from tapeout.flows.evaluate import Predictions
    from tapeout.flows.gates import check_gates
    from tapeout.flows.stages import evaluate_stage

    samples = np.random.default_rng(0).uniform(-1, 2, (4, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "validation.npz", x=samples)
    validation = load_sample_set(tmp_path / "validation.npz", strided_model.inputs)
    metrics = evaluate_stage(anything_on_cpu, validation, Predictions(np.zeros(4, np.int64))).metrics
    share = anything_on_cpu.report["npu_mac_share"]
    assert metrics["npu_mac_share"] == share
    strict, loose = (check_gates({"npu_mac_share": Threshold(min=bound)}, metrics)[0] for bound in (0.99, 0.9))
    assert not strict.passed and strict.observed == share and strict.bound == "min"
    assert loose.passed


def test_pipeline_config_accepts_the_gate(tmp_path):
    from conftest import EXAMPLE

    from tapeout.flows.config import load_pipeline

    text = (EXAMPLE / "pipeline.yaml").read_text().replace(
        "gates:\n  accuracy_drop: {max: 0.02}", "gates:\n  npu_mac_share: {min: 0.95}\n  accuracy_drop: {max: 0.02}"
    )
    (tmp_path / "pipeline.yaml").write_text(text)
    gates = load_pipeline(tmp_path / "pipeline.yaml").config.gates
    assert gates["npu_mac_share"].min == 0.95


def test_compat_shows_where_each_op_runs_before_a_build(strided_model, capsys):
    from tapeout.flows.cli import main

    code = main(["compat", str(strided_model.path), "--compiler", "ethos-u",
                 "--option", "accelerator_config=ethos-u55-128"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].split()[:3] == ["NPU", "CONV_2D", f"{CONV_MACS:,}"]
    assert lines[1].split()[:3] == ["CPU", "DEPTHWISE_CONV_2D", f"{STRIDED_MACS:,}"]
    assert "stride" in lines[1]  # Vela's reason
    assert lines[-1] == (f"2 ops, 1 on the CPU; NPU share of {CONV_MACS + STRIDED_MACS:,} MACs: "
                         f"{CONV_MACS / (CONV_MACS + STRIDED_MACS):.2%}")
    code = main(["compat", str(strided_model.path), "--compiler", "ethos-u", "--json"])
    placed = json.loads(capsys.readouterr().out)
    assert code == 0 and [op["unit"] for op in placed["operators"]] == ["NPU", "CPU"]


def test_compat_names_a_bad_option_or_compiler(strided_model, capsys):
    from tapeout.flows.cli import main

    assert main(["compat", str(strided_model.path), "--compiler", "ethos-u", "--option", "accelerator_config=u99"]) == 2
    assert "option accelerator_config: expected one of" in capsys.readouterr().err
    assert main(["compat", str(strided_model.path), "--compiler", "no-such"]) == 2
    assert "'no-such': not registered" in capsys.readouterr().err
