"""MATMUL: batched a[B, M, K] . b[B, K, N] of two activations (ONNX MatMul in a QDQ island,
QLinearMatMul, MatMulInteger with its int32 output; a B of rank 2 is broadcast over the
batch). A constant 2-D B makes these a GEMM instead (ops/gemm.py).

Prepare (compile time): the multiplier a_scale * b_scale / y_scale (float32 for `ort`, Q31
mantissa and shift for `fixed-point`). Eval: kernels/matmul.pxi (B transposed once per batch
into scratch).
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import MODE_INT32, KernelSpec, OnnxOp, align16
from ..program import I16, Q
from . import load_const
from .conv import accumulator
from .gemm import fully_connected
from .requant import widen

PARAMS = ("B", "M", "K", "N", "azp", "bzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode",
          "mult", "shift", "b_batch")


def matmul_scratch(K: int, N: int, wide: bool) -> int:
    """Scratch bytes: B transposed ([N, K]) and one row of A, as `x - zp` (int16; int32 for
    int16 inputs)."""
    if wide:
        return align16(N * K * 4) + K * 4
    return align16(N * K * 2) + K * 2


def lower_matmul(low, node) -> None:
    a, b = node.input[0], low.input_name(node, 1, "B")
    if b in low.wconst:
        xq = low.act(node, a)
        w, ws, wzp = low.weight(node, b, 1, "B")
        if w.ndim != 2:
            low.fail(node, "constant B must be 2-D", "B")
        outp = low.output_q(node, node.output[0])
        fully_connected(low, node, xq, xq.scale, xq.zp, w.T, ws, wzp,
                        np.zeros(w.shape[1], np.int32), outp)
        return
    aq, bq = low.act(node, a), low.act(node, b)
    outp = low.output_q(node, node.output[0])
    if I16 in (aq.code, bq.code):
        # one input type per kernel: an 8-bit operand next to an int16 one is widened
        aq, bq = widen(low, node, aq), widen(low, node, bq)
    matmul(low, node, aq, bq, aq.scale, aq.zp, bq.scale, bq.zp, outp)


def lower_qlinear_matmul(low, node) -> None:
    aq = low.act(node, node.input[0])
    as_, azp, asg = low.qparams(node, low.input_name(node, 1, "a_scale"),
                                low.optional_input(node, 2))
    ys, yzp, ysg = low.qparams(node, low.input_name(node, 6, "y_scale"),
                               low.optional_input(node, 7))
    lo, hi = rq.qrange(ysg)
    outp = (node.output[0], ys, yzp, ysg, lo, hi)
    b = low.input_name(node, 3, "b")
    if b in low.init:
        w = low.init[b]
        ws = np.asarray(low.const_input(node, 4, "b_scale"), np.float32).reshape(-1)
        wzp = np.asarray(low.const_input(node, 5, "b_zero_point")).reshape(-1)
        if w.ndim == 2:
            fully_connected(low, node, Q(aq.tid, as_, azp, asg), as_, azp, w.T, ws,
                            wzp.astype(np.int32), np.zeros(w.shape[1], np.int32), outp)
            return
        if ws.size != 1:
            low.fail(node, "a batched constant B must be quantized per tensor", "b_scale")
        load_const.load_initializer(low, node, b, w)
    bq = low.act(node, b)
    bs, bzp, bsg = low.qparams(node, low.input_name(node, 4, "b_scale"),
                               low.optional_input(node, 5))
    matmul(low, node, Q(aq.tid, as_, azp, asg), Q(bq.tid, bs, bzp, bsg), as_, azp, bs, bzp,
           outp)


def lower_matmul_integer(low, node) -> None:
    aq = low.act(node, node.input[0])
    a_zp = low.optional_input(node, 2)
    azp = int(low.scalar(node, a_zp, "a_zero_point")) if a_zp else 0
    b = low.input_name(node, 1, "B")
    if b in low.init:
        w = low.init[b]
        wzp = (np.asarray(low.const_input(node, 3, "b_zero_point")).reshape(-1).astype(np.int32)
               if low.optional_input(node, 3) else np.zeros(1, np.int32))
        if w.ndim == 2:
            fully_connected(low, node, aq, 1.0, azp, w.T, np.ones(1, np.float32), wzp,
                            np.zeros(w.shape[1], np.int32), None, int32_out=True)
            return
        if wzp.size != 1:
            low.fail(node, "a batched constant B needs a scalar zero point", "b_zero_point")
        load_const.load_initializer(low, node, b, w)
    bq = low.act(node, b)
    b_zp = low.optional_input(node, 3)
    bzp = int(low.scalar(node, b_zp, "b_zero_point")) if b_zp else 0
    matmul(low, node, aq, bq, 1.0, azp, 1.0, bzp, None, int32_out=True)


def matmul(low, node, aq: Q, bq: Q, as_, azp, bs, bzp, outp, int32_out=False) -> None:
    """Shapes and batch broadcasting, prepare, emit one MATMUL."""
    ash, bsh = low.shape(aq.tid), low.shape(bq.tid)
    if len(ash) < 2 or len(bsh) < 2:
        low.fail(node, "MatMul operands must be at least 2-D", "A")
    M, K = ash[-2], ash[-1]
    K2, Nn = bsh[-2], bsh[-1]
    if K != K2:
        low.fail(node, f"inner dimensions differ: {ash} vs {bsh}", "B")
    B = int(np.prod(ash[:-2])) if len(ash) > 2 else 1
    Bb = int(np.prod(bsh[:-2])) if len(bsh) > 2 else 1
    if Bb not in (1, B) or (Bb == B and tuple(bsh[:-2]) != tuple(ash[:-2])[-len(bsh[:-2]):]
                            and len(bsh) > 2):
        low.fail(node, f"batch broadcasting {ash} x {bsh} is not supported", "B")
    wide = aq.code == I16
    if aq.code != bq.code:
        low.fail(node, "A and B must both be int8 or both uint8", "B")
    oshape = tuple(ash[:-2]) + (M, Nn)
    if int32_out:
        tid = low.new_tensor(node.output[0], "int32", oshape)
        low.qname[node.output[0]] = Q(tid, None, None, True)
        mode, yzp, lo, hi, ysg, mult, shift, f = MODE_INT32, 0, 0, 0, True, 0, 0, 0.0
    else:
        name, ys, yzp, ysg, lo, hi = outp
        tid = low.define_q(name, ysg, oshape, ys, yzp).tid
        f = float(rq.ort_multiplier(as_, bs, ys))
        mult, shift = rq.quantize_multiplier(float(np.float32(as_)) * float(np.float32(bs))
                                             / float(np.float32(ys)))
        mode = low.mode
    low.emit(node, KERNEL, [aq.tid, bq.tid], tid, floats=[f],
             scratch=matmul_scratch(K, Nn, wide), B=B, M=M, K=K, N=Nn, azp=azp, bzp=bzp,
             yzp=yzp, qmin=lo, qmax=hi, sg_in=aq.code, sg_out=ysg, mode=mode,
             mult=mult, shift=shift, b_batch=int(Bb == B and B > 1))


def validate(c) -> None:
    p = c.p
    c.positive("B", "M", "K", "N")
    c.flag("b_batch")
    accumulator(c, p["K"])
    c.qtype(c.ins[0], "sg_in", "A")
    c.qtype(c.ins[1], "sg_in", "B")
    e = c.itemsize("sg_in")
    c.size(c.ins[0], p["B"] * p["M"] * p["K"] * e, "A")
    c.size(c.ins[1], (p["B"] if p["b_batch"] else 1) * p["K"] * p["N"] * e, "B")
    c.size(c.out, p["B"] * p["M"] * p["N"] * c.out_itemsize(), "output")
    c.scratch(matmul_scratch(p["K"], p["N"], p["sg_in"] == I16))
    c.shift("shift")
    c.qrange("azp", "bzp", "yzp", "qmin", "qmax")


def work(p) -> int:
    """Per batch: B transposed (K*N), then per row of A its `x - zp` (K) and N sums of K
    terms with their stores."""
    return p["B"] * (p["K"] * p["N"] + p["M"] * (p["K"] + p["N"] * (p["K"] + 1)))


def cost(p) -> tuple[int, int]:
    return p["B"] * p["M"] * p["K"] * p["N"], 0


KERNEL = KernelSpec(kind=6, name="MATMUL", params=PARAMS, floats=("multiplier",), inputs=2,
                    int16=True, validate=validate, work=work, cost=cost)
ONNX = {
    "MatMul": OnnxOp(lower_matmul, int16=True, reads_dequantized=True),
    "QLinearMatMul": OnnxOp(lower_qlinear_matmul),
    "MatMulInteger": OnnxOp(lower_matmul_integer),
}
