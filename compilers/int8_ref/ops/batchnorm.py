"""AFFINE: y = x * scale[c] + bias[c] per channel, for a BatchNormalization that no Conv
absorbs (DenseNet-121 normalises after a Concat; ONNX Runtime runs it in float between
DequantizeLinear and QuantizeLinear).

Prepare, as ORT's BatchNorm kernel (onnxruntime/core/providers/cpu/nn/batch_norm.h) folds the
inference form: inv_std = 1 / sqrt(var + epsilon), new_scale = inv_std * scale, new_bias =
bias - mean * new_scale, each step in float32 (scale and bias dequantized as ORT's
DequantizeLinear does). Then
- `ort`: ORT's own float32 steps per element: DequantizeLinear (float(x - zp) * x_scale),
  `* new_scale + new_bias` (two roundings: Eigen's packet multiply and add), QuantizeLinear.
  Bit-exact with ORT.
- `fixed-point`, integers only: with M = x_scale * new_scale / y_scale and B = new_bias /
  y_scale, y = zp + round(k * M + B) for k = x - zp is computed as
  MultiplyByQuantizedMultiplier(k * pre + offset, |M| / 2^P) with pre = sign(M) * 2^P and
  offset = round(B / |M| * 2^P): the offset keeps P fraction bits of an input step, P per
  channel as large as keeps |k * pre + offset| < 2^31 (at most 20). The worst case is that
  of one requantization (TFLite's double rounding) plus 2^-P-input-step of offset rounding.
Eval: kernels/batchnorm.pxi.
"""

from __future__ import annotations

import math

import numpy as np

from .. import requantize as rq
from ..kernel_abi import MODE_ORT, KernelSpec, OnnxOp
from ..program import attr

PARAMS = ("outer", "channels", "inner", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out",
          "mode")
MAX_FRACTION_BITS = 20


def float_constant(low, node, name: str, what: str) -> np.ndarray:
    """A float operand that is an initializer, or a DequantizeLinear of one (computed as
    ORT's DequantizeLinear: float(q - zp) * scale, per axis when the scale is)."""
    if name in low.init and low.init[name].dtype == np.float32:
        return low.init[name]
    if name in low.wconst:
        q, s, zp, axis = low.wconst[name]
        diff = q.astype(np.int64) - np.asarray(zp).astype(np.int64)
        s = np.asarray(s, np.float32)
        if s.size > 1:
            shape = [1] * q.ndim
            shape[axis % q.ndim] = s.size
            s = s.reshape(shape)
        return (diff.astype(np.int32).astype(np.float32) * s).astype(np.float32)
    low.fail(node, f"{what} must be a float constant (an initializer or its "
                   "DequantizeLinear)", what)


def folded(low, node, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(new_scale, new_bias) in float32, ORT's fold of the inference form."""
    values = []
    for i, what in ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")):
        v = float_constant(low, node, low.input_name(node, i, what), what).reshape(-1)
        if v.size != channels:
            low.fail(node, f"{what} has {v.size} values for {channels} channels", what)
        values.append(v.astype(np.float32))
    scale, bias, mean, var = values
    eps = np.float32(attr(node, "epsilon", 1e-5))
    inv_std = (np.float32(1) / np.sqrt((var + eps).astype(np.float32))).astype(np.float32)
    new_scale = (inv_std * scale).astype(np.float32)
    new_bias = (bias - (mean * new_scale).astype(np.float32)).astype(np.float32)
    return new_scale, new_bias


def fixed_point(x_scale: float, new_scale, new_bias, y_scale: float):
    """Per channel (pre, offset, mult, shift) int32 arrays for the fixed-point form."""
    pre, offset, mult, shift = [], [], [], []
    for s, b in zip(new_scale.astype(np.float64), new_bias.astype(np.float64)):
        m = float(np.float32(x_scale)) * s / float(np.float32(y_scale))
        bias = b / float(np.float32(y_scale))
        if m == 0 or abs(bias / m) > 2.0 ** 30:
            # the input moves the output by less than 2^-22 of its offset: a constant
            # (saturated beyond 2^30 output steps), pre = 0 and a multiplier of one
            unit, p, m = 1.0, 0, 0.0
            bias = max(-(2.0 ** 30), min(2.0 ** 30, bias))
        else:
            unit = abs(m)
            p = MAX_FRACTION_BITS
            while p > 0 and (255 + abs(bias) / unit + 1) * 2.0 ** p >= 2.0 ** 31:
                p -= 1
        pre.append(int(math.copysign(2 ** p, m)) if m != 0 else 0)
        offset.append(int(round(bias / unit * 2 ** p)))
        mt, sh = rq.quantize_multiplier(unit / 2 ** p)
        mult.append(mt)
        shift.append(sh)
    return tuple(np.array(v, np.int32) for v in (pre, offset, mult, shift))


def rules(node):
    if attr(node, "training_mode", 0):
        yield "training_mode", "training mode is not supported (inference only)"
    if attr(node, "spatial", 1) != 1:
        yield "spatial", "spatial=0 is not supported"


def lower_batch_normalization(low, node) -> None:
    if any(o for o in node.output[1:]):
        low.fail(node, "the running mean and variance outputs are not supported", "outputs")
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    if len(shape) < 2:
        low.fail(node, f"input must have a channel axis, got shape {shape}", "X")
    channels = shape[1]
    new_scale, new_bias = folded(low, node, channels)
    name, ys, yzp, ysg, lo, hi = low.output_q(node, node.output[0])
    low.same_family(node, xq.code, ysg)
    tid = low.define_q(name, ysg, shape, ys, yzp).tid
    if low.mode == MODE_ORT:
        consts = [low.const(new_scale), low.const(new_bias)]
    else:
        consts = [low.const(a) for a in fixed_point(xq.scale, new_scale, new_bias, ys)]
    low.emit(node, KERNEL, [xq.tid], tid, consts=consts, floats=[xq.scale, ys],
             outer=shape[0], channels=channels, inner=int(np.prod(shape[2:])), xzp=xq.zp,
             yzp=yzp, qmin=lo, qmax=hi, sg_in=xq.code, sg_out=ysg, mode=low.mode)


def validate(c) -> None:
    p = c.p
    c.positive("outer", "channels", "inner")
    c.type_codes("sg_in", "sg_out")
    c.flag("mode")
    n = p["outer"] * p["channels"] * p["inner"]
    c.qtype(c.ins[0], "sg_in", "input")
    c.qtype(c.out, "sg_out", "output")
    c.size(c.ins[0], n, "input")
    c.size(c.out, n, "output")
    if p["mode"] == MODE_ORT:
        c.const("scale_or_pre", "float32", 4 * p["channels"])
        c.const("bias_or_offset", "float32", 4 * p["channels"])
    else:
        for slot in KERNEL.consts:
            c.const(slot, "int32", 4 * p["channels"])
        shifts = c.const_values("shift", "int32", p["channels"])
        if shifts.size and (shifts.min() < -31 or shifts.max() > 30):
            c.fail("a shift is outside [-31, 30]")
        # (x - zp) * pre + offset must stay inside int32 (|x - zp| <= 255)
        pre = np.abs(c.const_values("scale_or_pre", "int32", p["channels"]).astype(np.int64))
        offset = np.abs(c.const_values("bias_or_offset", "int32", p["channels"]).astype(
            np.int64))
        if pre.size and int((255 * pre + offset).max()) >= 2 ** 31:
            c.fail("(x - zp) * pre + offset can overflow int32")
    c.qrange("xzp", "yzp", "qmin", "qmax")


def work(p) -> int:
    return p["outer"] * (1 + p["channels"] * (1 + p["inner"]))


# ort: the float32 new_scale and new_bias; fixed-point: pre, offset, mult, shift (int32)
KERNEL = KernelSpec(kind=42, name="AFFINE", params=PARAMS,
                    consts=("scale_or_pre", "bias_or_offset", "mult", "shift"), min_consts=2,
                    floats=("x_scale", "y_scale"), firmware="1.2.0", validate=validate,
                    work=work)
ONNX = {"BatchNormalization": OnnxOp(lower_batch_normalization, rules,
                                     reads_dequantized=True)}
