"""Where each ONNX axis lives in the TFLite tensor: a layout is a permutation.

A tensor's layout `perm` says that the TFLite tensor is the ONNX tensor transposed by `perm`:
TFLite axis `i` holds ONNX axis `perm[i]` (numpy: `tflite = onnx.transpose(perm)`). The
identity is ONNX's own order; `NHWC` is what TFLite's convolutions and pools read.

Keeping a layout per tensor lets an ONNX Transpose cost nothing (only the layout changes) and a
Reshape run as TFLite's memory-only RESHAPE whenever the axes it merges or splits lie next to
each other, in order, in the TFLite tensor. Only an op that needs its input in another order
gets a TRANSPOSE, once per tensor and order.
"""

from __future__ import annotations

NHWC = (0, 2, 3, 1)


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def tflite_shape(shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[axis] for axis in perm)


def tflite_axis(perm: tuple[int, ...], onnx_axis: int) -> int:
    """The TFLite axis holding ONNX axis `onnx_axis` (negative counts from the end)."""
    return perm.index(onnx_axis % len(perm))


def after_transpose(perm: tuple[int, ...], onnx_perm: tuple[int, ...]) -> tuple[int, ...]:
    """The layout of ONNX `Transpose(perm=onnx_perm)`'s output when the TFLite tensor is left as
    it is: output axis j is input axis onnx_perm[j]."""
    inverse = [0] * len(onnx_perm)
    for position, axis in enumerate(onnx_perm):
        inverse[axis] = position
    return tuple(inverse[axis] for axis in perm)


def transpose_between(source: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """The TFLite TRANSPOSE permutation turning a tensor in layout `source` into `target`."""
    return tuple(source.index(axis) for axis in target)


def _groups(in_shape, out_shape):
    """Split a reshape into groups (input axes, output axes) of equal element count, over the
    axes of size > 1 only (row-major order); None when there is no such split."""
    inputs = [axis for axis, size in enumerate(in_shape) if size != 1]
    outputs = [axis for axis, size in enumerate(out_shape) if size != 1]
    groups, o = [], 0
    i = 0
    while i < len(inputs):
        if o >= len(outputs):
            return None
        group_in, group_out = [inputs[i]], [outputs[o]]
        count_in, count_out = in_shape[inputs[i]], out_shape[outputs[o]]
        i, o = i + 1, o + 1
        while count_in != count_out:
            if count_in < count_out:
                if i >= len(inputs):
                    return None
                group_in.append(inputs[i])
                count_in *= in_shape[inputs[i]]
                i += 1
            else:
                if o >= len(outputs):
                    return None
                group_out.append(outputs[o])
                count_out *= out_shape[outputs[o]]
                o += 1
        groups.append((group_in, group_out))
    return groups if o == len(outputs) else None


def equivalent(shape: tuple[int, ...], first: tuple[int, ...], second: tuple[int, ...]) -> bool:
    """Two layouts of one tensor with the same bytes: they differ in size-1 axes only."""
    return [a for a in first if shape[a] != 1] == [a for a in second if shape[a] != 1]


def reshape_layout(
    in_shape: tuple[int, ...], perm: tuple[int, ...], out_shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The output layout when ONNX `Reshape(in_shape -> out_shape)` runs as a TFLite RESHAPE of
    the tensor in layout `perm`, or None when it cannot (then the input must change layout).

    Possible when every group of input axes that the reshape merges or splits occupies
    consecutive TFLite axes in ONNX order: the TFLite RESHAPE then regroups the same elements.
    Axes of size 1 go anywhere; they are placed where ONNX has them, relative to the others.
    """
    groups = _groups(in_shape, out_shape)
    if groups is None:
        return None
    position = {axis: perm.index(axis) for axis in range(len(in_shape))}
    placed = []  # (TFLite position of the group's first input axis, output axes)
    for group_in, group_out in groups:
        spots = [position[axis] for axis in group_in]
        if spots != list(range(spots[0], spots[0] + len(spots))):
            return None
        placed.append((spots[0], group_out))
    order = [axis for _, group_out in sorted(placed) for axis in group_out]
    # Size-1 output axes: each goes just after the non-1 ONNX axis before it (or first).
    for axis in range(len(out_shape)):
        if out_shape[axis] != 1:
            continue
        before = [a for a in order if a < axis]
        at = order.index(max(before)) + 1 if before else 0
        order.insert(at, axis)
    for preferred in ((NHWC,) if len(out_shape) == 4 else ()) + (identity(len(out_shape)),):
        if equivalent(out_shape, tuple(order), preferred):
            return preferred
    return tuple(order)


def reshape_input_layout(
    in_shape: tuple[int, ...], perm: tuple[int, ...], out_shape: tuple[int, ...]
) -> tuple[int, ...]:
    """A layout close to `perm` in which `reshape_layout` succeeds: each group's axes are put
    in ONNX order on the TFLite positions they hold, else ONNX's own order."""
    groups = _groups(in_shape, out_shape)
    if groups is not None:
        reordered = list(perm)
        for group_in, _ in groups:
            spots = sorted(perm.index(axis) for axis in group_in)
            for spot, axis in zip(spots, sorted(group_in)):
                reordered[spot] = axis
        if reshape_layout(in_shape, tuple(reordered), out_shape) is not None:
            return tuple(reordered)
    return identity(len(in_shape))
