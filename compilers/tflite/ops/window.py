"""Padding of 2-D window ops (convolution, pooling): TFLite's SAME or VALID, else a PAD op.

TFLite has two paddings: VALID (none) and SAME (output ceil(size / stride), the odd pixel of
padding after: bottom/right, as ONNX's SAME_UPPER). ONNX pads are explicit and may be anything,
and `ceil_mode` pools read past the input's end. `window_padding` works out which pixels of
padding the output actually reads; when that is neither SAME nor VALID, `pad` writes them with a
PAD op before a VALID window op, with the value the op needs: the zero point (real 0) for a
convolution or an average pool that counts padding, int8's minimum for a max pool (PADV2 when
the zero point is not already -128: the minimum never wins a max over a window holding at least
one real pixel).
"""

from __future__ import annotations

from tapeout.compilers.tflite.lowering import SAME, VALID, Lowering, refuse
from tapeout.compilers.tflite.qdq import Activation, attributes


def window_padding(node, in_hw, kernel, strides, dilations, out_hw, explicit: bool = False):
    """(SAME or VALID, None) when TFLite's own padding gives ONNX's output, else
    (VALID, (top, left, bottom, right)) pixels to pad first. `explicit` asks for the pads even
    when they are SAME's (an average pool that counts them)."""
    attrs = attributes(node)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    same, needed = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        same.append((total // 2, total - total // 2))
    if auto_pad == "VALID":
        return VALID, None
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    if auto_pad == "SAME_UPPER":
        pads = (same[0][0], same[1][0], same[0][1], same[1][1])
    elif auto_pad == "SAME_LOWER":
        pads = (same[0][1], same[1][1], same[0][0], same[1][0])
    if min(pads) < 0:
        raise refuse(node, f"negative pads {list(pads)}")
    for axis, (size, k, s, d, out) in enumerate(zip(in_hw, kernel, strides, dilations, out_hw)):
        begin = pads[axis]
        # What the last window reads past the input's end (ceil_mode may read past ONNX's pads;
        # pads it never reaches are dropped).
        needed.append((begin, max(0, (out - 1) * s + (k - 1) * d + 1 - size - begin)))
    if all(begin == end == 0 for begin, end in needed):
        return VALID, None
    same_out = tuple(-(-size // s) for size, s in zip(in_hw, strides))
    if needed == same and tuple(out_hw) == same_out and not explicit:
        return SAME, None
    return VALID, (needed[0][0], needed[1][0], needed[0][1], needed[1][1])


def pad(lowering: Lowering, node, source: Activation, index: int, pads, minimum: bool = False) -> int:
    """`index` (an NHWC tensor of `source`) padded by (top, left, bottom, right): with the zero
    point, or with -128 when `minimum` (for a max pool)."""
    top, left, bottom, right = pads
    n, h, w, c = lowering.shape_of(index)
    dtype = lowering.fb.tensors[index].dtype
    padded = lowering.temporary(
        f"{node.name}_padded", (n, h + top + bottom, w + left + right, c), source.scale,
        source.zero_point, dtype,
    )
    paddings = lowering.int32_constant(f"{node.name}_paddings", [[0, 0], [top, bottom], [left, right], [0, 0]])
    if minimum and source.zero_point != -128:
        import numpy as np

        value = lowering.quantized_constant(
            f"{node.name}_pad_value", np.array(-128, np.int8), source.scale, source.zero_point
        )
        lowering.emit("PADV2", (index, paddings, value), (padded,), ("PadV2Options", {}))
    else:
        lowering.emit("PAD", (index, paddings), (padded,), ("PadOptions", {}))
    return padded
