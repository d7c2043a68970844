"""The elementwise kernels with vector paths (kernels/i8r_eltwise.h): QuantizeLinear, a span of
QLinearAdd, MaxPool. Portable against numpy statements of the arithmetic where numpy can state
it exactly, and every vector path against portable byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_reference import f2q, mbqm
from tapeout.compilers.int8_ref import _qgemm
from tapeout.compilers.int8_ref.requantize import add_params

ISAS = _qgemm.supported_isas()
RANGES = {0: (0, 255), 1: (-128, 127), 2: (-32768, 32767)}


@pytest.mark.parametrize("out_code", [0, 1, 2])
def test_quantize(out_code):
    rng = np.random.default_rng(out_code)
    scale = np.float32(0.037)
    lo, hi = RANGES[out_code]
    zp = int(rng.integers(lo, hi + 1)) if out_code < 2 else 0
    x = rng.normal(0, 3, 1001).astype(np.float32)
    # exact halves (round half to even), the range ends, non-finite values
    x[:20] = (np.arange(20, dtype=np.float32) - 10 + np.float32(0.5)) * scale
    x[20:26] = [np.inf, -np.inf, np.nan, 1e30, -1e30, 0.0]
    want = f2q(x / scale, zp, lo, hi)
    for isa in ISAS:
        got = _qgemm.quantize(x, float(scale), zp, lo, hi, out_code, isa)
        assert np.array_equal(got.astype(np.int64), want), isa


def add_case(rng, mode, signed, narrow):
    lo, hi = RANGES[int(signed)]
    a_s, b_s, y_s = (float(np.float32(v)) for v in rng.uniform(0.005, 0.05, 3))
    azp, bzp, yzp = (int(v) for v in rng.integers(lo, hi + 1, 3))
    off = 128 if signed and mode == 0 else 0
    p = add_params(a_s, b_s, y_s, azp + off, bzp + off, yzp + off)
    rac, rbc, fixed = p["floats"]
    return {"mode": mode, "off": off, "left_shift": p["left_shift"], "azp": azp, "bzp": bzp,
            "yzp": yzp, "qmin": yzp if narrow else lo, "qmax": hi, "rac": rac, "rbc": rbc,
            "fixed": fixed, **{k: p[k] for k in ("mult_a", "shift_a", "mult_b", "shift_b",
                                                "mult_y", "shift_y")}}


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("layout", ["both", "a scalar", "b scalar"])
def test_add_paths_agree(mode, signed, layout):
    rng = np.random.default_rng(hash((mode, signed, layout)) % 1000)
    dt = np.int8 if signed else np.uint8
    for n in (1, 7, 16, 33, 1000):
        params = add_case(rng, mode, signed, n == 33)
        a = rng.integers(np.iinfo(dt).min, np.iinfo(dt).max + 1, 1 if layout == "a scalar" else n).astype(dt)
        b = rng.integers(np.iinfo(dt).min, np.iinfo(dt).max + 1, 1 if layout == "b scalar" else n).astype(dt)
        want = _qgemm.add(a, b, params, "portable")
        if mode == 1:  # integers only: numpy states it exactly
            ls = params["left_shift"]
            qa = mbqm((a.astype(np.int64) - params["azp"]) << ls, params["mult_a"], params["shift_a"])
            qb = mbqm((b.astype(np.int64) - params["bzp"]) << ls, params["mult_b"], params["shift_b"])
            r = mbqm(qa + qb, params["mult_y"], params["shift_y"]) + params["yzp"]
            assert np.array_equal(want.astype(np.int64), np.clip(r, params["qmin"], params["qmax"]))
        for isa in ISAS:
            assert _qgemm.add(a, b, params, isa).tobytes() == want.tobytes(), (isa, n)


def maxpool_reference(x, g):
    N, C, H, W = x.shape
    y = np.empty((N, C, g["OH"], g["OW"]), np.int64)
    for oy in range(g["OH"]):
        for ox in range(g["OW"]):
            rows = [oy * g["sh"] - g["pt"] + k * g["dh"] for k in range(g["kh"])]
            cols = [ox * g["sw"] - g["pl"] + k * g["dw"] for k in range(g["kw"])]
            rows = [r for r in rows if 0 <= r < H]
            cols = [c for c in cols if 0 <= c < W]
            y[:, :, oy, ox] = x[:, :, rows][:, :, :, cols].reshape(N, C, -1).max(axis=2)
    return y


@pytest.mark.parametrize("seed", range(25))
def test_maxpool(seed):
    rng = np.random.default_rng(seed)
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    dh, dw = (int(v) for v in rng.integers(1, 3, 2))
    H, W = (int(v) for v in rng.integers(1, 30, 2))
    pt, pl = int(rng.integers(0, kh)), int(rng.integers(0, kw))
    OH = max(1, (H + 2 * pt - (kh - 1) * dh - 1) // sh + 1)
    OW = max(1, (W + 2 * pl - (kw - 1) * dw - 1) // sw + 1)
    dt = np.int8 if seed % 2 else np.uint8
    x = rng.integers(np.iinfo(dt).min, np.iinfo(dt).max + 1, (2, 3, H, W)).astype(dt)
    g = dict(N=2, C=3, H=H, W=W, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, dh=dh, dw=dw,
             OH=OH, OW=OW)
    got = {isa: _qgemm.maxpool(x, g, isa) for isa in ISAS}
    windows_hold_input = all(
        any(0 <= oy * sh - pt + k * dh < H for k in range(kh)) for oy in range(OH)) and all(
        any(0 <= ox * sw - pl + k * dw < W for k in range(kw)) for ox in range(OW))
    if not windows_hold_input:
        assert set(got.values()) == {None}  # the scalar form's business
        return
    for isa, y in got.items():
        assert np.array_equal(y.astype(np.int64), maxpool_reference(x, g)), isa


@pytest.mark.parametrize("H, W", [(16, 16), (28, 28), (17, 31), (14, 15), (9, 40), (14, 14),
                                  (7, 7), (2, 2), (5, 3)])
@pytest.mark.parametrize("dt", [np.uint8, np.int8])
def test_maxpool_2x2_stride_2(H, W, dt):
    """The vector paths' own step for the common 2x2 / stride 2 pooling (rows of 8 outputs or
    more, and shorter ones; an odd last row or column is dropped, as floor mode does)."""
    rng = np.random.default_rng(H * W)
    x = rng.integers(np.iinfo(dt).min, np.iinfo(dt).max + 1, (2, 3, H, W)).astype(dt)
    g = dict(N=2, C=3, H=H, W=W, kh=2, kw=2, sh=2, sw=2, pt=0, pl=0, dh=1, dw=1,
             OH=H // 2, OW=W // 2)
    for isa in ISAS:
        assert np.array_equal(_qgemm.maxpool(x, g, isa).astype(np.int64),
                              maxpool_reference(x, g)), isa
