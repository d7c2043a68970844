"""GATHER: blocks of one activation picked by constant indices along one axis (ONNX Gather
with constant indices: a ViT's class-token and q/k/v selection, ConvNeXt's `as_strided`).
The integers are moved, so the output keeps the input's scale and zero point.

Prepare (compile time): indices made non-negative and checked against the axis, as int32;
the geometry outer (the axes before), n (the indices), axis (the axis' length) and inner
(bytes of the block after the axis; an int16 element is two bytes). Eval:
kernels/gather.pxi. Gathers whose data is constant too are folded before lowering
(fold.py).
"""

from __future__ import annotations

import numpy as np

from ..kernel_abi import KernelSpec, OnnxOp
from ..program import ITEMSIZE
from .slice import input_and_axis

PARAMS = ("outer", "n", "axis", "inner")


def lower_gather(low, node) -> None:
    xq, shape, axis = input_and_axis(low, node)
    name = low.input_name(node, 1, "indices")
    if name not in low.init:
        low.fail(node, "indices must be constant (an initializer or folded at compile time)",
                 "indices")
    indices = np.asarray(low.init[name])
    if indices.dtype.kind not in "iu":
        low.fail(node, f"indices of type {indices.dtype} (int32 or int64 expected)",
                 "indices")
    dim = shape[axis]
    flat = indices.astype(np.int64).reshape(-1)
    if flat.size and (flat.min() < -dim or flat.max() >= dim):
        low.fail(node, f"an index lies outside [-{dim}, {dim - 1}]", "indices")
    oshape = shape[:axis] + tuple(indices.shape) + shape[axis + 1:]
    if not flat.size:
        low.fail(node, "no indices (an empty output)", "indices")
    inner = int(np.prod(shape[axis + 1:])) * ITEMSIZE[low.tensors[xq.tid].dtype]
    low.layout(node, xq, oshape, KERNEL,
               consts=(low.const((flat % dim).astype(np.int32)),),
               outer=int(np.prod(shape[:axis])), n=int(flat.size), axis=dim, inner=inner)


def validate(c) -> None:
    p = c.p
    c.positive("outer", "n", "axis", "inner")
    c.dtype(c.ins[0], ("int8", "uint8", "int16"), "input")
    c.dtype(c.out, (c.ins[0].dtype,), "output")
    c.size(c.ins[0], p["outer"] * p["axis"] * p["inner"], "input")
    c.size(c.out, p["outer"] * p["n"] * p["inner"], "output")
    c.const("indices", "int32", 4 * p["n"])
    idx = c.const_values("indices", np.int32, p["n"])
    if idx.min() < 0 or idx.max() >= p["axis"]:
        c.fail("an index lies outside the axis")


def work(p) -> int:
    return p["outer"] * p["n"] * (p["inner"] + 1)


KERNEL = KernelSpec(kind=51, name="GATHER", params=PARAMS, consts=("indices",),
                    firmware="1.2.0", validate=validate, work=work)
ONNX = {"Gather": OnnxOp(lower_gather, int16=True, reads_dequantized=True)}
