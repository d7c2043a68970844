"""SOFTMAX: softmax over contiguous rows with a 256-entry exp table indexed by the distance to
the row maximum (ORT QLinearSoftmax, contrib_ops/cpu/quantization/qlinear_softmax.cc; ONNX
Softmax in a QDQ island, QLinearSoftmax). A Softmax (opset 13) over an inner axis is
lowered as TRANSPOSE -> SOFTMAX -> TRANSPOSE, so the kernel always sees contiguous rows.

Prepare (compile time): the exp table and floor(1 / y_scale) (`softmax_table`). `ort`: a
float32 table and running sum, ORT's rounding and store; `fixed-point`: a uint32 table,
uint64 sums, integer division. Eval: kernels/softmax.pxi.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernel_abi import MODE_ORT, KernelSpec, OnnxOp
from ..program import Q, attr
from .transpose import permuted

PARAMS = ("rows", "cols", "sg_in", "sg_out", "yzp", "qmin", "qmax", "mode", "yscale_int",
          "off")


def softmax_table(x_scale: float, y_scale: float, reduce_len: int, signed: bool, mode: int):
    """QLinearSoftmax's exp table (ORT QlinearBuildLookupTableUint32) and floor(1 / y_scale).

    exp((i - 255 + bit_shift) * x_scale) for i in 0..255, stored at uint8(i - 128) for int8
    inputs; bit_shift keeps the sum of `reduce_len` entries below the table type's maximum
    with 5 (float32, ``ort``) or 3 (uint32, ``fixed-point``) bits in reserve.
    """
    is_float = mode == MODE_ORT
    tmax = float(np.finfo(np.float32).max) if is_float else float(2 ** 32 - 1)
    bit_shift = math.log(tmax / reduce_len)
    bit_shift = max(0.0, bit_shift - (5 if is_float else 3)) / float(np.float32(x_scale))
    table = np.zeros(256, np.float32 if is_float else np.uint32)
    for i in range(256):
        v = math.exp((i - 255 + bit_shift) * float(np.float32(x_scale)))
        idx = (i - 128) & 0xFF if signed else i
        table[idx] = np.float32(v) if is_float else min(int(v), 2 ** 32 - 1)
    yscale = float(np.floor(np.float32(1.0) / np.float32(y_scale)))
    return (table if is_float else table.view(np.int32)), yscale


def lower_softmax(low, node) -> None:
    softmax(low, node, low.act(node, node.input[0]), None)


def lower_qlinear_softmax(low, node) -> None:
    softmax(low, node, *low.qlinear_unary(node))


def softmax(low, node, xq: Q, outp) -> None:
    shape = low.shape(xq.tid)
    r = len(shape)
    opset = attr(node, "opset") or next(
        (o.version for o in low.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = attr(node, "axis", -1 if opset >= 13 else 1)
    if not -r <= axis < r:
        low.fail(node, f"axis {axis} is out of range for rank {r}", "axis")
    axis %= r
    name, ys, yzp, ysg, lo, hi = outp or low.output_q(node, node.output[0])
    if ysg != xq.code:
        low.fail(node, "input and output must both be int8 or both uint8", "y")
    if opset < 13:
        # Softmax before opset 13 (and QLinearSoftmax with opset < 13) flattens the input to 2-D at `axis`
        # and normalize each row of prod(shape[axis:]) values: contiguous rows
        rows, cols = int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))
        perm = None
    else:
        # opset 13: one axis. An inner axis is moved last and back (ORT's QLinearSoftmax
        # transposes the same way), so every row the kernel sees is contiguous.
        rows, cols = int(np.prod(shape)) // shape[axis], shape[axis]
        perm = None if axis == r - 1 else [i for i in range(r) if i != axis] + [axis]
    if perm is not None:
        xq = permuted(low, node, xq, perm, f"{name}__in")
    tname = name if perm is None else f"{name}__out"
    tid = low.define_q(tname, ysg, low.shape(xq.tid), ys, yzp).tid
    table, yscale = softmax_table(float(xq.scale), float(ys), cols, xq.code, low.mode)
    low.emit(node, KERNEL, [xq.tid], tid, consts=[low.const(table)], floats=[yscale],
             rows=rows, cols=cols, sg_in=xq.code, sg_out=ysg,
             yzp=yzp, qmin=lo, qmax=hi, mode=low.mode, yscale_int=int(yscale),
             off=128 if ysg and outp is None else 0)
    if perm is not None:
        permuted(low, node, low.qname[tname], [int(i) for i in np.argsort(perm)], name)


def validate(c) -> None:
    p = c.p
    c.positive("rows", "cols")
    c.flag("sg_in", "sg_out")
    c.size(c.ins[0], p["rows"] * p["cols"], "input")
    c.size(c.out, p["rows"] * p["cols"], "output")
    c.flag("mode")
    c.const("exp_table", "float32" if p["mode"] == 0 else "int32", 1024)
    if not 0 <= p["yscale_int"] < (1 << 24):
        c.fail("yscale_int out of range")
    c.one_of("off", (0, 128))
    c.qrange("yzp", "qmin", "qmax")


def work(p) -> int:
    """Per row: the maximum, the sum, the outputs."""
    return p["rows"] * (3 * p["cols"] + 1)


KERNEL = KernelSpec(kind=19, name="SOFTMAX", params=PARAMS, consts=("exp_table",),
                    floats=("yscale",), validate=validate, work=work)
ONNX = {
    "Softmax": OnnxOp(lower_softmax, reads_dequantized=True),
    "QLinearSoftmax": OnnxOp(lower_qlinear_softmax, domain="com.microsoft"),
}
