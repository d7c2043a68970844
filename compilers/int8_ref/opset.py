"""The firmware's op set: the registry of op modules, and every table derived from it.

An op lives in one module under ops/ (its layout, lowering, validation, cost and
compatibility rules) and one kernel unit kernels/<module>.pxi (its eval step). MODULES is the
registry, one line per module; everything else here is derived from it, and codegen.py
derives the firmware's named fields (kernels/_opset.pxi) from the same registrations, so
an op's parameter names and order are written in exactly one place.
"""

from __future__ import annotations

import enum
from importlib import import_module

from .kernel_abi import MAX_CONSTS, MAX_FLOATS, MAX_INPUTS, MAX_INTS, KernelSpec, OnnxOp

MODULES = (
    "quantize",
    "dequantize",
    "requant",
    "conv",
    "gemm",
    "matmul",
    "maxpool",
    "avgpool",
    "globalavgpool",
    "add",
    "mul",
    "div",
    "copy",
    "transpose",
    "concat",
    "lut",
    "lut_channels",
    "float_island",
    "clamp",
    "pad",
    "resize",
    "softmax",
    "reducemean",
    "batchnorm",
    "lrn",
    "load_const",
    "constant",
    "slice",
    "gather",
    "layernorm",
    "quantize_axis",
)


def _collect() -> tuple[dict[str, KernelSpec], dict[str, OnnxOp]]:
    kernels: dict[str, KernelSpec] = {}
    onnx_ops: dict[str, OnnxOp] = {}
    for name in MODULES:
        module = import_module(f".ops.{name}", __package__)
        kernel = getattr(module, "KERNEL", None)
        if kernel is not None:
            kernels[name] = kernel
        for op_type, entry in getattr(module, "ONNX", {}).items():
            if op_type in onnx_ops:
                raise TypeError(f"ONNX op {op_type} is registered by two op modules")
            onnx_ops[op_type] = entry
    seen: dict[int, str] = {}
    for name, k in kernels.items():
        if k.kind in seen or not 0 < k.kind < 1 << 16:
            raise TypeError(f"op module {name}: kind {k.kind} is taken or out of range")
        seen[k.kind] = name
        if (len(k.params) > MAX_INTS or len(k.consts) > MAX_CONSTS
                or len(k.floats) > MAX_FLOATS or k.inputs > MAX_INPUTS):
            raise TypeError(f"op module {name}: its layout does not fit an op record")
    return kernels, onnx_ops


# op module name -> its kernel registration, in registry order
KERNEL_MODULES, ONNX_OPS = _collect()

Kind = enum.IntEnum("Kind", {k.name: k.kind for k in KERNEL_MODULES.values()})
Kind.__doc__ = "Op kinds: the u16 `kind` of an op record in model.i8r."
KERNELS: dict[Kind, KernelSpec] = {Kind(k.kind): k for k in KERNEL_MODULES.values()}
PARAMS: dict[Kind, tuple[str, ...]] = {kind: k.params for kind, k in KERNELS.items()}
N_INPUTS: dict[Kind, int] = {kind: k.inputs for kind, k in KERNELS.items()}
N_CONSTS: dict[Kind, tuple[int, int]] = {kind: k.const_range for kind, k in KERNELS.items()}
INT16_KINDS = frozenset(kind for kind, k in KERNELS.items() if k.int16)

SUPPORTED_OPS = frozenset(ONNX_OPS)
INT16_OPS = frozenset(op for op, entry in ONNX_OPS.items() if entry.int16)
READS_DEQUANTIZED = frozenset(op for op, entry in ONNX_OPS.items() if entry.reads_dequantized)
