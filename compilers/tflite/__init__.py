"""QDQ ONNX -> int8 TFLite, keeping ONNX Runtime's quantization (`tapeout.compilers.tflite`).

`convert` writes the flatbuffer (needs `flatbuffers` and the TFLite schema bindings shipped in
`ethos-u-vela`); `TfliteRunner` runs the result through LiteRT (`ai-edge-litert`). Both are
part of the `ethos-u` extra; importing this package needs neither.
"""

from tapeout.compilers.tflite.converter import (
    FLOAT_OPS,
    SUPPORTED_OPS,
    Conversion,
    EdgeTensor,
    convert,
    read_edges,
)

__all__ = ["FLOAT_OPS", "SUPPORTED_OPS", "Conversion", "EdgeTensor", "convert", "read_edges"]
