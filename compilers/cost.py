"""The work one run of a compiled program does: multiply-accumulates and bytes moved.

A compiler that knows its lowered program reports this as `report["cost"]`
(`Cost.to_report()`), so the energy estimate (tapeout.flows.energy) is counted from what the
target runs — int8-ref from its kernel list and memory plan, Ethos-U from Vela's per-memory
traffic, fp16 and onnxruntime from the ONNX graph they save and run. `count_onnx` counts an
ONNX graph:

- MACs of Conv, ConvTranspose, Gemm, MatMul and their integer/QLinear forms (shapes from ONNX
  shape inference);
- bytes read (every input of a compute node: activations and weights) and written (its
  outputs), at each tensor's width as the target holds it: a float tensor next to a
  QuantizeLinear/DequantizeLinear pair is held in the pair's integer type (QDQ notation,
  ONNX `DequantizeLinear`: its zero point's type is the integer type), any other at its own
  element type (fp16: 2 bytes, fp32: 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# op type → index of the weight input (the MAC count is outputs × weight's reduction size).
_WEIGHT_INPUT = {
    "Conv": 1, "ConvTranspose": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1,
    "Gemm": 1, "MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "QGemm": 3,
}
_NOT_WORK = {"QuantizeLinear", "DequantizeLinear", "Identity", "Constant"}


@dataclass(frozen=True)
class Cost:
    """One run of the program at its compiled `batch`. `source` says what was counted."""

    macs: int
    bytes_read: int
    bytes_written: int
    batch: int
    source: str

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written

    def to_report(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_report(cls, report: Mapping[str, object]) -> Cost | None:
        """The compiler's `report["cost"]`, or None when it reports none (or a malformed one)."""
        cost = report.get("cost")
        if not isinstance(cost, Mapping):
            return None
        numbers = [cost.get(key) for key in ("macs", "bytes_read", "bytes_written", "batch")]
        if not all(isinstance(value, int) and value >= 0 for value in numbers) or not numbers[3]:
            return None
        macs, read, written, batch = numbers
        return cls(macs, read, written, batch, str(cost.get("source", "compiler report")))  # type: ignore[arg-type]


def count_onnx(model_path: Path, source: str) -> Cost:
    """Count an ONNX graph's work per run (see the module docstring)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        tensor_type = value.type.tensor_type
        types[value.name] = tensor_type.elem_type
        dims = tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for tensor in graph.initializer:
        shapes[tensor.name], types[tensor.name] = tuple(tensor.dims), tensor.data_type
    producers = {name: node for node in graph.node for name in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def integer_width(node) -> int:
        """Bytes per element of a Q/DQ pair's integer side: its zero point's type (uint8 without one)."""
        if len(node.input) > 2 and node.input[2] in types:
            return onnx.helper.tensor_dtype_to_np_dtype(types[node.input[2]]).itemsize
        return 1

    def itemsize(name: str) -> int:
        made = producers.get(name)
        if made is not None and made.op_type == "DequantizeLinear":
            return integer_width(made)
        quantizer = next((reader for reader in readers.get(name, []) if reader.op_type == "QuantizeLinear"), None)
        if quantizer is not None:
            return integer_width(quantizer)
        if name in types and types[name]:
            return onnx.helper.tensor_dtype_to_np_dtype(types[name]).itemsize
        return 4

    def elements(name: str) -> int:
        return int(np.prod(shapes[name])) if name in shapes else 0

    macs = read = written = 0
    for node in graph.node:
        if node.op_type in _NOT_WORK:
            continue
        read += sum(elements(name) * itemsize(name) for name in node.input if name)
        written += sum(elements(name) * itemsize(name) for name in node.output if name)
        weight_index = _WEIGHT_INPUT.get(node.op_type)
        if weight_index is None or len(node.input) <= weight_index:
            continue
        output, weight = shapes.get(node.output[0]), shapes.get(node.input[weight_index])
        if output is None or weight is None:
            continue
        if node.op_type == "ConvTranspose":
            # Every input element is multiplied by every (Cout/group)·kh·kw weight of its channel.
            macs += elements(node.input[0]) * int(np.prod(weight[1:]))
        elif "Conv" in node.op_type:
            # Each output element of a Conv is a dot product over (Cin/group)·kh·kw.
            macs += int(np.prod(output)) * int(np.prod(weight[1:]))
        else:
            transposed_b = any(a.name == "transB" and a.i for a in node.attribute)
            inner = weight[-1] if transposed_b else weight[0] if len(weight) == 2 else weight[-2]
            macs += int(np.prod(output)) * int(inner)
    batch = next((shapes[value.name][0] for value in graph.input if shapes.get(value.name)), 1)
    return Cost(macs, read, written, max(batch, 1), source)
