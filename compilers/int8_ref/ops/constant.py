"""ONNX Constant: folded at compile time into the initializers (no firmware op)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..kernel_abi import OnnxOp
from ..program import attr

# The attribute forms of a Constant's value (ONNX Constant-13), as arrays.
FORMS = {
    "value": numpy_helper.to_array,
    "value_float": lambda v: np.array(v, np.float32),
    "value_floats": lambda v: np.array(v, np.float32),
    "value_int": lambda v: np.array(v, np.int64),
    "value_ints": lambda v: np.array(v, np.int64),
}


def constant_value(node) -> np.ndarray | None:
    """The value of a Constant node, None for a form that is not numeric (strings, sparse)."""
    for form, to_array in FORMS.items():
        v = attr(node, form)
        if v is not None:
            return to_array(v)
    return None


def lower_constant(low, node) -> None:
    value = constant_value(node)
    if value is None:
        low.fail(node, f"only the numeric forms of Constant ({', '.join(FORMS)}) are "
                       "supported", "value")
    low.init[node.output[0]] = value


ONNX = {"Constant": OnnxOp(lower_constant)}
