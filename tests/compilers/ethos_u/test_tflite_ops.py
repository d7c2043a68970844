"""Each op the QDQ -> int8 TFLite converter lowers, run by LiteRT against ONNX Runtime.

Each case gives the largest difference allowed with LiteRT's default kernels (XNNPACK, float32
requantization rounding half to even like ONNX Runtime): 0, except where a TFLite kernel or rule
forces a difference (the case says which; docs/ethos-u.md, "Exactness per op", has the measured
figures), and with TFLite's reference kernels (fixed-point multiplier and shift, as TFLite
Micro): 1, more where the case says why.
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


def case_averagepool_global():  # MLPerf Tiny's DS-CNN and ResNet-8: one window over the whole plane
    return _with_conv([node("AveragePool", ["c"], ["y"], kernel_shape=[8, 8], strides=[8, 8])], [1, 4, 1, 1])


def case_averagepool_stride4():  # stride above 3: Vela runs AVERAGE_POOL_2D, not a depthwise conv
    return _with_conv([node("AveragePool", ["c"], ["y"], kernel_shape=[4, 4], strides=[4, 4])], [1, 4, 2, 2])


def case_averagepool_same():  # 3x3, stride 1, pads 1, the pads not counted
    return _with_conv([node("AveragePool", ["c"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], [1, 4, 8, 8])


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


def _int64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _float(name, values):
    return numpy_helper.from_array(np.array(values, np.float32), name)


# The graphs below are what torch's dynamo exporter (opset 18) writes for the construct named.


def case_reducemean():  # adaptive average pooling to 1x1, as exported
    return _with_conv([node("ReduceMean", ["c", "axes"], ["y"], keepdims=1)], [1, 4, 1, 1],
                      initializers=[_int64("axes", [-1, -2])])


def case_reducemean_flatten_gemm():  # ONNX Runtime leaves ReduceMean and the Reshape after it in float
    return _with_conv(
        [node("ReduceMean", ["c", "axes"], ["m"], keepdims=1), node("Reshape", ["m", "shape"], ["f"]),
         node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)],
        [1, 5], initializers=[_int64("axes", [-1, -2]), _int64("shape", [1, 4]), weight("w2", [5, 4], 3),
                              weight("b2", [5], 4)],
    )


def case_hardswish():  # MobileNetV3's activation
    return _with_conv([node("HardSwish", ["c"], ["y"])], [1, 4, 8, 8])


def case_hardswish_mean():  # MobileNetV3's last stage: ONNX Runtime leaves HardSwish and ReduceMean in float
    return _with_conv([node("HardSwish", ["c"], ["h"]), node("ReduceMean", ["h", "axes"], ["y"], keepdims=1)],
                      [1, 4, 1, 1], initializers=[_int64("axes", [-1, -2])])


def case_hardsigmoid_gate():  # MobileNetV3's squeeze-excitation: mean, 1x1 conv, HardSigmoid(s) * x
    squeeze, weights = _conv(x="m", y="s", channels=(4, 4), pads=[0, 0, 0, 0], kernel_shape=[1, 1])
    weights[0] = weight("s_w", [4, 4, 1, 1], 5)
    return _with_conv(
        [node("ReduceMean", ["c", "axes"], ["m"], keepdims=1), squeeze,
         node("HardSigmoid", ["s"], ["g"], alpha=1 / 6, beta=0.5), node("Mul", ["g", "c"], ["y"])],
        [1, 4, 8, 8], initializers=[_int64("axes", [-1, -2]), *weights],
    )


def case_hardsigmoid_times_x():  # hard swish written out: HardSigmoid(x) * x
    return _with_conv([node("HardSigmoid", ["c"], ["g"], alpha=1 / 6, beta=0.5), node("Mul", ["c", "g"], ["y"])],
                      [1, 4, 8, 8])


def case_silu():  # EfficientNet's activation: x * Sigmoid(x)
    return _with_conv([node("Sigmoid", ["c"], ["g"]), node("Mul", ["c", "g"], ["y"])], [1, 4, 8, 8])


def case_batchnorm():  # DenseNet's pre-activation BatchNormalization (not folded into a conv)
    rng = np.random.default_rng(7)
    return make_model(
        [node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"], epsilon=1e-5), node("Relu", ["n"], ["y"])],
        [tensor("x", [1, 4, 8, 8])], [tensor("y", [1, 4, 8, 8])],
        [_float("g", rng.uniform(0.5, 1.5, 4)), _float("b", rng.normal(0, 0.3, 4)),
         _float("m", rng.normal(0, 0.3, 4)), _float("v", rng.uniform(0.5, 2, 4))],
    )


def case_grouped_conv():  # RegNetX: 3x3 convolution with group width 2
    conv, weights = _conv(y="y", channels=(4, 6), group=2, strides=[2, 2])
    weights[0] = weight("y_w", [6, 2, 3, 3], 1)
    return make_model([conv], [tensor("x", [1, 4, 8, 8])], [tensor("y", [1, 6, 4, 4])], weights)


def case_maxpool_symmetric_pads():  # ResNet's stem: conv, relu, 3x3 max pool, stride 2, pads 1
    return _with_conv([node("Relu", ["c"], ["r"]),
                       node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                      [1, 4, 4, 4])


def case_maxpool_symmetric_pads_signed():  # the same without the relu: the zero point is not -128
    return _with_conv([node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                      [1, 4, 4, 4])


def case_maxpool_ceil_mode():  # GoogLeNet: 3x3, stride 2, ceil_mode on an odd size
    return _with_conv([node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
                      [1, 4, 5, 5], input_shape=(1, 3, 11, 11))


def case_averagepool_counting_pads():  # count_include_pad=1: PAD with the zero point, then average
    return _with_conv([node("AveragePool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                            count_include_pad=1)], [1, 4, 4, 4])


def case_channel_shuffle():  # ShuffleNetV2: Concat, Reshape to 5-D, Transpose, Reshape, Split
    return make_model(
        [node("Concat", ["x", "z"], ["c"], axis=1), node("Reshape", ["c", "s5"], ["r"]),
         node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]), node("Reshape", ["t", "s4"], ["u"]),
         node("Split", ["u"], ["y", "y2"], axis=1, num_outputs=2)],
        [tensor("x", [1, 4, 6, 6]), tensor("z", [1, 4, 6, 6])], [tensor("y", [1, 4, 6, 6]), tensor("y2", [1, 4, 6, 6])],
        [_int64("s5", [1, 2, 4, 6, 6]), _int64("s4", [1, 8, 6, 6])],
    )


def case_split_unequal():
    return _with_conv([node("Split", ["c", "sizes"], ["y", "y2"], axis=1)], [1, 1, 8, 8],
                      extra_outputs=[tensor("y2", [1, 3, 8, 8])], initializers=[_int64("sizes", [1, 3])])


def case_class_token():  # ViT: Concat a constant class token, add positions, take token 0 (Gather)
    rng = np.random.default_rng(9)
    return make_model(
        [node("Concat", ["token", "x"], ["c"], axis=1), node("Add", ["c", "positions"], ["p"]),
         node("Gather", ["p", "zero"], ["y"], axis=1)],
        [tensor("x", [1, 4, 8])], [tensor("y", [1, 8])],
        [_float("token", rng.normal(0, 1, (1, 1, 8))), _float("positions", rng.normal(0, 0.5, (1, 5, 8))),
         _int64("zero", 0)],
    )


def case_slice():
    return _with_conv([node("Slice", ["c", "starts", "ends", "axes"], ["y"])], [1, 4, 3, 8],
                      initializers=[_int64("starts", [2]), _int64("ends", [-3]), _int64("axes", [2])])


def case_linear_3d():  # a Linear on [tokens, features]: MatMul by a constant, Add of the bias
    return make_model([node("MatMul", ["x", "w"], ["m"]), node("Add", ["m", "b"], ["y"])],
                      [tensor("x", [1, 6, 16])], [tensor("y", [1, 6, 8])], [weight("w", [16, 8], 1), weight("b", [8], 2)])


def case_attention():  # scaled dot-product attention as exported: Transpose(K), MatMul, Softmax, MatMul
    projections = [node("MatMul", ["x", f"w{n}"], [n]) for n in "qkv"]
    return make_model(
        [*projections, node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), node("MatMul", ["q", "kt"], ["s"]),
         node("Softmax", ["s"], ["a"], axis=-1), node("MatMul", ["a", "v"], ["y"])],
        [tensor("x", [1, 2, 5, 4])], [tensor("y", [1, 2, 5, 4])],
        [weight(f"w{n}", [4, 4], seed) for seed, n in enumerate("qkv", 3)],
    )


def case_softmax_inner_axis():  # Softmax over channels of an NCHW tensor: transposed to the last axis
    return _with_conv([node("Softmax", ["c"], ["y"], axis=1)], [1, 4, 8, 8])


def case_gelu():  # nn.GELU() as exported: x * 0.5 * (1 + erf(x / sqrt(2)))
    return make_model(
        [node("Div", ["x", "sqrt2"], ["d"]), node("Erf", ["d"], ["e"]), node("Add", ["e", "one"], ["a"]),
         node("Mul", ["half", "a"], ["h"]), node("Mul", ["x", "h"], ["y"])],
        [tensor("x", [1, 6, 16])], [tensor("y", [1, 6, 16])],
        [_float("sqrt2", 1.4142135381698608), _float("one", 1.0), _float("half", 0.5)],
    )


def case_gelu_op():  # a transformer's MLP at opset 20 (tapeout's front end): MatMul, Gelu, MatMul
    return make_model([node("MatMul", ["x", "w"], ["m"]), node("Gelu", ["m"], ["g"]), node("MatMul", ["g", "w2"], ["y"])],
                      [tensor("x", [1, 6, 16])], [tensor("y", [1, 6, 4])], [weight("w", [16, 8], 1), weight("w2", [8, 4], 2)],
                      opset=20)


def case_layernorm():  # ConvNeXt's channels-last LayerNorm: Transpose, LayerNormalization, Transpose
    rng = np.random.default_rng(11)
    return _with_conv(
        [node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
         node("LayerNormalization", ["t", "g", "b"], ["n"], axis=-1, epsilon=1e-6),
         node("Transpose", ["n"], ["y"], perm=[0, 3, 1, 2])],
        [1, 4, 8, 8], initializers=[_float("g", rng.uniform(0.5, 1.5, 4)), _float("b", rng.normal(0, 0.2, 4))],
    )


# (case, TFLite ops expected, largest LSB difference with XNNPACK kernels, with reference kernels)
CASES = [
    (case_conv_relu, ("CONV_2D",), 0, 1),
    (case_conv_explicit_pad, ("PAD", "CONV_2D"), 0, 1),
    (case_conv_same_stride2, ("CONV_2D",), 0, 1),
    (case_depthwise, ("DEPTHWISE_CONV_2D",), 0, 1),
    (case_gemm, ("FULLY_CONNECTED",), 0, 1),
    (case_matmul, ("FULLY_CONNECTED",), 0, 1),
    (case_relu_standalone, ("CONV_2D", "RELU"), 0, 1),
    (case_clip_relu6, ("CONV_2D", "RELU6"), 0, 1),
    (case_add, ("ADD",), 0, 1),
    (case_add_constant, ("CONV_2D", "ADD"), 0, 1),
    (case_mul, ("MUL",), 0, 1),
    (case_maxpool, ("CONV_2D", "MAX_POOL_2D"), 0, 1),
    (case_maxpool_same, ("CONV_2D", "MAX_POOL_2D"), 0, 1),
    # a depthwise convolution of ones: its requantization rounds half to even, as ONNX Runtime
    (case_averagepool, ("CONV_2D", "DEPTHWISE_CONV_2D"), 0, 1),
    (case_averagepool_global, ("CONV_2D", "MEAN"), 0, 1),
    # AVERAGE_POOL_2D rounds the window mean half away from zero, ONNX Runtime half to even
    (case_averagepool_stride4, ("CONV_2D", "AVERAGE_POOL_2D"), 1, 1),
    # TFLite's SAME average excludes the pads as ONNX's count_include_pad=0 does, but rounds the
    # window mean half away from zero where ONNX Runtime rounds half to even
    (case_averagepool_same, ("CONV_2D", "AVERAGE_POOL_2D"), 1, 1),
    (case_globalaveragepool, ("MEAN",), 0, 1),
    (case_flatten_gemm, ("CONV_2D", "RESHAPE", "FULLY_CONNECTED"), 0, 1),
    (case_reshape_output, ("CONV_2D", "TRANSPOSE", "RESHAPE"), 0, 1),
    (case_concat, ("DEPTHWISE_CONV_2D", "CONCATENATION"), 0, 1),
    # SOFTMAX must write scale 1/256, requantized to ONNX Runtime's 1/255, where ONNX Runtime
    # writes round(254 p) (floor(1 / scale)): 1 LSB on the values that round differently
    (case_softmax, ("SOFTMAX", "QUANTIZE"), 1, 1),
    (case_pad, ("CONV_2D", "PAD"), 0, 1),
    (case_reducemean, ("CONV_2D", "MEAN"), 0, 1),
    # reference: MEAN's fixed-point rounding, 1 LSB, times the fully-connected layer's gain
    (case_reducemean_flatten_gemm, ("CONV_2D", "MEAN", "RESHAPE", "FULLY_CONNECTED"), 0, 2),
    # TFLite's int8 HARD_SWISH works in 16-bit fixed point, ONNX Runtime in float
    (case_hardswish, ("CONV_2D", "HARD_SWISH"), 1, 1),
    # HARD_SWISH as above, and a quantized tensor where ONNX Runtime averages the float values
    (case_hardswish_mean, ("CONV_2D", "HARD_SWISH", "MEAN"), 1, 1),
    (case_hardsigmoid_gate, ("CONV_2D", "MEAN", "CONV_2D", "ADD", "MUL", "MUL"), 0, 1),
    # one HARD_SWISH where ONNX Runtime rounds HardSigmoid's output first
    (case_hardsigmoid_times_x, ("CONV_2D", "HARD_SWISH"), 1, 1),
    # LOGISTIC writes scale 1/256, requantized to ONNX Runtime's
    (case_silu, ("CONV_2D", "LOGISTIC", "QUANTIZE", "MUL"), 1, 1),
    # weights, scales and biases fitted to ONNX Runtime's codes for every input code
    (case_batchnorm, ("DEPTHWISE_CONV_2D",), 0, 1),
    (case_grouped_conv, ("PAD", "SPLIT", "CONV_2D", "CONV_2D", "CONCATENATION"), 0, 1),
    (case_maxpool_symmetric_pads, ("CONV_2D", "PAD", "MAX_POOL_2D"), 0, 1),
    (case_maxpool_symmetric_pads_signed, ("CONV_2D", "PADV2", "MAX_POOL_2D"), 0, 1),
    (case_maxpool_ceil_mode, ("CONV_2D", "MAX_POOL_2D"), 0, 1),
    (case_averagepool_counting_pads, ("CONV_2D", "PAD", "DEPTHWISE_CONV_2D"), 0, 1),
    (case_channel_shuffle, ("DEPTHWISE_CONV_2D", "CONCATENATION", "RESHAPE", "TRANSPOSE", "RESHAPE", "SPLIT"), 0, 1),
    (case_split_unequal, ("CONV_2D", "SPLIT_V"), 0, 1),
    (case_class_token, ("CONCATENATION", "ADD", "STRIDED_SLICE", "RESHAPE"), 0, 1),
    (case_slice, ("CONV_2D", "STRIDED_SLICE"), 0, 1),
    (case_linear_3d, ("RESHAPE", "FULLY_CONNECTED", "RESHAPE", "ADD"), 0, 1),
    # BATCH_MATMUL's fixed-point requantization rounds twice, and SOFTMAX as above
    (case_attention, ("RESHAPE", "FULLY_CONNECTED", "RESHAPE") * 3 + ("BATCH_MATMUL", "SOFTMAX", "QUANTIZE",
                                                                        "BATCH_MATMUL"), 1, 1),
    # reference: TFLite's reference SOFTMAX over 4 values, then 1/256 -> 1/255
    (case_softmax_inner_axis, ("CONV_2D", "SOFTMAX", "QUANTIZE"), 1, 3),
    # one GELU where ONNX Runtime rounds after Erf, Add and each Mul
    (case_gelu, ("GELU",), 1, 1),
    (case_gelu_op, ("RESHAPE", "FULLY_CONNECTED", "RESHAPE", "GELU", "RESHAPE", "FULLY_CONNECTED", "RESHAPE"), 0, 1),
    # reference: QUANTIZE rounds half away from zero, ONNX Runtime half to even
    (case_layernorm, ("CONV_2D", "DEQUANTIZE", "MEAN", "SUB", "MUL", "MEAN", "ADD", "RSQRT", "MUL", "MUL", "ADD",
                      "QUANTIZE"), 0, 2),
]


@pytest.mark.parametrize(("case", "operators", "xnnpack_lsb", "reference_lsb"), CASES,
                         ids=[c[0].__name__[5:] for c in CASES])
def test_op_matches_onnxruntime(case, operators, xnnpack_lsb, reference_lsb, tmp_path):
    qdq = quantize_model(case(), tmp_path)
    worst, _, conversion = lsb_differences(qdq, tmp_path, "xnnpack")
    assert conversion.operators == operators
    assert worst <= xnnpack_lsb
    worst_reference, share, _ = lsb_differences(qdq, tmp_path, "reference")
    assert worst_reference <= reference_lsb
    assert share < 0.3


# The int8 kernels that cannot compute what ONNX Runtime does, written in float32 instead
# (`float_ops`): exact with XNNPACK; with the reference kernels, as their int8 twins in CASES
# (the convolution before rounds with a fixed-point multiplier).
EXACT_MUL = ("CAST", "ADD", "CAST", "ADD", "MUL", "MUL", "ADD", "ADD", "ADD", "MAXIMUM", "MINIMUM", "CAST")
FLOAT_CASES = [
    (case_softmax, {"SOFTMAX"}, ("DEQUANTIZE", "SOFTMAX", "MUL", "QUANTIZE")),
    (case_softmax_inner_axis, {"SOFTMAX"}, ("CONV_2D", "DEQUANTIZE", "SOFTMAX", "MUL", "QUANTIZE")),
    (case_silu, {"LOGISTIC"}, ("CONV_2D", "DEQUANTIZE", "LOGISTIC", "QUANTIZE", "MUL")),
    (case_hardswish, {"HARD_SWISH"}, ("CONV_2D", "DEQUANTIZE", "MUL", "ADD", "MAXIMUM", "MINIMUM", "MUL", "QUANTIZE")),
    # the float32 hard swish stays float into the mean, as in ONNX Runtime, and MEAN's result is quantized
    (case_hardswish_mean, {"HARD_SWISH"}, ("CONV_2D", "DEQUANTIZE", "MUL", "ADD", "MAXIMUM", "MINIMUM", "MUL", "MEAN",
                                           "QUANTIZE")),
    # no HARD_SWISH pattern: HardSigmoid and Mul each on its own, both exact
    (case_hardsigmoid_times_x, {"HARD_SWISH"}, ("CONV_2D", "ADD", "MUL", "MUL")),
    # QLinearAdd: the codes as ONNX Runtime stores them, each FMA exact in int64 and rounded once
    # by a CAST to float32, then + and - 1.5 * 2^23 (round half to even), saturate, CAST to int8
    (case_add, {"ADD"}, ("CAST", "ADD", "CAST", "ADD", "MUL", "ADD", "CAST", "CAST", "MUL", "ADD", "CAST", "MUL",
                         "ADD", "ADD", "MAXIMUM", "MINIMUM", "CAST")),
    # QLinearMul: (a - z_a)(b - z_b) exact in float32, times the scale ratio, plus z_c, as above
    (case_mul, {"MUL"}, EXACT_MUL),
    (case_silu, {"LOGISTIC", "MUL"}, ("CONV_2D", "DEQUANTIZE", "LOGISTIC", "QUANTIZE") + EXACT_MUL),
]


@pytest.mark.parametrize(("case", "float_ops", "operators"), FLOAT_CASES,
                         ids=[c[0].__name__[5:] for c in FLOAT_CASES])
def test_float_ops_match_onnxruntime_exactly(case, float_ops, operators, tmp_path):
    qdq = quantize_model(case(), tmp_path)
    worst, _, conversion = lsb_differences(qdq, tmp_path, "xnnpack", float_ops=frozenset(float_ops))
    assert conversion.operators == operators
    assert worst == 0
    reference_bound = dict((c[0], c[3]) for c in CASES)[case]
    assert lsb_differences(qdq, tmp_path, "reference", float_ops=frozenset(float_ops))[0] <= reference_bound


def test_float_ops_must_be_ones_the_converter_writes_in_float(tmp_path):
    with pytest.raises(ValueError, match=r"float_ops: expected some of \['ADD', 'HARD_SWISH', 'LOGISTIC', 'MUL', 'SOFTMAX'\], found \['GELU'\]"):
        convert(quantize_model(case_softmax(), tmp_path), tmp_path / "model.tflite", frozenset({"GELU"}))


def test_average_pool_with_an_odd_zero_point_rounds_its_ties_as_onnxruntime(tmp_path):
    """ONNX Runtime rounds `mean / scale + zero point` half to even: with an odd zero point its
    ties go the other way from a kernel that adds the zero point after rounding. A 2x2 mean of
    codes is a tie a quarter of the time."""
    import onnx

    model = onnx.load(str(quantize_model(case_averagepool(), tmp_path)))
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool")
    tensors = {pool.input[0], pool.output[0]}
    odd = None
    for n in model.graph.node:  # every Q/DQ of the pool's input and output: one odd zero point
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and ({n.input[0], n.output[0]} & tensors
                                                                      or n.output[0] in pool.input):
            zero_point = next(i for i in model.graph.initializer if i.name == n.input[2])
            value = numpy_helper.to_array(zero_point)
            odd = odd if odd is not None else value | 1
            zero_point.CopyFrom(numpy_helper.from_array(np.asarray(odd, value.dtype), zero_point.name))
    edited = tmp_path / "odd.onnx"
    onnx.save(model, str(edited))
    worst, share, conversion = lsb_differences(edited, tmp_path, "xnnpack")
    assert conversion.operators == ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD")
    assert worst == 0, share


UINT8_CASES = [case_conv_relu, case_add_constant, case_hardsigmoid_gate, case_class_token, case_attention,
               case_layernorm]


@pytest.mark.parametrize("case", UINT8_CASES, ids=[c.__name__[5:] for c in UINT8_CASES])
def test_uint8_model_converts_like_its_int8_twin(case, tmp_path):
    """ONNX Runtime's default uint8 activations: the same scales and zero point - 128, so the
    TFLite model computes exactly what the int8-activation model's does."""
    import onnx

    from tapeout.compilers.tflite.runner import TfliteRunner
    from ethos_u_models import random_feeds

    signed = lsb_differences(quantize_model(case(), tmp_path, activations="int8"), tmp_path / "int8")[2]
    unsigned_path = quantize_model(case(), tmp_path, activations="uint8")
    worst, _, unsigned = lsb_differences(unsigned_path, tmp_path / "uint8")
    assert worst <= dict((c[0], c[2]) for c in CASES)[case]
    assert unsigned.operators == signed.operators
    assert [(e.scale, e.zero_point) for e in unsigned.outputs] == [(e.scale, e.zero_point) for e in signed.outputs]
    runners = [TfliteRunner(c.path, c.inputs, c.outputs) for c in (signed, unsigned)]
    for feed in random_feeds(onnx.load(str(unsigned_path)), 4, 3):
        first, second = (runner.run(feed) for runner in runners)
        for name in first:
            np.testing.assert_array_equal(first[name], second[name])


def test_unsupported_op_is_refused_by_name(tmp_path):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = _with_conv([node("Resize", ["c", "", "scales"], ["y"], name="upsample", mode="nearest")],
                       [1, 4, 16, 16], initializers=[scales])
    qdq = quantize_model(model, tmp_path)
    with pytest.raises(UnsupportedOperator) as caught:
        convert(qdq, tmp_path / "model.tflite")
    assert caught.value.node == "upsample" and caught.value.op_type == "Resize"
    assert "not in the int8 TFLite op set" in str(caught.value)


def test_erf_outside_gelu_is_refused(tmp_path):
    model = _with_conv([node("Erf", ["c"], ["y"], name="erf")], [1, 4, 8, 8])
    with pytest.raises(UnsupportedOperator, match="only inside GELU"):
        convert(quantize_model(model, tmp_path), tmp_path / "model.tflite")


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
    assert caught.value.node == (pool.name or pool.output[0])  # an unnamed node is named by its output


def test_conversion_is_deterministic(tmp_path):
    qdq = quantize_model(case_flatten_gemm(), tmp_path)
    first = convert(qdq, tmp_path / "a.tflite").path.read_bytes()
    second = convert(qdq, tmp_path / "b.tflite").path.read_bytes()
    assert first == second and first[4:8] == b"TFL3"


def _binary_qdq(op_type: str, scales, zero_points, activations: str):
    """x, z -> QuantizeLinear -> DequantizeLinear -> op -> QuantizeLinear -> DequantizeLinear,
    as ONNX Runtime's quantizer writes one Add or Mul of two activations, with the given
    quantization of its two inputs and its output."""
    from onnx import TensorProto

    dtype = {"uint8": np.uint8, "int8": np.int8}[activations]
    nodes, initializers = [], []
    for name, scale, zero_point in zip(("a", "b", "c"), scales, zero_points):
        initializers += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
                         numpy_helper.from_array(np.array(zero_point, dtype), f"{name}_zero_point")]
    for source, name in (("x", "a"), ("z", "b")):
        nodes += [node("QuantizeLinear", [source, f"{name}_scale", f"{name}_zero_point"], [f"{name}_q"]),
                  node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero_point"], [name])]
    nodes += [node(op_type, ["a", "b"], ["c"]),
              node("QuantizeLinear", ["c", "c_scale", "c_zero_point"], ["c_q"]),
              node("DequantizeLinear", ["c_q", "c_scale", "c_zero_point"], ["y"])]
    shape = [1, 1, 256, 256]
    model = make_model(nodes, [tensor("x", shape), tensor("z", shape)], [tensor("y", shape)], initializers)
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def _every_code_pair(model, tmp_path, kernels: str, float_ops) -> tuple[int, int]:
    """(output codes that differ, largest difference in LSB) between LiteRT and ONNX Runtime
    over all 65,536 pairs of input codes (input x = the dequantized code, which QuantizeLinear
    maps back to it)."""
    import onnx
    import onnxruntime

    from tapeout.compilers.tflite.runner import TfliteRunner, quantize

    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    info = np.iinfo(constants["a_zero_point"].dtype)
    codes = np.arange(info.min, info.max + 1, dtype=np.float32)
    first, second = np.meshgrid(codes, codes, indexing="ij")
    feed = {source: ((grid - np.float32(constants[f"{name}_zero_point"])) * constants[f"{name}_scale"])
            .astype(np.float32).reshape(1, 1, 256, 256) for source, name, grid in (("x", "a", first), ("z", "b", second))}
    for source, name, grid in (("x", "a", first), ("z", "b", second)):  # QuantizeLinear gives the codes back
        back = np.rint(feed[source] / constants[f"{name}_scale"]) + np.float32(constants[f"{name}_zero_point"])
        assert np.array_equal(back.reshape(grid.shape), grid)
    expected = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], feed)[0]
    conversion = convert(path, tmp_path / "model.tflite", frozenset(float_ops))
    found = TfliteRunner(conversion.path, conversion.inputs, conversion.outputs, kernels).run(feed)["y"]
    scale = float(constants["c_scale"])
    difference = np.abs(np.rint(expected / scale) - np.rint(found / scale))
    return int((difference > 0).sum()), int(difference.max())


def _binary_quantizations(count: int, seed: int):
    """Scales as a residual Add or a gating Mul has them: inputs and output within a factor
    of 4 of one another; zero points anywhere."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        base = rng.uniform(0.005, 0.05)
        yield tuple(float(np.float32(base * rng.uniform(0.5, 2))) for _ in range(3)), tuple(
            int(v) for v in rng.integers(20, 236, 3))


# ONNX Runtime's int8 QLinearAdd computes another float32 sequence than its uint8 one (the same
# source, qladd_avx2.cpp; measured: no contraction of its constant part reproduces it), which
# the converter does not know: 1 LSB on 1 of these 393,216 pairs (XNNPACK's int8 ADD: on 3).
FLOAT_BINARY_BOUND = {("Add", "uint8"): 0, ("Add", "int8"): 1, ("Mul", "uint8"): 0, ("Mul", "int8"): 0}


@pytest.mark.parametrize("activations", ["uint8", "int8"])
@pytest.mark.parametrize("op_type", ["Add", "Mul"])
def test_float_add_and_mul_match_onnxruntime_on_every_pair_of_codes(op_type, activations, tmp_path):
    """ADD / MUL in `float_ops`: ONNX Runtime's QLinearAdd / QLinearMul float32 sequence, FMAs
    included, gives ONNX Runtime's code for every pair of input codes, with either kernel set;
    the int8 op, on the same quantizations, does not (XNNPACK's ADD, TFLite's reference MUL)."""
    int8_differences = 0
    for index, (scales, zero_points) in enumerate(_binary_quantizations(6, seed=len(op_type) + len(activations))):
        if activations == "int8":
            zero_points = tuple(z - 128 for z in zero_points)
        model = _binary_qdq(op_type, scales, zero_points, activations)
        directory = tmp_path / str(index)
        directory.mkdir()
        for kernels in ("xnnpack", "reference"):
            _, worst = _every_code_pair(model, directory, kernels, {op_type.upper()})
            assert worst <= FLOAT_BINARY_BOUND[op_type, activations], (scales, zero_points, kernels)
        int8_differences += _every_code_pair(model, directory, "xnnpack" if op_type == "Add" else "reference", ())[0]
    assert int8_differences > 0


def test_float_add_of_a_broadcast_operand_is_refused(tmp_path):
    """ONNX Runtime's QLinearAdd takes another path for a broadcast operand, which ADD in
    `float_ops` does not reproduce: refused by name rather than written inexactly."""
    model = make_model([node("Add", ["x", "z"], ["y"], name="residual")],
                       [tensor("x", [1, 4, 8, 8]), tensor("z", [1, 4, 1, 1])], [tensor("y", [1, 4, 8, 8])])
    qdq = quantize_model(model, tmp_path)
    with pytest.raises(UnsupportedOperator, match=r"needs operands of one shape, found \[1, 4, 8, 8\] and \[1, 4, 1, 1\]") as caught:
        convert(qdq, tmp_path / "model.tflite", frozenset({"ADD"}))
    assert caught.value.node == "residual"
    assert convert(qdq, tmp_path / "int8.tflite").operators == ("ADD",)  # the int8 ADD broadcasts
