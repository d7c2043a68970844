"""The op registry and what is derived from it: the firmware's generated named fields, and
the line between a refusal (LoweringError) and a bug in an op module."""

import dataclasses

import numpy as np
import onnx
import pytest

import int8_ref_models as M
from tapeout.compilers.errors import CompilationFailed
from tapeout.compilers.int8_ref import (FirmwareTooOld, codegen, compatibility_report, load_file,
                                        opset)
from tapeout.compilers.int8_ref.kernel_abi import OnnxOp


def test_generated_kernel_fields_are_current():
    """kernels/_opset.pxi is what the registry gives; when this fails, regenerate it with
    `python -m tapeout.compilers.int8_ref.codegen` and rebuild the extension."""
    assert codegen.GENERATED.read_text() == codegen.render(), (
        f"{codegen.GENERATED} is stale: run `{codegen.COMMAND}`")
    assert codegen.main(["--check"]) == 0


def test_a_changed_layout_makes_the_generated_file_stale(monkeypatch, capsys):
    conv = opset.KERNEL_MODULES["conv"]
    monkeypatch.setitem(opset.KERNEL_MODULES, "conv",
                        dataclasses.replace(conv, params=conv.params + ("packed",)))
    text = codegen.render()
    assert "    int64_t packed\n" in text and text != codegen.GENERATED.read_text()
    assert codegen.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err


def test_every_kernel_has_its_unit_and_a_unique_kind():
    kinds = [k.kind for k in opset.KERNEL_MODULES.values()]
    assert len(set(kinds)) == len(kinds) == len(opset.Kind)
    text = codegen.render()
    for module, kernel in opset.KERNEL_MODULES.items():
        assert f'include "{module}.pxi"' in text
        assert f"kind == KIND_{kernel.name}:\n        {module}_eval(" in text


@pytest.fixture(scope="module")
def conv_relu(tmp_path_factory):
    """(float model, its QDQ model path): a Conv with a Relu, quantized by ONNX Runtime."""
    b = M._Builder(0)
    model = b.model((1, 1, 6, 6), b.op("Relu", [b.conv("input", 1, 2)]))
    return model, M.quantize_qdq(model, tmp_path_factory.mktemp("conv_relu"), "relu")


def test_a_bug_in_a_lowering_is_not_reported_as_unsupported(conv_relu, monkeypatch):
    """Only LoweringError is a refusal: any other exception from an op module surfaces as
    itself instead of becoming "cannot be lowered" in the compatibility report."""
    _, qdq = conv_relu
    assert compatibility_report(qdq) == []

    def buggy(low, node):
        return {}["missing"]

    monkeypatch.setitem(opset.ONNX_OPS, "Conv", OnnxOp(buggy, reads_dequantized=True))
    with pytest.raises(KeyError, match="missing"):
        compatibility_report(qdq)


def test_a_deliberate_refusal_is_reported_with_its_node(conv_relu, monkeypatch):
    _, qdq = conv_relu

    def refuses(low, node):
        low.fail(node, "not on this accelerator", "group")

    monkeypatch.setitem(opset.ONNX_OPS, "Conv", OnnxOp(refuses, reads_dequantized=True))
    problems = compatibility_report(qdq)
    assert [(p.op_type, p.attribute, p.reason) for p in problems] == [
        ("Conv", "group", "not on this accelerator")]


def test_a_negative_weight_scale_is_refused_in_fixed_point(conv_relu, tmp_path):
    """A per-channel scale below zero has no TFLite multiplier: refused by name, not a
    ValueError from the multiplier arithmetic."""
    _, qdq = conv_relu
    m = onnx.load(str(qdq))
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear"
              and any(i.name == n.input[0] and i.data_type == onnx.TensorProto.INT8
                      for i in m.graph.initializer))
    scale = next(i for i in m.graph.initializer if i.name == dq.input[1])
    arr = -np.abs(onnx.numpy_helper.to_array(scale))
    scale.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), scale.name))
    path = tmp_path / "negative.onnx"
    onnx.save(m, str(path))
    problems = compatibility_report(path)
    assert len(problems) == 1 and problems[0].op_type == "Conv"
    assert "negative weight scale" in problems[0].reason


def test_a_kind_newer_than_the_target_firmware_is_refused_at_compile(conv_relu, tmp_path,
                                                                     monkeypatch):
    """An op kind registered with a newer firmware raises the image's minimum firmware, and a
    target on older firmware is refused naming the node and the kind."""
    model, qdq = conv_relu
    _, art = M.compile_path(qdq, M.input_specs(model), tmp_path / "now")
    assert art.minimum_firmware_revision == "2.0.0"
    conv = opset.KERNELS[opset.Kind.CONV]
    monkeypatch.setitem(opset.KERNELS, opset.Kind.CONV,
                        dataclasses.replace(conv, firmware="2.7.0"))
    with pytest.raises(CompilationFailed, match=r"CONV op, which needs firmware 2\.7\.0"):
        M.compile_path(qdq, M.input_specs(model), tmp_path / "old", firmware="2.1.0")
    _, art = M.compile_path(qdq, M.input_specs(model), tmp_path / "new", firmware="2.7.0")
    assert art.minimum_firmware_revision == "2.7.0"
    with pytest.raises(FirmwareTooOld, match="2.7.0"):
        load_file(art.directory / "model.i8r")
