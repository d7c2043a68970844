"""LAYERNORM: LayerNormalization of an 8-bit activation over its last axes, in integers only
(ONNX LayerNormalization in a QDQ island: ConvNeXt, vision transformers).

ONNX Runtime has no integer LayerNorm: it runs DequantizeLinear -> float32 LayerNormalization
-> QuantizeLinear (providers/cpu/nn/layer_norm_impl.cc: float32 sums of x and x^2, var =
E[x^2] - mean^2). int8-ref computes the same function from the integers, as an NPU would, in
both requantization modes. For a row of n inputs q_i (any zero point: it cancels),

    (x_i - mean) / sqrt(var + eps) = (n q_i - S1) / sqrt(n S2 - S1^2 + n^2 eps / x_scale^2)

with S1 = sum q_i and S2 = sum q_i^2 exact in int64. The kernel scales the variance term by
2^k (k even, as large as the row length allows), takes an integer square root and one
reciprocal per row, and forms z_i = norm_i * 2^20 (rounded). The scale (gamma) enters as
integers G_i with a positive scale s_g, the bias (beta) as B_i = round(beta_i 2^20 / s_g),
and y_i = round((z_i G_i + B_i) * s_g / (y_scale 2^20)) + y_zp with TFLite's single-rounding
MultiplyByQuantizedMultiplier on the int64 sum (i8r_mbqm64).

Worst case against the exact LayerNorm of the dequantized inputs (docs/int8-ref.md,
"LayerNormalization"): |norm_i| <= sqrt(n - 1), the square root and the reciprocal are each
within 2^-30 relative, z_i within 2^-21 absolute, the variance offset within 2^-(k+2)
relative, B_i within 2^-21 s_g / y_scale and the multiplier within 2^-31 relative, so before
the final rounding

    |error| <= (|G_i| s_g / y_scale) (sqrt(n - 1) 2^-29 + 2^-21 + 2^-(k+2))
               + 2^-21 s_g / y_scale + 2^-22   output LSB,

about 10^-5 LSB on the suite's models. The compiler computes it per op and refuses one above
1/64 LSB; so an output is at most 1 LSB from the correctly rounded value, and only where that
value lies within the bound of a rounding boundary.

Prepare (compile time): G (int32[n]), B (int64[n]), the per-element multipliers and shifts of
s_g / (y_scale 2^20) (int32[2n]) and the variance offset round(n^2 eps 2^k / x_scale^2)
(int64[1]); the int64 values are stored as int32 pairs (the image has no int64 constants). Eval: kernels/layernorm.pxi.
"""

from __future__ import annotations

import math

import numpy as np

from .. import requantize as rq
from ..kernel_abi import MAX_REDUCTION, KernelSpec, OnnxOp
from ..program import attr

PARAMS = ("rows", "n", "sg_in", "sg_out", "yzp", "qmin", "qmax", "vshift")
FRACTION_BITS = 20  # z_i = norm_i * 2^20; kernels/layernorm.pxi uses the same constant
VARIANCE_LIMIT = 1 << 61  # (n S2 - S1^2) << vshift, and the offset, stay below this


def vshift_for(n: int) -> int:
    """The largest even k <= 30 with max(n S2 - S1^2) * 2^k < 2^61 for 8-bit inputs (the
    spread is largest with half the row at each end of the range: n^2 255^2 / 4)."""
    top = n * n * 255 * 255 // 4 + 1
    k = 30
    while k > 0 and top << k >= VARIANCE_LIMIT:
        k -= 2
    return k


def error_bound(n: int, k: int, gamma_ratio: float, scale_ratio: float) -> float:
    """The worst |error| before the final rounding, in output LSB (module docstring):
    `gamma_ratio` = max |G_i| s_g / y_scale, `scale_ratio` = max s_g / y_scale."""
    return (gamma_ratio * (math.sqrt(max(n - 1, 0)) * 2.0 ** -29 + 2.0 ** -21
                           + 2.0 ** -(k + 2)) + scale_ratio * 2.0 ** -21 + 2.0 ** -22)


def _broadcast(low, node, arr: np.ndarray, norm_shape, what: str) -> np.ndarray:
    try:
        return np.broadcast_to(arr, norm_shape).reshape(-1)
    except ValueError:
        low.fail(node, f"{what} of shape {arr.shape} does not broadcast to the normalized "
                       f"shape {tuple(norm_shape)}", what)


def _scale_integers(low, node, name: str, norm_shape):
    """(G int64[n], s_g float64[n]): the scale (gamma) as integers times a positive scale.
    A DequantizeLinear of a constant gives its own integers and scales exactly; a float
    initializer is quantized here to 16 bits (relative error <= 2^-16 of its largest
    value)."""
    if name in low.wconst:
        q, s, zp, axis = low.wconst[name]
        if q.dtype.kind not in "iu" or q.dtype.itemsize > 2:
            low.fail(node, f"scale of type {q.dtype} (8- or 16-bit integers expected)", "scale")
        per = np.ones(q.shape, np.float64) * _along(s, q, axis)
        g = q.astype(np.int64) - _along(zp, q, axis).astype(np.int64)
        return (_broadcast(low, node, g, norm_shape, "scale"),
                _broadcast(low, node, per, norm_shape, "scale"))
    if name in low.init and low.init[name].dtype == np.float32:
        gamma = low.init[name].astype(np.float64)
        top = float(np.abs(gamma).max()) if gamma.size else 0.0
        sg = top / 32767 if top > 0 else 1.0
        g = np.rint(gamma / sg).astype(np.int64)
        return (_broadcast(low, node, g, norm_shape, "scale"),
                _broadcast(low, node, np.full(gamma.shape, sg), norm_shape, "scale"))
    low.fail(node, "scale must be a constant (a DequantizeLinear of one, or float32)", "scale")


def _along(v: np.ndarray, q: np.ndarray, axis: int) -> np.ndarray:
    """A per-tensor or per-axis quantization parameter shaped to broadcast over `q`."""
    v = np.asarray(v)
    if v.size == 1 or q.ndim == 0:
        return v.reshape(())
    shape = [1] * q.ndim
    shape[axis % q.ndim] = v.size
    return v.reshape(shape)


def _bias_values(low, node, name: str | None, norm_shape) -> np.ndarray:
    """The bias (beta) as the float32 values ONNX Runtime adds, in float64."""
    if name is None:
        return np.zeros(int(np.prod(norm_shape)))
    if name in low.wconst:
        q, s, zp, axis = low.wconst[name]
        beta = ((q.astype(np.int64) - _along(zp, q, axis).astype(np.int64)).astype(np.float32)
                * _along(s, q, axis).astype(np.float32))
    elif name in low.init and low.init[name].dtype == np.float32:
        beta = low.init[name]
    else:
        low.fail(node, "bias must be a constant (a DequantizeLinear of one, or float32)", "B")
    return _broadcast(low, node, np.asarray(beta, np.float64), norm_shape, "B")


def layernorm_rules(node):
    if any(node.output[1:]):
        yield "Mean", "the Mean and InvStdDev outputs are not supported"


def lower_layer_normalization(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    r = len(shape)
    axis = attr(node, "axis", -1)
    if not -r <= axis < r:
        low.fail(node, f"axis {axis} is out of range for rank {r}", "axis")
    axis %= r
    norm_shape = shape[axis:]
    rows, n = int(np.prod(shape[:axis])), int(np.prod(norm_shape))
    if n > MAX_REDUCTION:
        low.fail(node, f"normalizes {n} values (at most {MAX_REDUCTION})", "axis")
    eps = float(np.float32(attr(node, "epsilon", 1e-5)))
    if not eps >= 0:
        low.fail(node, f"epsilon {eps} is negative", "epsilon")
    g, sg = _scale_integers(low, node, low.input_name(node, 1, "scale"), norm_shape)
    if np.any(sg <= 0):
        low.fail(node, "the scale's quantization scale must be positive", "scale")
    beta = _bias_values(low, node, low.optional_input(node, 2), norm_shape)
    name, ys, yzp, ysg, lo, hi = low.output_q(node, node.output[0])
    if ysg != xq.code:
        low.fail(node, "input and output must both be int8 or both uint8", "Y")
    k = vshift_for(n)
    offset = round(n * n * eps / float(xq.scale) ** 2 * 2.0 ** k)
    if offset >= VARIANCE_LIMIT:
        low.fail(node, f"epsilon {eps} is too large for input scale {xq.scale}", "epsilon")
    unit = 2.0 ** FRACTION_BITS
    bias = np.rint(beta * unit / sg)
    if np.any(np.abs(bias) >= 2.0 ** 52):
        low.fail(node, "the bias is too large for the scale's quantization scale", "B")
    mult = np.zeros(n, np.int32)
    shift = np.zeros(n, np.int32)
    for i, s in enumerate(sg):
        mult[i], shift[i] = rq.quantize_multiplier(float(s) / (float(ys) * unit))
    if np.any(mult == 0):
        low.fail(node, "scale / output scale is too small for a fixed-point multiplier",
                 "scale")
    bound = error_bound(n, k, float(np.max(np.abs(g) * sg)) / float(ys),
                        float(np.max(sg)) / float(ys))
    if bound > 1 / 64:
        low.fail(node, f"integer LayerNorm error bound {bound:.3g} LSB exceeds 1/64", "scale")
    tid = low.define_q(name, ysg, shape, ys, yzp).tid
    # the image has no int64 constants: B and the offset are little-endian int64 values
    # stored as int32 pairs, read by the kernel as int64 (constants are 16-byte aligned)
    consts = (low.const(g.astype(np.int32)), low.const(bias.astype("<i8").view(np.int32)),
              low.const(np.concatenate([mult, shift]).astype(np.int32)),
              low.const(np.array([offset], "<i8").view(np.int32)))
    low.emit(node, KERNEL, [xq.tid], tid, consts=consts, rows=rows, n=n, sg_in=xq.code,
             sg_out=ysg, yzp=yzp, qmin=lo, qmax=hi, vshift=k)


def validate(c) -> None:
    p = c.p
    c.positive("rows", "n")
    c.flag("sg_in", "sg_out")
    c.qtype(c.ins[0], "sg_in", "input")
    c.qtype(c.out, "sg_out", "output")
    c.size(c.ins[0], p["rows"] * p["n"], "input")
    c.size(c.out, p["rows"] * p["n"], "output")
    c.qrange("yzp", "qmin", "qmax")
    if p["n"] > MAX_REDUCTION:
        c.fail(f"n={p['n']} is larger than {MAX_REDUCTION}")
    if p["vshift"] % 2 or not 0 <= p["vshift"] <= 30 or p["vshift"] != vshift_for(p["n"]):
        c.fail(f"vshift={p['vshift']} does not fit n={p['n']}")
    n = p["n"]
    c.const("gamma", "int32", 4 * n)
    c.const("bias", "int32", 8 * n)  # int64 values as int32 pairs
    c.const("requant", "int32", 8 * n)
    c.const("offset", "int32", 8)
    g = c.const_values("gamma", np.int32, n)
    if np.abs(g.astype(np.int64)).max() > 1 << 16:
        c.fail("a scale integer is larger than 2^16")
    if np.abs(c.const_values("bias", "<i8", n)).max() >= 1 << 52:
        c.fail("a bias is larger than 2^52")
    shifts = c.const_values("requant", np.int32, 2 * n)[n:]
    if shifts.min() < -31 or shifts.max() > 30:
        c.fail("a shift is outside [-31, 30]")
    offset = int(c.const_values("offset", "<i8", 1)[0])
    if not 0 <= offset < VARIANCE_LIMIT:
        c.fail(f"variance offset {offset} is out of range")


def work(p) -> int:
    """Per row: the sums, the outputs, and at most 96 steps of the leading-bit search and
    the square root."""
    return p["rows"] * (2 * p["n"] + 96)


KERNEL = KernelSpec(kind=52, name="LAYERNORM", params=PARAMS,
                    consts=("gamma", "bias", "requant", "offset"), firmware="1.2.0",
                    validate=validate, work=work)
ONNX = {"LayerNormalization": OnnxOp(lower_layer_normalization, layernorm_rules,
                                     reads_dequantized=True)}
