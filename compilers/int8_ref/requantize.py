"""Requantization parameters, computed once at compile time (the ops' "prepare" step).

Two named modes, recorded in every artifact header:

``ort``
    ONNX Runtime's CPU kernels (MLAS): the int32 accumulator (bias included) is converted to
    float32, multiplied by a float32 multiplier, clamped to the output range shifted by the
    zero point, converted with round-half-to-even (cvtps2dq under the default MXCSR) and the
    zero point added — ``MlasRequantizeOutput`` in onnxruntime/core/mlas/lib/quantize.cpp.
    The multiplier is computed as QLinearConv does (onnxruntime/core/providers/cpu/nn/
    qlinearconv.cc): ``(f32(x_scale) * f32(w_scale)) / f32(y_scale)``, each step in float32.

``fixed-point``
    Integer-only silicon: the real multiplier (computed in float64 from the same float32
    scales) is split into an int32 Q31 mantissa and a power-of-two shift by TFLite's
    ``QuantizeMultiplier`` (tflite-micro tensorflow/lite/kernels/internal/quantization_util.cc:
    frexp, round half away from zero, mantissa 2^31 folded into the exponent), and applied by
    ``MultiplyByQuantizedMultiplier`` (internal/common.cc, double rounding: a saturating
    rounding doubling high multiply, then a rounding right shift, both round half away from
    zero). The result differs from ``ort`` by at most one LSB per op.
"""

from __future__ import annotations

import math

import numpy as np

INT8_RANGE = (-128, 127)
UINT8_RANGE = (0, 255)
INT16_RANGE = (-32768, 32767)


def qrange(code: int) -> tuple[int, int]:
    """The saturation range of an element type code: 0 uint8, 1 (or True) int8, 2 int16."""
    return {0: UINT8_RANGE, 1: INT8_RANGE, 2: INT16_RANGE}[int(code)]


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real = mantissa * 2^(shift - 31), mantissa in [2^30, 2^31).

    Returns (mantissa, shift); shift > 0 is a left shift. A multiplier too small to represent
    becomes (0, 0), as in TFLite.
    """
    if real == 0.0 or not math.isfinite(real):
        return 0, 0
    if real < 0:
        raise ValueError(f"negative requantization multiplier {real}")
    q, shift = math.frexp(real)  # real = q * 2^shift, q in [0.5, 1)
    q_fixed = int(math.floor(q * (1 << 31) + 0.5))  # std::round: half away from zero (q > 0)
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        shift, q_fixed = 30, (1 << 31) - 1
    return q_fixed, shift


def f32(x) -> np.float32:
    return np.float32(x)


def ort_multiplier(x_scale: float, w_scale: float, y_scale: float) -> np.float32:
    """(f32(x_scale) * f32(w_scale)) / f32(y_scale) in float32, QLinearConv's order."""
    return np.float32(np.float32(np.float32(x_scale) * np.float32(w_scale)) / np.float32(y_scale))


def conv_params(x_scale: float, w_scales: np.ndarray, y_scale: float, mode: str):
    """Per-output-channel requantization arrays for Conv / Gemm / MatMul with a weight.

    Returns (scale_or_mult, shift): for ``ort`` a float32 multiplier per channel and zeros;
    for ``fixed-point`` int32 mantissas and shifts.
    """
    w_scales = np.asarray(w_scales, dtype=np.float32).reshape(-1)
    if mode == "ort":
        xs = np.float32(x_scale)
        scales = ((xs * w_scales).astype(np.float32) / np.float32(y_scale)).astype(np.float32)
        return scales, np.zeros(len(w_scales), np.int32)
    mults, shifts = zip(*(quantize_multiplier(float(np.float32(x_scale)) * float(w) /
                                              float(np.float32(y_scale))) for w in w_scales))
    return np.array(mults, np.int32), np.array(shifts, np.int32)


def fixed_multiplier(real: float) -> tuple[int, int]:
    """quantize_multiplier under a name that says where it is used."""
    return quantize_multiplier(real)


# TFLite's Add prepare (tensorflow/lite/kernels/add.cc): inputs are shifted left by 20 bits
# for 8-bit tensors and by 15 for int16 ones, so that |x - zp| << left_shift stays in int32
# (int16 here may have a zero point, |x - zp| <= 65535: 65535 << 15 < 2^31).
ADD_LEFT_SHIFT = 20
ADD_LEFT_SHIFT_INT16 = 15


def add_params(a_scale: float, b_scale: float, y_scale: float, a_zp: int, b_zp: int,
               y_zp: int, left_shift: int = ADD_LEFT_SHIFT) -> dict:
    """QLinearAdd parameters for both modes.

    ``ort`` (MlasQLinearAddKernelAvx2Helper, onnxruntime/core/mlas/lib/intrinsics/avx2/
    qladd_avx2.cpp): rAC = a/c, rBC = b/c in float32, FixedPart = zc - fma(rAC, za, rBC*zb).
    ``fixed-point`` (TFLite reference integer_ops/add.h, PrepareGeneralSubOp): inputs are
    shifted left by `left_shift` bits, rescaled by a/(2 max(a, b)) and b/(2 max(a, b)),
    summed and rescaled by 2 max(a, b) / (2^left_shift c).
    """
    sa, sb, sc = np.float32(a_scale), np.float32(b_scale), np.float32(y_scale)
    rac = np.float32(sa / sc)
    rbc = np.float32(sb / sc)
    # ORT's `ZeroPointC - (ScaleRatio_AC * ZeroPointA + ScaleRatio_BC * ZeroPointB)`, which
    # the compiler contracts to zc - fma(rAC, za, rBC*zb) in the AVX2 unit (measured: the
    # separately rounded form differs from ORT on ties). rAC*za is exact in float64 and the
    # sum rounds once to float32.
    fixed = np.float32(np.float32(y_zp) - np.float32(
        float(rac) * float(a_zp) + float(np.float32(rbc * np.float32(b_zp)))))
    twice_max = 2.0 * max(float(sa), float(sb))
    ma, sha = quantize_multiplier(float(sa) / twice_max)
    mb, shb = quantize_multiplier(float(sb) / twice_max)
    my, shy = quantize_multiplier(twice_max / ((1 << left_shift) * float(sc)))
    return {
        "floats": (float(rac), float(rbc), float(fixed)),
        "mult_a": ma, "shift_a": sha, "mult_b": mb, "shift_b": shb,
        "mult_y": my, "shift_y": shy, "left_shift": left_shift,
    }


def multiply_by_quantized_multiplier(x: int, m: int, shift: int) -> int:
    """Python model of TFLite's MultiplyByQuantizedMultiplier (double rounding), as the
    kernels apply it (kernels/fixed_point.h, i8r_mbqm): for tables built at compile time and
    for tests."""
    ls, rs = (shift, 0) if shift > 0 else (0, -shift)
    x = max(-(1 << 31), min((1 << 31) - 1, x * (1 << ls)))
    if x == m == -(1 << 31):
        hi = (1 << 31) - 1
    else:
        ab = x * m
        nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
        v = ab + nudge
        hi = abs(v) >> 31
        hi = hi if v >= 0 else -hi
    if rs == 0:
        return hi
    mask = (1 << rs) - 1
    rem = hi & mask
    thr = (mask >> 1) + (1 if hi < 0 else 0)
    return (hi >> rs) + (1 if rem > thr else 0)
