"""ADD: elementwise a + b with broadcasting (ONNX Add in a QDQ island, QLinearAdd), also
a - b (Sub) and the sum of n activations (Sum).

`ort` follows MLAS's QLinearAdd (MlasQLinearAddKernelAvx2Helper): rAC = a/c, rBC = b/c and
FixedPart = zc - fma(rAC, za, rBC*zb) prepared in float32, and for QDQ int8 ORT's uint8 domain
(QDQS8ToU8Transformer: "off" = 128). `fixed-point` follows TFLite's reference integer Add
(inputs shifted left by 20 bits, 15 for int16, rescaled to 2*max(scale), summed, rescaled to
the output; requantize.add_params). femu: see ops/_binary.py.

ORT has no quantized Sub or Sum: it runs them in float between DequantizeLinear and
QuantizeLinear. Sub is ADD with b's scale negated: `ort` emulates ORT's float32 DQ(a) +
(-DQ(b)) = DQ(a) - DQ(b) exactly (femu), `fixed-point` negates b's multiplier as TFLite's
Sub does (PrepareGeneralSubOp). Sum of two is Add; of n > 2, a chain of ADDs whose partial
sums are int16 with a scale that holds every value they can take (zero point 0): the one
difference from ORT's float32 partial sums is that int16 rounding, at most half an int16
step per partial sum (docs/int8-ref.md gives the measured effect). Eval: kernels/add.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import MODE_ORT, KernelSpec, OnnxOp
from ..program import I8, I16, Q
from . import _binary
from .requant import requant_to

PARAMS = _binary.PARAMS + ("mult_a", "shift_a", "mult_b", "shift_b", "mult_y", "shift_y",
                           "left_shift", "off", "femu")


def lower_add(low, node) -> None:
    add(low, node, *_binary.qdq_operands(low, node), u8_domain=True)


def lower_qlinear_add(low, node) -> None:
    # an explicit QLinearAdd node runs ORT's int8 kernel as is: no uint8 domain
    add(low, node, *_binary.qlinear_operands(low, node), u8_domain=False)


def lower_sub(low, node) -> None:
    add(low, node, *_binary.qdq_operands(low, node), u8_domain=True, in_float=True,
        subtract=True)


def lower_sum(low, node) -> None:
    names = [x for x in node.input if x]
    if not names:
        low.fail(node, "Sum needs at least one input", "inputs")
    qs = [low.act(node, x) for x in names]
    name, ys, yzp, ysg, lo, hi = outp = low.output_q(node, node.output[0])
    if len(qs) == 1:
        requant_to(low, node, qs[0], name, ys, yzp, ysg)
        return
    acc, bound = qs[0], _largest(qs[0])
    for i, q in enumerate(qs[1:], start=1):
        if i == len(qs) - 1:
            add(low, node, acc, q, outp, u8_domain=True, in_float=True)
            return
        # a partial sum as int16: every value it can take fits (scale * 32767 >= bound)
        bound += _largest(q)
        part = f"{name}__sum{i}"
        add(low, node, acc, q, (part, float(np.float32(bound / 32767.0)), 0, I16, -32768,
                                32767), u8_domain=True, in_float=True)
        acc = low.qname[part]


def _largest(q: Q) -> float:
    """The largest |DequantizeLinear(x)| a quantized tensor can hold."""
    qmin, qmax = rq.qrange(q.code)
    return max(abs(qmin - q.zp), abs(qmax - q.zp)) * float(q.scale)


def add(low, node, aq, bq, outp, u8_domain: bool, in_float: bool = False,
        subtract: bool = False) -> None:
    """Emit the ADD of `aq` and `bq` (minus with `subtract`). `in_float`: ORT runs this node
    in float (Sub, Sum: it has no quantized kernel for them), so `ort` emulates that."""
    aq, bq, tid, ints, femu, wide = _binary.prepare(low, node, aq, bq, outp, u8_domain)
    if in_float and low.mode == MODE_ORT:
        femu = 1
    ys, ysg = outp[1], outp[3]
    off = 128 if ysg == I8 and u8_domain and not femu else 0  # ORT's uint8 domain
    p = rq.add_params(aq.scale, bq.scale, ys, aq.zp + off, bq.zp + off, outp[2] + off,
                      left_shift=rq.ADD_LEFT_SHIFT_INT16 if wide else rq.ADD_LEFT_SHIFT)
    floats = _binary.femu_floats(aq, bq, ys) if femu else list(p["floats"])
    mult_b = p["mult_b"]
    if subtract:
        # DQ(b) with a negated scale is exactly -DQ(b) in float32; TFLite's Sub negates the
        # second input's multiplier
        floats[1] = -floats[1]
        mult_b = -mult_b
    low.emit(node, KERNEL, [aq.tid, bq.tid], tid, floats=floats, femu=femu,
             **ints, mult_a=p["mult_a"], shift_a=p["shift_a"], mult_b=mult_b,
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
    "Sub": OnnxOp(lower_sub, int16=True, reads_dequantized=True),
    "Sum": OnnxOp(lower_sum, int16=True, reads_dequantized=True),
    "QLinearAdd": OnnxOp(lower_qlinear_add, domain="com.microsoft"),
}
