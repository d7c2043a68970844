"""Conformance with ONNX's own node test cases (onnx.backend.test.case.node).

The quantization parameters (and QLinearConv's weights) become initializers, as a compiler
needs them; the remaining inputs are fed at run time and the outputs compared with the
expected outputs ONNX ships. Cases with dtypes int8-ref does not support (int16, int4, fp8,
per-axis activations, blocked) must be named by the compatibility report instead.
"""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases

from tapeout.compilers.int8_ref import FIRMWARE_REVISION, compatibility_report
from tapeout.compilers.int8_ref.compat import report_for_model
import int8_ref_models as M

OPS = {"QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear", "MatMulInteger",
       "ConvInteger"}
# The inputs that stay runtime data; everything else becomes an initializer.
DATA = {"QLinearConv": {"x"}, "QLinearMatMul": {"a", "b"}, "QuantizeLinear": {"x"},
        "DequantizeLinear": {"x"}, "MatMulInteger": {"A", "B"}, "ConvInteger": {"x"}}
SUPPORTED = {
    "test_qlinearconv",
    "test_qlinearmatmul_2D_uint8_float32", "test_qlinearmatmul_3D_uint8_float32",
    "test_qlinearmatmul_2D_int8_float32", "test_qlinearmatmul_3D_int8_float32",
    "test_quantizelinear", "test_dequantizelinear", "test_matmulinteger",
    "test_convinteger_with_padding", "test_convinteger_without_padding",
    "test_quantizelinear_axis", "test_dequantizelinear_axis",
}


def _cases():
    out = []
    for case in collect_testcases(None):
        ops = {n.op_type for n in case.model.graph.node}
        if len(case.model.graph.node) == 1 and ops & OPS:
            out.append(case)
    return out


CASES = {c.name: c for c in _cases()}


def constify(case, const_b: bool = False):
    """The case's model with non-data inputs turned into initializers, and the feed."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    node = model.graph.node[0]
    inputs, outputs = case.data_sets[0]
    data = set(DATA[node.op_type]) - ({"b", "B"} if const_b else set())
    names = [i.name for i in model.graph.input]
    feed = {}
    keep = []
    for name, value, vi in zip(names, inputs, list(model.graph.input)):
        if isinstance(value, onnx.TensorProto):  # fp8 / int4 data ships as TensorProto
            proto = onnx.TensorProto()
            proto.CopyFrom(value)
            value = numpy_helper.to_array(value)
        else:
            proto = numpy_helper.from_array(np.asarray(value))
        if name in data:
            feed[name] = value
            keep.append(vi)
        else:
            proto.name = name
            model.graph.initializer.append(proto)
    del model.graph.input[:]
    model.graph.input.extend(keep)
    expected = {o.name: v for o, v in zip(model.graph.output, outputs)}
    return model, feed, expected


def compile_case(model, feed, tmp_path, mode):
    from tapeout.compilers.interface import TensorSpec

    path = tmp_path / "case.onnx"
    onnx.save(model, str(path))
    specs = [TensorSpec(k, tuple(v.shape), str(v.dtype)) for k, v in feed.items()]
    compiler, art = M.compile_path(path, specs, tmp_path / mode, mode,
                                   firmware=FIRMWARE_REVISION)
    return compiler.load(art)


@pytest.mark.parametrize("name", sorted(n for n in CASES if n in SUPPORTED))
@pytest.mark.parametrize("mode", ["ort", "fixed-point"])
@pytest.mark.parametrize("const_b", [False, True])
def test_supported_case(name, mode, const_b, tmp_path):
    case = CASES[name]
    if const_b and case.model.graph.node[0].op_type not in ("QLinearMatMul", "MatMulInteger"):
        pytest.skip("only matmuls have a B to make constant")
    model, feed, expected = constify(case, const_b)
    runner = compile_case(model, feed, tmp_path, mode)
    got = runner.run(feed)
    for name_, want in expected.items():
        have = got[name_]
        assert have.shape == want.shape
        if want.dtype.kind == "f":
            np.testing.assert_allclose(have, want, rtol=0, atol=1e-6)
        elif mode == "ort" or want.dtype == np.int32:
            np.testing.assert_array_equal(have, want)
        else:  # fixed-point: one LSB
            assert np.abs(have.astype(np.int64) - want.astype(np.int64)).max() <= 1


def _eight_bit(case) -> bool:
    """An 8-bit case: every integer tensor int8 or uint8, float32 scales, per-tensor or
    per-axis (not blocked) quantization."""
    node = case.model.graph.node[0]
    types = {vi.type.tensor_type.elem_type for vi in case.model.graph.input}
    types |= {vi.type.tensor_type.elem_type for vi in case.model.graph.output}
    integer = types - {onnx.TensorProto.FLOAT}
    return (integer <= {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32}
            and not any(a.name == "block_size" for a in node.attribute)
            and bool(integer - {onnx.TensorProto.INT32}))


def test_every_eight_bit_case_is_supported():
    """ONNX's 8-bit cases of these ops (12 in onnx 1.23) are exactly the ones run above."""
    eight_bit = {name for name, case in CASES.items() if _eight_bit(case)}
    assert eight_bit == SUPPORTED
    assert len(eight_bit) == 12


@pytest.mark.parametrize("name", sorted(n for n in CASES if n not in SUPPORTED))
def test_unsupported_case_is_reported(name, tmp_path):
    case = CASES[name]
    model, feed, _ = constify(case)
    shapes = {k: tuple(v.shape) for k, v in feed.items()}
    problems = report_for_model(model, shapes)
    assert problems, f"{name} should be reported as unsupported"
    assert problems[0].op_type in OPS | {"graph input"}


def test_report_function_reads_a_file(tmp_path):
    case = CASES["test_quantizelinear_int16"]
    model, _, _ = constify(case)
    onnx.save(model, str(tmp_path / "m.onnx"))
    problems = compatibility_report(tmp_path / "m.onnx")
    assert problems and "int16" in problems[0].reason


@pytest.mark.parametrize("pads,group", [((0, 0, 0, 0), 1), ((1, 1, 1, 1), 1), ((1, 0, 0, 1), 2)])
def test_convinteger_against_onnxruntime(pads, group, tmp_path):
    """ConvInteger (uint8 x, uint8 w with zero points) -> int32, compared with ORT exactly."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, (4, 4 // group, 3, 3)).astype(np.uint8)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array(131, np.uint8), "xz"),
             numpy_helper.from_array(np.array(7, np.uint8), "wz")]
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], name="ci",
                            pads=list(pads), group=group)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                      [1, 4, 5, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = rng.integers(0, 256, (1, 4, 5, 6)).astype(np.uint8)
    path = tmp_path / "ci.onnx"
    onnx.save(model, str(path))
    want = M.ort_session(path).run(None, {"x": x})[0]
    for mode in ("ort", "fixed-point"):
        (tmp_path / mode).mkdir()
        got = compile_case(model, {"x": x}, tmp_path / mode, mode).run({"x": x})["y"]
        np.testing.assert_array_equal(got, want)
