"""The lowering pass: ONNX nodes in order in, TFLite tensors and operators out.

`Lowering` holds what every op's lowering shares: the TFLite tensors written so far, each
activation's tensor and layout (compilers/tflite/layout.py), the transposed copies made for
readers that need another order, and the graph's edges. The ops themselves live in
`compilers/tflite/ops/`, one module per kind; `LOWERINGS` maps an ONNX op type to its function
and `PATTERNS` are multi-node matches (GELU, hard swish) tried first.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from tapeout.compilers.errors import UnsupportedOperator
from tapeout.compilers.tflite import layout as layouts
from tapeout.compilers.tflite.flatbuffer import FbGraph, FbOperator, FbTensor, array_bytes
from tapeout.compilers.tflite.qdq import COMPILER, Activation, Constant, QdqGraph

# Padding (schema.fbs `enum Padding`), ActivationFunctionType NONE.
SAME, VALID, NO_ACTIVATION = 0, 1, 0

# Ops that read a 4-D tensor as an image (NHWC in TFLite): a 4-D graph input read by one of
# them is NHWC in TFLite, any other keeps ONNX's order.
IMAGE_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization"})

# TFLite int8 kernels that no choice of int8 parameters makes compute what ONNX Runtime
# computes (docs/ethos-u.md, "Exactness per op"), and that the converter writes in float32
# instead when asked (`convert(..., float_ops=...)`): exact to ONNX Runtime, but off the NPU.
FLOAT_OPS = ("ADD", "HARD_SWISH", "LOGISTIC", "MUL", "SOFTMAX")

# Edge layouts (EdgeTensor.layout) of a TFLite graph input or output against its ONNX tensor.
SAME_ORDER = "same"          # identical shape and element order
NHWC = "nhwc"                # ONNX NCHW, TFLite NHWC


@dataclass(frozen=True)
class EdgeTensor:
    """A graph input or output: ONNX name and shape, TFLite tensor name and shape, its int8
    quantization, and the layout ("same" or "nhwc") that maps one onto the other."""

    onnx_name: str
    onnx_shape: tuple[int, ...]
    tflite_name: str
    tflite_shape: tuple[int, ...]
    scale: float
    zero_point: int
    layout: str


def refuse(node, reason: str) -> UnsupportedOperator:
    return UnsupportedOperator(COMPILER, node.name, node.op_type, reason)


def quantize_values(values, scale: float, zero_point: int) -> np.ndarray:
    """ONNX QuantizeLinear to int8 in float32 (division, round half to even, saturate), as ONNX
    Runtime quantizes a constant it folds: for constants TFLite needs at another quantization."""
    scaled = np.rint(np.asarray(values, np.float32) / np.float32(scale)) + zero_point
    return np.clip(scaled, -128, 127).astype(np.int8)


def dequantize_constant(constant: Constant) -> np.ndarray:
    """ONNX DequantizeLinear of a constant in float32, per channel along its axis."""
    scales = constant.scales.astype(np.float32)
    zero_points = constant.zero_points.astype(np.float32)
    if constant.axis is not None and scales.size > 1:
        shape = [1] * constant.values.ndim
        shape[constant.axis] = -1
        scales, zero_points = scales.reshape(shape), zero_points.reshape(shape)
    return (constant.values.astype(np.float32) - zero_points) * scales


class Lowering:
    """One pass over the ONNX nodes in order, emitting TFLite tensors and operators."""

    def __init__(self, qdq: QdqGraph, float_ops: frozenset[str] = frozenset()) -> None:
        self.qdq = qdq
        self.float_ops = frozenset(float_ops)                 # of FLOAT_OPS, written in float32
        self.fb = FbGraph()
        self.index: dict[str, int] = {}                       # activation -> its tensor
        self.perm: dict[str, tuple[int, ...]] = {}            # activation -> its layout
        self.flattened: dict[str, tuple[int, int, int]] = {}  # NHWC tensor flattened in HWC order
        self.copies: dict[tuple[str, tuple[int, ...]], int] = {}
        self.fused: set[int] = set()                          # id() of nodes a pattern lowered
        self.edge_inputs: list[EdgeTensor] = []
        self.edge_outputs: list[EdgeTensor] = []

    # -- tensors -----------------------------------------------------------------------------

    def add(self, tensor: FbTensor) -> int:
        self.fb.tensors.append(tensor)
        return len(self.fb.tensors) - 1

    def define(self, act: Activation, perm: tuple[int, ...], dtype: str = "int8") -> int:
        """The tensor of activation `act` (written by the op being lowered), in layout `perm`."""
        if act.name in self.index:
            return self.index[act.name]
        shape = layouts.tflite_shape(act.shape, perm)
        index = self.add(FbTensor(act.name, shape, dtype, (act.scale,), (act.zero_point,)))
        self.index[act.name], self.perm[act.name] = index, perm
        return index

    def temporary(self, name: str, shape, scale: float, zero_point: int, dtype: str = "int8") -> int:
        return self.add(FbTensor(name, tuple(shape), dtype, (scale,), (zero_point,)))

    def int32_constant(self, name: str, values) -> int:
        array = np.asarray(values, dtype=np.int32)
        return self.add(FbTensor(name, array.shape, "int32", data=array_bytes(array)))

    def quantized_constant(self, name: str, values: np.ndarray, scale: float, zero_point: int) -> int:
        """A per-tensor quantized constant holding integer `values` (int8 or int16)."""
        return self.add(FbTensor(
            name, values.shape, values.dtype.name, (float(scale),), (int(zero_point),), 0,
            array_bytes(np.ascontiguousarray(values)),
        ))

    def emit(self, opcode: str, inputs, outputs, options=None) -> None:
        self.fb.operators.append(FbOperator(opcode, tuple(inputs), tuple(outputs), options))

    def shape_of(self, index: int) -> tuple[int, ...]:
        return self.fb.tensors[index].shape

    # -- reading activations -----------------------------------------------------------------

    def input(self, node, position: int) -> Activation:
        """The converted activation `node` reads at `position`."""
        value = self.qdq.input_of(node, position)
        if not isinstance(value, Activation):
            raise refuse(node, f"input {position} must be an activation, found a constant")
        if value.name not in self.index:
            raise refuse(node, f"input {value.name!r} is not produced by a converted node")
        return value

    def operands(self, node) -> tuple[list, list[Activation]]:
        """Every input of `node` (activations and quantized constants) and the activations
        among them, each produced by a converted node.

        Raises:
            UnsupportedOperator: every input is a constant, or one was not converted.
        """
        values = [self.qdq.input_of(node, i) for i in range(len(node.input))]
        activations = [value for value in values if isinstance(value, Activation)]
        if not activations:
            raise refuse(node, "every input is a constant (fold them before conversion)")
        for act in activations:
            if act.name not in self.index:
                raise refuse(node, f"input {act.name!r} is not produced by a converted node")
        return values, activations

    def read(self, node, act: Activation, perm: tuple[int, ...] | None = None) -> int:
        """The tensor of `act` in layout `perm` (its own when None): a TRANSPOSE (or, when only
        size-1 axes move, a RESHAPE) is emitted once per activation and layout."""
        own = self.perm[act.name]
        if perm is None or perm == own:
            if act.name in self.flattened and perm is not None:
                raise refuse(node, "cannot reorder a flattened NHWC tensor")
            return self.index[act.name]
        if act.name in self.flattened:
            raise refuse(node, "cannot reorder a flattened NHWC tensor")
        key = (act.name, perm)
        if key in self.copies:
            return self.copies[key]
        source = self.index[act.name]
        tensor = self.fb.tensors[source]
        suffix = "".join(map(str, perm))
        shape = layouts.tflite_shape(act.shape, perm)
        copy = self.temporary(f"{act.name}_{suffix}", shape, act.scale, act.zero_point, tensor.dtype)
        if layouts.equivalent(act.shape, own, perm):
            self.emit("RESHAPE", (source, self.int32_constant(f"{act.name}_{suffix}_shape", shape)), (copy,))
        else:
            order = self.int32_constant(f"{act.name}_{suffix}_perm", layouts.transpose_between(own, perm))
            self.emit("TRANSPOSE", (source, order), (copy,), ("TransposeOptions", {}))
        self.copies[key] = copy
        return copy

    def with_layout(self, node, source: Activation, result: Activation, opcode: str, options=None) -> None:
        """An op that keeps its input's shape and layout (activation functions):
        `opcode(source) -> result`."""
        perm = self.perm[source.name]
        source_index = self.read(node, source, perm)
        output = self.define(result, perm)
        self.emit(opcode, (source_index,), (output,), options)

    def in_float(self, name: str, source_index: int, output: int | None, compute) -> int:
        """Float32 ops between a DEQUANTIZE of `source_index` and a QUANTIZE into `output`, as
        ONNX Runtime runs an op it leaves between DequantizeLinear and QuantizeLinear:
        `compute(float_op, values)` emits them through `float_op(opcode, inputs, options)`
        (inputs are tensor indices or Python floats, made float32 constants) and returns the
        result's index. With `output` None, no QUANTIZE: the float32 result's index is returned
        (for an op whose output ONNX Runtime leaves in float)."""
        shape = self.shape_of(source_index if output is None else output)
        names = itertools.count()

        def float_op(opcode: str, inputs, options=None) -> int:
            indices = []
            for value in inputs:
                if isinstance(value, float):
                    constant = np.array([value], np.float32)
                    value = self.add(FbTensor(f"{name}_constant{next(names)}", constant.shape, "float32",
                                              data=array_bytes(constant)))
                indices.append(value)
            result = self.add(FbTensor(f"{name}_{opcode.lower()}{next(names)}", shape, "float32"))
            self.emit(opcode, indices, (result,), options)
            return result

        values = self.add(FbTensor(f"{name}_float", self.shape_of(source_index), "float32"))
        self.emit("DEQUANTIZE", (source_index,), (values,))
        result = compute(float_op, values)
        if output is not None:
            self.emit("QUANTIZE", (result,), (output,), ("QuantizeOptions", {}))
        return result

    def requantize(self, index: int, act: Activation) -> None:
        """QUANTIZE a temporary into `act` (defined in the temporary's layout by the caller)."""
        self.emit("QUANTIZE", (index,), (self.index[act.name],), ("QuantizeOptions", {}))

    # -- the graph ---------------------------------------------------------------------------

    def run(self, lowerings, patterns) -> FbGraph:
        qdq = self.qdq
        inputs = []
        for name in qdq.graph_inputs:
            consumers = qdq.consumers.get(name, [])
            if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
                raise UnsupportedOperator(
                    COMPILER, name, "graph input",
                    "a graph input must feed exactly one QuantizeLinear (a QDQ model)",
                )
            act = qdq.activation_of_q(consumers[0])
            readers = qdq.compute_consumers(act.name)
            image = len(act.shape) == 4 and any(r is not None and r.op_type in IMAGE_OPS for r, _ in readers)
            perm = layouts.NHWC if image else layouts.identity(len(act.shape))
            inputs.append(self.define(act, perm))
            self.edge_inputs.append(EdgeTensor(
                name, act.shape, act.name, layouts.tflite_shape(act.shape, perm), act.scale,
                act.zero_point, NHWC if perm == layouts.NHWC else SAME_ORDER,
            ))
        for node in qdq.nodes:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant") or id(node) in self.fused:
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type not in lowerings:
                raise refuse(
                    node, "not in the int8 TFLite op set of this converter "
                    f"({', '.join(sorted(lowerings))})",
                )
            if not any(pattern(self, node) for pattern in patterns):
                lowerings[node.op_type](self, node)
        self.fb.inputs, self.fb.outputs = tuple(inputs), tuple(self._outputs())
        return self.fb

    def _outputs(self) -> list[int]:
        qdq = self.qdq
        outputs = []
        for name in qdq.graph_outputs:
            producer = qdq.producer.get(name)
            act = None
            if producer is not None and producer.op_type == "DequantizeLinear":
                q = qdq.producer.get(producer.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    act = qdq.activation_of_q(q)
            elif name in self.index:
                act = qdq.float_activation(name, producer)
            if act is None or act.name not in self.index:
                raise UnsupportedOperator(
                    COMPILER, name, "graph output",
                    "a graph output must be the DequantizeLinear of a converted int8 tensor",
                )
            if act.name in self.flattened:
                raise UnsupportedOperator(COMPILER, name, "graph output", "flattened NHWC output")
            perm = self.perm[act.name]
            if perm != layouts.NHWC or len(act.shape) != 4:
                perm = layouts.identity(len(act.shape))
            index = self.read(producer, act, perm)
            outputs.append(index)
            self.edge_outputs.append(EdgeTensor(
                name, act.shape, self.fb.tensors[index].name, self.shape_of(index), act.scale,
                act.zero_point, NHWC if perm == layouts.NHWC and len(perm) == 4 else SAME_ORDER,
            ))
        return outputs
