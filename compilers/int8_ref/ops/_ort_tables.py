"""256-entry tables computed by ONNX Runtime itself: for an elementwise function of one 8-bit
activation, run an ORT session of the ONNX nodes that compute it over all 256 input codes.

Where ORT runs `DequantizeLinear -> f -> QuantizeLinear` (or a QLinear kernel such as
QLinearSigmoid, whose own table ORT builds with the same float32 functions), the result for
an element depends only on that element's code (and, with a per-channel constant, on its
channel), so the table of ORT's outputs over the 256 codes is ORT's function exactly: bit
for bit, whatever float32 arithmetic ORT uses (MLAS's Erf, Logistic and Tanh, Eigen's
elementwise ops, std::pow ...). The firmware then only looks the value up.

An island's input is fed with the leading axis of 256 codes and, where a constant varies
along some axes (a per-channel Mul, Div ...), those axes at their full size: the table of
channel c is row c of the result.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CODE_TYPES = {0: (TensorProto.UINT8, np.uint8), 1: (TensorProto.INT8, np.int8)}
INPUT = "int8ref_table_codes"


def codes(code: int) -> np.ndarray:
    """The 256 input values in table order: table index b holds the value whose byte is b
    (uint8 b, or int8 b reinterpreted), as the kernels index it."""
    return np.arange(256, dtype=np.uint8).view(CODE_TYPES[code][1])


def island_model(model: onnx.ModelProto, nodes, initializers: dict[str, np.ndarray],
                 code: int, varying: tuple[int, ...], outputs: list[tuple[str, int]]
                 ) -> onnx.ModelProto:
    """An ONNX model of `nodes` (which read the codes as INPUT) with `initializers`, in
    `model`'s opsets; its input is [256, *varying] of the type `code`, its outputs
    `outputs` = [(name, TensorProto element type)]."""
    graph = helper.make_graph(
        list(nodes), "int8ref_table",
        [helper.make_tensor_value_info(INPUT, CODE_TYPES[code][0], [256, *varying])],
        [helper.make_tensor_value_info(name, elem, None) for name, elem in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in sorted(initializers.items())])
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def run(model: onnx.ModelProto, code: int, varying: tuple[int, ...]) -> list[np.ndarray]:
    """ORT's outputs of `model` (built by island_model) as tables, one [channels, 256] array
    per output in its own element type (channels = prod(varying))."""
    results = _run(model.SerializeToString(), code, varying)
    channels = int(np.prod(varying, dtype=np.int64))
    tables = []
    for y in results:
        y = np.asarray(y)
        if y.shape != (256, *varying):
            raise ValueError(f"the island's output has shape {y.shape}, not {(256, *varying)}")
        tables.append(np.ascontiguousarray(y.reshape(256, channels).T))
    return tables


@functools.lru_cache(maxsize=512)
def _run(serialized: bytes, code: int, varying: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    # Cached: the compatibility report and the compilation lower the same graph.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    x = np.broadcast_to(codes(code).reshape(256, *([1] * len(varying))), (256, *varying))
    return tuple(session.run(None, {INPUT: np.ascontiguousarray(x)}))
