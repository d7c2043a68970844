"""LOAD_CONST: copy a constant 8-bit operand into the arena, for the ops whose kernels read
every input from the arena (a QOperator op's int8/uint8 initializer, the constant operand of
an Add or Mul, a constant B of a batched MatMul). No ONNX op of its own. Eval:
kernels/load_const.pxi (memcpy from the constant data).
"""

from __future__ import annotations

import numpy as np

from ..kernel_abi import KernelSpec
from ..program import Q

PARAMS = ("nbytes",)


def load_initializer(low, node, name: str, arr: np.ndarray) -> Q:
    """The int8/uint8 initializer `name` as an arena tensor (no scale: a QOperator operand
    carries its quantization in the op's own inputs)."""
    if arr.dtype not in (np.int8, np.uint8):
        low.fail(node, f"constant operand type {arr.dtype} is not supported", name)
    tid = low.new_tensor(name, str(arr.dtype), arr.shape if arr.ndim else (1,))
    low.emit(node, KERNEL, (), tid,
             consts=(low.const(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)),),
             nbytes=int(arr.size))
    q = Q(tid, None, None, arr.dtype == np.int8)
    low.qname[name] = q
    return q


def load_dequantized(low, node, name: str) -> Q:
    """The DequantizeLinear of an initializer `name` as an arena tensor with its per-tensor
    scale and zero point."""
    q, s, zp, _ = low.wconst[name]
    if s.size != 1 or q.dtype not in (np.int8, np.uint8):
        low.fail(node, "a constant operand must be per-tensor int8/uint8", "B")
    tid = low.new_tensor(name, str(q.dtype), q.shape if q.ndim else (1,))
    low.emit(node, KERNEL, (), tid, consts=(low.const(q.reshape(-1).view(np.uint8)),),
             nbytes=int(q.size))
    return Q(tid, float(s.reshape(-1)[0]), int(zp.reshape(-1)[0]), q.dtype == np.int8)


def validate(c) -> None:
    c.positive("nbytes")
    c.size(c.out, c.p["nbytes"], "output")
    if c.const_size("data") != c.p["nbytes"]:
        c.fail("constant size differs from the output")


def work(p) -> int:
    return p["nbytes"]


def cost(p) -> tuple[int, int]:
    """No MACs; the constant operand's bytes are read once per run."""
    return 0, p["nbytes"]


KERNEL = KernelSpec(kind=20, name="LOAD_CONST", params=PARAMS, consts=("data",), inputs=0,
                    validate=validate, work=work, cost=cost)
