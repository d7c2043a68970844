"""The ONNX ops the converter lowers, one module per kind.

Each module has `LOWERINGS` ({ONNX op type: function(lowering, node)}) and may have `PATTERNS`
(functions(lowering, node) -> bool that lower several nodes as one TFLite op when they match,
marking the others in `lowering.fused`, by id).
"""

from __future__ import annotations

from tapeout.compilers.tflite.ops import attention, convolution, elementwise, normalization, pooling, shape

_MODULES = (convolution, pooling, elementwise, shape, attention, normalization)

LOWERINGS = {op: lower for module in _MODULES for op, lower in module.LOWERINGS.items()}
PATTERNS = tuple(pattern for module in _MODULES for pattern in getattr(module, "PATTERNS", ()))
