"""LUT: out = table[in], a 256-entry table built at compile time for an elementwise function
of one 8-bit activation (ONNX Sigmoid, Tanh, LeakyRelu in a QDQ island, QLinearSigmoid,
QLinearLeakyRelu).

Prepare (compile time): for each of the 256 input values, dequantize, apply the function
(NumPy float64 for Sigmoid / Tanh, float32 for LeakyRelu), quantize to the output. Eval:
kernels/lut.pxi.
"""

from __future__ import annotations

import numpy as np

from ..kernel_abi import KernelSpec, OnnxOp
from ..program import Q, attr

PARAMS = ("n", "sg_in")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x.astype(np.float64))


def leaky_relu(node):
    alpha = np.float32(float(attr(node, "alpha", 0.01)))
    return lambda x: np.where(x >= 0, x, x * alpha)


def table_op(low, node, fn, xq: Q | None = None, outp=None) -> None:
    """Prepare the table of `fn` and emit the LUT."""
    xq = xq or low.act(node, node.input[0])
    name, ys, yzp, ysg, lo, hi = outp or low.output_q(node, node.output[0])
    tid = low.define_q(name, ysg, low.shape(xq.tid), ys, yzp).tid
    raw = np.arange(256, dtype=np.int32)
    vals = (raw.astype(np.uint8).view(np.int8).astype(np.int32) if xq.code else raw)
    x = (vals - xq.zp).astype(np.float32) * np.float32(xq.scale)
    y = fn(x.astype(np.float32)).astype(np.float32)
    q = np.clip(np.rint(y / np.float32(ys)) + yzp, lo, hi).astype(np.int32)
    table = (q & 0xFF).astype(np.uint8)
    low.emit(node, KERNEL, [xq.tid], tid, consts=[low.const(table)],
             n=int(np.prod(low.shape(xq.tid))), sg_in=xq.code)


def lower_sigmoid(low, node) -> None:
    table_op(low, node, sigmoid)


def lower_tanh(low, node) -> None:
    table_op(low, node, tanh)


def lower_leaky_relu(low, node) -> None:
    table_op(low, node, leaky_relu(node))


def lower_qlinear_sigmoid(low, node) -> None:
    table_op(low, node, sigmoid, *low.qlinear_unary(node))


def lower_qlinear_leaky_relu(low, node) -> None:
    table_op(low, node, leaky_relu(node), *low.qlinear_unary(node))


def validate(c) -> None:
    c.positive("n")
    c.size(c.ins[0], c.p["n"], "input")
    c.size(c.out, c.p["n"], "output")
    c.const("table", "uint8", 256)


def work(p) -> int:
    return p["n"]


KERNEL = KernelSpec(kind=15, name="LUT", params=PARAMS, consts=("table",), validate=validate,
                    work=work)
ONNX = {
    "Sigmoid": OnnxOp(lower_sigmoid, reads_dequantized=True),
    "Tanh": OnnxOp(lower_tanh, reads_dequantized=True),
    "LeakyRelu": OnnxOp(lower_leaky_relu, reads_dequantized=True),
    "QLinearSigmoid": OnnxOp(lower_qlinear_sigmoid, domain="com.microsoft"),
    "QLinearLeakyRelu": OnnxOp(lower_qlinear_leaky_relu, domain="com.microsoft"),
}
