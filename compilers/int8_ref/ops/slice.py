"""SLICE: a strided byte gather of up to 6 axes from a base offset, for the ONNX ops that
select a regular sub-block of one activation: Slice (any axes, steps, negative steps), Split
(one op per output) and Expand (a broadcast axis has stride 0). The integers are moved, not
recomputed, so the output keeps the input's scale and zero point (ONNX Runtime drops the
DQ/Q pairs around these ops, or runs them on the dequantized floats: the same values).

Prepare (compile time): the output dims d0..d5, the signed input strides s0..s5 in output
order and the base byte offset; an int16 tensor is a byte tensor with one more axis of 2 that
stays last (as for TRANSPOSE). Eval: kernels/slice.pxi.
"""

from __future__ import annotations

import numpy as np

from ..kernel_abi import KernelSpec, OnnxOp
from ..program import I16, Q, attr
from .transpose import DIMS, STRIDES, work

PARAMS = ("base",) + DIMS + STRIDES
MAX_RANK = 6


def strided(low, node, xq: Q, starts, counts, steps, out: str = "") -> None:
    """Emit output[i] = input[starts + i * steps] over every axis of `xq` (element
    coordinates; a step may be negative), as the output `out` of `node`."""
    shape = low.shape(xq.tid)
    elem = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    emit(low, node, xq, counts, sum(int(b) * e for b, e in zip(starts, elem)),
         [int(st) * e for st, e in zip(steps, elem)], out)


def emit(low, node, xq: Q, oshape, base: int, strides, out: str = "") -> None:
    """The SLICE op reading element base + sum(i_k * strides[k]) for each output index i."""
    d, s = [int(v) for v in oshape], [int(v) for v in strides]
    if xq.code == I16:
        # bytes: every offset doubles and the two bytes of an element are one more,
        # innermost axis
        base, d, s = 2 * base, d + [2], [2 * v for v in s] + [1]
    # unit axes contribute nothing: dropping them lets a deep tensor fit the six loops
    kept = [(dv, sv) for dv, sv in zip(d, s) if dv != 1] or [(1, 0)]
    if len(kept) > MAX_RANK:
        low.fail(node, f"more than {MAX_RANK} non-unit axes", "input")
    d = [1] * (MAX_RANK - len(kept)) + [dv for dv, _ in kept]
    s = [0] * (MAX_RANK - len(kept)) + [sv for _, sv in kept]
    low.layout(node, xq, tuple(int(v) for v in oshape), KERNEL, out=out, base=base,
               **dict(zip(DIMS, d)), **dict(zip(STRIDES, s)))


def _ints(low, node, i: int, what: str) -> list[int] | None:
    name = low.optional_input(node, i)
    if name is None:
        return None
    return [int(v) for v in low.const_input(node, i, what).reshape(-1)]


def lower_slice(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    r = len(shape)
    if low.optional_input(node, 1) is None and attr(node, "starts") is not None:  # opset < 10
        starts, ends = list(attr(node, "starts")), list(attr(node, "ends"))
        axes, steps = attr(node, "axes"), None
    else:
        starts, ends = _ints(low, node, 1, "starts"), _ints(low, node, 2, "ends")
        axes, steps = _ints(low, node, 3, "axes"), _ints(low, node, 4, "steps")
    if starts is None or ends is None or len(starts) != len(ends):
        low.fail(node, "starts and ends must be constants of one length", "starts")
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    if len(axes) != len(starts) or len(steps) != len(starts):
        low.fail(node, "axes and steps must match starts in length", "axes")
    first, count, step = [0] * r, list(shape), [1] * r
    seen = set()
    for a, b, e, st in zip(axes, starts, ends, steps):
        if not -r <= a < r or a % r in seen:
            low.fail(node, f"axis {a} is out of range or repeated for rank {r}", "axes")
        a %= r
        seen.add(a)
        if st == 0:
            low.fail(node, "a step of 0", "steps")
        # ONNX Slice clamps starts and ends like Python's slice.indices: negative values
        # count from the end, then [0, dim] (step > 0) or [-1, dim - 1] (step < 0)
        rng = range(*slice(b, e, st).indices(shape[a]))
        if len(rng) == 0:
            low.fail(node, f"the slice of axis {a} is empty", "starts")
        first[a], count[a], step[a] = rng.start, len(rng), st
    strided(low, node, xq, first, count, step)


def input_and_axis(low, node):
    """(the quantized input, its shape, the node's `axis` made non-negative)."""
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    r = len(shape)
    axis = attr(node, "axis", 0)
    if not -r <= axis < r:
        low.fail(node, f"axis {axis} is out of range for rank {r}", "axis")
    return xq, shape, axis % r


def lower_split(low, node) -> None:
    xq, shape, axis = input_and_axis(low, node)
    r = len(shape)
    outs = list(node.output)
    sizes = _ints(low, node, 1, "split") or attr(node, "split")
    if sizes is None:
        # equal parts; with num_outputs (opset 18) the last part may be smaller
        n = len(outs)
        part = -(-shape[axis] // n)
        sizes = [part] * (n - 1) + [shape[axis] - part * (n - 1)]
    sizes = [int(v) for v in sizes]
    if len(sizes) != len(outs) or sum(sizes) != shape[axis] or min(sizes) <= 0:
        low.fail(node, f"split sizes {sizes} do not cut axis {axis} of {shape} into "
                       f"{len(outs)} non-empty parts", "split")
    offset = 0
    for out, size in zip(outs, sizes):
        if out:
            first = [0] * r
            first[axis] = offset
            count = list(shape)
            count[axis] = size
            strided(low, node, xq, first, count, [1] * r, out=out)
        offset += size


def lower_expand(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    target = [int(v) for v in low.const_input(node, 1, "shape").reshape(-1)]
    try:
        oshape = np.broadcast_shapes(tuple(shape), tuple(target))
    except ValueError:
        low.fail(node, f"cannot expand {shape} to {target}", "shape")
    padded = (1,) * (len(oshape) - len(shape)) + tuple(shape)
    # a broadcast axis is read with stride 0
    strides = [0 if padded[i] == 1 else int(np.prod(padded[i + 1:]))
               for i in range(len(oshape))]
    emit(low, node, xq, oshape, 0, strides)


def validate(c) -> None:
    d = [c.p[n] for n in DIMS]
    s = [c.p[n] for n in STRIDES]
    if min(d) <= 0:
        c.fail("dimensions must be positive")
    c.dtype(c.ins[0], ("int8", "uint8", "int16"), "input")
    c.dtype(c.out, (c.ins[0].dtype,), "output")
    c.size(c.out, int(np.prod(d, dtype=object)), "output")  # bytes
    lo = c.p["base"] + sum((di - 1) * si for di, si in zip(d, s) if si < 0)
    hi = c.p["base"] + sum((di - 1) * si for di, si in zip(d, s) if si > 0)
    if lo < 0 or hi >= c.ins[0].nbytes:
        c.fail(f"would read bytes {lo}..{hi} of a {c.ins[0].nbytes}-byte input")


KERNEL = KernelSpec(kind=50, name="SLICE", params=PARAMS, firmware="1.2.0",
                    validate=validate, work=work)
_LAYOUT = dict(int16=True, reads_dequantized=True)
ONNX = {
    "Slice": OnnxOp(lower_slice, **_LAYOUT),
    "Split": OnnxOp(lower_split, **_LAYOUT),
    "Expand": OnnxOp(lower_expand, **_LAYOUT),
}
