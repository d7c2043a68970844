"""COPY: a byte copy, for the ops that only change a tensor's shape (ONNX Reshape, Flatten,
Squeeze, Unsqueeze, Identity, Dropout in inference). Eval: kernels/copy.pxi (memcpy).
"""

from __future__ import annotations

import numpy as np

from ..kernel_abi import KernelSpec, OnnxOp
from ..program import ITEMSIZE, attr

PARAMS = ("nbytes",)


def reshaped(low, node, xq, oshape) -> None:
    """Emit the copy of `node`'s input `xq` into a tensor of shape `oshape`."""
    nbytes = int(np.prod(oshape)) * ITEMSIZE[low.tensors[xq.tid].dtype]
    low.layout(node, xq, tuple(oshape), KERNEL, nbytes=nbytes)


def lower_reshape(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    target = [int(v) for v in low.const_input(node, 1, "shape").reshape(-1)]
    if attr(node, "allowzero", 0) and 0 in target:
        low.fail(node, "allowzero=1 with a zero in the shape (an empty tensor)", "allowzero")
    target = [shape[i] if v == 0 else v for i, v in enumerate(target)]
    if -1 in target:
        known = int(np.prod([v for v in target if v != -1]))
        target[target.index(-1)] = int(np.prod(shape)) // max(known, 1)
    if int(np.prod(target)) != int(np.prod(shape)):
        low.fail(node, f"cannot reshape {shape} to {target}", "shape")
    reshaped(low, node, xq, tuple(target))


def lower_flatten(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    axis = attr(node, "axis", 1) % (len(shape) + 1) if shape else 0
    reshaped(low, node, xq, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))


def _axes(low, node):
    axes = attr(node, "axes")
    if axes is None and low.optional_input(node, 1):
        axes = low.const_input(node, 1, "axes").reshape(-1).tolist()
    return axes


def lower_squeeze(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    axes = _axes(low, node)
    axes = [a % len(shape) for a in axes] if axes is not None else \
        [i for i, s in enumerate(shape) if s == 1]
    reshaped(low, node, xq, tuple(s for i, s in enumerate(shape) if i not in axes) or (1,))


def lower_unsqueeze(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = list(low.shape(xq.tid))
    axes = _axes(low, node)
    if axes is None:
        low.fail(node, "axes must be given", "axes")
    r = len(shape) + len(axes)
    for a in sorted(x % r for x in axes):
        shape.insert(a, 1)
    reshaped(low, node, xq, tuple(shape))


def lower_identity(low, node) -> None:
    xq = low.act(node, node.input[0])
    reshaped(low, node, xq, low.shape(xq.tid))


def dropout_rules(node):
    if len(node.output) > 1 and node.output[1]:
        yield "mask", "the mask output is not supported"


def lower_dropout(low, node) -> None:
    xq = low.act(node, node.input[0])
    reshaped(low, node, xq, low.shape(xq.tid))


def validate(c) -> None:
    c.positive("nbytes")
    c.size(c.ins[0], c.p["nbytes"], "input")
    c.size(c.out, c.p["nbytes"], "output")


def work(p) -> int:
    return p["nbytes"]


KERNEL = KernelSpec(kind=12, name="COPY", params=PARAMS, validate=validate, work=work)
_LAYOUT = dict(int16=True, reads_dequantized=True)
ONNX = {
    "Reshape": OnnxOp(lower_reshape, **_LAYOUT),
    "Flatten": OnnxOp(lower_flatten, **_LAYOUT),
    "Squeeze": OnnxOp(lower_squeeze, **_LAYOUT),
    "Unsqueeze": OnnxOp(lower_unsqueeze, **_LAYOUT),
    "Identity": OnnxOp(lower_identity, **_LAYOUT),
    "Dropout": OnnxOp(lower_dropout, dropout_rules, **_LAYOUT),
}
