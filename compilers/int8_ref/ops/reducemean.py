"""REDUCE_MEAN: the mean over any axes (ONNX ReduceMean in a QDQ island; torch's exporter
writes adaptive average pooling to 1x1 as ReduceMean over H and W).

ONNX Runtime has no quantized ReduceMean: it runs DequantizeLinear -> float ReduceMean ->
QuantizeLinear (reduction_ops.h: a float32 sum, then `/= N`). int8-ref sums the integers
`x - zp` exactly in int32 and then
- `ort`: repeats ORT's float32 steps from there, `((float(K) * x_scale) / N) / y_scale`,
  round half to even, zero point, clamp. The one difference is ORT's float32 sum (Eigen's
  vectorised order) against the exact one: the result differs only where ORT's sum moves
  the mean across a rounding boundary of the output (docs/int8-ref.md gives the measured
  rate);
- `fixed-point`: a TFLite multiplier for x_scale / (y_scale * N), applied in one rounding
  (i8r_mbqm64, as the int16 ops): the double rounding of MultiplyByQuantizedMultiplier
  first rounds at a fraction of an output step when the multiplier is that small.
A float graph output (SqueezeNet ends in ReduceMean -> Reshape) gets `(float(K) * x_scale) /
N` in both modes.

A float island's value that ORT reads in float into a ReduceMean (MobileNet v3's HardSwish
before its pooling) arrives as int32 with 24 significant bits (`WIDE`, ops/float_island.py):
the kernel sums those in int64 and, in `ort`, rounds the exact sum to float32 once before
ORT's division, which is what ORT's float32 sum of the same values approximates.

Prepare: the axes fold into at most three kept and three reduced groups of (size, stride)
over the input, so any set of axes of a tensor of up to six dimensions is one op, no
transpose. Eval: kernels/reducemean.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import MAX_REDUCTION, KernelSpec, OnnxOp
from ..program import I16, attr
from . import _destination
from .requant import requant_to

GROUPS = 3
KEPT = tuple(f"k{i}" for i in range(GROUPS)) + tuple(f"ks{i}" for i in range(GROUPS))
REDUCED = tuple(f"r{i}" for i in range(GROUPS)) + tuple(f"rs{i}" for i in range(GROUPS))
PARAMS = KEPT + REDUCED + ("xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "float_out",
                           "mode", "mult", "shift", "wide_in")

# 8-bit values: |x - zp| <= 255, so 2^23 of them fit the int32 sum (as GLOBALAVGPOOL);
# int16 ones: |x - zp| <= 65535, 2^15 of them; WIDE ones (|x| <= 2^24, an int64 sum) 2^15
# too, which keeps x_scale / (y_scale * N) within a fixed-point multiplier's range.
MAX_REDUCED = 1 << 23
WIDE = 3  # the type code a float island gives an int32 value it hands to a ReduceMean


def _axes(low, node, rank: int) -> list[int] | None:
    """The reduced axes, sorted, or None for "no reduction" (noop_with_empty_axes)."""
    axes = attr(node, "axes")  # before opset 18
    if axes is None and low.optional_input(node, 1):
        axes = low.const_input(node, 1, "axes").reshape(-1).tolist()
    if not axes:
        return None if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    if any(not -rank <= a < rank for a in axes):
        low.fail(node, f"axes {axes} out of range for a {rank}-D input", "axes")
    return sorted({int(a) % rank for a in axes})


def fold(shape, axes) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
    """(kept groups, reduced groups) as (size, element stride) pairs, adjacent axes of the
    same kind merged and size-1 axes dropped; None when either needs more than GROUPS."""
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    kept: list[list[int]] = []
    reduced: list[list[int]] = []
    last = None
    for i, size in enumerate(shape):
        if size == 1:
            continue
        kind = i in axes
        groups = reduced if kind else kept
        if last is kind:
            # merge with the previous axis of the same kind: it is the outer one
            groups[-1] = [groups[-1][0] * size, strides[i]]
        else:
            groups.append([size, strides[i]])
        last = kind
    if len(kept) > GROUPS or len(reduced) > GROUPS:
        return None
    return ([(1, 0)] * (GROUPS - len(kept)) + [tuple(g) for g in kept],
            [(1, 0)] * (GROUPS - len(reduced)) + [tuple(g) for g in reduced])


def lower_reduce_mean(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    axes = _axes(low, node, len(shape))
    if axes is None:  # ReduceMean with noop_with_empty_axes=1 and no axes: the identity
        name, ys, yzp, ysg, _, _ = low.output_q(node, node.output[0])
        requant_to(low, node, xq, name, ys, yzp, ysg)
        return
    keepdims = attr(node, "keepdims", 1)
    oshape = tuple(1 if i in axes else s for i, s in enumerate(shape)) if keepdims else \
        tuple(s for i, s in enumerate(shape) if i not in axes)
    groups = fold(shape, axes)
    if groups is None:
        low.fail(node, f"axes {axes} of {shape} split into more than {GROUPS} groups", "axes")
    kept, reduced = groups
    count = int(np.prod([g[0] for g in reduced]))
    limit = MAX_REDUCTION if xq.code in (I16, WIDE) else MAX_REDUCED
    if count > limit:
        low.fail(node, f"a mean of {count} values can overflow the int32 sum (at most "
                       f"{limit})", "axes")
    dest = _destination.find(low, node, node.output[0])
    params = dict(zip(KEPT, [g[0] for g in kept] + [g[1] for g in kept]))
    params.update(zip(REDUCED, [g[0] for g in reduced] + [g[1] for g in reduced]))
    wide = xq.code == WIDE
    code = 0 if wide else xq.code  # a WIDE input is read as int32, whatever sg_in says
    if dest.quantized is None:
        tid = low.new_tensor(dest.name, "float32", dest.shape or oshape)
        low.fval[dest.name] = tid
        low.done.update(dest.absorbed)
        ys, yzp, ysg, lo, hi, mult, shift = 1.0, 0, code, 0, 0, 0, 0
    else:
        name, ys, yzp, ysg, lo, hi = dest.quantized
        if ysg != xq.code and not wide and I16 not in (ysg, xq.code):
            low.fail(node, "input and output must both be int8 or both uint8", "y")
        tid = low.define_q(name, ysg, oshape, ys, yzp).tid
        mult, shift = rq.quantize_multiplier(float(xq.scale) / (float(ys) * count))
    low.emit(node, KERNEL, [xq.tid], tid, floats=[xq.scale, ys], **params, xzp=xq.zp,
             yzp=yzp, qmin=lo, qmax=hi, sg_in=code, sg_out=ysg,
             float_out=int(dest.quantized is None), mode=low.mode, mult=mult, shift=shift,
             wide_in=int(wide))


def validate(c) -> None:
    p = c.p
    c.positive(*KEPT[:GROUPS], *REDUCED[:GROUPS])
    c.nonneg(*KEPT[GROUPS:], *REDUCED[GROUPS:])
    c.type_codes("sg_in", "sg_out")
    c.flag("mode", "float_out", "wide_in")
    count = p["r0"] * p["r1"] * p["r2"]
    limit = MAX_REDUCTION if p["sg_in"] == I16 or p["wide_in"] else MAX_REDUCED
    if count > limit:
        c.fail(f"a mean of {count} values can overflow the sum")
    last = sum((p[f"k{i}"] - 1) * p[f"ks{i}"] + (p[f"r{i}"] - 1) * p[f"rs{i}"]
               for i in range(GROUPS))
    if p["wide_in"]:
        c.dtype(c.ins[0], ("int32",), "input")
        c.largest_index(c.ins[0], last, 4, "input")
    else:
        c.qtype(c.ins[0], "sg_in", "input")
        c.largest_index(c.ins[0], last, c.itemsize("sg_in"), "input")
    n_out = p["k0"] * p["k1"] * p["k2"]
    if p["float_out"]:
        c.dtype(c.out, ("float32",), "output")
        c.size(c.out, 4 * n_out, "output")
    else:
        c.qtype(c.out, "sg_out", "output")
        c.size(c.out, n_out * c.itemsize("sg_out"), "output")
    c.shift("shift")
    c.qrange("xzp", "yzp", "qmin", "qmax")


def work(p) -> int:
    kept = p["k0"] * p["k1"] * p["k2"]
    return p["k0"] + p["k0"] * p["k1"] + kept * (1 + p["r0"] * (1 + p["r1"] * (1 + p["r2"])))


KERNEL = KernelSpec(kind=40, name="REDUCE_MEAN", params=PARAMS, floats=("x_scale", "y_scale"),
                    int16=True, firmware="1.2.0", validate=validate, work=work)
ONNX = {"ReduceMean": OnnxOp(lower_reduce_mean, int16=True, reads_dequantized=True)}
