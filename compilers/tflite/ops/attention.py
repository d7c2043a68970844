"""Attention's ops: MatMul of two activations (BATCH_MATMUL) and Softmax.

BATCH_MATMUL reads its operands' last two axes in either order (adj_x / adj_y), so a key
transposed by an ONNX Transpose (a layout change only) needs no TRANSPOSE op. SOFTMAX writes
scale 1/256, zero point -128 (TFLite's quantization spec); ONNX Runtime fixes Softmax's output
to [0, 1] (scale 1/255), so a QUANTIZE op requantizes.
"""

from __future__ import annotations

from tapeout.compilers.tflite import layout as layouts
from tapeout.compilers.tflite.lowering import Lowering, refuse
from tapeout.compilers.tflite.qdq import Activation, attributes

SOFTMAX_SCALE, SOFTMAX_ZERO_POINT = 1.0 / 256.0, -128


def _matrix_operand(lowering: Lowering, node, act: Activation) -> tuple[int, bool]:
    """The operand's tensor with its batch axes first in ONNX order, and whether its last two
    axes are swapped (BATCH_MATMUL's adjoint flag)."""
    rank = len(act.shape)
    perm = lowering.perm[act.name]
    batch = tuple(range(rank - 2))
    if perm[: rank - 2] == batch and set(perm[rank - 2:]) == {rank - 2, rank - 1}:
        return lowering.read(node, act, perm), perm[rank - 2] == rank - 1
    return lowering.read(node, act, layouts.identity(rank)), False


def batch_matmul(lowering: Lowering, node) -> None:
    left, right = lowering.input(node, 0), lowering.input(node, 1)
    result = lowering.qdq.output_of(node)
    if not (len(left.shape) == len(right.shape) >= 3):
        raise refuse(node, f"BATCH_MATMUL of operands of rank >= 3 and equal rank, found "
                           f"{list(left.shape)} and {list(right.shape)}")
    left_index, adjoint_left = _matrix_operand(lowering, node, left)
    right_index, adjoint_right = _matrix_operand(lowering, node, right)
    output = lowering.define(result, layouts.identity(len(result.shape)))
    lowering.emit("BATCH_MATMUL", (left_index, right_index), (output,), ("BatchMatMulOptions", {
        "AdjX": adjoint_left, "AdjY": adjoint_right, "AsymmetricQuantizeInputs": False,
    }))


def lower_softmax(lowering: Lowering, node) -> None:
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    rank = len(source.shape)
    axis = int(attributes(node).get("axis", -1)) % rank
    perm = lowering.perm[source.name]
    if perm[-1] != axis:
        perm = tuple(a for a in perm if a != axis) + (axis,)
    source_index = lowering.read(node, source, perm)
    output = lowering.define(result, perm)
    fixed = (SOFTMAX_SCALE, SOFTMAX_ZERO_POINT)
    target = output
    if (result.scale, result.zero_point) != fixed:
        target = lowering.temporary(f"{node.name}_fixed", lowering.shape_of(output), *fixed)
    lowering.emit("SOFTMAX", (source_index,), (target,), ("SoftmaxOptions", {"Beta": 1.0}))
    if target != output:
        lowering.requantize(target, result)


LOWERINGS = {"Softmax": lower_softmax}
