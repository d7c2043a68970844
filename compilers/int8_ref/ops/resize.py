"""RESIZE_NEAREST: nearest-neighbour resizing of the two spatial axes (ONNX Resize, mode
nearest, every coordinate_transformation_mode and nearest_mode).

Prepare (compile time): the source row of every output row and the source column of every
output column (int32 [OH + OW]; for int16, byte columns: output byte 2*ox + b comes from input
byte 2*idx[ox] + b). Eval: kernels/resize.pxi.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernel_abi import KernelSpec, OnnxOp
from ..program import I16, attr

PARAMS = ("NC", "H", "W", "OH", "OW")


def resize_rules(node):
    mode = attr(node, "mode", "nearest")
    if mode != "nearest":
        yield "mode", f"mode {mode} is not supported (nearest only)"


def _source(o: int, o_len: int, i_len: int, s: float, ctm: str, nm: str) -> int | None:
    """The input index of output index `o` (ONNX Resize's coordinate transformation, then
    its nearest_mode), clamped to the input; None for an unknown transformation."""
    if ctm == "asymmetric":
        x = o / s
    elif ctm == "half_pixel":
        x = (o + 0.5) / s - 0.5
    elif ctm == "pytorch_half_pixel":
        x = (o + 0.5) / s - 0.5 if o_len > 1 else 0.0
    elif ctm == "align_corners":
        x = o * (i_len - 1) / (o_len - 1) if o_len > 1 else 0.0
    elif ctm == "tf_half_pixel_for_nn":
        x = (o + 0.5) / s
    else:
        return None
    if nm == "round_prefer_floor":
        v = math.ceil(x - 0.5)
    elif nm == "round_prefer_ceil":
        v = math.floor(x + 0.5)
    elif nm == "floor":
        v = math.floor(x)
    else:
        v = math.ceil(x)
    return min(max(int(v), 0), i_len - 1)


def lower_resize(low, node) -> None:
    xq = low.act(node, node.input[0])
    shape = low.shape(xq.tid)
    if len(shape) != 4:
        low.fail(node, "only 4-D inputs", "X")
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel")
    nm = attr(node, "nearest_mode", "round_prefer_floor")
    scales = sizes = None
    scales_name, sizes_name = low.optional_input(node, 2), low.optional_input(node, 3)
    if scales_name in low.init and low.init[scales_name].size:
        scales = low.init[scales_name].astype(np.float32).reshape(-1)
    if sizes_name in low.init:
        sizes = low.init[sizes_name].astype(np.int64).reshape(-1)
    if sizes is not None:
        oshape = tuple(int(s) for s in sizes)
        scales = np.array([o / i for o, i in zip(oshape, shape)], np.float32)
    elif scales is not None:
        oshape = tuple(int(math.floor(i * s)) for i, s in zip(shape, scales))
    else:
        low.fail(node, "scales or sizes must be constant", "scales")
    if len(oshape) != 4 or oshape[:2] != shape[:2]:
        low.fail(node, "only spatial resizing", "scales")
    idx = []
    for o_len, i_len, s in ((oshape[2], shape[2], scales[2]), (oshape[3], shape[3], scales[3])):
        for o in range(o_len):
            v = _source(o, o_len, i_len, s, ctm, nm)
            if v is None:
                low.fail(node, f"coordinate_transformation_mode {ctm}",
                         "coordinate_transformation_mode")
            idx.append(v)
    W, OW = shape[3], oshape[3]
    if xq.code == I16:
        # The kernel moves bytes: an int16 row of W values is a byte row of 2W, and
        # output byte 2*ox + b comes from input byte 2*idx[ox] + b.
        cols = idx[oshape[2]:]
        idx = idx[:oshape[2]] + [2 * c + b for c in cols for b in (0, 1)]
        W, OW = 2 * W, 2 * OW
    low.layout(node, xq, oshape, KERNEL, consts=(low.const(np.array(idx, np.int32)),),
               NC=shape[0] * shape[1], H=shape[2], W=W, OH=oshape[2], OW=OW)


def validate(c) -> None:
    p = c.p
    c.positive("NC", "H", "W", "OH", "OW")
    c.dtype(c.out, (c.ins[0].dtype,), "output")
    c.size(c.ins[0], p["NC"] * p["H"] * p["W"], "input")
    c.size(c.out, p["NC"] * p["OH"] * p["OW"], "output")
    c.const("indices", "int32", (p["OH"] + p["OW"]) * 4)
    idx = c.const_values("indices", np.int32, p["OH"] + p["OW"])
    if idx.min() < 0 or idx[:p["OH"]].max() >= p["H"] or idx[p["OH"]:].max() >= p["W"]:
        c.fail("a source index lies outside the input")


def work(p) -> int:
    return p["NC"] * p["OH"] * (p["OW"] + 1)


KERNEL = KernelSpec(kind=18, name="RESIZE_NEAREST", params=PARAMS, consts=("indices",),
                    validate=validate, work=work)
ONNX = {"Resize": OnnxOp(lower_resize, resize_rules, int16=True, reads_dequantized=True)}
