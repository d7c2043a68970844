"""QUANTIZE: float32 -> int8 / uint8 / int16, as ONNX QuantizeLinear defines it
(saturate(round_half_even(x / scale) + zero_point)). Also the other forms of a QuantizeLinear
node: after a DequantizeLinear it is a requantization (ops/requant.py), on a constant it is
folded at compile time; with per-axis parameters on a float tensor it is QUANTIZE_AXIS
(ops/quantize_axis.py).

Kernel unit: kernels/quantize.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import KernelSpec, OnnxOp
from ..program import CODE_DTYPE, I16, attr
from . import quantize_axis, requant

PARAMS = ("n", "zp", "qmin", "qmax", "sg_out")


def lower_quantize_linear(low, node) -> None:
    x = node.input[0]
    out = node.output[0]
    if x in low.fval and low.init.get(node.input[1], np.zeros(())).size > 1:
        quantize_axis.lower_quantize(low, node, low.fval[x], out)
        return
    scale, zp, code = low.qparams(node, low.input_name(node, 1, "y_scale"),
                                  low.optional_input(node, 2), allow_int16=True)
    if attr(node, "saturate", 1) != 1:
        low.fail(node, "saturate=0 is not supported", "saturate")
    if code == I16 and out in low.graph_outputs:
        # int16 is for activations inside the graph (what the quantizer writes); the
        # Runner exchanges float32 (or 8-bit / int32 integers) at the graph's edges.
        low.fail(node, "an int16 graph output is not supported (graph outputs are "
                       "float32, int8, uint8 or int32)", "y_zero_point")
    if x in low.fval:
        src = low.fval[x]
        q = low.define_q(out, code, low.shape(src), scale, zp)
        qmin, qmax = rq.qrange(code)
        low.emit(node, KERNEL, [src], q.tid, floats=[scale], n=int(np.prod(low.shape(src))),
                 zp=zp, qmin=qmin, qmax=qmax, sg_out=code)
        return
    if x in low.qval:
        requant.requant_to(low, node, low.qval[x], out, scale, zp, code)
        return
    if x in low.init:
        arr = low.init[x].astype(np.float32)
        qmin, qmax = rq.qrange(code)
        qv = np.clip(np.rint(arr / np.float32(scale)) + zp, qmin, qmax)
        low.init[out] = qv.astype(CODE_DTYPE[code])
        return
    low.fail(node, f"input {x!r} is neither a float graph input nor a dequantized "
                   "activation", "input")


def validate(c) -> None:
    c.positive("n")
    c.dtype(c.ins[0], ("float32",), "input")
    c.size(c.ins[0], 4 * c.p["n"], "input")
    c.type_codes("sg_out")
    c.qtype(c.out, "sg_out", "output")
    c.size(c.out, c.p["n"] * c.itemsize("sg_out"), "output")
    c.qrange("zp", "qmin", "qmax")


def work(p) -> int:
    return p["n"]


KERNEL = KernelSpec(kind=1, name="QUANTIZE", params=PARAMS, floats=("scale",), int16=True,
                    validate=validate, work=work)
ONNX = {"QuantizeLinear": OnnxOp(lower_quantize_linear, int16=True, reads_dequantized=True)}
