"""Plain numpy statements of the integer arithmetic the int8-ref kernels must reproduce, for
the kernel tests: int32 wrap-around, TFLite's MultiplyByQuantizedMultiplier, ONNX Runtime's
float32 requantization."""

from __future__ import annotations

import numpy as np

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def wrap32(v) -> np.ndarray:
    return ((np.asarray(v, np.int64) - I32_MIN) % (1 << 32) + I32_MIN).astype(np.int64)


def mbqm(x, m, shift) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier (double rounding), elementwise, in int64."""
    x, m, shift = (np.asarray(a, np.int64) for a in np.broadcast_arrays(x, m, shift))
    ls, rs = np.maximum(shift, 0), np.maximum(-shift, 0)
    xs = np.clip(x * (1 << ls), I32_MIN, I32_MAX)
    ab = xs * m
    t = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    hi = np.where(t >= 0, t >> 31, -((-t) >> 31))
    hi = np.where((xs == I32_MIN) & (m == I32_MIN), I32_MAX, hi)
    mask = (1 << rs) - 1
    return (hi >> rs) + ((hi & mask) > (mask >> 1) + (hi < 0))


def f2q(v, zp, qmin, qmax) -> np.ndarray:
    """ONNX Runtime's float32 -> quantized step: clamp to the range shifted by the zero point,
    NaN to 0, round half to even, add the zero point."""
    v = np.clip(np.asarray(v, np.float32), np.float32(qmin - zp), np.float32(qmax - zp))
    v = np.where(np.isnan(v), np.float32(0), v)
    return np.rint(v).astype(np.int64) + zp
