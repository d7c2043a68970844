"""Serialise a small, already-lowered int8 graph as a TFLite flatbuffer.

The TFLite schema's Python bindings come with Arm's Vela wheel (`ethosu.vela.tflite`, generated
by flatc from tensorflow/compiler/mlir/lite/schema/schema.fbs); `flatbuffers` writes them. Both
are imported inside `serialise`, so this module imports without the `ethos-u` extra.

The layout follows what TensorFlow's converter emits: schema version 3, file identifier
"TFL3", buffer 0 empty, one buffer per tensor (empty for activations), constant data aligned
to 16 bytes, operator codes with both the deprecated int8 and the int32 builtin code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
_DEPRECATED_CODE_LIMIT = 127  # BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES

# TensorType values (schema.fbs `enum TensorType`).
TENSOR_TYPES = {"float32": 0, "int32": 2, "int8": 9, "int64": 4}


@dataclass
class FbTensor:
    """One tensor: shape in TFLite order, numpy dtype name, quantization, optional data."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0
    data: bytes | None = None


@dataclass
class FbOperator:
    """One operator: builtin name (schema.fbs `enum BuiltinOperator`, e.g. "CONV_2D"), tensor
    indices, and its options table.

    `options` is (options table name, {field: value}) as in schema.fbs, e.g.
    ("Conv2DOptions", {"Padding": 0, "StrideW": 1}); None for operators without options.
    """

    opcode: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: tuple[str, dict[str, object]] | None = None


@dataclass
class FbGraph:
    tensors: list[FbTensor] = field(default_factory=list)
    operators: list[FbOperator] = field(default_factory=list)
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    description: str = "tapeout QDQ-ONNX to int8 TFLite"


def serialise(graph: FbGraph) -> bytes:
    """The flatbuffer bytes of `graph` (deterministic: same graph, same bytes)."""
    import flatbuffers
    from ethosu.vela.tflite import (
        Buffer,
        BuiltinOperator,
        BuiltinOptions,
        Model,
        Operator,
        OperatorCode,
        QuantizationParameters,
        SubGraph,
        Tensor,
    )

    builder = flatbuffers.Builder(1024)

    def int_vector(values) -> int:
        builder.StartVector(4, len(values), 4)
        for value in reversed(list(values)):
            builder.PrependInt32(int(value))
        return builder.EndVector()

    def long_vector(values) -> int:
        builder.StartVector(8, len(values), 8)
        for value in reversed(list(values)):
            builder.PrependInt64(int(value))
        return builder.EndVector()

    def float_vector(values) -> int:
        builder.StartVector(4, len(values), 4)
        for value in reversed(list(values)):
            builder.PrependFloat32(float(value))
        return builder.EndVector()

    def offset_vector(offsets) -> int:
        builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()

    def byte_vector(data: bytes) -> int:
        builder.StartVector(1, len(data), 16)
        builder.head = builder.head - len(data)
        builder.Bytes[builder.head : builder.head + len(data)] = data
        return builder.EndVector()

    # Buffers: 0 is the empty sentinel, then one per tensor.
    buffer_offsets = []
    for data in [None] + [tensor.data for tensor in graph.tensors]:
        data_offset = byte_vector(data) if data else None
        Buffer.BufferStart(builder)
        if data_offset is not None:
            Buffer.BufferAddData(builder, data_offset)
        buffer_offsets.append(Buffer.BufferEnd(builder))

    tensor_offsets = []
    for index, tensor in enumerate(graph.tensors):
        name = builder.CreateString(tensor.name)
        shape = int_vector(tensor.shape)
        quantization = None
        if tensor.scales:
            scales = float_vector(tensor.scales)
            zero_points = long_vector(tensor.zero_points)
            QuantizationParameters.QuantizationParametersStart(builder)
            QuantizationParameters.QuantizationParametersAddScale(builder, scales)
            QuantizationParameters.QuantizationParametersAddZeroPoint(builder, zero_points)
            QuantizationParameters.QuantizationParametersAddQuantizedDimension(
                builder, tensor.quantized_dimension
            )
            quantization = QuantizationParameters.QuantizationParametersEnd(builder)
        Tensor.TensorStart(builder)
        Tensor.TensorAddShape(builder, shape)
        Tensor.TensorAddType(builder, TENSOR_TYPES[tensor.dtype])
        Tensor.TensorAddBuffer(builder, index + 1)
        Tensor.TensorAddName(builder, name)
        if quantization is not None:
            Tensor.TensorAddQuantization(builder, quantization)
        tensor_offsets.append(Tensor.TensorEnd(builder))

    opcodes: list[str] = []
    operator_offsets = []
    for operator in graph.operators:
        if operator.opcode not in opcodes:
            opcodes.append(operator.opcode)
        options_offset = options_type = None
        if operator.options is not None:
            table, fields = operator.options
            module = __import__(f"ethosu.vela.tflite.{table}", fromlist=[table])
            getattr(module, f"{table}Start")(builder)
            for field_name, value in fields.items():
                getattr(module, f"{table}Add{field_name}")(builder, value)
            options_offset = getattr(module, f"{table}End")(builder)
            options_type = getattr(BuiltinOptions.BuiltinOptions, table)
        inputs = int_vector(operator.inputs)
        outputs = int_vector(operator.outputs)
        Operator.OperatorStart(builder)
        Operator.OperatorAddOpcodeIndex(builder, opcodes.index(operator.opcode))
        Operator.OperatorAddInputs(builder, inputs)
        Operator.OperatorAddOutputs(builder, outputs)
        if options_offset is not None:
            Operator.OperatorAddBuiltinOptionsType(builder, options_type)
            Operator.OperatorAddBuiltinOptions(builder, options_offset)
        operator_offsets.append(Operator.OperatorEnd(builder))

    subgraph_name = builder.CreateString("main")
    tensors = offset_vector(tensor_offsets)
    operators = offset_vector(operator_offsets)
    inputs = int_vector(graph.inputs)
    outputs = int_vector(graph.outputs)
    SubGraph.SubGraphStart(builder)
    SubGraph.SubGraphAddTensors(builder, tensors)
    SubGraph.SubGraphAddInputs(builder, inputs)
    SubGraph.SubGraphAddOutputs(builder, outputs)
    SubGraph.SubGraphAddOperators(builder, operators)
    SubGraph.SubGraphAddName(builder, subgraph_name)
    subgraph = SubGraph.SubGraphEnd(builder)

    code_offsets = []
    for name in opcodes:
        opcode = getattr(BuiltinOperator.BuiltinOperator, name)
        OperatorCode.OperatorCodeStart(builder)
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(
            builder, min(opcode, _DEPRECATED_CODE_LIMIT)
        )
        OperatorCode.OperatorCodeAddBuiltinCode(builder, opcode)
        OperatorCode.OperatorCodeAddVersion(builder, 1)
        code_offsets.append(OperatorCode.OperatorCodeEnd(builder))

    description = builder.CreateString(graph.description)
    codes = offset_vector(code_offsets)
    subgraphs = offset_vector([subgraph])
    buffers = offset_vector(buffer_offsets)
    Model.ModelStart(builder)
    Model.ModelAddVersion(builder, SCHEMA_VERSION)
    Model.ModelAddOperatorCodes(builder, codes)
    Model.ModelAddSubgraphs(builder, subgraphs)
    Model.ModelAddDescription(builder, description)
    Model.ModelAddBuffers(builder, buffers)
    model = Model.ModelEnd(builder)
    builder.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def array_bytes(array: np.ndarray) -> bytes:
    """Little-endian, C-order bytes of `array` (TFLite buffers are little-endian)."""
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
