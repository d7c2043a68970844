"""MUL: elementwise a * b with broadcasting (ONNX Mul in a QDQ island, QLinearMul). The
product (a - za)(b - zb) is requantized with a_scale * b_scale / y_scale, prepared as a
float32 multiplier (`ort`) and as a TFLite multiplier and shift (`fixed-point`); int16
operands form the product in int64. femu: see ops/_binary.py. Eval: kernels/mul.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import KernelSpec, OnnxOp
from . import _binary

PARAMS = _binary.PARAMS + ("mult", "shift", "femu")


def lower_mul(low, node) -> None:
    mul(low, node, *_binary.qdq_operands(low, node))


def lower_qlinear_mul(low, node) -> None:
    mul(low, node, *_binary.qlinear_operands(low, node))


def mul(low, node, aq, bq, outp) -> None:
    aq, bq, tid, ints, femu, wide = _binary.prepare(low, node, aq, bq, outp, u8_domain=True)
    ys = outp[1]
    f = rq.ort_multiplier(aq.scale, bq.scale, ys)
    mult, shift = rq.quantize_multiplier(float(np.float32(aq.scale)) *
                                         float(np.float32(bq.scale)) / float(ys))
    low.emit(node, KERNEL, [aq.tid, bq.tid], tid,
             floats=_binary.femu_floats(aq, bq, ys) if femu else [f], femu=femu, **ints,
             mult=mult, shift=shift)


def validate(c) -> None:
    _binary.validate_shared(c)
    c.shift("shift")


# femu=0: the float32 multiplier only; femu=1: the a, b and output scales.
FLOATS = ("multiplier_or_a_scale", "b_scale", "y_scale")
KERNEL = KernelSpec(kind=11, name="MUL", params=PARAMS, floats=FLOATS, inputs=2, int16=True,
                    validate=validate, work=_binary.work)
ONNX = {
    "Mul": OnnxOp(lower_mul, int16=True, reads_dequantized=True),
    "QLinearMul": OnnxOp(lower_qlinear_mul, domain="com.microsoft"),
}
