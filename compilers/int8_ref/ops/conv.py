"""CONV: 2-D convolution with groups, dilations and pads, accumulated in int32 (int64 for
int16 inputs) and requantized per output channel (ONNX Conv in a QDQ island, QLinearConv,
ConvInteger with its int32 output).

Prepare (compile time), for 8-bit inputs (qgemm_pack.py, kernels/i8r_qgemm.h): the weights
packed into blocks of 16 output channels with four k per dword, the bias with the
zero-point terms of the expanded dot product folded in, the factor of the run-time input sum
(`sum_factor`, the weight zero point); with one input channel per group (depthwise) int16
`w - zp` taps and the plain bias instead. The parameters `depthwise` and `rows` (output rows
per im2col chunk of a strided convolution) choose the kernel's path. For int16 inputs: int16
`w - zp` [M, C/groups * kh * kw] and the plain bias (`prepare_weights`). Both: the
per-channel requantization arrays (requantize.conv_params: float32 multipliers for `ort`, Q31
mantissas and shifts for `fixed-point`). Eval: kernels/conv.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import qgemm_pack
from .. import requantize as rq
from ..kernel_abi import (MAX_REDUCTION, MODE_FIXED, MODE_INT32, MODE_ORT, KernelSpec, OnnxOp,
                          align16)
from ..program import I8, I16, Q, attr
from ._window import pads, window_rules

PARAMS = ("N", "C", "H", "W", "M", "kh", "kw", "sh", "sw", "pt", "pl", "dh", "dw", "groups",
          "OH", "OW", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode", "depthwise",
          "rows")
CONSTS = ("weights", "bias", "multipliers", "shifts", "sum_factor")
# a strided convolution gathers the columns of this many bytes of k groups at a time
IM2COL_BYTES = 1 << 18
# bound of the padded input's extent and size (the loader's memory limit is 2^30 bytes)
PADDED_LIMIT = 1 << 32


def wide_scratch(chw: int, K: int, P: int) -> int:
    """int16 inputs, as kernels/conv.pxi lays it out: |x - zp| <= 65535 needs an int32 image
    and int32 im2col columns, then one row of int64 accumulators."""
    return align16(chw * 4) + align16(K * P * 4) + P * 8


def narrow_scratch(p) -> int:
    """8-bit inputs: the packed input, gathered columns, offsets, column sums and panel table
    as i8r_conv_scratch lays them out (kernels/i8r_qgemm.h)."""
    from .._kernels import conv_scratch_bytes

    return conv_scratch_bytes(*(int(p[k]) for k in (
        "N", "C", "H", "W", "M", "kh", "kw", "sh", "sw", "pt", "pl", "dh", "dw", "groups", "OH",
        "OW", "depthwise", "rows")))


def prepare_weights(w: np.ndarray, wzp: np.ndarray) -> np.ndarray:
    """[M, K] int16 `w - zero point` (|w - zp| <= 255) of weights [M, ...] with per-channel
    zero points [M]: the layout the CONV and GEMM kernels over int16 inputs read."""
    M = w.shape[0]
    return (w.astype(np.int32).reshape(M, -1) - wzp[:, None]).astype(np.int16)


def im2col_rows(Cg: int, kh: int, kw: int, OH: int, OW: int) -> int:
    """Output rows per chunk of a strided convolution's gathered columns (IM2COL_BYTES)."""
    k_groups = -(-Cg // 4) * kh * kw
    return max(1, min(OH, IM2COL_BYTES // (k_groups * 4 * OW)))


def lower_conv(low, node) -> None:
    xq = low.act(node, node.input[0])
    w, ws, wzp = low.weight(node, low.input_name(node, 1, "W"), 0)
    conv(low, node, xq, xq.scale, xq.zp, w, ws, wzp, low.optional_input(node, 2))


def lower_qlinear_conv(low, node) -> None:
    xq = low.act(node, node.input[0])
    xs, xzp, xsg = low.qparams(node, low.input_name(node, 1, "x_scale"),
                               low.optional_input(node, 2))
    if low.input_name(node, 3, "w") not in low.init:
        low.fail(node, "weight must be a constant initializer", "w")
    w = low.init[node.input[3]]
    ws = np.asarray(low.const_input(node, 4, "w_scale"), np.float32).reshape(-1)
    wzp = np.asarray(low.const_input(node, 5, "w_zero_point")).reshape(-1).astype(np.int32)
    ys, yzp, ysg = low.qparams(node, low.input_name(node, 6, "y_scale"),
                               low.optional_input(node, 7))
    b = low.const_input(node, 8, "B") if low.optional_input(node, 8) else None
    conv(low, node, Q(xq.tid, xs, xzp, xsg), xs, xzp, w, ws, wzp, None, bias_arr=b,
         out_params=(node.output[0], ys, yzp, ysg))


def lower_conv_integer(low, node) -> None:
    xq = low.act(node, node.input[0])
    if low.input_name(node, 1, "w") not in low.init:
        low.fail(node, "weight must be a constant initializer", "w")
    w = low.init[node.input[1]]
    x_zp = low.optional_input(node, 2)
    xzp = int(low.scalar(node, x_zp, "x_zero_point")) if x_zp else 0
    wzp = (np.asarray(low.const_input(node, 3, "w_zero_point")).reshape(-1).astype(np.int32)
           if low.optional_input(node, 3) else np.zeros(1, np.int32))
    conv(low, node, xq, 1.0, xzp, w, np.ones(1, np.float32), wzp, None, int32_out=True)


def conv(low, node, xq: Q, xs, xzp, w, ws, wzp, bias_name, bias_arr=None, out_params=None,
         int32_out=False) -> None:
    """Geometry from the node's attributes, prepare, emit one CONV."""
    xshape = low.shape(xq.tid)
    if len(xshape) != 4 or w.ndim != 4:
        low.fail(node, f"only 2-D convolution (4-D tensors) is supported, input is "
                       f"{len(xshape)}-D", "kernel_shape")
    N, C, H, W = xshape
    M, Cg, kh, kw = w.shape
    G = int(attr(node, "group", 1))
    if C % G or M % G or Cg != C // G:
        low.fail(node, f"group={G} does not divide channels C={C}, M={M}", "group")
    ks = attr(node, "kernel_shape")
    if ks is not None and tuple(ks) != (kh, kw):
        low.fail(node, f"kernel_shape {ks} differs from weight {w.shape}", "kernel_shape")
    sh, sw = attr(node, "strides", [1, 1])
    dh, dw = attr(node, "dilations", [1, 1])
    explicit = attr(node, "pads", [0, 0, 0, 0])
    pt, pl, pb, pr, ekh, ekw = pads(low, node, H, W, kh, kw, sh, sw, dh, dw,
                                    (explicit[0], explicit[1], explicit[2], explicit[3]))
    OH = (H + pt + pb - ekh) // sh + 1
    OW = (W + pl + pr - ekw) // sw + 1
    if OH <= 0 or OW <= 0:
        low.fail(node, "output would be empty", "pads")
    K = Cg * kh * kw
    if K > MAX_REDUCTION:
        low.fail(node, f"reduction of {K} terms can overflow int32", "kernel_shape")
    wzp = np.broadcast_to(wzp, (M,)).astype(np.int32)
    wsb = np.broadcast_to(ws, (M,)).astype(np.float32)
    if int32_out:
        out_name = node.output[0]
        tid = low.new_tensor(out_name, "int32", (N, M, OH, OW))
        low.qname[out_name] = Q(tid, None, None, True)
        b = np.zeros(M, np.int32)
        c2, c3 = low.const(np.zeros(M, np.float32)), low.const(np.zeros(M, np.int32))
        mode, yzp, lo, hi, ysg = MODE_INT32, 0, 0, 0, True
    else:
        if out_params is None:
            name, ys, yzp, ysg, lo, hi = low.output_q(node, node.output[0])
        else:
            name, ys, yzp, ysg = out_params
            lo, hi = rq.qrange(ysg)
        if bias_arr is not None:
            b = np.asarray(bias_arr).astype(np.int32).reshape(-1)
        else:
            b = low.bias(node, bias_name, M, xs, wsb)
        low.same_family(node, xq.code, ysg)
        tid = low.define_q(name, ysg, (N, M, OH, OW), ys, yzp).tid
        c2, c3 = low.requant_consts(node, xs, wsb, ys, M)
        mode = low.mode
    b = np.broadcast_to(np.asarray(b, np.int32), (M,))
    depthwise = int(Cg == 1 and xq.code != I16)
    rows = im2col_rows(Cg, kh, kw, OH, OW) if (sh, sw) != (1, 1) and not depthwise else 1
    geometry = dict(N=N, C=C, H=H, W=W, M=M, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, dh=dh,
                    dw=dw, groups=G, OH=OH, OW=OW, depthwise=depthwise, rows=rows)
    if xq.code == I16:
        weights, bias, factor = prepare_weights(w, wzp), b, np.zeros(M, np.int32)
        scratch = wide_scratch(C * H * W, K, OH * OW)
    else:
        packed = (qgemm_pack.depthwise(w, wzp, b) if depthwise
                  else qgemm_pack.conv(w, wzp, b, G, xzp, xq.code == I8))
        weights, bias, factor = packed.weights, packed.bias, packed.zb
        scratch = narrow_scratch(geometry)
    low.emit(node, KERNEL, [xq.tid], tid,
             consts=[low.const(weights), low.const(bias), c2, c3, low.const(factor)],
             scratch=scratch, xzp=xzp, yzp=yzp, qmin=lo, qmax=hi, sg_in=xq.code,
             sg_out=ysg, mode=mode, **geometry)


def validate(c) -> None:
    p = c.p
    c.positive("N", "C", "H", "W", "M", "kh", "kw", "sh", "sw", "dh", "dw", "groups", "OH",
               "OW", "rows")
    c.nonneg("pt", "pl")
    c.flag("depthwise")
    if p["C"] % p["groups"] or p["M"] % p["groups"]:
        c.fail("groups does not divide the channels")
    Cg, M = p["C"] // p["groups"], p["M"]
    kk = Cg * p["kh"] * p["kw"]
    P = p["OH"] * p["OW"]
    accumulator(c, kk)
    wide = p["sg_in"] == I16
    if p["depthwise"] and (Cg != 1 or wide):
        c.fail("depthwise=1 needs one 8-bit input channel per group")
    # the padded input the kernel builds spans every tap of every output; bounded here (in
    # Python integers) so that the kernel's own size arithmetic cannot overflow
    Hp = (p["OH"] - 1) * p["sh"] + (p["kh"] - 1) * p["dh"] + 1
    Wp = (p["OW"] - 1) * p["sw"] + (p["kw"] - 1) * p["dw"] + 1
    if max(Hp, Wp) > PADDED_LIMIT or -(-Cg // 4) * 4 * Hp * Wp > PADDED_LIMIT:
        c.fail(f"the padded input ({Hp} x {Wp} positions of {Cg} channels) is larger than "
               f"{PADDED_LIMIT} values")
    if p["rows"] > p["OH"]:
        c.fail(f"rows={p['rows']} is more than OH={p['OH']}")
    c.qtype(c.ins[0], "sg_in", "input")
    c.size(c.ins[0], p["N"] * p["C"] * p["H"] * p["W"] * c.itemsize("sg_in"), "input")
    c.size(c.out, p["N"] * M * P * c.out_itemsize(), "output")
    if wide:
        c.const("weights", "int16", M * kk * 2)
        c.scratch(wide_scratch(p["C"] * p["H"] * p["W"], kk, P))
    elif p["depthwise"]:
        c.const("weights", "int16", M * kk * 2)
        c.scratch(narrow_scratch(p))
    else:
        blocks = p["groups"] * -(-(M // p["groups"]) // 16)
        c.const("weights", "int8", blocks * -(-Cg // 4) * p["kh"] * p["kw"] * 64)
        c.scratch(narrow_scratch(p))
    per_channel_constants(c, M, M)
    c.qrange("xzp", "yzp", "qmin", "qmax")


def accumulator(c, k: int) -> None:
    """The rules of an op that sums `k` products (CONV, GEMM, MATMUL): type codes, a mode of
    0 / 1 / 2 (int32 out), at most MAX_REDUCTION terms (the accumulator bound in
    kernels/common.pxi), no int32-output form for an int16 input."""
    c.type_codes("sg_in", "sg_out")
    c.flag("mode", hi=MODE_INT32)
    if k > MAX_REDUCTION:
        c.fail(f"reduction of {k} terms can overflow int32")
    if c.p["sg_in"] == I16 and c.p["mode"] == MODE_INT32:
        c.fail("an int16 input has no int32-output form")


def per_channel_constants(c, channels: int, stored: int) -> None:
    """The per-channel constants of a requantized accumulator (CONV, GEMM), `stored` entries
    each (the channels, padded where the kernel reads whole blocks): the int32 folded bias,
    multipliers (int32 mantissas in `fixed-point`, float32 otherwise) and shifts, the int32
    input-sum factor; each used shift in [-31, 30], each used float multiplier finite (the
    vector requantization relies on a product that is never NaN). The weights' layout is
    each op's own."""
    fixed = c.p["mode"] == MODE_FIXED
    c.const("bias", "int32", stored * 4)
    c.const("multipliers", "int32" if fixed else "float32", stored * 4)
    c.const("shifts", "int32", stored * 4)
    c.const("sum_factor", "int32", stored * 4)
    if fixed:
        sh = c.const_values("shifts", np.int32, channels)
        if sh.min() < -31 or sh.max() > 30:
            c.fail("a per-channel shift is outside [-31, 30]")
    if c.p["mode"] == MODE_ORT and not np.isfinite(
            c.const_values("multipliers", np.float32, channels)).all():
        c.fail("a float32 multiplier is not finite")


def work(p) -> int:
    """8-bit inputs, per image and group: the packed input (its padded extent), the gathered
    columns of a strided convolution, then every output channel over every column of the
    padded width with its packed k (four per k group) and store; the depthwise path visits
    every tap of every output. int16 inputs: `x - zp` (C*H*W), im2col (C*kh*kw*OH*OW), then
    per output channel the bias, the K-term sums and the store (OH*OW*(K + 2))."""
    G, Cg = p["groups"], p["C"] // max(p["groups"], 1)
    taps, P = p["kh"] * p["kw"], p["OH"] * p["OW"]
    Hp = (p["OH"] - 1) * p["sh"] + (p["kh"] - 1) * p["dh"] + 1
    Wp = (p["OW"] - 1) * p["sw"] + (p["kw"] - 1) * p["dw"] + 1
    if p["sg_in"] == I16:
        return p["N"] * (p["C"] * p["H"] * p["W"] + p["C"] * taps * P
                         + p["M"] * P * (Cg * taps + 2))
    if p["depthwise"]:
        return p["N"] * (p["C"] * Hp * Wp + p["M"] * (p["OH"] * Wp + 32) * (taps + 2))
    k_groups = -(-Cg // 4) * taps
    columns = p["OH"] * Wp + 16 + P
    return p["N"] * G * (-(-Cg // 4) * Hp * Wp + k_groups * P
                         + -(-(p["M"] // G) // 16) * 16 * columns * (4 * k_groups + 2))


def cost(p) -> tuple[int, int]:
    """MACs N*M*OH*OW*K; weights at 1 byte (the model's int8/uint8; the int16 `w - zp` is a
    layout choice, not an accelerator's traffic) and int32 biases."""
    k = p["C"] // p["groups"] * p["kh"] * p["kw"]
    return p["N"] * p["M"] * p["OH"] * p["OW"] * k, p["M"] * k + p["M"] * 4


KERNEL = KernelSpec(kind=4, name="CONV", params=PARAMS, consts=CONSTS, int16=True,
                    validate=validate, work=work, cost=cost)
ONNX = {
    "Conv": OnnxOp(lower_conv, window_rules, int16=True, reads_dequantized=True),
    "QLinearConv": OnnxOp(lower_qlinear_conv, window_rules),
    "ConvInteger": OnnxOp(lower_conv_integer, window_rules),
}
