"""GEMM: x[M, K] . W[N, K]^T + bias with a constant W, requantized per output channel (ONNX
Gemm, MatMul with a constant B, QGemm, QLinearMatMul / MatMulInteger with a constant 2-D B;
leading dimensions of x are flattened into M).

Prepare (compile time), for 8-bit inputs (qgemm_pack.py, kernels/i8r_qgemm.h): the weights
packed into blocks of 16 output channels with four k per dword (int8, or uint8 w + 128 when
x is int8: the kernel reads x in place as the signed operand), the bias with the zero-point
terms of the expanded dot product folded in, and `sum_factor`, the factor of the run-time row
sum of x. For int16 inputs: int16 `w - zp` [N, K] and the plain bias. Both: the per-channel
requantization arrays (requantize.conv_params). Every per-channel array is padded to whole
blocks of 16 channels, which the kernel reads. Eval: kernels/gemm.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import qgemm_pack
from .. import requantize as rq
from ..kernel_abi import MAX_REDUCTION, MODE_INT32, KernelSpec, OnnxOp, align16
from ..program import I8, I16, Q, attr
from .conv import accumulator, per_channel_constants, prepare_weights

PARAMS = ("M", "K", "N", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode")
CONSTS = ("weights", "bias", "multipliers", "shifts", "sum_factor")


def gemm_scratch(M: int, K: int, N: int, wide: bool) -> int:
    """Scratch bytes. int16 inputs: one `x - zp` row (int32) and N int64 accumulators; 8-bit
    inputs: the row sums (i8r_gemm_scratch: M int32, 64-byte aligned)."""
    if wide:
        return align16(K * 4) + N * 8
    return (M * 4 + 63) // 64 * 64


def padded(n: int) -> int:
    """Channels rounded up to whole blocks of 16."""
    return -(-n // qgemm_pack.LANES) * qgemm_pack.LANES


def gemm_rules(node):
    if attr(node, "transA", 0):
        yield "transA", "transA=1 is not supported"
    if float(attr(node, "alpha", 1.0)) != 1.0:
        yield "alpha", "alpha must be 1"
    if float(attr(node, "beta", 1.0)) != 1.0:
        yield "beta", "beta must be 1"


def lower_gemm(low, node) -> None:
    if attr(node, "transA", 0):
        low.fail(node, "transA=1 is not supported", "transA")
    if float(attr(node, "alpha", 1.0)) != 1.0 or float(attr(node, "beta", 1.0)) != 1.0:
        low.fail(node, "alpha and beta must be 1", "alpha")
    xq = low.act(node, node.input[0])
    if len(low.shape(xq.tid)) != 2:
        low.fail(node, "Gemm input must be 2-D", "A")
    tb = attr(node, "transB", 0)
    w, ws, wzp = low.weight(node, low.input_name(node, 1, "B"), 0 if tb else 1, "B")
    wT = w if tb else w.T
    outp = low.output_q(node, node.output[0])
    b = low.bias(node, low.optional_input(node, 2), wT.shape[0], xq.scale,
                 np.broadcast_to(ws, (wT.shape[0],)))
    if b.size == 1:
        b = np.broadcast_to(b, (wT.shape[0],))
    fully_connected(low, node, xq, xq.scale, xq.zp, wT, ws, wzp, b, outp)


def lower_qgemm(low, node) -> None:
    if attr(node, "transA", 0) or float(attr(node, "alpha", 1.0)) != 1.0:
        low.fail(node, "transA=1 / alpha != 1 are not supported", "alpha")
    aq = low.act(node, node.input[0])
    as_, azp, asg = low.qparams(node, low.input_name(node, 1, "a_scale"),
                                low.optional_input(node, 2))
    w = low.init.get(low.input_name(node, 3, "B"))
    if w is None:
        low.fail(node, "B must be a constant", "B")
    ws = np.asarray(low.const_input(node, 4, "b_scale"), np.float32).reshape(-1)
    wzp = np.asarray(low.const_input(node, 5, "b_zero_point")).reshape(-1)
    wT = w if attr(node, "transB", 0) else w.T
    b = (np.asarray(low.const_input(node, 6, "C")).reshape(-1) if low.optional_input(node, 6)
         else np.zeros(wT.shape[0], np.int32))
    if not low.optional_input(node, 7):
        low.fail(node, "float output (no y_scale) is not supported", "y_scale")
    ys, yzp, ysg = low.qparams(node, node.input[7], low.optional_input(node, 8))
    lo, hi = rq.qrange(ysg)
    fully_connected(low, node, Q(aq.tid, as_, azp, asg), as_, azp, wT, ws,
                    wzp.astype(np.int32), np.broadcast_to(b, (wT.shape[0],)),
                    (node.output[0], ys, yzp, ysg, lo, hi))


def fully_connected(low, node, xq: Q, xs, xzp, wT, ws, wzp, bias, out_name_params,
                    int32_out=False) -> None:
    """x[..., K] . wT[N, K]^T + bias -> [..., N] (weights constant): prepare and emit."""
    xshape = low.shape(xq.tid)
    K = xshape[-1]
    Nn = wT.shape[0]
    if wT.shape[1] != K:
        low.fail(node, f"inner dimensions differ: {xshape} vs weight {wT.shape}", "B")
    if K > MAX_REDUCTION:
        low.fail(node, f"reduction of {K} terms can overflow int32", "B")
    M = int(np.prod(xshape[:-1]))
    wzp = np.broadcast_to(wzp, (Nn,)).astype(np.int32)
    wsb = np.broadcast_to(ws, (Nn,)).astype(np.float32)
    oshape = tuple(xshape[:-1]) + (Nn,)
    pad = qgemm_pack.pad_channels
    if int32_out:
        tid = low.new_tensor(node.output[0], "int32", oshape)
        low.qname[node.output[0]] = Q(tid, None, None, True)
        c2 = low.const(pad(np.zeros(Nn, np.float32)))
        c3 = low.const(pad(np.zeros(Nn, np.int32)))
        mode, yzp, lo, hi, ysg = MODE_INT32, 0, 0, 0, True
    else:
        name, ys, yzp, ysg, lo, hi = out_name_params
        low.same_family(node, xq.code, ysg)
        tid = low.define_q(name, ysg, oshape, ys, yzp).tid
        c2, c3 = low.requant_consts(node, xs, wsb, ys, Nn, pad)
        mode = low.mode
    bias = np.broadcast_to(np.asarray(bias, np.int32), (Nn,))
    if xq.code == I16:
        weights = prepare_weights(wT, wzp)
        bias, factor = pad(bias), pad(np.zeros(Nn, np.int32))
    else:
        packed = qgemm_pack.gemm(wT, wzp, bias, xzp, xq.code == I8)
        weights, bias, factor = packed.weights, packed.bias, packed.zb
    low.emit(node, KERNEL, [xq.tid], tid,
             consts=[low.const(weights), low.const(bias), c2, c3, low.const(factor)],
             scratch=gemm_scratch(M, K, Nn, xq.code == I16), M=M, K=K, N=Nn, xzp=xzp,
             yzp=yzp, qmin=lo, qmax=hi, sg_in=xq.code, sg_out=ysg, mode=mode)


def validate(c) -> None:
    p = c.p
    c.positive("M", "K", "N")
    accumulator(c, p["K"])
    wide = p["sg_in"] == I16
    c.qtype(c.ins[0], "sg_in", "input")
    c.size(c.ins[0], p["M"] * p["K"] * c.itemsize("sg_in"), "input")
    c.size(c.out, p["M"] * p["N"] * c.out_itemsize(), "output")
    channels = padded(p["N"])
    if wide:
        c.const("weights", "int16", p["N"] * p["K"] * 2)
    else:  # the signed operand of the dot product is x when x is int8
        c.const("weights", "uint8" if p["sg_in"] == I8 else "int8",
                channels * -(-p["K"] // 4) * 4)
    per_channel_constants(c, p["N"], channels)
    c.scratch(gemm_scratch(p["M"], p["K"], p["N"], wide))
    c.qrange("xzp", "yzp", "qmin", "qmax")


def work(p) -> int:
    """Per row: `x - zp` or its sum (K), then every channel of whole blocks of 16 with its K
    terms and store."""
    return p["M"] * (p["K"] + padded(p["N"]) * (p["K"] + 2))


def cost(p) -> tuple[int, int]:
    """MACs M*K*N; weights at 1 byte, int32 biases."""
    return p["M"] * p["K"] * p["N"], p["N"] * p["K"] + p["N"] * 4


KERNEL = KernelSpec(kind=5, name="GEMM", params=PARAMS, consts=CONSTS, int16=True,
                    validate=validate, work=work, cost=cost)
ONNX = {
    "Gemm": OnnxOp(lower_gemm, gemm_rules, int16=True, reads_dequantized=True),
    "QGemm": OnnxOp(lower_qgemm, domain="com.microsoft"),
}
