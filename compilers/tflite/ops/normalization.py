"""LayerNormalization as TFLite's float32 ops, between a DEQUANTIZE and a QUANTIZE.

TFLite has no layer-norm builtin and no int8 kernel reproduces one; ONNX Runtime computes it in
float32 between its int8 input and output. So does this lowering, over the normalized (last)
axes, with ONNX's formula and ONNX Runtime's dequantized scale and bias:

    x = DEQUANTIZE(q)                      (q - z) * s, as ONNX's DequantizeLinear
    d = SUB(x, MEAN(x))
    y = ADD(MUL(MUL(d, RSQRT(ADD(MEAN(MUL(d, d)), epsilon))), gamma), beta)
    QUANTIZE(y)                            ONNX Runtime's output scale and zero point

Only float32 summation order differs from ONNX Runtime, so the output is within an LSB of it.
Vela runs float ops on the CPU (TFLite Micro), and lists them. Integer intermediates were
measured first (int16, scales from the input's range): a row spanning a few input LSBs, as a
ViT's class-token row does, gets a variance below one int16 LSB and an output 50 LSBs off
(docs/ethos-u.md).
"""

from __future__ import annotations

import numpy as np

from tapeout.compilers.tflite.flatbuffer import FbTensor, array_bytes
from tapeout.compilers.tflite.lowering import NO_ACTIVATION, Lowering, dequantize_constant, refuse
from tapeout.compilers.tflite.qdq import Constant, attributes


def lower_layernormalization(lowering: Lowering, node) -> None:
    qdq = lowering.qdq
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    if len(node.output) > 1 and any(node.output[1:]):
        raise refuse(node, "LayerNormalization's Mean and InvStdDev outputs have no TFLite equivalent")
    gamma, beta = qdq.input_of(node, 1), qdq.input_of(node, 2)
    if not isinstance(gamma, Constant) or (beta is not None and not isinstance(beta, Constant)):
        raise refuse(node, "expected constant (quantized) scale and bias inputs")
    attrs = attributes(node)
    rank = len(source.shape)
    axis = int(attrs.get("axis", -1)) % rank
    normalized = tuple(range(axis, rank))
    perm = lowering.perm[source.name]
    if perm[rank - len(normalized):] != normalized:
        perm = tuple(a for a in perm if a not in normalized) + normalized
    source_index = lowering.read(node, source, perm)
    shape = lowering.shape_of(source_index)
    reduced = shape[: rank - len(normalized)] + (1,) * len(normalized)
    name = node.name

    def tensor(suffix: str, tensor_shape) -> int:
        return lowering.add(FbTensor(f"{name}_{suffix}", tuple(tensor_shape), "float32"))

    def constant(suffix: str, values) -> int:
        values = np.ascontiguousarray(values, np.float32)
        return lowering.add(FbTensor(f"{name}_{suffix}", values.shape, "float32", data=array_bytes(values)))

    def binary(opcode: str, left: int, right: int, suffix: str, tensor_shape) -> int:
        output = tensor(suffix, tensor_shape)
        table = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions"}[opcode]
        lowering.emit(opcode, (left, right), (output,), (table, {"FusedActivationFunction": NO_ACTIVATION}))
        return output

    def mean(value: int, suffix: str) -> int:
        output = tensor(suffix, reduced)
        lowering.emit("MEAN", (value, axes), (output,), ("ReducerOptions", {"KeepDims": True}))
        return output

    axes = lowering.int32_constant(f"{name}_axes", list(range(rank - len(normalized), rank)))
    x = tensor("float", shape)
    lowering.emit("DEQUANTIZE", (source_index,), (x,))
    centred = binary("SUB", x, mean(x, "mean"), "centred", shape)
    variance = mean(binary("MUL", centred, centred, "squares", shape), "variance")
    epsilon = constant("epsilon", [attrs.get("epsilon", 1e-5)])
    inverse = tensor("rsqrt", reduced)
    lowering.emit("RSQRT", (binary("ADD", variance, epsilon, "variance_epsilon", reduced),), (inverse,))
    normal = binary("MUL", centred, inverse, "normalized", shape)
    gamma_values = np.broadcast_to(dequantize_constant(gamma), source.shape[axis:])
    scaled = binary("MUL", normal, constant("gamma", gamma_values), "scaled", shape)
    if beta is not None:
        beta_values = np.broadcast_to(dequantize_constant(beta), source.shape[axis:])
        scaled = binary("ADD", scaled, constant("beta", beta_values), "shifted", shape)
    output = lowering.define(result, perm)
    lowering.emit("QUANTIZE", (scaled,), (output,), ("QuantizeOptions", {}))


LOWERINGS = {"LayerNormalization": lower_layernormalization}
