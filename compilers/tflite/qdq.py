"""Read a QDQ ONNX model (what `tapeout.calibration.quantizer` emits) as quantized tensors.

ONNX Runtime's QDQ format wraps every float op in DequantizeLinear on its inputs and
QuantizeLinear on its output: `Q(x) -> DQ -> Conv -> Q -> DQ -> ...`, weights as
`DQ(int8 initializer)`, biases as `DQ(int32 initializer)`. An int8 model has one int8 tensor per
QuantizeLinear output; this module names them, keeps their scale and zero point exactly as
written, and resolves each compute node's float inputs back to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tapeout.compilers.errors import UnsupportedOperator

COMPILER = "tflite-converter"  # the ethos-u plugin re-raises refusals under its own name


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
        """The int8 tensor a QuantizeLinear node writes."""
        scale = self._param(q_node, 1, "scale")
        zero_point = self._param(q_node, 2, "zero point")
        if zero_point.dtype != np.int8:
            raise UnsupportedOperator(
                COMPILER, q_node.name, q_node.op_type,
                f"expected an int8 zero point (TFLite int8 activations), found {zero_point.dtype}",
            )
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
            q_node.output[0], float(np.float32(scale.reshape(()))), int(zero_point.reshape(())), shape
        )

    def input_of(self, node, index: int) -> Activation | Constant | None:
        """What a compute node reads at `index`: an int8 activation (through DequantizeLinear
        of a QuantizeLinear output), a quantized constant, or None when absent."""
        if len(node.input) <= index or not node.input[index]:
            return None
        name = node.input[index]
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise UnsupportedOperator(
                COMPILER, node.name, node.op_type,
                f"input {name!r} is not quantized (expected a DequantizeLinear before it)",
            )
        source = dq.input[0]
        if source in self.initializers:
            scales = self._param(dq, 1, "scale")
            zero_points = self._param(dq, 2, "zero point")
            axis = None
            if scales.size > 1:
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            return Constant(self.initializers[source], scales, zero_points, axis)
        q = self.producer.get(source)
        if q is None or q.op_type != "QuantizeLinear":
            raise UnsupportedOperator(
                COMPILER, dq.name, dq.op_type,
                f"input {source!r} does not come from a QuantizeLinear",
            )
        return self.activation_of_q(q)

    def output_of(self, node) -> Activation:
        """The int8 tensor a compute node's float output is quantized to (its only consumer
        must be a QuantizeLinear, as ONNX Runtime's QDQ quantizer writes it)."""
        name = node.output[0]
        consumers = self.consumers.get(name, [])
        if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
            raise UnsupportedOperator(
                COMPILER, node.name, node.op_type,
                f"output {name!r} must feed exactly one QuantizeLinear, found "
                f"{[c.op_type for c in consumers] or 'none'}",
            )
        return self.activation_of_q(consumers[0])

    def compute_consumers(self, activation: str) -> list[tuple[object, int]]:
        """(node, input index) for every compute node reading `activation` through a DQ, with
        node None for a graph output."""
        found = []
        for dq in self.consumers.get(activation, []):
            if dq.op_type != "DequantizeLinear":
                found.append((dq, -1))
                continue
            if dq.output[0] in self.graph_outputs:
                found.append((None, -1))
            for node in self.consumers.get(dq.output[0], []):
                found.extend((node, i) for i, n in enumerate(node.input) if n == dq.output[0])
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


def attributes(node) -> dict[str, object]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
