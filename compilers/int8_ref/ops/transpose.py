"""TRANSPOSE: a permutation of up to 6 axes, as a byte gather (ONNX Transpose). Prepared as
the output dims d0..d5 and the input strides permuted to output order s0..s5 (elements; an
int16 tensor is a byte tensor with one more axis of 2 that stays last). Eval:
kernels/transpose.pxi.
"""

from __future__ import annotations

import numpy as np

from ..kernel_abi import KernelSpec, OnnxOp
from ..program import I16, Q, attr

DIMS = tuple(f"d{i}" for i in range(6))
STRIDES = tuple(f"s{i}" for i in range(6))
PARAMS = DIMS + STRIDES


def lower_transpose(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    perm = attr(node, "perm", list(range(len(shape)))[::-1])
    low.layout(node, xq, tuple(shape[p] for p in perm), KERNEL,
               **transpose_params(low, node, shape, perm, xq.code))


def transpose_params(low, node, shape, perm, code) -> dict[str, int]:
    """The TRANSPOSE parameters of permuting a tensor of `shape` by `perm`."""
    r = len(shape)
    if r > 6:
        low.fail(node, "more than 6 dimensions", "perm")
    if sorted(perm) != list(range(r)):
        low.fail(node, f"perm {perm} is not a permutation of {r} axes", "perm")
    oshape = tuple(shape[p] for p in perm)
    strides = [int(np.prod(shape[i + 1:])) for i in range(r)]
    d = [1] * (6 - r) + list(oshape)
    s = [0] * (6 - r) + [strides[p] for p in perm]
    if code == I16:
        # The kernel moves bytes: an int16 tensor is a byte tensor with one more axis of
        # 2 that stays last (strides in bytes).
        if r > 5:
            low.fail(node, "an int16 transpose of more than 5 dimensions", "perm")
        d = d[1:] + [2]
        s = [2 * v for v in s[1:]] + [1]
    return {**dict(zip(DIMS, d)), **dict(zip(STRIDES, s))}


def permuted(low, node, xq: Q, perm, name: str) -> Q:
    """`xq` permuted by `perm` into a new tensor `name` with the same quantization (for ops
    that compute along one axis at a time, e.g. a Softmax over an inner axis)."""
    shape = low.shape(xq.tid)
    out = low.define_q(name, xq.code, tuple(shape[p] for p in perm), xq.scale, xq.zp)
    low.emit(node, KERNEL, [xq.tid], out.tid,
             **transpose_params(low, node, shape, perm, xq.code))
    return out


def validate(c) -> None:
    d = [c.p[n] for n in DIMS]
    s = [c.p[n] for n in STRIDES]
    if min(d) <= 0 or min(s) < 0:
        c.fail("dimensions must be positive and strides non-negative")
    c.dtype(c.ins[0], ("int8", "uint8", "int16"), "input")
    c.dtype(c.out, (c.ins[0].dtype,), "output")
    c.size(c.out, int(np.prod(d, dtype=object)), "output")  # bytes: int16 has a last d of 2
    last = sum((di - 1) * si for di, si in zip(d, s))
    if last >= c.ins[0].nbytes:
        c.fail(f"would read index {last} of a {c.ins[0].nbytes}-byte input")


def work(p) -> int:
    """Six nested loops: the sum of the prefix products of d0..d5."""
    total, extent = 0, 1
    for n in DIMS:
        extent *= p[n]
        total += extent
    return total


KERNEL = KernelSpec(kind=13, name="TRANSPOSE", params=PARAMS, validate=validate, work=work)
ONNX = {"Transpose": OnnxOp(lower_transpose, int16=True, reads_dequantized=True)}
