"""Requantization arithmetic: TFLite's QuantizeMultiplier / MultiplyByQuantizedMultiplier,
the Cython kernel against a Python model over every int8 value, and the diff helper."""

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import int8_ref_models as M
from tapeout.compilers.int8_ref import diff_outputs
from tapeout.compilers.int8_ref.requantize import multiply_by_quantized_multiplier as _mbqm
from tapeout.compilers.int8_ref.requantize import conv_params, ort_multiplier, quantize_multiplier


@pytest.mark.parametrize("real", [0.5, 0.25, 1e-3, 0.7071, 0.999999, 1.0, 3.5, 1e-12])
def test_quantize_multiplier_reconstructs(real):
    m, shift = quantize_multiplier(real)
    if real < 2 ** -32:
        assert (m, shift) == (0, 0)
        return
    assert (1 << 30) <= m < (1 << 31)
    assert math.isclose(m * 2.0 ** (shift - 31), real, rel_tol=2 ** -30)


def test_mbqm_known_values():
    half = quantize_multiplier(0.5)
    assert half == (1 << 30, 0)
    assert _mbqm(100, *half) == 50
    assert _mbqm(3, *half) == 2  # 1.5 -> 2
    assert _mbqm(-3, *half) == -1  # gemmlowp's nudge: a negative tie goes toward zero
    q = quantize_multiplier(0.25)
    assert _mbqm(-6, *q) == -2  # RoundingDivideByPOT: -1.5 -> -2 (half away from zero)
    # error of one multiply is below one unit
    rng = np.random.default_rng(0)
    for _ in range(500):
        real = float(rng.uniform(1e-4, 1.0))
        x = int(rng.integers(-(1 << 20), 1 << 20))
        assert abs(_mbqm(x, *quantize_multiplier(real)) - x * real) <= 1.0


def test_ort_multiplier_is_float32_in_qlinearconv_order():
    xs, ws, ys = 0.0123, np.float32(0.0456), 0.0789
    want = np.float32(np.float32(np.float32(xs) * ws) / np.float32(ys))
    assert ort_multiplier(xs, ws, ys) == want
    scales, shifts = conv_params(xs, np.array([ws, ws]), ys, "ort")
    assert scales.dtype == np.float32 and scales[0] == want and not shifts.any()


def _requant_model(s1, z1, s2, z2, dtype):
    t = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    nodes = [helper.make_node("DequantizeLinear", ["x", "s1", "z1"], ["f"], name="dq"),
             helper.make_node("QuantizeLinear", ["f", "s2", "z2"], ["y"], name="q")]
    inits = [numpy_helper.from_array(np.array(s1, np.float32), "s1"),
             numpy_helper.from_array(np.array(z1, dtype), "z1"),
             numpy_helper.from_array(np.array(s2, np.float32), "s2"),
             numpy_helper.from_array(np.array(z2, dtype), "z2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", t, [256])],
                          [helper.make_tensor_value_info("y", t, [256])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("s1,s2", [(0.02, 0.05), (0.05, 0.02), (0.013, 0.013 * 3)])
def test_requant_kernel_matches_models(dtype, s1, s2, tmp_path):
    """Every 8-bit value through DQ -> Q: `ort` equals ONNX Runtime, `fixed-point` equals
    the Python model of MultiplyByQuantizedMultiplier."""
    from tapeout.compilers.interface import TensorSpec

    z1, z2 = (3, -7) if dtype == np.int8 else (130, 120)
    model = _requant_model(s1, z1, s2, z2, dtype)
    path = tmp_path / "rq.onnx"
    onnx.save(model, str(path))
    info = np.iinfo(dtype)
    x = np.arange(info.min, info.max + 1).astype(dtype)
    ref = M.ort_session(path).run(None, {"x": x})[0]
    spec = [TensorSpec("x", (256,), np.dtype(dtype).name)]
    c, art = M.compile_path(path, spec, tmp_path / "ort", "ort")
    np.testing.assert_array_equal(c.load(art).run({"x": x})["y"], ref)
    c, art = M.compile_path(path, spec, tmp_path / "fx", "fixed-point")
    got = c.load(art).run({"x": x})["y"]
    m, s = quantize_multiplier(float(np.float32(s1)) / float(np.float32(s2)))
    want = np.clip([_mbqm(int(v) - z1, m, s) + z2 for v in x], info.min, info.max)
    np.testing.assert_array_equal(got, want.astype(dtype))
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_diff_outputs_histogram_and_top1():
    ref = {"y": np.array([[0.0, 0.1, 0.2], [0.3, 0.2, 0.1]], np.float32)}
    got = {"y": np.array([[0.0, 0.1, 0.3], [0.3, 0.2, 0.4]], np.float32)}
    d = diff_outputs(ref, got, {"y": 0.1})["y"]
    assert d["elements"] == 6 and d["differing"] == 2
    assert d["histogram"] == {1: 1, 3: 1}
    assert d["top1_agreement"] == 0.5


@pytest.mark.parametrize("mode", ["fixed-point", "ort"])
def test_conv_kernel_matches_reference_arithmetic(mode, tmp_path):
    """A pointwise conv recomputed from the image's own constants: int32 accumulation, then
    MultiplyByQuantizedMultiplier (fixed-point) or the float32 multiply with
    round-half-to-even (ort) — equal bit for bit."""
    from tapeout.compilers.int8_ref.artifact_format import read_image
    from tapeout.compilers.int8_ref.opset import PARAMS, Kind

    model = M.conv_only(cin=5, cout=7, k=1, pad=0, hw=6)
    qdq = M.quantize_qdq(model, tmp_path, "pw")
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path / mode, mode)
    runner = compiler.load(art)
    img = read_image((art.directory / "model.i8r").read_bytes())
    conv = next(op for op in img.ops if op.kind == Kind.CONV)
    p = dict(zip(PARAMS[Kind.CONV], conv.ints))

    def const(k, dtype):
        c = img.consts[conv.consts[k]]
        return np.frombuffer(img.data, dtype, c.nbytes // np.dtype(dtype).itemsize, c.offset)

    # the packed weights [blocks of 16 channels][k groups][16][4] (a pointwise conv's packed k
    # is its input channel), the bias with the zero-point terms folded in, the factor of the
    # input sum; the kernel sees int8 inputs as uint8 (+ 128) (kernels/i8r_qgemm.h)
    k_groups = -(-p["C"] // 4)
    packed = const(0, np.int8).reshape(-1, k_groups, 16, 4).transpose(0, 2, 1, 3)
    w = packed.reshape(-1, k_groups * 4)[:p["M"], :p["C"]].astype(np.int64)
    bias, factor = const(1, np.int32).astype(np.int64), const(4, np.int32).astype(np.int64)
    for seed in range(5):
        trace = runner.trace(M.random_inputs(model, seed))
        x = trace[img.tensors[conv.inputs[0]].name].reshape(p["C"], -1).astype(np.int64)
        xu = x + (128 if p["sg_in"] == 1 else 0)
        acc = w @ xu + bias[:, None] - factor[:, None] * xu.sum(axis=0)
        assert np.abs(acc).max() < 2 ** 31
        if mode == "fixed-point":
            mult, shift = const(2, np.int32), const(3, np.int32)
            want = np.array([[_mbqm(int(a), int(mult[m]), int(shift[m])) for a in acc[m]]
                             for m in range(p["M"])]) + p["yzp"]
        else:
            scale = const(2, np.float32)
            v = (acc.astype(np.float32) * scale[:, None]).astype(np.float32)
            v = np.clip(v, p["qmin"] - p["yzp"], p["qmax"] - p["yzp"])
            want = np.rint(v).astype(np.int64) + p["yzp"]
        want = np.clip(want, p["qmin"], p["qmax"])
        got = trace[img.tensors[conv.output].name].reshape(p["M"], -1)
        np.testing.assert_array_equal(got, want)


def test_compare_with_onnxruntime_report(tmp_path):
    from tapeout.compilers.int8_ref import compare_with_onnxruntime

    model = M.cnn()
    qdq = M.quantize_qdq(model, tmp_path, "cnn")
    feeds = [M.random_inputs(model, s) for s in range(10)]
    for mode in ("ort", "fixed-point"):
        compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path / mode, mode)
        rep = compare_with_onnxruntime(compiler.load(art), qdq, feeds,
                                       art.report["output_scales"])
        (entry,) = rep.values()
        assert entry["elements"] == 100
        if mode == "ort":
            assert entry["differing"] == 0 and entry["top1_agreement"] == 1.0
        else:
            assert sum(entry["histogram"].values()) == entry["differing"]
            assert max(entry["histogram"], default=0) <= 2 and entry["top1_agreement"] >= 0.8
