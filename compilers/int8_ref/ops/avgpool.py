"""AVGPOOL: 2-D average pooling (ONNX AveragePool in a QDQ island, QLinearAveragePool);
count_include_pad, ceil_mode; a window over the whole unpadded image is a global average pool
(ops/globalavgpool.py), as ONNX Runtime's QLinearAveragePool does.

`ort` follows ORT's qlinear_pool.cc (a float sum in window order, divided by the count, then
nearbyintf(y / y_scale + y_zp), in ORT's uint8 domain for QDQ int8: "off" = 128);
`fixed-point` takes the integer mean rounded half away from zero and rescales it by
x_scale / y_scale (prepared as a TFLite multiplier and shift). Eval: kernels/avgpool.pxi.
"""

from __future__ import annotations

from .. import requantize as rq
from ..kernel_abi import MAX_REDUCTION, MAX_WINDOW, KernelSpec, OnnxOp
from ..program import I8, I16, Q, attr
from ._window import pool_geometry, window_rules
from .globalavgpool import global_average

PARAMS = ("N", "C", "H", "W", "kh", "kw", "sh", "sw", "pt", "pl", "OH", "OW",
          "count_include_pad", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode",
          "mult", "shift", "off")


def avgpool_rules(node):
    yield from window_rules(node)
    d = attr(node, "dilations")
    if d is not None and any(v != 1 for v in d):
        yield "dilations", "dilated average pooling is not supported"


def lower_average_pool(low, node) -> None:
    average(low, node, low.act(node, node.input[0]), None)


def lower_qlinear_average_pool(low, node) -> None:
    average(low, node, *low.qlinear_unary(node))


def average(low, node, xq: Q, outp) -> None:
    N, C, H, W, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, OH, OW = pool_geometry(
        low, node, low.shape(xq.tid))
    if (dh, dw) != (1, 1):
        low.fail(node, "dilations are not supported", "dilations")
    if (kh, kw) == (H, W) and (pt, pl, pb, pr) == (0, 0, 0, 0):
        # ORT QLinearAveragePool falls back to its global average pool here.
        global_average(low, node, xq, outp)
        return
    qdq = outp is None  # ORT runs QDQ int8 AveragePool in its uint8 domain
    name, ys, yzp, ysg, lo, hi = outp or low.output_q(node, node.output[0])
    if xq.code == I16 and kh * kw > MAX_REDUCTION:
        low.fail(node, f"a {kh}x{kw} window of int16 values can overflow the int32 sum",
                 "kernel_shape")
    wide = I16 in (xq.code, ysg)  # ORT keeps it in float: no uint8 domain
    tid = low.define_q(name, ysg, (N, C, OH, OW), ys, yzp).tid
    mult, shift = rq.quantize_multiplier(float(xq.scale) / float(ys))
    low.emit(node, KERNEL, [xq.tid], tid, floats=[xq.scale, ys], N=N, C=C, H=H, W=W, kh=kh,
             kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, OH=OH, OW=OW,
             count_include_pad=attr(node, "count_include_pad", 0), xzp=xq.zp, yzp=yzp,
             qmin=lo, qmax=hi, sg_in=xq.code, sg_out=ysg, mode=low.mode, mult=mult,
             shift=shift, off=128 if xq.code == I8 and qdq and not wide else 0)


def validate(c) -> None:
    p = c.p
    c.positive("N", "C", "H", "W", "kh", "kw", "sh", "sw", "OH", "OW")
    c.type_codes("sg_in")
    c.qtype(c.ins[0], "sg_in", "input")
    c.size(c.ins[0], p["N"] * p["C"] * p["H"] * p["W"] * c.itemsize("sg_in"), "input")
    c.type_codes("sg_out")
    c.flag("mode", "count_include_pad")
    c.qtype(c.out, "sg_out", "output")
    c.size(c.out, p["N"] * p["C"] * p["OH"] * p["OW"] * c.itemsize("sg_out"), "output")
    c.window("kh", "kw", MAX_WINDOW, "the firmware's largest pooling window")
    if p["sg_in"] == I16:
        c.window("kh", "kw", MAX_REDUCTION, "an int16 window over 32768 values can overflow "
                                            "the int32 sum")
    c.shift("shift")
    c.qrange("xzp", "yzp", "qmin", "qmax")
    c.one_of("off", (0, 128))


def work(p) -> int:
    """Per output: kh window rows, each with its kw columns."""
    return p["N"] * p["C"] * p["OH"] * p["OW"] * p["kh"] * (p["kw"] + 1)


KERNEL = KernelSpec(kind=8, name="AVGPOOL", params=PARAMS, floats=("x_scale", "y_scale"),
                    int16=True, validate=validate, work=work)
ONNX = {
    "AveragePool": OnnxOp(lower_average_pool, avgpool_rules, int16=True,
                          reads_dequantized=True),
    "QLinearAveragePool": OnnxOp(lower_qlinear_average_pool, domain="com.microsoft"),
}
