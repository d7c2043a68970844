"""int8-ref: the reference int8 compiler and its Cython "firmware".

    compiler.py        the plugin: capabilities(), compile(), load()
    opset.py           the op registry: one line per op module, and the tables derived from it
    ops/<op>.py        one module per op kind: layout, lowering + prepare, validation, cost
    kernels/<op>.pxi   one kernel unit per op kind: its eval step in the firmware
    kernel_abi.py      what every op shares: record limits, modes, type codes, work bounds
    codegen.py         writes kernels/_opset.pxi (named parameter fields) from the registry
    lowering.py        the context op modules lower through, and the driver
    program.py         the lowered program's values (tensors, ops, refusals)
    compat.py          compatibility report: every node it cannot build, and why
    requantize.py      requantization parameters ("prepare"), both modes documented
    memory_plan.py     one arena, offsets from liveness, peak bytes, budget check
    cost.py            MACs and bytes moved by one run of the lowered program
    artifact_format.py the versioned binary image and its strict reader
    validate.py        per-op bounds and work checks of a parsed image
    runtime.py         the Runner over the Cython engine (_kernels.pyx)
    diff.py            output comparison: differing count, LSB histogram, top-1 agreement

docs/int8-ref.md, "Source layout", says how to add an op.
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
