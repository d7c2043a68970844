"""Lower a QDQ ONNX model to an int8 TFLite model, keeping its quantization exactly.

Every scale and zero point is copied from the QDQ pairs as written by ONNX Runtime's quantizer
(uint8 ones shifted to int8, which is exact: compilers/tflite/qdq.py); nothing is
re-calibrated. Weights stay int8 with per-channel scales on the output-channel axis (zero point
0, as TFLite's int8 spec requires), biases stay int32. Activations are NCHW in ONNX and NHWC in
TFLite where a convolution or pool reads them; every tensor carries its layout
(compilers/tflite/layout.py), so ONNX Transposes cost nothing and Reshapes are TFLite's
memory-only RESHAPE wherever the axes allow.

TFLite's int8 rules (tensorflow.org/lite/performance/quantization_spec) are checked node by
node; where a TFLite kernel fixes its output quantization (SOFTMAX, LOGISTIC) a QUANTIZE op
requantizes to ONNX Runtime's, and where no TFLite op matches ONNX Runtime's computation
(LayerNormalization, the exported GELU) the ops used are documented with their measured
difference in docs/ethos-u.md. The int8 kernels no parameters make exact (FLOAT_OPS) are
written in float32 when the caller asks (`float_ops`); BatchNormalization's parameters are
fitted to the codes ONNX Runtime itself writes (compilers/tflite/affine_fit.py). A node that
cannot be converted is refused by name (UnsupportedOperator). The ops, one module per kind, are in compilers/tflite/ops/.

The graph's inputs and outputs are int8 in TFLite (as Vela wants them); `Conversion.inputs`
and `.outputs` record each edge's scale, zero point and layout so a runner can quantize and
transpose at the edges exactly as ONNX's QuantizeLinear/DequantizeLinear do.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tapeout.compilers.tflite.flatbuffer import serialise
from tapeout.compilers.tflite.lowering import FLOAT_OPS, NHWC, SAME_ORDER, EdgeTensor, Lowering
from tapeout.compilers.tflite.ops import LOWERINGS, PATTERNS
from tapeout.compilers.tflite.qdq import QdqGraph

SUPPORTED_OPS = frozenset(LOWERINGS)

__all__ = ["FLOAT_OPS", "NHWC", "SAME_ORDER", "SUPPORTED_OPS", "Conversion", "EdgeTensor", "convert", "read_edges"]


@dataclass(frozen=True)
class Conversion:
    """The written `.tflite` file, its edges, and the TFLite ops it holds (in order)."""

    path: Path
    inputs: tuple[EdgeTensor, ...]
    outputs: tuple[EdgeTensor, ...]
    operators: tuple[str, ...]

    def io_json(self) -> str:
        return json.dumps(
            {"inputs": [asdict(e) for e in self.inputs], "outputs": [asdict(e) for e in self.outputs]},
            indent=2, sort_keys=True,
        ) + "\n"


def read_edges(text: str) -> tuple[tuple[EdgeTensor, ...], tuple[EdgeTensor, ...]]:
    """The inputs and outputs written by `Conversion.io_json`."""
    data = json.loads(text)

    def edge(item: dict) -> EdgeTensor:
        return EdgeTensor(**{**item, "onnx_shape": tuple(item["onnx_shape"]),
                             "tflite_shape": tuple(item["tflite_shape"])})

    return tuple(map(edge, data["inputs"])), tuple(map(edge, data["outputs"]))


def convert(model_path: Path, output_path: Path, float_ops: frozenset[str] = frozenset()) -> Conversion:
    """Write the int8 TFLite model for the QDQ model at `model_path` to `output_path`.

    `float_ops` (of FLOAT_OPS) are written in float32 between DEQUANTIZE and QUANTIZE instead
    of as their int8 kernels: exact to ONNX Runtime where the int8 kernel cannot be, at the
    price of running on a CPU (docs/ethos-u.md).

    Raises:
        ValueError: a `float_ops` entry not in FLOAT_OPS.
        UnsupportedOperator: a node outside the supported op set, or one whose quantization
            or attributes TFLite's int8 kernels cannot reproduce (the reason says which rule).
    """
    import onnx

    unknown = sorted(set(float_ops) - set(FLOAT_OPS))
    if unknown:
        raise ValueError(f"float_ops: expected some of {list(FLOAT_OPS)}, found {unknown}")
    lowering = Lowering(QdqGraph(onnx.load(str(model_path))), frozenset(float_ops))
    graph = lowering.run(LOWERINGS, PATTERNS)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(serialise(graph))
    return Conversion(
        path=output_path,
        inputs=tuple(lowering.edge_inputs),
        outputs=tuple(lowering.edge_outputs),
        operators=tuple(op.opcode for op in graph.operators),
    )
