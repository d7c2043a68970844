"""Attention's ops: MatMul of two activations (BATCH_MATMUL) and Softmax.

BATCH_MATMUL reads its operands' last two axes in either order (adj_x / adj_y), so a key
transposed by an ONNX Transpose (a layout change only) needs no TRANSPOSE op. LiteRT runs it
with TFLite's builtin int8 kernel (XNNPACK takes no product of two activations), whose
fixed-point requantization rounds twice: about 2^-(k+1) of the values 1 LSB off ONNX Runtime's
QLinearMatMul for a multiplier 0.q × 2^-k, which the three scales fix (docs/ethos-u.md). SOFTMAX
writes scale 1/256, zero point -128 (TFLite's quantization spec); ONNX Runtime fixes Softmax's
output to [0, 1] (scale 1/255), so a QUANTIZE op requantizes, or, with SOFTMAX in `float_ops`,
the softmax runs in float32 as ONNX Runtime's does.
"""

from __future__ import annotations

import numpy as np

from tapeout.compilers.tflite import layout as layouts
from tapeout.compilers.tflite.lowering import NO_ACTIVATION, Lowering, refuse
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
    """SOFTMAX writes scale 1/256, zero point -128 (LiteRT refuses any other), and QUANTIZE
    requantizes to ONNX Runtime's scale s. ONNX Runtime's QLinearSoftmax writes
    round(p · floor(1 / s)) + z, not round(p / s) + z: floor(1 / (1/255 in float32)) is 254
    (onnxruntime/contrib_ops/cpu/quantization/qlinear_softmax.cc), so its probabilities are
    254/255 of the true ones. The int8 path therefore writes about 1% of the values 1 LSB above
    ONNX Runtime's (mostly the smallest probabilities, which round twice). With SOFTMAX in
    `float_ops`, a float32 SOFTMAX between DEQUANTIZE and QUANTIZE, times floor(1/s)·s, rounds
    once as ONNX Runtime does."""
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    rank = len(source.shape)
    axis = int(attributes(node).get("axis", -1)) % rank
    perm = lowering.perm[source.name]
    if perm[-1] != axis:
        perm = tuple(a for a in perm if a != axis) + (axis,)
    source_index = lowering.read(node, source, perm)
    output = lowering.define(result, perm)
    options = ("SoftmaxOptions", {"Beta": 1.0})
    if "SOFTMAX" in lowering.float_ops:
        scale = np.float32(result.scale)
        factor = float(np.floor(np.float32(1.0) / scale) * scale)
        lowering.in_float(node.name, source_index, output, lambda op, x: op(
            "MUL", (op("SOFTMAX", (x,), options), factor), ("MulOptions", {"FusedActivationFunction": NO_ACTIVATION})))
        return
    fixed = (SOFTMAX_SCALE, SOFTMAX_ZERO_POINT)
    target = output
    if (result.scale, result.zero_point) != fixed:
        target = lowering.temporary(f"{node.name}_fixed", lowering.shape_of(output), *fixed)
    lowering.emit("SOFTMAX", (source_index,), (target,), options)
    if target != output:
        lowering.requantize(target, result)


LOWERINGS = {"Softmax": lower_softmax}
