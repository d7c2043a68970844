"""GLOBALAVGPOOL: the mean over every spatial position of each channel (ONNX
GlobalAveragePool in a QDQ island, QLinearGlobalAveragePool, and AveragePool over the whole
unpadded image). ORT's MlasQLinearGlobalAveragePoolNchw: an int32 sum minus zp * image size,
requantized with scale x_scale / (y_scale * image size), prepared here in float32 (`ort`) and
as a TFLite multiplier and shift (`fixed-point`). Eval: kernels/globalavgpool.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import MAX_REDUCTION, KernelSpec, OnnxOp
from ..program import I16, Q

PARAMS = ("NC", "HW", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode", "mult",
          "shift")

# 8-bit values: |x| <= 255, so a sum of up to 2^23 of them fits int32.
MAX_IMAGE = 1 << 23


def lower_global_average_pool(low, node) -> None:
    global_average(low, node, low.act(node, node.input[0]), None)


def lower_qlinear_global_average_pool(low, node) -> None:
    global_average(low, node, *low.qlinear_unary(node))


def global_average(low, node, xq: Q, outp) -> None:
    shape = low.shape(xq.tid)
    if len(shape) < 3:
        low.fail(node, "input must be at least 3-D", "X")
    NC, HW = shape[0] * shape[1], int(np.prod(shape[2:]))
    name, ys, yzp, ysg, lo, hi = outp or low.output_q(node, node.output[0])
    if xq.code == I16 and HW > MAX_REDUCTION:
        # |x - zp| <= 65535, so 2^15 of them still fit the kernel's int32 sum
        low.fail(node, f"an image of {HW} int16 values can overflow the int32 sum", "X")
    tid = low.define_q(name, ysg, shape[:2] + (1,) * (len(shape) - 2), ys, yzp).tid
    # ORT: scale = x_scale / (y_scale * image_size), float32 (qlgavgpool.cpp)
    f = np.float32(np.float32(xq.scale) / np.float32(np.float32(ys) * np.float32(HW)))
    mult, shift = rq.quantize_multiplier(float(xq.scale) / (float(ys) * HW))
    low.emit(node, KERNEL, [xq.tid], tid, floats=[f], NC=NC, HW=HW, xzp=xq.zp, yzp=yzp,
             qmin=lo, qmax=hi, sg_in=xq.code, sg_out=ysg, mode=low.mode, mult=mult,
             shift=shift)


def validate(c) -> None:
    p = c.p
    c.positive("NC", "HW")
    c.type_codes("sg_in", "sg_out")
    c.flag("mode")
    if p["HW"] >= MAX_IMAGE:
        c.fail("image too large for an int32 sum")
    if p["sg_in"] == I16 and p["HW"] > MAX_REDUCTION:
        c.fail("an int16 image over 32768 values can overflow the int32 sum")
    c.qtype(c.ins[0], "sg_in", "input")
    c.qtype(c.out, "sg_out", "output")
    c.size(c.ins[0], p["NC"] * p["HW"] * c.itemsize("sg_in"), "input")
    c.size(c.out, p["NC"] * c.itemsize("sg_out"), "output")
    c.shift("shift")
    c.qrange("xzp", "yzp", "qmin", "qmax")


def work(p) -> int:
    return p["NC"] * (p["HW"] + 1)


KERNEL = KernelSpec(kind=9, name="GLOBALAVGPOOL", params=PARAMS, floats=("multiplier",),
                    int16=True, validate=validate, work=work)
ONNX = {
    "GlobalAveragePool": OnnxOp(lower_global_average_pool, int16=True,
                                reads_dequantized=True),
    "QLinearGlobalAveragePool": OnnxOp(lower_qlinear_global_average_pool,
                                       domain="com.microsoft"),
}
