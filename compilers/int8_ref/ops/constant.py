"""ONNX Constant: folded at compile time into the initializers (no firmware op)."""

from __future__ import annotations

from onnx import numpy_helper

from ..kernel_abi import OnnxOp
from ..program import attr


def lower_constant(low, node) -> None:
    v = attr(node, "value")
    if v is None:
        low.fail(node, "only the 'value' form of Constant is supported", "value")
    low.init[node.output[0]] = numpy_helper.to_array(v)


ONNX = {"Constant": OnnxOp(lower_constant)}
