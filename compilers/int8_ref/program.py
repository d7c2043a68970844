"""The lowered program's values: tensors, ops, the program, a quantized activation, and the
refusal a lowering raises. Shared by the Lowering context and every op module."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .exceptions import Incompatibility
from .kernel_abi import SG_DTYPE, SG_INT8, SG_INT16, SG_UINT8

ONNX_DTYPES = {
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.FLOAT: "float32",
}
ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float32": 4}

# Quantized element types by the code the kernels read ("sg_in"/"sg_out"): 0 uint8, 1 int8,
# 2 int16. 0 and 1 are the old booleans, so int8 programs are unchanged.
U8, I8, I16 = SG_UINT8, SG_INT8, SG_INT16
CODE_DTYPE = SG_DTYPE
DTYPE_CODE = {v: k for k, v in CODE_DTYPE.items()}


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ITEMSIZE[self.dtype]


@dataclass
class Op:
    kind: int  # an opset.Kind
    node: str  # source node name
    op_type: str  # source op type
    inputs: tuple[int, ...]
    output: int
    consts: tuple[int, ...] = ()
    ints: dict[str, int] = field(default_factory=dict)
    floats: tuple[float, ...] = ()
    scratch: int = 0  # bytes of scratch the kernel needs


@dataclass
class Program:
    """The lowered model: tensors, constants, ops in execution order, graph I/O."""

    requant: str
    tensors: list[Tensor]
    consts: list[np.ndarray]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]


@dataclass(frozen=True)
class Q:
    """A quantized activation: tensor id, scale (float32), zero point and element type code
    (U8, I8 or I16; a bool is read as uint8/int8)."""

    tid: int
    scale: float | None
    zp: int | None
    code: int


class LoweringError(Exception):
    """A deliberate refusal: the model is valid ONNX that int8-ref does not build."""

    def __init__(self, problem: Incompatibility) -> None:
        self.problem = problem
        super().__init__(str(problem))


def attr(node: onnx.NodeProto, name: str, default=None):
    """Attribute `name` of `node` (bytes decoded for string attributes), or `default`."""
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default
