"""The `ethos-u` compiler plugin: Vela artifacts, estimates, budgets, CPU-op gate, runner."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from tapeout.compilers.errors import CompilationFailed, InvalidInput, UnsupportedOperator
from tapeout.compilers.interface import QuantizedModel, Runner, TargetProfile


def test_plugin_imports_without_the_extra():
    code = (
        "import sys\n"
        "for name in ('ethosu', 'ethosu.vela', 'flatbuffers', 'ai_edge_litert'):\n"
        "    sys.modules[name] = None\n"
        "from tapeout.compilers.ethos_u import EthosUCompiler\n"
        "compiler = EthosUCompiler()\n"
        "print(compiler.name, compiler.version, sorted(compiler.capabilities().operators)[:2])\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ethos-u 5.2.0")


pytest.importorskip("ethosu.vela")
pytest.importorskip("flatbuffers")
pytest.importorskip("ai_edge_litert")

from tapeout.compilers.ethos_u import EthosUCompiler, resolve_options  # noqa: E402
from tapeout.compilers.ethos_u.compiler import ESTIMATE  # noqa: E402
from tapeout.compilers.registry import load_compiler  # noqa: E402


def target(**options) -> TargetProfile:
    budget = options.pop("memory_budget_bytes", None)
    return TargetProfile("ethos-u55", "ethos-u", "25.08", options, budget)


@pytest.fixture(scope="module")
def u55(quantized_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ethos-u55")
    return EthosUCompiler().compile(quantized_model, target(accelerator_config="ethos-u55-128"), directory)


def test_registered_through_the_entry_point():
    compiler = load_compiler("ethos-u")
    assert compiler.name == "ethos-u" and compiler.version == "5.2.0"
    assert {"Conv", "Gemm", "Softmax"} <= compiler.capabilities().operators


def test_artifact_keeps_both_models_csvs_command_and_ini(u55):
    for name in u55.files:
        assert (u55.directory / name).is_file(), name
    assert {"model_int8.tflite", "model_vela.tflite", "vela_summary.csv", "vela_per_layer.csv",
            "vela.ini", "vela_command.json"} <= set(u55.files)
    command = json.loads((u55.directory / "vela_command.json").read_text())
    assert command["vela_version"] == "5.2.0"
    assert command["command"][:4] == ["vela", "model_int8.tflite", "--accelerator-config", "ethos-u55-128"]
    assert u55.options["system_config"] == "Ethos_U55_High_End_Embedded"
    assert u55.artifact_id.startswith("ethos-u-5.2.0-")


def test_report_carries_labelled_vela_estimates(u55):
    estimate = u55.report["vela_estimate"]
    assert estimate["label"] == ESTIMATE and ESTIMATE in u55.report["estimate_source"]
    assert estimate["cpu_operators"] == []
    assert estimate["cycles_total"] > 0 and estimate["inferences_per_second"] > 1000
    assert 0 < estimate["sram_bytes"] < 64 * 1024 and estimate["flash_bytes"] > 9000
    assert u55.report["peak_memory_bytes"] == estimate["sram_bytes"]
    assert "not run" in u55.report["runner"]


def test_cost_is_vela_count_of_the_npu_program(u55):
    from tapeout.compilers.cost import Cost

    cost = Cost.from_report(u55.report)
    summary = next(csv.DictReader((u55.directory / "vela_summary.csv").open()))
    assert cost is not None and cost.macs == int(float(summary["nn_macs"])) == 103744 and cost.batch == 1
    # Every read: the activations from SRAM and the weights streamed from off-chip flash.
    assert cost.bytes_read == sum(int(float(v)) for k, v in summary.items() if k.endswith("_read_bytes"))
    assert cost.bytes_read > int(float(summary["off_chip_flash_weight_read_bytes"])) > 9000
    assert cost.bytes_written > 0 and "Vela" in cost.source


def test_runner_runs_the_int8_tflite_like_onnxruntime(u55, quantized_model):
    import onnxruntime

    runner = EthosUCompiler().load(u55)
    assert isinstance(runner, Runner)
    session = onnxruntime.InferenceSession(str(quantized_model.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        feed = {"image": rng.uniform(0, 1, (1, 1, 16, 16)).astype(np.float32)}
        np.testing.assert_array_equal(runner.run(feed)["logits"], session.run(None, feed)[0])
    with pytest.raises(InvalidInput, match="expected shape"):
        runner.run({"image": np.zeros((1, 16, 16, 1), np.float32)})


def test_vela_output_is_byte_deterministic(u55, quantized_model, tmp_path):
    again = EthosUCompiler().compile(quantized_model, target(accelerator_config="ethos-u55-128"), tmp_path)
    for name in ("model_int8.tflite", "model_vela.tflite", "vela_summary.csv"):
        assert (again.directory / name).read_bytes() == (u55.directory / name).read_bytes(), name


@pytest.mark.parametrize("accelerator", ["ethos-u65-256", "ethos-u85-256"])
def test_other_npus_compile(quantized_model, tmp_path, accelerator):
    artifact = EthosUCompiler().compile(quantized_model, target(accelerator_config=accelerator), tmp_path)
    assert artifact.report["vela_estimate"]["accelerator_config"] == accelerator
    assert artifact.report["vela_estimate"]["cpu_operators"] == []


def test_sram_budget_is_checked(quantized_model, tmp_path):
    with pytest.raises(CompilationFailed, match=r"SRAM budget exceeded: expected at most 1024 bytes, found \d+"):
        EthosUCompiler().compile(quantized_model, target(sram_budget_bytes="1024"), tmp_path)


def test_memory_budget_is_gated_not_refused(quantized_model, tmp_path):
    """memory_budget_bytes means one thing for every compiler: the pipeline's peak_memory_bytes
    gate (here on Vela's SRAM estimate); only sram_budget_bytes refuses the compile."""
    artifact = EthosUCompiler().compile(quantized_model, target(memory_budget_bytes=2048), tmp_path)
    assert artifact.report["peak_memory_bytes"] > 2048
    assert artifact.options["sram_budget_bytes"] == ""


def test_flash_budget_is_checked(quantized_model, tmp_path):
    with pytest.raises(CompilationFailed, match=r"flash budget exceeded: expected at most 4096 bytes"):
        EthosUCompiler().compile(quantized_model, target(flash_budget_bytes="4096"), tmp_path)


def test_inferences_per_second_sla_is_checked(quantized_model, tmp_path):
    with pytest.raises(CompilationFailed, match=f"below the SLA.*{ESTIMATE}"):
        EthosUCompiler().compile(quantized_model, target(min_inferences_per_second="1e9"), tmp_path)


def _cpu_fallback_model(directory) -> QuantizedModel:
    """A 9x9 SAME average pool, which Vela leaves to the CPU on the Ethos-U55."""
    import hashlib

    from ethos_u_models import quantize_model, with_conv
    from onnx import helper

    model = with_conv([helper.make_node("AveragePool", ["c"], ["y"], kernel_shape=[9, 9], pads=[4, 4, 4, 4])],
                       [1, 4, 8, 8])
    path = quantize_model(model, directory)
    from tapeout.compilers.interface import TensorSpec

    return QuantizedModel(path, hashlib.sha256(path.read_bytes()).hexdigest(), directory / "float.onnx",
                          (TensorSpec("x", (1, 3, 8, 8), "float32"),), (TensorSpec("y", (1, 4, 8, 8), "float32"),))


def test_ops_left_on_the_cpu_fail_unless_allowed(tmp_path):
    model = _cpu_fallback_model(tmp_path)
    with pytest.raises(CompilationFailed, match=r"expected every op on the NPU.*AVERAGE_POOL_2D"):
        EthosUCompiler().compile(model, target(), tmp_path / "strict")
    artifact = EthosUCompiler().compile(model, target(allowed_cpu_ops="average_pool_2d"), tmp_path / "allowed")
    assert artifact.report["vela_estimate"]["cpu_operators"] == ["AVERAGE_POOL_2D"]


def test_unsupported_node_is_named_for_this_compiler(tmp_path):
    from ethos_u_models import quantize_model, with_conv
    from onnx import helper

    from onnx import numpy_helper

    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    resize = helper.make_node("Resize", ["c", "", "scales"], ["y"], name="upsample", mode="nearest")
    path = quantize_model(with_conv([resize], [1, 4, 16, 16], initializers=[scales]), tmp_path)
    model = QuantizedModel(path, "0" * 64, path, (), ())
    with pytest.raises(UnsupportedOperator, match="compiler 'ethos-u' cannot build node 'upsample'"):
        EthosUCompiler().compile(model, target(), tmp_path / "out")


@pytest.mark.parametrize(("options", "message"), [
    ({"accelerator": "x"}, "unknown option"),
    ({"accelerator_config": "ethos-u99-1"}, "option accelerator_config: expected one of"),
    ({"system_config": "Ethos_U85_SYS_DRAM_Mid"}, "option system_config: expected a system config for ethos-u55"),
    ({"memory_mode": "Lots"}, "option memory_mode"),
    ({"sram_budget_bytes": "-5"}, "option sram_budget_bytes: expected a positive number of bytes"),
    ({"min_inferences_per_second": "fast"}, "option min_inferences_per_second"),
    ({"cpu_kernels": "gpu"}, "option cpu_kernels"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(InvalidInput, match=message):
        resolve_options(options)


def test_firmware_older_than_the_npu_is_refused(quantized_model, tmp_path):
    profile = TargetProfile("u85", "ethos-u", "23.11", {"accelerator_config": "ethos-u85-256"})
    with pytest.raises(InvalidInput, match="firmware_revision 23.11 predates ethos-u85"):
        EthosUCompiler().compile(quantized_model, profile, tmp_path)
