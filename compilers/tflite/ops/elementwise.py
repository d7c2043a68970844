"""Element-wise ops: Add, Sub, Mul, Relu, Clip, Sigmoid, HardSigmoid, HardSwish, and the GELU
and HardSigmoid·x patterns.

Each keeps ONNX Runtime's output quantization. Where TFLite's int8 kernel fixes the output
quantization (tensorflow.org/lite/performance/quantization_spec: LOGISTIC writes scale 1/256,
zero point -128), a QUANTIZE op requantizes to ONNX Runtime's, rounding twice; HARD_SWISH works in
16-bit fixed point. With LOGISTIC or HARD_SWISH in `float_ops` they run in float32 between
DEQUANTIZE and QUANTIZE instead, as ONNX Runtime runs them (docs/ethos-u.md); ADD and MUL of two
activations in `float_ops` follow ONNX Runtime's QLinearAdd and QLinearMul (ops/qlinear.py).

Relu and Clip that ONNX Runtime removed (it narrows the producer's output range to [0, max], so
its zero point is -128: onnxruntime/quantization/base_quantizer.py `adjust_tensor_ranges`) need
nothing: TFLite's int8 saturation at -128 is that Relu, bit for bit.
"""

from __future__ import annotations

import numpy as np

from tapeout.compilers.tflite.flatbuffer import FbTensor, array_bytes
from tapeout.compilers.tflite.lowering import NO_ACTIVATION, Lowering, dequantize_constant, refuse
from tapeout.compilers.tflite.ops.qlinear import exact_binary
from tapeout.compilers.tflite.qdq import Activation, Constant, attributes

# TFLite's int8 LOGISTIC output (quantization spec).
LOGISTIC_SCALE, LOGISTIC_ZERO_POINT = 1.0 / 256.0, -128


def scalar_constant(lowering: Lowering, name: str, value: float) -> int:
    """An int8 constant holding `value`: at a power-of-two scale when that makes it exact
    (3.0 = 96 × 2^-5), else at scale |value| / 127."""
    if value == 0:
        return lowering.quantized_constant(name, np.array([0], np.int8), 1.0, 0)
    exponent = int(np.floor(np.log2(127.0 / abs(value))))
    scale = 2.0 ** -exponent
    quantized = value / scale
    if quantized != round(quantized) or abs(quantized) > 127:
        scale, quantized = abs(value) / 127.0, np.sign(value) * 127
    return lowering.quantized_constant(name, np.array([quantized], np.int8), np.float32(scale), 0)


def binary(lowering: Lowering, node, opcode: str, options_table: str | None) -> None:
    """ADD / SUB / MUL of two activations, or of one and a per-tensor quantized constant
    (broadcast as ONNX does: the constant is laid out like the activation). ADD and MUL of two
    activations with the op in `float_ops`: ONNX Runtime's float32 sequence (ops/qlinear.py)."""
    operands, activations = lowering.operands(node)
    result = lowering.qdq.output_of(node)
    rank = len(result.shape)
    if any(len(a.shape) != rank for a in activations):
        raise refuse(node, f"operands of different rank {[list(a.shape) for a in activations]}")
    lead = activations[0]
    perm = lowering.perm[lead.name]
    if lead.name in lowering.flattened or any(a.name in lowering.flattened for a in activations):
        raise refuse(node, "an operand is a flattened NHWC tensor")
    indices = []
    for position, operand in enumerate(operands):
        if isinstance(operand, Activation):
            indices.append(lowering.read(node, operand, perm))
            continue
        if operand.values.dtype != np.int8 or operand.scales.size != 1:
            raise refuse(node, "a constant operand must be int8 with one scale")
        values = operand.values.reshape((1,) * (rank - operand.values.ndim) + operand.values.shape)
        values = values.transpose(perm)
        indices.append(lowering.add(FbTensor(
            f"{node.name}_constant{position}", values.shape, "int8",
            (float(operand.scales.reshape(())),), (int(operand.zero_points.reshape(())),), 0,
            array_bytes(np.ascontiguousarray(values)),
        )))
    output = lowering.define(result, perm)
    if opcode in lowering.float_ops and all(isinstance(operand, Activation) for operand in operands):
        exact_binary(lowering, node, opcode, indices, activations, result, output)
        return
    options = None if options_table is None else (options_table, {"FusedActivationFunction": NO_ACTIVATION})
    lowering.emit(opcode, indices, (output,), options)


def lower_add(lowering: Lowering, node) -> None:
    binary(lowering, node, "ADD", "AddOptions")


def lower_sub(lowering: Lowering, node) -> None:
    binary(lowering, node, "SUB", "SubOptions")


def lower_mul(lowering: Lowering, node) -> None:
    binary(lowering, node, "MUL", "MulOptions")


def lower_relu(lowering: Lowering, node) -> None:
    lowering.with_layout(node, lowering.input(node, 0), lowering.qdq.output_of(node), "RELU")


def lower_clip(lowering: Lowering, node) -> None:
    attrs = attributes(node)
    low = lowering.qdq.constant(node, 1)
    high = lowering.qdq.constant(node, 2)
    low = float(attrs.get("min", -np.inf) if low is None else np.asarray(low).reshape(()))
    high = float(attrs.get("max", np.inf) if high is None else np.asarray(high).reshape(()))
    opcode = {(0.0, np.inf): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}.get((low, high))
    if opcode is None:
        raise refuse(node, f"Clip({low}, {high}) has no TFLite int8 activation (0..inf, 0..6, -1..1)")
    lowering.with_layout(node, lowering.input(node, 0), lowering.qdq.output_of(node), opcode)


def lower_sigmoid(lowering: Lowering, node) -> None:
    """LOGISTIC writes scale 1/256, zero point -128 (LiteRT refuses any other); QUANTIZE
    requantizes to ONNX Runtime's (its range [0, max] gives 1/255 or finer), so a quarter to
    half of the values round twice, 1 LSB off ONNX Runtime's QLinearSigmoid, which rounds its
    float sigmoid once. An int16 LOGISTIC between two QUANTIZEs rounds once but halved Vela's
    estimate for EfficientNet-B0. With LOGISTIC in `float_ops`, the float32 LOGISTIC between
    DEQUANTIZE and QUANTIZE rounds once, as ONNX Runtime does (docs/ethos-u.md)."""
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    fixed = (LOGISTIC_SCALE, LOGISTIC_ZERO_POINT)
    perm = lowering.perm[source.name]
    source_index = lowering.read(node, source, perm)
    if "LOGISTIC" in lowering.float_ops:
        lowering.in_float(node.name, source_index, lowering.define(result, perm),
                          lambda op, x: op("LOGISTIC", (x,)))
        return
    if (result.scale, result.zero_point) == fixed:
        lowering.emit("LOGISTIC", (source_index,), (lowering.define(result, perm),))
        return
    logistic = lowering.temporary(f"{node.name}_logistic", lowering.shape_of(source_index), *fixed)
    lowering.emit("LOGISTIC", (source_index,), (logistic,))
    lowering.define(result, perm)
    lowering.requantize(logistic, result)


def lower_hardswish(lowering: Lowering, node) -> None:
    """HARD_SWISH: TFLite's int8 kernel works in 16-bit fixed point, ONNX Runtime in float
    between DequantizeLinear and QuantizeLinear (up to 3% of the values 1 LSB off). With
    HARD_SWISH in `float_ops`, ONNX's definition x · max(0, min(1, x/6 + 1/2)) in float32 ops
    between DEQUANTIZE and QUANTIZE (Vela refuses a float32 HARD_SWISH itself)."""
    source, result = lowering.input(node, 0), lowering.qdq.output_of(node)
    if "HARD_SWISH" not in lowering.float_ops:
        lowering.with_layout(node, source, result, "HARD_SWISH")
        return
    none = ("MulOptions", {"FusedActivationFunction": NO_ACTIVATION})

    def hard_swish(op, x):
        gate = op("ADD", (op("MUL", (x, float(np.float32(1 / 6))), none), 0.5),
                  ("AddOptions", {"FusedActivationFunction": NO_ACTIVATION}))
        gate = op("MINIMUM", (op("MAXIMUM", (gate, 0.0)), 1.0))
        return op("MUL", (x, gate), none)

    perm = lowering.perm[source.name]
    source_index = lowering.read(node, source, perm)
    if _left_in_float_for_means(lowering, node):
        # ONNX Runtime leaves this HardSwish's output in float for the means that read it:
        # the float32 tensor stands for the activation, and each MEAN quantizes its own result.
        values = lowering.in_float(node.name, source_index, None, hard_swish)
        lowering.index[result.name], lowering.perm[result.name] = values, perm
        return
    lowering.in_float(node.name, source_index, lowering.define(result, perm), hard_swish)


def _left_in_float_for_means(lowering: Lowering, node) -> bool:
    """`node`'s output has no QuantizeLinear and only ReduceMean nodes read it."""
    consumers = lowering.qdq.consumers.get(node.output[0], [])
    return bool(consumers) and node.output[0] not in lowering.qdq.graph_outputs and all(
        consumer.op_type == "ReduceMean" and consumer.input[0] == node.output[0] for consumer in consumers)


def lower_hardsigmoid(lowering: Lowering, node) -> None:
    """max(0, min(1, alpha·x + beta)) = alpha·(x + beta/alpha), clipped: ADD writes
    x + beta/alpha at scale s/alpha and ONNX Runtime's zero point z, so its int8 values already
    are round((alpha·x + beta) / s) + z, ONNX Runtime's; MUL by alpha then only relabels the
    scale (its multiplier is 1). The clip is int8 saturation when z is -128 (ONNX Runtime's
    range of a non-negative output), else a RELU before the MUL."""
    attrs = attributes(node)
    alpha = float(np.float32(attrs.get("alpha", 0.2)))
    beta = float(np.float32(attrs.get("beta", 0.5)))
    if alpha <= 0:
        raise refuse(node, f"HardSigmoid with alpha {alpha} <= 0")
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    perm = lowering.perm[source.name]
    source_index = lowering.read(node, source, perm)
    shape = lowering.shape_of(source_index)
    shifted_scale = float(np.float32(result.scale / alpha))
    shifted = lowering.temporary(f"{node.name}_shifted", shape, shifted_scale, result.zero_point)
    offset = scalar_constant(lowering, f"{node.name}_offset", beta / alpha)
    lowering.emit("ADD", (source_index, offset), (shifted,), ("AddOptions", {"FusedActivationFunction": NO_ACTIVATION}))
    if result.zero_point != -128:
        clipped = lowering.temporary(f"{node.name}_clipped", shape, shifted_scale, result.zero_point)
        lowering.emit("RELU", (shifted,), (clipped,))
        shifted = clipped
    output = lowering.define(result, perm)
    slope = lowering.quantized_constant(f"{node.name}_alpha", np.array([127], np.int8), np.float32(alpha / 127.0), 0)
    lowering.emit("MUL", (shifted, slope), (output,), ("MulOptions", {"FusedActivationFunction": NO_ACTIVATION}))


# -- patterns ----------------------------------------------------------------------------------


def _only_reader(lowering: Lowering, node):
    """The one compute node reading `node`'s output (through its Q/DQ pair), with the input
    position, or (None, -1)."""
    readers = lowering.qdq.compute_consumers(_output_name(lowering, node))
    return readers[0] if len(readers) == 1 else (None, -1)


def _output_name(lowering: Lowering, node) -> str:
    consumers = lowering.qdq.consumers.get(node.output[0], [])
    if len(consumers) == 1 and consumers[0].op_type == "QuantizeLinear":
        return consumers[0].output[0]
    return node.output[0]


def _constant_value(lowering: Lowering, node, position: int) -> float | None:
    value = lowering.qdq.input_of(node, position) if lowering.qdq.producer.get(node.input[position]) else None
    if isinstance(value, Constant):
        array = dequantize_constant(value)
    elif node.input[position] in lowering.qdq.initializers:
        array = lowering.qdq.initializers[node.input[position]]
    else:
        return None
    array = np.asarray(array, np.float64).reshape(-1)
    return float(array[0]) if array.size == 1 else None


def _other_operand(lowering: Lowering, node, position: int):
    return lowering.qdq.input_of(node, 1 - position)


def hard_swish_pattern(lowering: Lowering, node) -> bool:
    """HardSigmoid(x; 1/6, 1/2) · x is HARD_SWISH(x): one TFLite op instead of ONNX Runtime's
    two quantized steps (so within an LSB of it, not bit-exact). Not with HARD_SWISH in
    `float_ops`: then HardSigmoid and Mul are lowered each on its own, both exact."""
    if node.op_type != "HardSigmoid" or "HARD_SWISH" in lowering.float_ops:
        return False
    attrs = attributes(node)
    if not (np.isclose(attrs.get("alpha", 0.2), 1 / 6) and np.isclose(attrs.get("beta", 0.5), 0.5)):
        return False
    mul, position = _only_reader(lowering, node)
    if mul is None or mul.op_type != "Mul":
        return False
    source = lowering.input(node, 0)
    other = _other_operand(lowering, mul, position)
    if not isinstance(other, Activation) or other.name != source.name:
        return False
    lowering.with_layout(node, source, lowering.qdq.output_of(mul), "HARD_SWISH")
    lowering.fused.add(id(mul))
    return True


def gelu_pattern(lowering: Lowering, node) -> bool:
    """x · 0.5 · (1 + erf(x / √2)) as exported (Div, Erf, Add, Mul, Mul) is TFLite's GELU
    (exact, not the tanh approximation): one op, where ONNX Runtime quantizes after Erf, Add and
    each Mul, so the result is within an LSB or two of ONNX Runtime's (docs/ethos-u.md)."""
    if node.op_type != "Div":
        return False
    divisor = _constant_value(lowering, node, 1)
    if divisor is None or not np.isclose(divisor, np.sqrt(2.0), rtol=1e-4):
        return False
    chain, current = [], node
    for op_type, constant in (("Erf", None), ("Add", 1.0), ("Mul", 0.5), ("Mul", None)):
        reader, position = _only_reader(lowering, current)
        if reader is None or reader.op_type != op_type:
            return False
        if constant is not None and not np.isclose(_constant_value(lowering, reader, 1 - position) or 0, constant,
                                                   rtol=1e-2):
            return False
        chain.append((reader, position))
        current = reader
    source = lowering.input(node, 0)
    last, position = chain[-1]
    other = _other_operand(lowering, last, position)
    if not isinstance(other, Activation) or other.name != source.name:
        return False
    lowering.with_layout(node, source, lowering.qdq.output_of(last), "GELU", options=("GeluOptions", {"Approximate": False}))
    lowering.fused.update(id(reader) for reader, _ in chain)
    return True


def lower_gelu(lowering: Lowering, node) -> None:
    """ONNX Gelu (opset 20, what the exporter writes at that opset): TFLite's GELU, exact or
    with the tanh approximation as the node says."""
    approximate = attributes(node).get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    lowering.with_layout(node, lowering.input(node, 0), lowering.qdq.output_of(node), "GELU",
                         options=("GeluOptions", {"Approximate": approximate == "tanh"}))


def lower_gelu_part(lowering: Lowering, node) -> None:
    raise refuse(node, f"{node.op_type} converts only inside GELU, x * 0.5 * (1 + erf(x / sqrt(2)))")


LOWERINGS = {
    "Gelu": lower_gelu,
    "Div": lower_gelu_part,
    "Erf": lower_gelu_part,
    "Add": lower_add,
    "Sub": lower_sub,
    "Mul": lower_mul,
    "Relu": lower_relu,
    "Clip": lower_clip,
    "Sigmoid": lower_sigmoid,
    "HardSigmoid": lower_hardsigmoid,
    "HardSwish": lower_hardswish,
}
PATTERNS = (hard_swish_pattern, gelu_pattern)
