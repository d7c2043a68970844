"""DIV: elementwise a / b of two activations with broadcasting (ONNX Div in a QDQ graph; a
Div by a constant is a float island, ops/float_island.py).

ORT has no quantized Div: it runs DequantizeLinear -> float Div -> QuantizeLinear.
- `ort`: the same float32 steps (DQ(a) / DQ(b), an IEEE division, then QuantizeLinear's
  division by the output scale and round half to even): bit-exact, including a zero divisor
  (+-inf saturates, 0/0 is NaN, which ORT stores as the type's minimum).
- `fixed-point`, integers only: with ka = a - za, kb = b - zb and M = a_s / (b_s * y_s),
  y = zp + round(ka * M / kb) is q = round(ka * 2^F / kb) (int64 division, half away from
  zero) times M / 2^F as a TFLite multiplier in single rounding (i8r_mbqm64); kb = 0 gives
  the saturated value ORT gives. F = 32 fraction bits (fewer only where M / 2^F would be too
  small for a multiplier), so before the final rounding the value is within M / 2^(F+1) of
  an output step of exact: one LSB at most, where the exact quotient lies that close to a
  rounding boundary.
Eval: kernels/div.pxi.
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq
from ..kernel_abi import MODE_ORT, KernelSpec, OnnxOp
from . import _binary

PARAMS = _binary.PARAMS + ("mult", "shift", "frac", "femu")
FRACTION_BITS = 32


def lower_div(low, node) -> None:
    aq, bq, outp = _binary.qdq_operands(low, node)
    aq, bq, tid, ints, _, _ = _binary.prepare(low, node, aq, bq, outp, u8_domain=True)
    ys = outp[1]
    real = float(np.float32(aq.scale)) / (float(np.float32(bq.scale)) * float(np.float32(ys)))
    frac = FRACTION_BITS
    while frac > 0 and real / 2 ** frac < 2.0 ** -31:
        frac -= 1
    mult, shift = rq.quantize_multiplier(real / 2 ** frac)
    low.emit(node, KERNEL, [aq.tid, bq.tid], tid, floats=_binary.femu_floats(aq, bq, ys),
             femu=int(low.mode == MODE_ORT), **ints, mult=mult, shift=shift, frac=frac)


def validate(c) -> None:
    _binary.validate_shared(c)
    c.shift("shift")
    if not 0 <= c.p["frac"] <= FRACTION_BITS:
        c.fail(f"frac={c.p['frac']} is outside [0, {FRACTION_BITS}]")


KERNEL = KernelSpec(kind=43, name="DIV", params=PARAMS, floats=("a_scale", "b_scale",
                                                                "y_scale"),
                    inputs=2, firmware="1.2.0", validate=validate,
                    work=_binary.work)
ONNX = {"Div": OnnxOp(lower_div, reads_dequantized=True)}
