"""Read a QDQ ONNX model (what `tapeout.calibration.quantizer` emits) as quantized tensors.

ONNX Runtime's QDQ format wraps every float op in DequantizeLinear on its inputs and
QuantizeLinear on its output: `Q(x) -> DQ -> Conv -> Q -> DQ -> ...`, weights as
`DQ(int8 initializer)`, biases as `DQ(int32 initializer)`. An int8 model has one int8 tensor per
QuantizeLinear output; this module names them, keeps their scale and zero point exactly as
written, and resolves each compute node's float inputs back to them.

uint8 tensors (ONNX Runtime's default activation type) are read as int8: the same scale, zero
point - 128 and values - 128. That is exact: QuantizeLinear to uint8 is
`clip(round(x / s) + z, 0, 255)`, and subtracting 128 from the result and from the bounds gives
`clip(round(x / s) + (z - 128), -128, 127)`, QuantizeLinear to int8 with zero point z - 128.

Some ops stay in float between a DequantizeLinear and the next QuantizeLinear (ONNX Runtime
does not quantize ReduceMean, nor the Reshape after it, nor Gelu). Such a float tensor is given
the quantization it ends up with: that of the QuantizeLinear after the Reshape / Transpose /
Squeeze / Gather chain that reads it; with none (a float graph output, or a HardSwish read by
a ReduceMean), that of the producing op's input for ops that keep values within their input's
range (ReduceMean, pooling, shape ops), or the range of an element-wise function over the 256
input values (HardSwish, Sigmoid, Relu, Gelu).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tapeout.compilers.errors import UnsupportedOperator

COMPILER = "tflite-converter"  # the ethos-u plugin re-raises refusals under its own name

# Ops that only move or regroup values: a float tensor read by a chain of them ends up with the
# quantization at the end of the chain.
SHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Gather"})
# Ops whose float output lies within their input's range (a float output with no quantization
# of its own borrows the input's).
RANGE_KEEPING_OPS = SHAPE_OPS | {"ReduceMean", "MaxPool", "AveragePool", "GlobalAveragePool"}
# Element-wise functions (float32, as ONNX defines them) whose float output can be given the
# quantization ONNX Runtime's MinMax calibration would give it if every int8 input value were
# seen: the function's range over the 256 values.
UNARY_FUNCTIONS = {
    "HardSwish": lambda x: x * np.clip(x / np.float32(6) + np.float32(0.5), 0, 1),
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "Relu": lambda x: np.maximum(x, 0),
    "Gelu": lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
}


@dataclass(frozen=True)
class Activation:
    """An int8 activation: the QuantizeLinear output `name`, per-tensor scale and zero point,
    and its shape in ONNX order."""

    name: str
    scale: float
    zero_point: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Constant:
    """A quantized initializer behind a DequantizeLinear: integer values, scales, zero points
    (one entry per tensor, or one per channel along `axis`)."""

    values: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    axis: int | None


class QdqGraph:
    """The nodes of a QDQ model with their quantized inputs and outputs resolved."""

    def __init__(self, model) -> None:
        import onnx
        from onnx import numpy_helper

        model = onnx.shape_inference.infer_shapes(model)
        self.model = model
        graph = model.graph
        self.initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for info in list(graph.input) + list(graph.value_info) + list(graph.output):
            dims = info.type.tensor_type.shape.dim
            if all(dim.HasField("dim_value") for dim in dims):
                self.shapes[info.name] = tuple(int(dim.dim_value) for dim in dims)
        self.producer = {}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in graph.output]
        self.nodes = list(graph.node)
        for node in self.nodes:
            # Names label the TFLite tensors an op adds and the errors: an unnamed node takes
            # its first output's name, which the graph keeps unique.
            if not node.name and node.output:
                node.name = node.output[0]

    # -- quantization parameters -------------------------------------------------------------

    def _param(self, node, index: int, what: str) -> np.ndarray:
        if len(node.input) <= index or not node.input[index]:
            if what == "zero point":
                return np.zeros((), np.int8)
            raise UnsupportedOperator(COMPILER, node.name, node.op_type, f"no {what}")
        name = node.input[index]
        if name not in self.initializers:
            raise UnsupportedOperator(
                COMPILER, node.name, node.op_type, f"{what} {name!r} is not a constant initializer"
            )
        return self.initializers[name]

    def activation_of_q(self, q_node) -> Activation:
        """The int8 tensor a QuantizeLinear node writes (uint8: zero point - 128)."""
        scale = self._param(q_node, 1, "scale")
        zero_point = self._param(q_node, 2, "zero point")
        if zero_point.dtype not in (np.int8, np.uint8):
            raise UnsupportedOperator(
                COMPILER, q_node.name, q_node.op_type,
                f"expected an int8 or uint8 zero point (TFLite int8 activations), found {zero_point.dtype}",
            )
        offset = 128 if zero_point.dtype == np.uint8 else 0
        if scale.size != 1:
            raise UnsupportedOperator(
                COMPILER, q_node.name, q_node.op_type,
                "expected a per-tensor activation scale, found a per-channel one",
            )
        shape = self.shapes.get(q_node.output[0]) or self.shapes.get(q_node.input[0])
        if shape is None:
            raise UnsupportedOperator(
                COMPILER, q_node.name, q_node.op_type, "its shape is not static"
            )
        return Activation(
            q_node.output[0], float(np.float32(scale.reshape(()))), int(zero_point.reshape(())) - offset,
            shape,
        )

    def input_of(self, node, index: int) -> Activation | Constant | None:
        """What a compute node reads at `index`: an int8 activation (through DequantizeLinear
        of a QuantizeLinear output, or a float tensor of an op left in float), a quantized
        constant, or None when absent."""
        if len(node.input) <= index or not node.input[index]:
            return None
        name = node.input[index]
        dq = self.producer.get(name)
        if dq is not None and dq.op_type not in ("DequantizeLinear", "QuantizeLinear", "Constant"):
            return self.float_activation(name, node)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise UnsupportedOperator(
                COMPILER, node.name, node.op_type,
                f"input {name!r} is not quantized (expected a DequantizeLinear before it)",
            )
        source = dq.input[0]
        if source in self.initializers:
            values = self.initializers[source]
            scales = self._param(dq, 1, "scale")
            zero_points = self._param(dq, 2, "zero point")
            if values.dtype == np.uint8:  # exact: values and zero points - 128 (see above)
                values = (values.astype(np.int16) - 128).astype(np.int8)
                zero_points = (zero_points.astype(np.int16) - 128).astype(np.int8)
            axis = None
            if scales.size > 1:
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            return Constant(values, scales, zero_points, axis)
        q = self.producer.get(source)
        if q is None or q.op_type != "QuantizeLinear":
            raise UnsupportedOperator(
                COMPILER, dq.name, dq.op_type,
                f"input {source!r} does not come from a QuantizeLinear",
            )
        return self.activation_of_q(q)

    def output_of(self, node, index: int = 0) -> Activation:
        """The int8 tensor a compute node's float output is quantized to: its QuantizeLinear
        (its only consumer, as ONNX Runtime's QDQ quantizer writes it), or the quantization a
        float output ends up with (see the module's docstring)."""
        name = node.output[index]
        consumers = self.consumers.get(name, [])
        if len(consumers) == 1 and consumers[0].op_type == "QuantizeLinear":
            return self.activation_of_q(consumers[0])
        return self.float_activation(name, node)

    def float_activation(self, name: str, reader) -> Activation:
        """The quantization of float tensor `name` (an op ONNX Runtime left in float wrote it).

        Raises:
            UnsupportedOperator: no QuantizeLinear follows it through shape ops, and its
                producer does not keep its input's range (named: `reader`, the node asking).
        """
        found = self._quantization_downstream(name)
        producer = self.producer.get(name)
        if found is None and producer is not None and producer.domain in ("", "ai.onnx"):
            if producer.op_type in RANGE_KEEPING_OPS:
                source = self.input_of(producer, 0)
                if isinstance(source, Activation):
                    found = (source.scale, source.zero_point)
            elif producer.op_type in UNARY_FUNCTIONS:
                source = self.input_of(producer, 0)
                if isinstance(source, Activation):
                    found = _range_quantization(UNARY_FUNCTIONS[producer.op_type], source)
        if found is None or name not in self.shapes:
            raise UnsupportedOperator(
                COMPILER, reader.name, reader.op_type,
                f"float tensor {name!r} is not quantized: no QuantizeLinear follows it and its "
                "producer does not keep its input's range"
                + ("" if name in self.shapes else " (and its shape is not static)"),
            )
        return Activation(name, found[0], found[1], self.shapes[name])

    def _quantization_downstream(self, name: str) -> tuple[float, int] | None:
        """(scale, zero point) of the QuantizeLinear reached from `name` through shape ops,
        when every path reaches one with the same parameters."""
        consumers = self.consumers.get(name, [])
        if len(consumers) == 1 and consumers[0].op_type == "QuantizeLinear":
            activation = self.activation_of_q(consumers[0])
            return activation.scale, activation.zero_point
        if not consumers or not all(c.op_type in SHAPE_OPS and c.input[0] == name for c in consumers):
            return None
        found = {self._quantization_downstream(c.output[0]) for c in consumers}
        return found.pop() if len(found) == 1 and None not in found else None

    def compute_consumers(self, activation: str) -> list[tuple[object, int]]:
        """(node, input index) for every compute node reading `activation` (through a DQ, or
        directly when it is a float tensor), with node None for a graph output."""
        found = [(None, -1)] if activation in self.graph_outputs else []
        for reader in self.consumers.get(activation, []):
            if reader.op_type == "QuantizeLinear":
                found.extend(self.compute_consumers(reader.output[0]))
                continue
            if reader.op_type != "DequantizeLinear":
                found.extend((reader, i) for i, n in enumerate(reader.input) if n == activation)
                continue
            if reader.output[0] in self.graph_outputs:
                found.append((None, -1))
            for node in self.consumers.get(reader.output[0], []):
                found.extend((node, i) for i, n in enumerate(node.input) if n == reader.output[0])
        return found

    def constant(self, node, index: int) -> np.ndarray | None:
        """A plain (not quantized) constant input such as a shape or pads, or None if absent."""
        if len(node.input) <= index or not node.input[index]:
            return None
        name = node.input[index]
        if name in self.initializers:
            return self.initializers[name]
        producer = self.producer.get(name)
        if producer is not None and producer.op_type == "Constant":
            from onnx import numpy_helper

            return numpy_helper.to_array(producer.attribute[0].t)
        if producer is not None and producer.op_type == "DequantizeLinear":
            value = self.input_of(node, index)
            return (
                (value.values.astype(np.float32) - value.zero_points.astype(np.float32))
                * value.scales.astype(np.float32)
            )
        raise UnsupportedOperator(
            COMPILER, node.name, node.op_type, f"input {name!r} must be a constant"
        )


def _range_quantization(function, source: Activation) -> tuple[float, int]:
    """(scale, zero point) as ONNX Runtime's MinMax calibration computes them
    (onnxruntime/quantization/quant_utils.py `compute_scale_zp`, asymmetric int8) for the range
    of `function` over every value of the int8 `source`."""
    values = (np.arange(-128, 128, dtype=np.float32) - source.zero_point) * np.float32(source.scale)
    results = function(values).astype(np.float32)
    low, high = min(float(results.min()), 0.0), max(float(results.max()), 0.0)
    scale = np.float32((high - low) / 255.0) if high > low else np.float32(1.0)
    zero_point = int(np.rint(-128 - low / scale))
    return float(scale), max(-128, min(127, zero_point))


def attributes(node) -> dict[str, object]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
