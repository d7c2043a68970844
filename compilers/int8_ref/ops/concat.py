"""CONCAT_PART: copy one input into its slot of a concatenation's output, through a 256-entry
table where the input's quantization differs from the output's (ONNX Concat in a QDQ island,
QLinearConcat: one op per input).

Prepare (compile time): the table Q(DQ(x)) for each input with other parameters (ORT's
QLinearConcat builds the same, QlinearBuildLookupTable); for int16, a REQUANT of the input
to the output's parameters instead (ORT runs an int16 Concat as DQ -> float Concat -> Q), and
the slot geometry in bytes. Eval: kernels/concat.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import MODE_ORT, KernelSpec, OnnxOp
from ..program import CODE_DTYPE, I16, ITEMSIZE, Q, attr
from .requant import requant_to

PARAMS = ("outer", "inner_in", "inner_out", "offset", "use_lut")


def lower_concat(low, node) -> None:
    concat(low, node, [low.act(node, x) for x in node.input], None)


def lower_qlinear_concat(low, node) -> None:
    ys, yzp, ysg = low.qparams(node, low.input_name(node, 0, "Y_scale"),
                               low.optional_input(node, 1))
    qs = []
    for i in range(2, len(node.input), 3):
        if i + 2 >= len(node.input):
            low.fail(node, "inputs must come in (X, scale, zero point) triples", "inputs")
        xq = low.act(node, node.input[i])
        xs, xzp, xsg = low.qparams(node, node.input[i + 1], node.input[i + 2])
        qs.append(Q(xq.tid, xs, xzp, xsg))
    lo, hi = rq.qrange(ysg)
    concat(low, node, qs, (node.output[0], ys, yzp, ysg, lo, hi))


def concat(low, node, qs, outp) -> None:
    axis = attr(node, "axis")
    if axis is None:
        low.fail(node, "axis is required", "axis")
    shapes = [low.shape(q.tid) for q in qs]
    r = len(shapes[0])
    axis %= r
    for s in shapes:
        if len(s) != r or any(s[i] != shapes[0][i] for i in range(r) if i != axis):
            low.fail(node, f"input shapes {shapes} do not concatenate on axis {axis}", "axis")
    oshape = list(shapes[0])
    oshape[axis] = sum(s[axis] for s in shapes)
    name, ys, yzp, ysg, lo, hi = outp or low.output_q(node, node.output[0])
    tid = low.define_q(name, ysg, tuple(oshape), ys, yzp).tid
    outer = int(np.prod(oshape[:axis]))
    inner_out = int(np.prod(oshape[axis:]))
    off = 0
    if I16 in [q.code for q in qs] + [ysg]:
        # ORT runs an int16 Concat as DQ -> float Concat -> Q: each input is Q(DQ(x))
        # with the output's parameters (a REQUANT op, exact in `ort` mode), then copied
        # into its slot; the parameters count bytes.
        size = ITEMSIZE[CODE_DTYPE[ysg]]
        for i, (q, s) in enumerate(zip(qs, shapes)):
            if (q.scale, q.zp, q.code) != (ys, yzp, ysg):
                part = f"{name}__part{i}"
                requant_to(low, node, q, part, ys, yzp, ysg)
                q = low.qname[part]
            inner_in = int(np.prod(s[axis:]))
            low.emit(node, KERNEL, [q.tid], tid, outer=outer, inner_in=inner_in * size,
                     inner_out=inner_out * size, offset=off * size, use_lut=0)
            off += inner_in
        return
    for q, s in zip(qs, shapes):
        if q.code != ysg:
            low.fail(node, "inputs and output must all be int8 or all uint8", "inputs")
        inner_in = int(np.prod(s[axis:]))
        consts, use_lut = (), 0
        if (q.scale, q.zp) != (ys, yzp):
            consts, use_lut = (low.const(requant_table(low, q, ys, yzp, ysg)),), 1
        low.emit(node, KERNEL, [q.tid], tid, consts=consts, outer=outer, inner_in=inner_in,
                 inner_out=inner_out, offset=off, use_lut=use_lut)
        off += inner_in


def requant_table(low, q: Q, ys, yzp, ysg) -> np.ndarray:
    """Q(DQ(x)) for each of the 256 byte values of x, in the op's requantization mode."""
    raw = np.arange(256, dtype=np.int32)
    vals = raw.astype(np.uint8).view(np.int8).astype(np.int32) if q.code else raw
    qmin, qmax = rq.qrange(ysg)
    if low.mode == MODE_ORT:
        x = (vals - q.zp).astype(np.float32) * np.float32(q.scale)
        y = np.clip(np.rint(x / np.float32(ys)), qmin - yzp, qmax - yzp) + yzp
    else:
        m, s = rq.quantize_multiplier(float(q.scale) / float(ys))
        y = np.array([rq.multiply_by_quantized_multiplier(int(v - q.zp), m, s)
                      for v in vals]) + yzp
        y = np.clip(y, qmin, qmax)
    return (y.astype(np.int32) & 0xFF).astype(np.uint8)


def validate(c) -> None:
    p = c.p
    c.positive("outer", "inner_in", "inner_out")
    c.nonneg("offset")
    c.flag("use_lut")
    c.size(c.ins[0], p["outer"] * p["inner_in"], "input")
    c.size(c.out, p["outer"] * p["inner_out"], "output")
    if p["offset"] + p["inner_in"] > p["inner_out"]:
        c.fail("the slot lies outside the output row")
    if p["use_lut"]:
        c.const("table", "uint8", 256)
    elif c.ins[0].dtype != c.out.dtype:
        c.fail(f"copies {c.ins[0].dtype} into {c.out.dtype}")


def work(p) -> int:
    return p["outer"] * (p["inner_in"] + 1)


KERNEL = KernelSpec(kind=14, name="CONCAT_PART", params=PARAMS, consts=("table",), min_consts=0,
                    validate=validate, work=work)
ONNX = {
    "Concat": OnnxOp(lower_concat, int16=True, reads_dequantized=True),
    "QLinearConcat": OnnxOp(lower_qlinear_concat, domain="com.microsoft"),
}
