"""LRN: local response normalisation across channels (ONNX LRN in a QDQ graph; older
networks, AlexNet and GoogLeNet as ONNX's model zoo has them, normalise after a Conv+Relu).

ONNX: y = x / (bias + alpha / size * S)^beta with S the sum of x^2 over the `size` channels
around x's (ONNX LRN-13; ORT's lrn.cc runs it in float: running float32 sums, std::pow).
int8-ref, integers only in both requantization modes:
- S = sum of k^2 for k = x - zp over the window, exact in int32 (|k| <= 255, size <= 2^15);
- y = zp_y + round(k * G(S)), G(S) = x_scale * (bias + alpha / size * x_scale^2 * S)^-beta /
  y_scale, with G from a table prepared in float64: G at every S below 256, then 128 points
  per octave of S with linear interpolation between them (the 7 bits after S's leading one
  pick the point, the rest interpolate), as int32 with Q fraction bits (G(0) < 2^30);
- k * G in int64, rounded half away from zero.
Interpolating (1 + a S)^-beta over 1/128 of an octave errs by at most beta (beta + 1) / 8 /
128^2 relative (1e-5 for beta = 0.75), so the integer result is within a few thousandths of an
output step of the exact one; ORT's float32 running sums differ from the exact value by
about as much, so the two differ by one LSB where the value lies on a rounding boundary
(docs/int8-ref.md gives the measured rate). Eval: kernels/lrn.pxi.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernel_abi import KernelSpec, OnnxOp
from ..program import attr

PARAMS = ("N", "C", "inner", "size", "pre", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out",
          "frac", "octaves")
DIRECT = 256  # G at S = 0 .. 255
POINTS = 128  # interpolation points per octave above that
MAX_SIZE = 1 << 15  # size * 255^2 < 2^31


def table_size(octaves: int) -> int:
    return DIRECT + octaves * POINTS + 1


def octaves_for(size: int) -> int:
    """Octaves of S above 2^8 that a window of `size` 8-bit values (|k| <= 255) reaches."""
    return max(0, (size * 255 * 255).bit_length() - 8)


def table(g, octaves: int) -> tuple[np.ndarray, int]:
    """(G at the table's points as int32 with `frac` fraction bits, frac): S = 0 .. 255, then
    for octave e = 8 .. 7 + octaves the points (128 + j) << (e - 7), j < 128, then the end
    point 256 << octaves that the last interval interpolates towards."""
    points = list(range(DIRECT))
    for e in range(8, 8 + octaves):
        points += [(128 + j) << (e - 7) for j in range(POINTS)]
    points.append(256 << octaves)
    values = np.array([g(float(s)) for s in points], np.float64)
    frac = min(60, 30 - max(0, math.ceil(math.log2(max(values.max(), 2.0 ** -30)))))
    fixed = np.rint(values * 2.0 ** frac).clip(0, 2 ** 31 - 1).astype(np.int32)
    return fixed, frac


def rules(node):
    size = attr(node, "size")
    if size is None or not 0 < int(size) <= MAX_SIZE:
        yield "size", f"size must be in [1, {MAX_SIZE}], got {size}"


def lower_lrn(low, node) -> None:
    size = int(attr(node, "size"))
    alpha = float(attr(node, "alpha", 1e-4))
    beta = float(attr(node, "beta", 0.75))
    bias = float(attr(node, "bias", 1.0))
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    if len(shape) < 3:
        low.fail(node, f"input must be N x C x D1 ..., got shape {shape}", "X")
    name, ys, yzp, ysg, lo, hi = low.output_q(node, node.output[0])
    low.same_family(node, xq.code, ysg)
    xs, ys_ = float(np.float32(xq.scale)), float(np.float32(ys))
    a = alpha / size * xs * xs

    def g(s: float) -> float:
        t = bias + a * s
        return xs * t ** -beta / ys_ if t > 0 else 0.0

    octaves = octaves_for(size)
    tab, frac = table(g, octaves)
    tid = low.define_q(name, ysg, shape, ys, yzp).tid
    low.emit(node, KERNEL, [xq.tid], tid, consts=[low.const(tab)], N=shape[0], C=shape[1],
             inner=int(np.prod(shape[2:])), size=size, pre=(size - 1) // 2, xzp=xq.zp,
             yzp=yzp, qmin=lo, qmax=hi, sg_in=xq.code, sg_out=ysg, frac=frac,
             octaves=octaves)


def validate(c) -> None:
    p = c.p
    c.positive("N", "C", "inner", "size")
    c.type_codes("sg_in", "sg_out")
    if p["size"] > MAX_SIZE:
        c.fail(f"size={p['size']} can overflow the int32 sum of squares")
    if not 0 <= p["pre"] < p["size"]:
        c.fail(f"pre={p['pre']} must be in [0, size)")
    if not 0 <= p["frac"] <= 60:
        c.fail(f"frac={p['frac']} is outside [0, 60]")
    # the table must reach the largest sum of squares this window can make
    if p["octaves"] != octaves_for(p["size"]):
        c.fail(f"octaves={p['octaves']}, a window of {p['size']} needs "
               f"{octaves_for(p['size'])}")
    n = p["N"] * p["C"] * p["inner"]
    c.qtype(c.ins[0], "sg_in", "input")
    c.qtype(c.out, "sg_out", "output")
    c.size(c.ins[0], n, "input")
    c.size(c.out, n, "output")
    c.const("table", "int32", 4 * table_size(p["octaves"]))
    c.qrange("xzp", "yzp", "qmin", "qmax")


def work(p) -> int:
    """n, c, i, and the window of at most `size` channels."""
    return p["N"] * (1 + p["C"] * (1 + p["inner"] * (1 + p["size"])))


KERNEL = KernelSpec(kind=44, name="LRN", params=PARAMS, consts=("table",), firmware="1.2.0",
                    validate=validate, work=work)
ONNX = {"LRN": OnnxOp(lower_lrn, rules, reads_dequantized=True)}
