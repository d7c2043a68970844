"""Work counted from ONNX graphs (tapeout.compilers.cost), and the cost compilers report."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tapeout.compilers.cost import Cost, count_onnx
from tapeout.compilers.interface import TargetProfile
from tapeout.compilers.registry import load_compiler

EXAMPLE_MACS = 2048 * 9 + 1024 * 72 + 32 * 256 + 10 * 32  # conv, conv, linear, linear


def _qdq_matmul(path, zero_point_type: int) -> None:
    """x → Q → DQ → MatMul(W 8×4) → y, with the pair's integer type given by its zero point."""
    initializers = [
        numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
        helper.make_tensor("zero", zero_point_type, [], [0]),
        numpy_helper.from_array(np.ones((8, 4), np.float32), "weight"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"]),
        helper.make_node("MatMul", ["xd", "weight"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def test_counts_macs_and_bytes_at_each_tensors_width(tmp_path):
    for name, zero_type, width in (("int8", TensorProto.INT8, 1), ("int16", TensorProto.INT16, 2)):
        path = tmp_path / f"{name}.onnx"
        _qdq_matmul(path, zero_type)
        cost = count_onnx(path, name)
        assert cost.macs == 2 * 4 * 8 and cost.batch == 2 and cost.source == name
        # MatMul reads x (2×8 at the pair's width) and W (8×4 fp32), writes y (2×4 fp32).
        assert cost.bytes_read == 16 * width + 32 * 4 and cost.bytes_written == 8 * 4


def test_example_counts_agree_across_representations(quantized_model, tmp_path):
    qdq, fp32 = count_onnx(quantized_model.path, "qdq"), count_onnx(quantized_model.float_path, "fp32")
    assert qdq.macs == fp32.macs == EXAMPLE_MACS
    assert fp32.bytes_moved > 3 * qdq.bytes_moved  # fp32 moves 4 bytes where int8 moves 1
    fp16 = load_compiler("fp16").compile(quantized_model, TargetProfile("f", "fp16", "1.32.0"), tmp_path / "fp16")
    onnxruntime = load_compiler("onnxruntime").compile(
        quantized_model, TargetProfile("c", "onnxruntime", "1.32.0"), tmp_path / "ort"
    )
    half, cpu = Cost.from_report(fp16.report), Cost.from_report(onnxruntime.report)
    assert half is not None and cpu is not None
    assert half.macs == cpu.macs == EXAMPLE_MACS
    # float16 inside, float32 at the two Casts: between the int8 and the fp32 graph.
    assert qdq.bytes_moved < half.bytes_moved < fp32.bytes_moved
    assert cpu.bytes_moved == qdq.bytes_moved and "ONNX Runtime" in cpu.source


def test_a_malformed_report_is_no_cost():
    assert Cost.from_report({}) is None
    assert Cost.from_report({"cost": {"macs": -1, "bytes_read": 0, "bytes_written": 0, "batch": 1}}) is None
    assert Cost.from_report({"cost": {"macs": 1, "bytes_read": 0, "bytes_written": 0, "batch": 0}}) is None
    assert Cost.from_report({"cost": "many"}) is None
