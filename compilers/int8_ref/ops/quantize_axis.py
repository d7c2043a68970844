"""QUANTIZE_AXIS and DEQUANTIZE_AXIS: ONNX QuantizeLinear / DequantizeLinear of an activation
with one scale and zero point per slice along `axis` (per-axis quantization; ONNX's
`test_quantizelinear_axis` and `test_dequantizelinear_axis`). Per-tensor parameters are the
QUANTIZE / DEQUANTIZE kinds; QuantizeLinear and DequantizeLinear hand per-axis nodes here.

Arithmetic as the per-tensor kernels, per channel c: QuantizeLinear saturate(round_half_even(
x / scale[c]) + zp[c]) (ORT divides), DequantizeLinear (q - zp[c]) * scale[c] in float32.
Prepare (compile time): the tensor as (outer, channels, inner) around the axis, the scales
(float32[C]) and zero points (int32[C]). Eval: kernels/quantize_axis.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import KernelSpec
from ..program import CODE_DTYPE, DTYPE_CODE, Q, attr

PARAMS = ("outer", "channels", "inner", "qmin", "qmax", "sg", "dequantize")


def axis_params(low, node, shape, scale_name: str, zp_name: str | None):
    """(geometry, scales, zero points, type code) of a per-axis QuantizeLinear or
    DequantizeLinear of a tensor of `shape`."""
    if attr(node, "block_size", 0):
        low.fail(node, "blocked quantization is not supported", "block_size")
    r = len(shape)
    axis = attr(node, "axis", 1)
    if not -r <= axis < r:
        low.fail(node, f"axis {axis} is out of range for rank {r}", "axis")
    axis %= r
    scale = np.asarray(low.const_input(node, 1, "scale"))
    if scale.dtype != np.float32:
        low.fail(node, f"scale type {scale.dtype} is not supported (float32 only)", "scale")
    scale = scale.reshape(-1)
    if scale.size != shape[axis]:
        low.fail(node, f"{scale.size} scales for axis {axis} of length {shape[axis]}", "scale")
    if not np.all(np.isfinite(scale) & (scale > 0)):
        low.fail(node, "every scale must be positive and finite", "scale")
    if zp_name:
        zp = np.asarray(low.const_input(node, 2, "zero_point"))
        dtype = str(zp.dtype)
        zp = zp.reshape(-1)
        if zp.size != scale.size:
            low.fail(node, f"{zp.size} zero points for {scale.size} scales", "zero_point")
    else:
        dtype, zp = "uint8", np.zeros(scale.size, np.int64)
    if dtype not in ("int8", "uint8", "int16"):
        low.fail(node, f"quantized type {dtype} is not supported (int8/uint8/int16 only)",
                 "zero_point")
    geometry = dict(outer=int(np.prod(shape[:axis])), channels=int(shape[axis]),
                    inner=int(np.prod(shape[axis + 1:])))
    return geometry, scale, zp.astype(np.int32), DTYPE_CODE[dtype]


def lower_quantize(low, node, src: int, out: str) -> None:
    """QuantizeLinear of the float tensor `src` with per-axis parameters."""
    shape = low.shape(src)
    geometry, scale, zp, code = axis_params(low, node, shape, node.input[1],
                                            low.optional_input(node, 2))
    qmin, qmax = rq.qrange(code)
    tid = low.new_tensor(out, CODE_DTYPE[code], shape)
    # no single scale, as for an integer graph input: a per-axis DequantizeLinear or the
    # graph output reads it
    low.qname[out] = Q(tid, None, None, code)
    low.emit(node, KERNEL, [src], tid, consts=(low.const(scale), low.const(zp)),
             qmin=qmin, qmax=qmax, sg=code, dequantize=0, **geometry)


def lower_dequantize(low, node, src, out: str) -> None:
    """DequantizeLinear of the integer tensor `src` with per-axis parameters, to float32."""
    shape = low.shape(src.tid)
    geometry, scale, zp, code = axis_params(low, node, shape, node.input[1],
                                            low.optional_input(node, 2))
    if code != src.code:
        low.fail(node, "zero point type differs from the input type", "zero_point")
    qmin, qmax = rq.qrange(code)
    tid = low.new_tensor(out, "float32", shape)
    low.fval[out] = tid
    low.emit(node, KERNEL, [src.tid], tid, consts=(low.const(scale), low.const(zp)),
             qmin=qmin, qmax=qmax, sg=code, dequantize=1, **geometry)


def validate(c) -> None:
    p = c.p
    c.positive("outer", "channels", "inner")
    c.type_codes("sg")
    c.flag("dequantize")
    c.qrange("qmin", "qmax")
    n = p["outer"] * p["channels"] * p["inner"]
    q, f = (c.ins[0], c.out) if p["dequantize"] else (c.out, c.ins[0])
    c.qtype(q, "sg", "integer tensor")
    c.size(q, n * c.itemsize("sg"), "integer tensor")
    c.dtype(f, ("float32",), "float tensor")
    c.size(f, 4 * n, "float tensor")
    c.const("scales", "float32", 4 * p["channels"])
    c.const("zero_points", "int32", 4 * p["channels"])
    zps = c.const_values("zero_points", np.int32, p["channels"])
    if zps.min() < p["qmin"] or zps.max() > p["qmax"]:
        c.fail("a zero point lies outside the type's range")


def work(p) -> int:
    return p["outer"] * p["channels"] * (p["inner"] + 1)


KERNEL = KernelSpec(kind=53, name="QUANTIZE_AXIS", params=PARAMS,
                    consts=("scales", "zero_points"), int16=True, firmware="1.2.0",
                    validate=validate, work=work)
