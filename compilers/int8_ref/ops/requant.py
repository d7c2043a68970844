"""REQUANT: q -> q with another scale, zero point or element type (a DequantizeLinear ->
QuantizeLinear pair with different parameters; also the int8 <-> int16 conversions). No ONNX
op of its own: `requant_to` is called by the ops whose output is requantized.

`ort`: ONNX Runtime runs the pair as two float nodes, DQ then Q (dequantize, divide by the new
scale, round half to even), which the kernel reproduces exactly. `fixed-point`: the ratio of
the scales as a TFLite multiplier and shift (requantize.quantize_multiplier).

Kernel unit: kernels/requant.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import KernelSpec
from ..program import I16, Q

PARAMS = ("n", "zp_in", "zp_out", "qmin", "qmax", "sg_in", "sg_out", "mode", "mult", "shift")


def requant_to(low, node, src: Q, out: str, scale: float, zp: int, code: int) -> None:
    """Define the quantized tensor `out` as `src` at (scale, zp, code): the same tensor when
    the parameters match, else a REQUANT op."""
    shape = low.shape(src.tid)
    if src.scale == scale and src.zp == zp and src.code == code:
        low.qname[out] = src
        return
    q = low.define_q(out, code, shape, scale, zp)
    qmin, qmax = rq.qrange(code)
    mult, shift = rq.quantize_multiplier(float(src.scale) / float(scale))
    low.emit(node, KERNEL, [src.tid], q.tid, floats=[src.scale, scale],
             n=int(np.prod(shape)), zp_in=src.zp, zp_out=zp, qmin=qmin, qmax=qmax,
             sg_in=src.code, sg_out=code, mode=low.mode, mult=mult, shift=shift)


def widen(low, node, q: Q) -> Q:
    """An 8-bit activation as int16, losslessly: scale / 128, zero point 0, values
    (q - zp) * 128 in [-32640, 32640]. Dividing a float32 scale by 2^7 is exact, so
    DequantizeLinear gives the same float32 values as before (ORT's float path sees no
    difference), and the REQUANT multiplier is exactly 128 in both modes."""
    if q.code == I16:
        return q
    name = f"{low.tensors[q.tid].name}__int16"
    if name in low.qname:
        return low.qname[name]
    requant_to(low, node, q, name, float(np.float32(q.scale) / np.float32(128)), 0, I16)
    return low.qname[name]


def validate(c) -> None:
    c.positive("n")
    c.type_codes("sg_in", "sg_out")
    c.flag("mode")
    c.qtype(c.ins[0], "sg_in", "input")
    c.qtype(c.out, "sg_out", "output")
    c.size(c.ins[0], c.p["n"] * c.itemsize("sg_in"), "input")
    c.size(c.out, c.p["n"] * c.itemsize("sg_out"), "output")
    c.qrange("zp_in", "zp_out", "qmin", "qmax")
    c.shift("shift")


def work(p) -> int:
    return p["n"]


KERNEL = KernelSpec(kind=3, name="REQUANT", params=PARAMS, floats=("x_scale", "y_scale"),
                    int16=True, validate=validate, work=work)
