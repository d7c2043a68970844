"""The packed int8 Conv and Gemm kernels (kernels/i8r_qgemm.h), one op at a time.

The portable C path is checked against a plain int64 numpy reference (the accumulator through
the int32 output mode, the requantization against numpy re-statements of MlasRequantizeOutput
and TFLite's MultiplyByQuantizedMultiplier); every vector path this CPU runs is checked
against the portable path byte for byte, on random geometries and on the values where a
saturating instruction would go wrong (all-255 activations against +127 / -128 weights over
long reductions).
"""

from __future__ import annotations

import numpy as np
import pytest

from kernel_reference import I32_MAX, I32_MIN, f2q, mbqm, wrap32
from tapeout.compilers.int8_ref import _qgemm, qgemm_pack

VECTOR_ISAS = [isa for isa in _qgemm.supported_isas() if isa != "portable"]


def test_paths_and_default():
    assert _qgemm.ISA_NAMES == ("portable", "sse4.1", "avx2", "avx512-vnni")
    assert _qgemm.supported_isas()[0] == "portable"
    assert _qgemm.default_isa() in _qgemm.supported_isas()
    with pytest.raises(ValueError, match="not available"):
        _qgemm.isa_index("neon")


# -- references ---------------------------------------------------------------------------------
def conv_acc(x, w, wzp, bias, xzp, g):
    """int64 sum over taps of (x - xzp)(w - wzp) + bias, padding contributing 0."""
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    G, Mg = g["G"], M // g["G"]
    xp = np.full((N, C, H + g["pt"] + kh * g["dh"] + g["sh"] * g["OH"],
                  W + g["pl"] + kw * g["dw"] + g["sw"] * g["OW"]), 0, np.int64)
    xp[:, :, g["pt"]:g["pt"] + H, g["pl"]:g["pl"] + W] = x.astype(np.int64) - xzp
    wd = w.astype(np.int64) - np.asarray(wzp, np.int64).reshape(M, 1, 1, 1)
    acc = np.zeros((N, M, g["OH"], g["OW"]), np.int64) + np.asarray(bias, np.int64).reshape(1, M, 1, 1)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * g["dh"], kx * g["dw"]
            win = xp[:, :, y0:y0 + g["sh"] * g["OH"]:g["sh"], x0:x0 + g["sw"] * g["OW"]:g["sw"]]
            for gi in range(G):
                acc[:, gi * Mg:(gi + 1) * Mg] += np.einsum(
                    "nchw,mc->nmhw", win[:, gi * Cg:(gi + 1) * Cg], wd[gi * Mg:(gi + 1) * Mg, :, ky, kx])
    return acc


def requantize(acc, rq, channel_axis):
    """Expected 8-bit outputs of int32 accumulators (modes 0 and 1)."""
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    n = acc.shape[channel_axis]
    if rq["mode"] == 0:
        v = acc.astype(np.float32) * np.asarray(rq["scale"][:n], np.float32).reshape(shape)
        return f2q(v, rq["zp"], rq["qmin"], rq["qmax"])
    r = mbqm(acc, rq["mult"][:n].reshape(shape), rq["shift"][:n].reshape(shape))
    return np.clip(r + rq["zp"], rq["qmin"], rq["qmax"])


def requant_params(rng, channels, mode, out_code, narrow_clamp=False):
    lo, hi = {0: (0, 255), 1: (-128, 127), 2: (-32768, 32767)}[out_code]
    zp = int(rng.integers(lo, hi + 1))
    pad = -(-channels // 16) * 16
    return {
        "mode": mode, "out_code": out_code, "zp": zp,
        "qmin": zp if narrow_clamp else lo, "qmax": hi,
        "scale": (rng.uniform(1e-5, 2e-3, pad)).astype(np.float32),
        "mult": rng.integers(1 << 30, (1 << 31) - 1, pad).astype(np.int32),
        "shift": rng.integers(-20, 3, pad).astype(np.int32),
    }


def random_conv(rng, edge=False):
    """A geometry, tensors and packed weights, as a compiler would emit them."""
    while True:
        depthwise = rng.random() < 0.25
        G = 1 if rng.random() < 0.7 else int(rng.integers(1, 4))
        C = G * int(rng.integers(1, 20))
        M = G * int(rng.integers(1, 40))
        if depthwise:
            G, M = C, C * int(rng.integers(1, 3))
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        H, W = (int(v) for v in rng.integers(1, 20, 2))
        pt, pl, pb, pr = (int(v) for v in rng.integers(0, 3, 4))
        OH = (H + pt + pb - (kh - 1) * dh - 1) // sh + 1
        OW = (W + pl + pr - (kw - 1) * dw - 1) // sw + 1
        if OH > 0 and OW > 0:
            break
    N = int(rng.integers(1, 4))
    x_signed, w_unsigned = rng.random() < 0.5, rng.random() < 0.25
    xt, wt = (np.int8 if x_signed else np.uint8), (np.uint8 if w_unsigned else np.int8)
    xi, wi = np.iinfo(xt), np.iinfo(wt)
    if edge:
        x = np.full((N, C, H, W), xi.max, xt)
        w = rng.choice([wi.min, wi.max], (M, C // G, kh, kw)).astype(wt)
    else:
        x = rng.integers(xi.min, xi.max + 1, (N, C, H, W)).astype(xt)
        w = rng.integers(wi.min, wi.max + 1, (M, C // G, kh, kw)).astype(wt)
    xzp = int(rng.integers(xi.min, xi.max + 1))
    asym = rng.random() < 0.3
    wzp = (rng.integers(wi.min, wi.max + 1, M) if asym else np.full(M, 128 if w_unsigned else 0))
    bias = rng.integers(-100000, 100000, M).astype(np.int32)
    g = dict(N=N, C=C, H=H, W=W, M=M, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, dh=dh, dw=dw,
             G=G, OH=OH, OW=OW, xzp=xzp, depthwise=int(depthwise), rows=int(rng.integers(1, 7)))
    packed = (qgemm_pack.depthwise(w, wzp, bias) if depthwise
              else qgemm_pack.conv(w, wzp, bias, G, xzp, x_signed))
    return g, x, w, wzp, bias, packed


def run_conv(case, rq, isa):
    g, x, _, _, _, p = case
    return _qgemm.conv(x, p.weights, p.bias, p.zb, g, rq, isa)


@pytest.mark.parametrize("seed", range(40))
def test_conv_portable_matches_the_integer_reference(seed):
    rng = np.random.default_rng(seed)
    case = random_conv(rng, edge=seed % 8 == 0)
    g, x, w, wzp, bias, _ = case
    expect = wrap32(conv_acc(x, w, wzp, bias, g["xzp"], g))
    rq = requant_params(rng, g["M"], 2, 0)
    assert np.array_equal(run_conv(case, rq, "portable"), expect)
    for mode in (0, 1):
        rq = requant_params(rng, g["M"], mode, int(x.dtype == np.int8), seed % 3 == 0)
        got = run_conv(case, rq, "portable")
        assert np.array_equal(got.astype(np.int64), requantize(expect, rq, 1))


@pytest.mark.skipif(not VECTOR_ISAS, reason="no vector instruction set on this CPU")
@pytest.mark.parametrize("seed", range(60))
def test_conv_every_path_equals_portable(seed):
    rng = np.random.default_rng(1000 + seed)
    case = random_conv(rng, edge=seed % 4 == 0)
    for mode, out_code in ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (0, 2), (1, 2)):
        rq = requant_params(rng, case[0]["M"], mode, out_code, seed % 3 == 0)
        want = run_conv(case, rq, "portable")
        for isa in VECTOR_ISAS:
            assert run_conv(case, rq, isa).tobytes() == want.tobytes(), (isa, mode, out_code)


def random_gemm(rng, edge=False, shape=None):
    Mr, K, N = shape or (int(rng.integers(1, 10)), int(rng.integers(1, 300)),
                         int(rng.integers(1, 150)))
    x_signed, w_unsigned = rng.random() < 0.5, rng.random() < 0.25
    xt, wt = (np.int8 if x_signed else np.uint8), (np.uint8 if w_unsigned else np.int8)
    xi, wi = np.iinfo(xt), np.iinfo(wt)
    if edge:
        x = np.full((Mr, K), xi.max, xt)
        w = rng.choice([wi.min, wi.max], (N, K)).astype(wt)
    else:
        x = rng.integers(xi.min, xi.max + 1, (Mr, K)).astype(xt)
        w = rng.integers(wi.min, wi.max + 1, (N, K)).astype(wt)
    xzp = int(rng.integers(xi.min, xi.max + 1))
    wzp = (rng.integers(wi.min, wi.max + 1, N) if rng.random() < 0.3
           else np.full(N, 128 if w_unsigned else 0))
    bias = rng.integers(-100000, 100000, N).astype(np.int32)
    return x, w, wzp, bias, xzp, qgemm_pack.gemm(w, wzp, bias, xzp, x_signed)


def run_gemm(case, rq, isa):
    x, w, _, _, _, p = case
    return _qgemm.gemm(x, p.weights, p.bias, p.zb, w.shape[0], rq, isa)


@pytest.mark.parametrize("seed", range(30))
def test_gemm_portable_matches_the_integer_reference(seed):
    rng = np.random.default_rng(2000 + seed)
    case = random_gemm(rng, edge=seed % 6 == 0)
    x, w, wzp, bias, xzp, _ = case
    expect = wrap32((x.astype(np.int64) - xzp) @ (w.astype(np.int64) - wzp.reshape(-1, 1)).T
                    + bias)
    assert np.array_equal(run_gemm(case, requant_params(rng, w.shape[0], 2, 0), "portable"),
                          expect)
    for mode in (0, 1):
        rq = requant_params(rng, w.shape[0], mode, int(x.dtype == np.int8))
        got = run_gemm(case, rq, "portable")
        assert np.array_equal(got.astype(np.int64), requantize(expect, rq, 1))


@pytest.mark.skipif(not VECTOR_ISAS, reason="no vector instruction set on this CPU")
@pytest.mark.parametrize("seed", range(40))
def test_gemm_every_path_equals_portable(seed):
    rng = np.random.default_rng(3000 + seed)
    case = random_gemm(rng, edge=seed % 4 == 0)
    for mode, out_code in ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (1, 2)):
        rq = requant_params(rng, case[1].shape[0], mode, out_code)
        want = run_gemm(case, rq, "portable")
        for isa in VECTOR_ISAS:
            assert run_gemm(case, rq, isa).tobytes() == want.tobytes(), (isa, mode, out_code)


@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (5, 2), (3, 3)])
def test_wide_depthwise_planes_are_exact_on_every_path(k, stride):
    """Depthwise planes wide enough for the vector paths' multi-panel steps (64 columns and
    more per row, as in MobileNet v2's first blocks), with rows that end mid-panel."""
    rng = np.random.default_rng(40 + 10 * k + stride)
    C, H, W = 5, 9, 150
    OH, OW = (H + 2 - k) // stride + 1, (W + 2 - k) // stride + 1
    g = dict(N=2, C=C, H=H, W=W, M=C, kh=k, kw=k, sh=stride, sw=stride, pt=1, pl=1, dh=1,
             dw=1, G=C, OH=OH, OW=OW, xzp=int(rng.integers(0, 256)), depthwise=1, rows=1)
    x = rng.integers(0, 256, (2, C, H, W)).astype(np.uint8)
    w = rng.integers(-128, 128, (C, 1, k, k)).astype(np.int8)
    wzp, bias = np.zeros(C, np.int64), rng.integers(-100000, 100000, C).astype(np.int32)
    case = (g, x, w, wzp, bias, qgemm_pack.depthwise(w, wzp, bias))
    expect = wrap32(conv_acc(x, w, wzp, bias, g["xzp"], g))
    for mode in (0, 1):
        rq = requant_params(rng, C, mode, 0)
        rq["shift"][:] = rng.integers(-20, -1, len(rq["shift"]))
        want = requantize(expect, rq, 1)
        for isa in _qgemm.supported_isas():
            assert np.array_equal(run_conv(case, rq, isa), want), (isa, mode)


@pytest.mark.parametrize("seed", range(8))
def test_fixed_point_short_form_is_exact_over_the_int32_range(seed):
    """Every channel in the vector paths' short fixed-point form (multiplier > 0, right shift
    >= 2; see rq_fixed in i8r_simd_tmpl.h): multipliers from 1 to 2^31 - 1 with 2^30 (a power
    of two scale) among them, small right shifts (where RoundingDivideByPOT's ties are
    frequent) and large ones, accumulators from biases spread over the whole int32 range and
    at both ends of it (so some wrap around), each ± 255 x 255 around its bias; clamps at the
    type's limits (left to a saturating pack on AVX-512) and inside them. Gemm reads the
    constants per lane, a 1x1 Conv per channel; both against the numpy reference."""
    rng = np.random.default_rng(9000 + seed)
    Mr, N = 64, 48
    x = rng.integers(0, 256, (Mr, 1)).astype(np.uint8)
    x[:2, 0] = 0, 255
    w = rng.integers(-128, 128, (N, 1)).astype(np.int8)
    w[:2, 0] = -128, 127
    bias = rng.integers(I32_MIN, I32_MAX, N, dtype=np.int64)
    bias[:4] = I32_MIN, I32_MAX, -255 * 128, 0
    bias = bias.astype(np.int32)
    wzp, xzp = np.zeros(N, np.int64), int(rng.integers(0, 256))
    pad = -(-N // 16) * 16
    mult = rng.integers(1, 1 << 31, pad, dtype=np.int64)
    mult[:5] = 1, 2, 1 << 30, (1 << 31) - 1, (1 << 30) + 1
    shift = np.where(rng.random(pad) < 0.5, rng.integers(-4, -1, pad), rng.integers(-31, -1, pad))
    acc = wrap32((x.astype(np.int64) - xzp) @ w.astype(np.int64).T + bias)
    gemm_case = (x, w, wzp, bias, xzp, qgemm_pack.gemm(w, wzp, bias, xzp, False))
    conv = dict(N=1, C=1, H=1, W=Mr, M=N, kh=1, kw=1, sh=1, sw=1, pt=0, pl=0, dh=1, dw=1,
                G=1, OH=1, OW=Mr, xzp=xzp, depthwise=0, rows=1)
    packed = qgemm_pack.conv(w.reshape(N, 1, 1, 1), wzp, bias, 1, xzp, False)
    for out_code in (0, 1):
        rq = requant_params(rng, N, 1, out_code, narrow_clamp=seed % 2 == 1)
        rq["mult"], rq["shift"] = mult.astype(np.int32), shift.astype(np.int32)
        rq["zp"] = int(rng.integers(-128, 128) if out_code else rng.integers(0, 256))
        if seed % 2:
            rq["qmin"] = rq["zp"]
        if seed % 4 == 3:  # a Relu6-like clamp below the type's maximum
            rq["qmax"] = min(rq["qmax"], rq["zp"] + 60)
        expect = requantize(acc, rq, 1)
        for isa in _qgemm.supported_isas():
            assert np.array_equal(run_gemm(gemm_case, rq, isa), expect), (isa, out_code)
            got = _qgemm.conv(x.reshape(1, 1, 1, Mr), packed.weights, packed.bias, packed.zb,
                              conv, rq, isa)
            assert np.array_equal(got.reshape(N, Mr).T, expect), (isa, out_code)


@pytest.mark.parametrize("x_signed", [False, True])
def test_saturation_prone_values_are_exact_on_every_path(x_signed):
    """255 (or int8 127, 255 once flipped) against runs of +127 and -128 over 4608 terms (a
    3x3 convolution over 512 channels): every pair and quad sum is past int16, and the total
    is checked against the exact integer sum."""
    rng = np.random.default_rng(7)
    xt = np.int8 if x_signed else np.uint8
    K, N = 4608, 40
    x = np.full((3, K), np.iinfo(xt).max, xt)
    w = np.where(rng.random((N, K)) < 0.5, 127, -128).astype(np.int8)
    w[0], w[1] = 127, -128  # all one sign: the extreme sums
    wzp, bias, xzp = np.zeros(N, np.int64), np.zeros(N, np.int32), int(np.iinfo(xt).min)
    case = (x, w, wzp, bias, xzp, qgemm_pack.gemm(w, wzp, bias, xzp, x_signed))
    expect = (x.astype(np.int64) - xzp) @ w.astype(np.int64).T
    rq = requant_params(rng, N, 2, 0)
    for isa in _qgemm.supported_isas():
        assert np.array_equal(run_gemm(case, rq, isa), expect), isa
    conv = dict(N=1, C=512, H=3, W=3, M=N, kh=3, kw=3, sh=1, sw=1, pt=0, pl=0, dh=1, dw=1,
                G=1, OH=1, OW=1, xzp=xzp, depthwise=0, rows=1)
    xc = np.full((1, 512, 3, 3), np.iinfo(xt).max, xt)
    wc = w.reshape(N, 512, 3, 3)
    packed = qgemm_pack.conv(wc, wzp, bias, 1, xzp, x_signed)
    want = conv_acc(xc, wc, wzp, bias, xzp, conv)
    for isa in _qgemm.supported_isas():
        got = _qgemm.conv(xc, packed.weights, packed.bias, packed.zb, conv, rq, isa)
        assert np.array_equal(got, want), isa


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_the_same_bytes(threads):
    """Output-channel blocks split over threads: identical to one thread, on every path (the
    shapes are large enough that the pool is used)."""
    rng = np.random.default_rng(11)
    pool = _qgemm.Pool(threads)
    isas = _qgemm.supported_isas()
    for depthwise, C, M, hw in ((False, 64, 70, 28), (True, 64, 64, 56)):
        x = rng.integers(-128, 128, (2, C, hw, hw)).astype(np.int8)
        w = rng.integers(-128, 128, (M, 1 if depthwise else C, 3, 3)).astype(np.int8)
        bias, wzp = rng.integers(-5000, 5000, M).astype(np.int32), np.zeros(M, np.int64)
        g = dict(N=2, C=C, H=hw, W=hw, M=M, kh=3, kw=3, sh=1, sw=1, pt=1, pl=1, dh=1, dw=1,
                 G=C if depthwise else 1, OH=hw, OW=hw, xzp=-3, depthwise=int(depthwise),
                 rows=4)
        p = (qgemm_pack.depthwise(w, wzp, bias) if depthwise
             else qgemm_pack.conv(w, wzp, bias, 1, -3, True))
        rq = requant_params(rng, M, 1, 1)
        for isa in isas:
            one = _qgemm.conv(x, p.weights, p.bias, p.zb, g, rq, isa)
            assert _qgemm.conv(x, p.weights, p.bias, p.zb, g, rq, isa, pool).tobytes() == one.tobytes()
    case = random_gemm(rng, shape=(64, 512, 300))
    rq = requant_params(rng, 300, 0, int(case[0].dtype == np.int8))
    for isa in isas:
        one = run_gemm(case, rq, isa)
        x, w, _, _, _, p = case
        many = _qgemm.gemm(x, p.weights, p.bias, p.zb, w.shape[0], rq, isa, pool)
        assert many.tobytes() == one.tobytes()
