"""int8-ref: the reference int8 compiler (DESIGN §5) and its Cython "firmware".

    compiler.py        the plugin: capabilities(), compile(), load()
    compat.py          compatibility report: every node it cannot build, and why
    lowering.py        ONNX QDQ / QOperator graph -> static typed op list
    requantize.py      requantization parameters ("prepare"), both modes documented
    memory_plan.py     one arena, offsets from liveness, peak bytes, budget check
    cost.py            MACs and bytes moved by one run of the lowered program
    artifact_format.py the versioned binary image and its strict reader
    validate.py        per-op bounds checks of a parsed image
    runtime.py         the Runner over the Cython engine (_kernels.pyx)
    diff.py            output comparison: differing count, LSB histogram, top-1 agreement
"""

from .compat import compatibility_report, ort_float_nodes
from .compiler import ARTIFACT_FILE, Int8ReferenceCompiler, load_file
from .diff import compare_with_onnxruntime, diff_outputs
from .exceptions import (ArtifactRejected, FirmwareTooOld, Incompatibility, IncompatibleModel,
                         MemoryBudgetExceeded)
from .runtime import FIRMWARE_REVISION

__all__ = [
    "ARTIFACT_FILE", "ArtifactRejected", "FIRMWARE_REVISION", "FirmwareTooOld",
    "Incompatibility", "IncompatibleModel", "Int8ReferenceCompiler", "MemoryBudgetExceeded",
    "compare_with_onnxruntime", "compatibility_report", "diff_outputs", "load_file", "ort_float_nodes",
]
