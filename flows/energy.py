"""Energy per inference — an *estimate* from the target profile's cost model, never a measurement.

No silicon is measured here. The work is counted from the QDQ model every compiler receives:
multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul (shapes from ONNX shape
inference), and bytes moved = every compute node's activation inputs, weights and output, at
one byte per element where the tensor is int8 (it comes out of a DequantizeLinear or goes into
a QuantizeLinear) and four where it stays fp32 (a layer the accuracy fallback kept out).
estimate (µJ) = (MACs · energy_per_mac_pj + bytes · energy_per_byte_pj) / 10⁶, per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

METRIC = "energy_per_inference_uj_estimate"
_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_SKIP = {"QuantizeLinear", "DequantizeLinear", "Identity", "Constant"}


@dataclass(frozen=True)
class Work:
    """What one batch of the model does, counted from its graph."""

    macs: int
    bytes_moved: int
    batch: int


def count_work(model_path: Path) -> Work:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    producers = {name: node for node in graph.node for name in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def itemsize(name: str) -> int:
        made = producers.get(name)
        if made is not None and made.op_type == "DequantizeLinear":
            return 1
        if any(reader.op_type == "QuantizeLinear" for reader in readers.get(name, [])):
            return 1
        return 4

    def elements(name: str) -> int:
        return int(np.prod(shapes[name])) if name in shapes else 0

    macs = moved = 0
    for node in graph.node:
        if node.op_type in _SKIP:
            continue
        moved += sum(elements(name) * itemsize(name) for name in node.input if name)
        moved += sum(elements(name) * itemsize(name) for name in node.output if name)
        if node.op_type in _COMPUTE and node.output[0] in shapes and len(node.input) > 1 and node.input[1] in shapes:
            out, weight = shapes[node.output[0]], shapes[node.input[1]]
            if node.op_type in ("Conv", "ConvTranspose"):
                # Each output element of Conv is a dot product over (Cin/group)·kh·kw.
                per_output = int(np.prod(weight[1:]))
                macs += int(np.prod(out)) * per_output if node.op_type == "Conv" else elements(node.input[0]) * int(np.prod(weight[1:]))
            else:
                transposed_a = any(a.name == "transA" and a.i for a in node.attribute)
                inner = shapes[node.input[0]][-2 if transposed_a else -1] if node.input[0] in shapes else weight[0]
                macs += int(np.prod(out)) * int(inner)
    batch = next((shapes[value.name][0] for value in graph.input if shapes.get(value.name)), 1)
    return Work(macs, moved, max(batch, 1))


def energy_metrics(model_path: Path, energy_per_mac_pj: float, energy_per_byte_pj: float) -> dict[str, float]:
    """The estimate and its inputs, per sample, as gate metrics."""
    work = count_work(model_path)
    picojoules = work.macs * energy_per_mac_pj + work.bytes_moved * energy_per_byte_pj
    return {
        METRIC: picojoules / 1e6 / work.batch,
        "macs_per_inference": float(work.macs / work.batch),
        "bytes_moved_per_inference": float(work.bytes_moved / work.batch),
    }
