"""What ADD and MUL share: NumPy broadcasting folded into (outer, mid, inner) blocks, the
operands (a constant operand becomes a LOAD_CONST), and the parameters both kernels take.

The kernels index a as o*a_so + m*a_sm + i*a_si (b the same way) and write a dense
[outer, mid, inner] output, so a broadcast must fold into at most three blocks.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import MODE_ORT
from ..program import I16, Q
from . import load_const
from .requant import widen

PARAMS = ("outer", "mid", "inner", "a_so", "a_sm", "a_si", "b_so", "b_sm", "b_si", "azp",
          "bzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode")


def broadcast(low, node, ash, bsh):
    """(output shape, [outer, mid, inner], a strides, b strides)."""
    try:
        out = np.broadcast_shapes(ash, bsh)
    except ValueError:
        low.fail(node, f"shapes {ash} and {bsh} do not broadcast", "B")
    r = len(out)
    a = (1,) * (r - len(ash)) + tuple(ash)
    b = (1,) * (r - len(bsh)) + tuple(bsh)
    groups: list[list] = []  # [pattern, size]
    for i in range(r):
        if out[i] == 1:
            continue
        pat = (a[i] != 1, b[i] != 1)
        if groups and groups[-1][0] == pat:
            groups[-1][1] *= out[i]
        else:
            groups.append([pat, out[i]])
    if len(groups) > 3:
        low.fail(node, f"broadcast of {ash} and {bsh} is too irregular", "B")
    while len(groups) < 3:
        groups.insert(0, [(True, True), 1])
    sizes = [g[1] for g in groups]

    def strides(which):
        st, acc = [0, 0, 0], 1
        for i in (2, 1, 0):
            if groups[i][0][which]:
                st[i] = acc
                acc *= sizes[i]
        return st

    return tuple(out), sizes, strides(0), strides(1)


def qdq_operands(low, node) -> tuple[Q, Q, tuple]:
    """(a, b, output) of a QDQ Add / Mul; a DequantizeLinear of an initializer is loaded
    into the arena."""
    qs = []
    for nm in (node.input[0], low.input_name(node, 1, "B")):
        if nm in low.wconst:
            qs.append(load_const.load_dequantized(low, node, nm))
        else:
            qs.append(low.act(node, nm))
    return qs[0], qs[1], low.output_q(node, node.output[0])


def qlinear_operands(low, node) -> tuple[Q, Q, tuple]:
    """(a, b, output) of com.microsoft QLinearAdd / QLinearMul: a, a_scale, a_zp, b,
    b_scale, b_zp, y_scale, y_zp."""
    aq = low.act(node, node.input[0])
    bq = low.act(node, low.input_name(node, 3, "B"))
    as_, azp, asg = low.qparams(node, low.input_name(node, 1, "A_scale"),
                                low.optional_input(node, 2))
    bs, bzp, bsg = low.qparams(node, low.input_name(node, 4, "B_scale"),
                               low.optional_input(node, 5))
    ys, yzp, ysg = low.qparams(node, low.input_name(node, 6, "C_scale"),
                               low.optional_input(node, 7))
    lo, hi = rq.qrange(ysg)
    return (Q(aq.tid, as_, azp, asg), Q(bq.tid, bs, bzp, bsg),
            (node.output[0], ys, yzp, ysg, lo, hi))


def prepare(low, node, aq: Q, bq: Q, outp, u8_domain: bool):
    """The output tensor and the parameters ADD and MUL share.

    Returns (a, b, output tensor id, shared ints, femu, wide). An 8-bit operand next to an
    int16 one is widened (one input type per kernel). femu: in `ort` mode, ONNX Runtime runs
    this node in float (it never fuses a node with an int16 tensor; `u8_domain` QDQ nodes it
    left in float are in low.ort_float), so the kernel emulates DQ -> float op -> Q exactly.
    """
    name, ys, yzp, ysg, lo, hi = outp
    wide = I16 in (aq.code, bq.code, ysg)
    if wide:
        aq, bq = widen(low, node, aq), widen(low, node, bq)
    elif not (aq.code == bq.code == ysg):
        low.fail(node, "inputs and output must all be int8 or all uint8", "B")
    oshape, sizes, sa, sb = broadcast(low, node, low.shape(aq.tid), low.shape(bq.tid))
    tid = low.define_q(name, ysg, oshape, ys, yzp).tid
    ints = dict(outer=sizes[0], mid=sizes[1], inner=sizes[2], a_so=sa[0], a_sm=sa[1],
                a_si=sa[2], b_so=sb[0], b_sm=sb[1], b_si=sb[2], azp=aq.zp, bzp=bq.zp,
                yzp=yzp, qmin=lo, qmax=hi, sg_in=aq.code, sg_out=ysg, mode=low.mode)
    femu = int(low.mode == MODE_ORT and (wide or (u8_domain and node.name in low.ort_float)))
    return aq, bq, tid, ints, femu, wide


def femu_floats(aq: Q, bq: Q, y_scale: float) -> list[float]:
    """The float slots of an emulated (femu) op: the a, b and output scales."""
    return [float(np.float32(aq.scale)), float(np.float32(bq.scale)), float(np.float32(y_scale))]


def validate_shared(c) -> None:
    p = c.p
    c.positive("outer", "mid", "inner")
    c.nonneg("a_so", "a_sm", "a_si", "b_so", "b_sm", "b_si")
    c.type_codes("sg_in", "sg_out")
    c.flag("mode", "femu")
    for t, pre, what in ((c.ins[0], "a", "A"), (c.ins[1], "b", "B")):
        c.qtype(t, "sg_in", what)
        last = ((p["outer"] - 1) * p[pre + "_so"] + (p["mid"] - 1) * p[pre + "_sm"]
                + (p["inner"] - 1) * p[pre + "_si"])
        c.largest_index(t, last, c.itemsize("sg_in"), what)
    c.qtype(c.out, "sg_out", "output")
    c.size(c.out, p["outer"] * p["mid"] * p["inner"] * c.itemsize("sg_out"), "output")
    c.qrange("azp", "bzp", "yzp", "qmin", "qmax")


def work(p) -> int:
    return p["outer"] * p["mid"] * (p["inner"] + 1)
