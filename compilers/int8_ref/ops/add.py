"""ADD: elementwise a + b with broadcasting (ONNX Add in a QDQ island, QLinearAdd).

`ort` follows MLAS's QLinearAdd (MlasQLinearAddKernelAvx2Helper): rAC = a/c, rBC = b/c and
FixedPart = zc - (rAC*za + rBC*zb) prepared in float32, and for QDQ int8 ORT's uint8 domain
(QDQS8ToU8Transformer: "off" = 128). `fixed-point` follows TFLite's reference integer Add
(inputs shifted left by 20 bits, 15 for int16, rescaled to 2*max(scale), summed, rescaled to
the output; requantize.add_params). femu: see ops/_binary.py. Eval: kernels/add.pxi.
"""

from __future__ import annotations

from .. import requantize as rq
from ..kernel_abi import KernelSpec, OnnxOp
from ..program import I8, I16
from . import _binary

PARAMS = _binary.PARAMS + ("mult_a", "shift_a", "mult_b", "shift_b", "mult_y", "shift_y",
                           "left_shift", "off", "femu")


def lower_add(low, node) -> None:
    add(low, node, *_binary.qdq_operands(low, node), u8_domain=True)


def lower_qlinear_add(low, node) -> None:
    # an explicit QLinearAdd node runs ORT's int8 kernel as is: no uint8 domain
    add(low, node, *_binary.qlinear_operands(low, node), u8_domain=False)


def add(low, node, aq, bq, outp, u8_domain: bool) -> None:
    aq, bq, tid, ints, femu, wide = _binary.prepare(low, node, aq, bq, outp, u8_domain)
    ys, ysg = outp[1], outp[3]
    off = 128 if ysg == I8 and u8_domain and not femu else 0  # ORT's uint8 domain
    p = rq.add_params(aq.scale, bq.scale, ys, aq.zp + off, bq.zp + off, outp[2] + off,
                      left_shift=rq.ADD_LEFT_SHIFT_INT16 if wide else rq.ADD_LEFT_SHIFT)
    low.emit(node, KERNEL, [aq.tid, bq.tid], tid,
             floats=_binary.femu_floats(aq, bq, ys) if femu else p["floats"], femu=femu,
             **ints, mult_a=p["mult_a"], shift_a=p["shift_a"], mult_b=p["mult_b"],
             shift_b=p["shift_b"], mult_y=p["mult_y"], shift_y=p["shift_y"],
             left_shift=p["left_shift"], off=off)


def validate(c) -> None:
    _binary.validate_shared(c)
    c.shift("shift_a", "shift_b", "shift_y")
    if not 0 <= c.p["left_shift"] <= 20:
        c.fail("left_shift must be in [0, 20]")
    if c.p["sg_in"] == I16 and c.p["left_shift"] > 15:
        c.fail("int16 inputs shifted left by more than 15 bits overflow int32")
    c.one_of("off", (0, 128))


# femu=0: MLAS's rAC, rBC and FixedPart; femu=1: the a, b and output scales.
FLOATS = ("rac_or_a_scale", "rbc_or_b_scale", "fixed_or_y_scale")
KERNEL = KernelSpec(kind=10, name="ADD", params=PARAMS, floats=FLOATS, inputs=2, int16=True,
                    validate=validate, work=_binary.work)
ONNX = {
    "Add": OnnxOp(lower_add, int16=True, reads_dequantized=True),
    "QLinearAdd": OnnxOp(lower_qlinear_add, domain="com.microsoft"),
}
