"""DEQUANTIZE: int8 / uint8 / int16 -> float32, as ONNX DequantizeLinear defines it
((x - zero_point) * scale). A DequantizeLinear node usually emits nothing: its consumers read
the integers behind it (OnnxOp.reads_dequantized), and a DequantizeLinear of an initializer
is a weight the consuming op prepares. Only a float consumer (a graph output, an op that
reads floats) gets a DEQUANTIZE op; per-axis parameters give a QUANTIZE_AXIS op in its
dequantizing form (ops/quantize_axis.py).

Kernel unit: kernels/dequantize.pxi.
"""

from __future__ import annotations

import numpy as np

from ..kernel_abi import KernelSpec, OnnxOp
from ..program import Q, attr
from . import quantize_axis

PARAMS = ("n", "zp", "sg_in")


def lower_dequantize_linear(low, node) -> None:
    x, out = node.input[0], node.output[0]
    if x in low.init:
        q = low.init[x]
        s = np.asarray(low.const_input(node, 1, "scale"), np.float32)
        zp = (np.asarray(low.const_input(node, 2, "x_zero_point")) if low.optional_input(node, 2)
              else np.zeros(s.shape, q.dtype))
        axis = attr(node, "axis", 1)
        if attr(node, "block_size", 0):
            low.fail(node, "blocked quantization is not supported", "block_size")
        low.wconst[out] = (q, s, zp, axis)
        return
    src = low.qname.get(x)
    if src is None:
        low.fail(node, f"input {x!r} is not a quantized tensor", "input")
    if low.tensors[src.tid].dtype not in ("int8", "uint8", "int16"):
        low.fail(node, f"dequantizing {low.tensors[src.tid].dtype} is not supported", "input")
    if low.init.get(node.input[1], np.zeros(())).size > 1:
        # per-axis: always to float32 (no op reads per-axis integers)
        quantize_axis.lower_dequantize(low, node, src, out)
        return
    scale, zp, code = low.qparams(node, low.input_name(node, 1, "x_scale"),
                                  low.optional_input(node, 2), allow_int16=True)
    if code != src.code:
        low.fail(node, "zero point type differs from the input type", "zero_point")
    low.qval[out] = Q(src.tid, scale, zp, code)
    if low.needs_float(out):
        tid = low.new_tensor(out, "float32", low.shape(src.tid))
        low.fval[out] = tid
        low.emit(node, KERNEL, [src.tid], tid, floats=[scale],
                 n=int(np.prod(low.shape(src.tid))), zp=zp, sg_in=code)


def validate(c) -> None:
    c.positive("n")
    c.type_codes("sg_in")
    c.qtype(c.ins[0], "sg_in", "input")
    c.size(c.ins[0], c.p["n"] * c.itemsize("sg_in"), "input")
    c.dtype(c.out, ("float32",), "output")
    c.size(c.out, 4 * c.p["n"], "output")


def work(p) -> int:
    return p["n"]


KERNEL = KernelSpec(kind=2, name="DEQUANTIZE", params=PARAMS, floats=("scale",), int16=True,
                    validate=validate, work=work)
ONNX = {"DequantizeLinear": OnnxOp(lower_dequantize_linear, int16=True)}
