"""CLAMP: a standalone Relu or Clip in the quantized domain (ONNX Relu, Clip): the float
bounds become integer bounds at the input's scale and zero point at compile time. (A Relu or
Clip between an op and its QuantizeLinear is folded into that op's output range instead.)
Eval: kernels/clamp.pxi.
"""

from __future__ import annotations

import numpy as np

from ..kernel_abi import KernelSpec, OnnxOp

PARAMS = ("n", "lo", "hi", "sg_in")


def lower_clamp(low, node) -> None:
    xq = low.act(node, node.input[0])
    lo_f, hi_f = low.clip_bounds(node)
    lo, hi = low.clamp_range(xq.code, xq.scale, xq.zp, lo_f, hi_f)
    low.layout(node, xq, low.shape(xq.tid), KERNEL, n=int(np.prod(low.shape(xq.tid))), lo=lo,
               hi=hi, sg_in=xq.code)


def validate(c) -> None:
    c.positive("n")
    c.type_codes("sg_in")
    c.qtype(c.ins[0], "sg_in", "input")
    c.qtype(c.out, "sg_in", "output")
    c.size(c.ins[0], c.p["n"] * c.itemsize("sg_in"), "input")
    c.size(c.out, c.p["n"] * c.itemsize("sg_in"), "output")


def work(p) -> int:
    return p["n"]


KERNEL = KernelSpec(kind=16, name="CLAMP", params=PARAMS, int16=True, validate=validate,
                    work=work)
ONNX = {
    "Relu": OnnxOp(lower_clamp, int16=True, reads_dequantized=True),
    "Clip": OnnxOp(lower_clamp, int16=True, reads_dequantized=True),
}
