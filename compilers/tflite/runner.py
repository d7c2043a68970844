"""Run an int8 TFLite model from `convert` on the CPU through LiteRT (`ai-edge-litert`).

The model's inputs and outputs are int8 NHWC; this runner takes and returns float32 arrays in
ONNX's names and NCHW layout, quantizing and dequantizing at the edges exactly as ONNX's
QuantizeLinear and DequantizeLinear do in ONNX Runtime (onnx/defs QuantizeLinear:
`saturate(round_half_to_even(x / scale) + zero_point)`, float32 division; DequantizeLinear:
`(q - zero_point) * scale` in float32), so a TFLite model and its QDQ model can be compared
LSB for LSB.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.tflite.converter import NHWC, EdgeTensor


# The CPU kernels LiteRT runs, a named choice like TFLite's TFLITE_SINGLE_ROUNDING:
# - "xnnpack" (LiteRT's default): XNNPACK's int8 operators requantize in float32 and round half
#   to even (its "fp32" requantization), as ONNX Runtime's MlasRequantizeOutput does, so conv
#   and fully-connected layers match ONNX Runtime bit for bit; ops XNNPACK does not take run on
#   TFLite's builtin kernels.
# - "reference": TFLite's reference kernels, int32 multiplier and shift with
#   MultiplyByQuantizedMultiplier's double rounding (tensorflow/lite/kernels/internal/common.h),
#   the arithmetic TFLite Micro runs beside the NPU; mostly within 1 LSB of ONNX Runtime per op
#   (docs/ethos-u.md, "Exactness per op").
KERNELS = {"xnnpack": "AUTO", "reference": "BUILTIN_REF"}


# LiteRT's C++ prints this line straight to file descriptor 2 when the first interpreter of a
# process applies its default XNNPACK delegate (TFLITE_LOG_PROD_ONCE in tflite's
# xnnpack_delegate.cc); the logger's severity setter is not exported by the wheel, so the line
# is filtered out of what that one call writes to stderr, and everything else is written back.
_DELEGATE_BANNER = b"Created TensorFlow Lite XNNPACK delegate for CPU."
_banner_lock = threading.Lock()
_banner_seen = False


@contextlib.contextmanager
def _without_delegate_banner() -> Iterator[None]:
    global _banner_seen
    with _banner_lock:
        if _banner_seen:
            yield
            return
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                lines = captured.read().splitlines(keepends=True)
                _banner_seen = any(_DELEGATE_BANNER in line for line in lines)
                kept = b"".join(line for line in lines if _DELEGATE_BANNER not in line)
                if kept:
                    os.write(2, kept)


def quantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """ONNX QuantizeLinear to int8: float32 division, round half to even, saturate."""
    scaled = np.rint(np.asarray(values, np.float32) / np.float32(scale))
    return np.clip(scaled + zero_point, -128, 127).astype(np.int8)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """ONNX DequantizeLinear from int8: (q - zero_point) * scale in float32."""
    return (values.astype(np.int32) - zero_point).astype(np.float32) * np.float32(scale)


class TfliteRunner:
    """A loaded int8 TFLite model with float32 NCHW edges (a tapeout `Runner`)."""

    def __init__(
        self,
        path: Path,
        inputs: tuple[EdgeTensor, ...],
        outputs: tuple[EdgeTensor, ...],
        kernels: str = "xnnpack",
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        if kernels not in KERNELS:
            raise InvalidInput(f"kernels: expected one of {list(KERNELS)}, found {kernels!r}")
        self.kernels = kernels
        self._interpreter = Interpreter(
            model_path=str(path), num_threads=1,
            experimental_op_resolver_type=getattr(OpResolverType, KERNELS[kernels]),
        )
        with _without_delegate_banner():
            self._interpreter.allocate_tensors()
        details = {d["name"]: d["index"] for d in self._interpreter.get_input_details()}
        details.update({d["name"]: d["index"] for d in self._interpreter.get_output_details()})
        self._inputs = [(edge, details[edge.tflite_name]) for edge in inputs]
        self._outputs = [(edge, details[edge.tflite_name]) for edge in outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float32 outputs by ONNX name for float32 inputs by ONNX name (ONNX shapes).

        Raises:
            InvalidInput: an input is missing or has the wrong shape.
        """
        for edge, index in self._inputs:
            if edge.onnx_name not in inputs:
                expected = [e.onnx_name for e, _ in self._inputs]
                raise InvalidInput(f"missing input {edge.onnx_name!r}; expected {expected}")
            value = np.asarray(inputs[edge.onnx_name])
            if tuple(value.shape) != edge.onnx_shape:
                raise InvalidInput(
                    f"input {edge.onnx_name!r}: expected shape {list(edge.onnx_shape)}, "
                    f"found {list(value.shape)}"
                )
            if edge.layout == NHWC:
                value = value.transpose(0, 2, 3, 1)
            self._interpreter.set_tensor(
                index, np.ascontiguousarray(quantize(value, edge.scale, edge.zero_point))
            )
        self._interpreter.invoke()
        results = {}
        for edge, index in self._outputs:
            value = self._interpreter.get_tensor(index)
            if edge.layout == NHWC:
                value = value.transpose(0, 3, 1, 2)
            results[edge.onnx_name] = np.ascontiguousarray(dequantize(value, edge.scale, edge.zero_point))
        return results

    def run_int8(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Like `run`, but the outputs stay int8 (in ONNX layout): for LSB comparisons."""
        floats = self.run(inputs)
        return {
            edge.onnx_name: quantize(floats[edge.onnx_name], edge.scale, edge.zero_point)
            for edge, _ in self._outputs
        }
