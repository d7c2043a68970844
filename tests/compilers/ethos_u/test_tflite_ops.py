"""Each op the QDQ -> int8 TFLite converter lowers, run by LiteRT against ONNX Runtime.

`XNNPACK_LSB` is the largest difference allowed with LiteRT's default kernels (XNNPACK,
float32 requantization rounding half to even like ONNX Runtime): 0, except where a TFLite rule
forces a difference (documented in docs/ethos-u.md, "Exactness per op"). With TFLite's
reference kernels (fixed-point multiplier and shift, as TFLite Micro) every op is within 1 LSB.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ethosu.vela")
pytest.importorskip("flatbuffers")
pytest.importorskip("ai_edge_litert")

from ethos_u_models import (  # noqa: E402
    conv_node as _conv,
    lsb_differences,
    make_model,
    quantize_model,
    tensor,
    weight,
    with_conv as _with_conv,
)
from onnx import helper, numpy_helper  # noqa: E402

from tapeout.compilers.errors import UnsupportedOperator  # noqa: E402
from tapeout.compilers.tflite import convert  # noqa: E402

node = helper.make_node


def case_conv_relu():
    conv, weights = _conv(y="c")
    return make_model([conv, node("Relu", ["c"], ["y"])], [tensor("x", [1, 3, 8, 8])],
                      [tensor("y", [1, 4, 8, 8])], weights)


def case_conv_explicit_pad():  # symmetric pads 1 with stride 2 differ from TFLite's SAME
    conv, weights = _conv(y="y", pads=[1, 1, 1, 1], strides=[2, 2])
    return make_model([conv], [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 4, 4])], weights)


def case_conv_same_stride2():
    conv, weights = _conv(y="y", pads=[0, 0, 1, 1], strides=[2, 2])
    return make_model([conv], [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 4, 4])], weights)


def case_depthwise():
    w, b = weight("w", [8, 1, 3, 3], 1), weight("b", [8], 2)
    return make_model([node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], group=4)],
                      [tensor("x", [1, 4, 8, 8])], [tensor("y", [1, 8, 8, 8])], [w, b])


def case_gemm():
    return make_model([node("Gemm", ["x", "w", "b"], ["y"], transB=1)], [tensor("x", [1, 16])],
                      [tensor("y", [1, 8])], [weight("w", [8, 16], 1), weight("b", [8], 2)])


def case_matmul():
    return make_model([node("MatMul", ["x", "w"], ["y"])], [tensor("x", [1, 16])],
                      [tensor("y", [1, 8])], [weight("w", [16, 8], 1)])


def case_relu_standalone():  # the conv output has two readers, so ONNX Runtime keeps the Relu
    return _with_conv([node("Relu", ["c"], ["y"])], [1, 4, 8, 8], extra_outputs=[tensor("c", [1, 4, 8, 8])])


def case_clip_relu6():
    lo = numpy_helper.from_array(np.array(0.0, np.float32), "lo")
    hi = numpy_helper.from_array(np.array(6.0, np.float32), "hi")
    return _with_conv([node("Clip", ["c", "lo", "hi"], ["y"])], [1, 4, 8, 8],
                      extra_outputs=[tensor("c", [1, 4, 8, 8])], initializers=[lo, hi])


def case_add():
    return make_model([node("Add", ["x", "z"], ["y"])], [tensor("x", [1, 4, 8, 8]), tensor("z", [1, 4, 8, 8])],
                      [tensor("y", [1, 4, 8, 8])])


def case_add_constant():
    return _with_conv([node("Add", ["c", "k"], ["y"])], [1, 4, 8, 8], initializers=[weight("k", [4, 1, 1], 5)])


def case_mul():
    return make_model([node("Mul", ["x", "z"], ["y"])], [tensor("x", [1, 4, 8, 8]), tensor("z", [1, 4, 8, 8])],
                      [tensor("y", [1, 4, 8, 8])])


def case_maxpool():
    return _with_conv([node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], [1, 4, 4, 4])


def case_maxpool_same():
    return _with_conv([node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])],
                      [1, 4, 4, 4])


def case_averagepool():
    return _with_conv([node("AveragePool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], [1, 4, 4, 4])


def case_globalaveragepool():
    return make_model([node("GlobalAveragePool", ["x"], ["y"])], [tensor("x", [1, 4, 8, 8])],
                      [tensor("y", [1, 4, 1, 1])])


def case_flatten_gemm():  # the flatten order is NHWC in TFLite: the Gemm's columns are permuted
    conv, weights = _conv(y="c", channels=(3, 4))
    return make_model(
        [conv, node("Flatten", ["c"], ["f"]), node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)],
        [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 5])],
        [*weights, weight("w2", [5, 64], 3), weight("b2", [5], 4)],
    )


def case_reshape_output():  # a flatten that is a graph output is transposed back to NCHW first
    shape = numpy_helper.from_array(np.array([1, 256], np.int64), "shape")
    return _with_conv([node("Reshape", ["c", "shape"], ["y"])], [1, 256], initializers=[shape])


def case_concat():
    return make_model([node("Concat", ["x", "z"], ["y"], axis=1)],
                      [tensor("x", [1, 4, 8, 8]), tensor("z", [1, 2, 8, 8])], [tensor("y", [1, 6, 8, 8])])


def case_softmax():
    return make_model([node("Softmax", ["x"], ["y"], axis=-1)], [tensor("x", [1, 10])], [tensor("y", [1, 10])])


def case_pad():
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 2], np.int64), "p")
    return _with_conv([node("Pad", ["c", "p"], ["y"])], [1, 4, 10, 11], initializers=[pads])


# (case, TFLite ops expected, largest LSB difference with XNNPACK kernels)
CASES = [
    (case_conv_relu, ("CONV_2D",), 0),
    (case_conv_explicit_pad, ("PAD", "CONV_2D"), 0),
    (case_conv_same_stride2, ("CONV_2D",), 0),
    (case_depthwise, ("DEPTHWISE_CONV_2D",), 0),
    (case_gemm, ("FULLY_CONNECTED",), 0),
    (case_matmul, ("FULLY_CONNECTED",), 0),
    (case_relu_standalone, ("CONV_2D", "RELU"), 0),
    (case_clip_relu6, ("CONV_2D", "RELU6"), 0),
    (case_add, ("ADD",), 0),
    (case_add_constant, ("CONV_2D", "ADD"), 0),
    (case_mul, ("MUL",), 0),
    (case_maxpool, ("CONV_2D", "MAX_POOL_2D"), 0),
    (case_maxpool_same, ("CONV_2D", "MAX_POOL_2D"), 0),
    # TFLite rounds the window mean half away from zero, ONNX Runtime half to even.
    (case_averagepool, ("CONV_2D", "AVERAGE_POOL_2D"), 1),
    (case_globalaveragepool, ("MEAN",), 0),
    (case_flatten_gemm, ("CONV_2D", "RESHAPE", "FULLY_CONNECTED"), 0),
    (case_reshape_output, ("CONV_2D", "TRANSPOSE", "RESHAPE"), 0),
    (case_concat, ("QUANTIZE", "CONCATENATION"), 0),
    # SOFTMAX must write scale 1/256; ONNX Runtime's output is 1/255, so QUANTIZE requantizes.
    (case_softmax, ("SOFTMAX", "QUANTIZE"), 1),
    (case_pad, ("CONV_2D", "PAD"), 0),
]


@pytest.mark.parametrize(("case", "operators", "max_lsb"), CASES, ids=[c[0].__name__[5:] for c in CASES])
def test_op_matches_onnxruntime(case, operators, max_lsb, tmp_path):
    qdq = quantize_model(case(), tmp_path)
    worst, _, conversion = lsb_differences(qdq, tmp_path, "xnnpack")
    assert conversion.operators == operators
    assert worst <= max_lsb
    worst_reference, share, _ = lsb_differences(qdq, tmp_path, "reference")
    assert worst_reference <= 1
    assert share < 0.25


def test_unsupported_op_is_refused_by_name(tmp_path):
    model = _with_conv([node("Sigmoid", ["c"], ["y"], name="gate")], [1, 4, 8, 8])
    qdq = quantize_model(model, tmp_path)
    with pytest.raises(UnsupportedOperator) as caught:
        convert(qdq, tmp_path / "model.tflite")
    assert caught.value.node == "gate" and caught.value.op_type == "Sigmoid"
    assert "transformer" in str(caught.value)


def test_uint8_activations_are_refused(tmp_path):
    import onnx
    from ethos_u_models import _Reader, random_feeds
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = case_gemm()
    onnx.save(model, str(tmp_path / "float.onnx"))
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "u8.onnx"), _Reader(random_feeds(model, 4, 0)),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    with pytest.raises(UnsupportedOperator, match="int8 zero point"):
        convert(tmp_path / "u8.onnx", tmp_path / "model.tflite")


def test_maxpool_rescaling_is_refused(tmp_path):
    import onnx

    qdq = quantize_model(case_maxpool(), tmp_path)
    model = onnx.load(str(qdq))
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0])
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "other_scale"))
    q.input[1] = "other_scale"
    onnx.save(model, str(tmp_path / "edited.onnx"))
    with pytest.raises(UnsupportedOperator, match="keeps its input's quantization") as caught:
        convert(tmp_path / "edited.onnx", tmp_path / "model.tflite")
    assert caught.value.node == pool.name


def test_conversion_is_deterministic(tmp_path):
    qdq = quantize_model(case_flatten_gemm(), tmp_path)
    first = convert(qdq, tmp_path / "a.tflite").path.read_bytes()
    second = convert(qdq, tmp_path / "b.tflite").path.read_bytes()
    assert first == second and first[4:8] == b"TFL3"
