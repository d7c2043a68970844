"""Per-op checks against ONNX Runtime on the same QDQ model, int8 and uint8 activations.

`ort` mode must be bit-exact (every case here is fused by ORT into a QLinear kernel, checked
with ort_float_nodes); `fixed-point` mode must be within one LSB of ORT.
"""

import numpy as np
import pytest

import int8_ref_models as M
from tapeout.compilers.int8_ref import ort_float_nodes

CASES = {
    "conv": lambda: M.conv_only(),
    "conv_stride2_nopad": lambda: M.conv_only(stride=2, pad=0, hw=10),
    "conv_dilated": lambda: M.conv_only(dilation=2, pad=2),
    "conv_grouped": lambda: M.conv_only(cin=4, cout=8, group=2),
    "conv_depthwise": lambda: M.conv_only(cin=6, cout=6, group=6),
    "conv_5x5_relu": lambda: M.conv_only(k=5, pad=2, relu=True),
    "gemm": lambda: M.gemm_only(),
    "matmul_const_weight": lambda: M.matmul_const(),
    "matmul_batched": lambda: M.single_op("MatMul", [(2, 3, 4), (2, 4, 5)]),
    "maxpool": lambda: M.after_conv("MaxPool", (1, 3, 8, 8), kernel_shape=[3, 3],
                                    strides=[2, 2], pads=[1, 1, 1, 1]),
    "averagepool": lambda: M.after_conv("AveragePool", (1, 3, 8, 8), kernel_shape=[3, 3],
                                        strides=[2, 2], pads=[1, 1, 1, 1]),
    "averagepool_count_pad": lambda: M.after_conv("AveragePool", (1, 3, 8, 8),
                                                  kernel_shape=[3, 3], strides=[2, 2],
                                                  pads=[1, 1, 1, 1], count_include_pad=1),
    "globalaveragepool": lambda: M.single_op("GlobalAveragePool", [(1, 5, 7, 7)]),
    "add": lambda: M.single_op("Add", [(1, 4, 5, 5), (1, 4, 5, 5)]),
    "add_broadcast": lambda: M.single_op("Add", [(1, 4, 5, 5), (1, 4, 1, 1)]),
    "mul": lambda: M.single_op("Mul", [(1, 4, 5, 5), (1, 4, 5, 5)]),
    "mul_broadcast": lambda: M.single_op("Mul", [(2, 6), (1, 6)]),
    "concat": lambda: M.single_op("Concat", [(1, 2, 4, 4), (1, 3, 4, 4)], axis=1),
    "transpose": lambda: M.after_conv("Transpose", (1, 3, 4, 5), perm=[0, 2, 3, 1]),
    "reshape": lambda: M.after_conv("Reshape", (1, 3, 4, 4),
                                    consts=(np.array([1, 12, -1], np.int64),)),
    "flatten": lambda: M.after_conv("Flatten", (1, 3, 4, 4), axis=1),
    "squeeze": lambda: M.after_conv("Squeeze", (1, 3, 1, 4),
                                    consts=(np.array([2], np.int64),)),
    "unsqueeze": lambda: M.after_conv("Unsqueeze", (1, 3, 4, 4),
                                      consts=(np.array([0], np.int64),)),
    "pad": lambda: M.single_op("Pad", [(1, 2, 4, 4)],
                               consts=(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),)),
    "resize_nearest": lambda: M.after_conv("Resize", (1, 2, 3, 4),
                                           consts=("", np.array([1, 1, 2, 3], np.float32)),
                                           mode="nearest"),
    "sigmoid": lambda: M.single_op("Sigmoid", [(2, 50)]),
    "softmax": lambda: M.single_op("Softmax", [(3, 10)], axis=-1),
    "leakyrelu": lambda: M.single_op("LeakyRelu", [(2, 50)], alpha=0.1),
}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    cache = {}

    def get(name, activation):
        if (name, activation) not in cache:
            model = CASES[name]()
            qdq = M.quantize_qdq(model, tmp_path_factory.mktemp(name), name,
                                 activation=activation)
            cache[name, activation] = (model, qdq)
        return cache[name, activation]

    return get


ACTIVATIONS = ["int8", "uint8"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_ort_mode_is_bit_exact(name, activation, quantized, tmp_path):
    model, qdq = quantized(name, activation)
    assert ort_float_nodes(qdq) == [], "ORT keeps a node in float: not a bit-exact case"
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path, "ort")
    worst, ndiff, total = M.lsb_diffs(model, qdq, art, compiler.load(art))
    assert (worst, ndiff) == (0, 0), f"{ndiff}/{total} elements differ, max {worst} LSB"


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_point_within_one_lsb(name, activation, quantized, tmp_path):
    model, qdq = quantized(name, activation)
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path, "fixed-point")
    worst, ndiff, total = M.lsb_diffs(model, qdq, art, compiler.load(art))
    assert worst <= 1, f"{ndiff}/{total} elements differ, max {worst} LSB"


def test_uint8_activations(tmp_path):
    """QUInt8 activations (asymmetric uint8) with int8 per-channel weights."""
    model = M.cnn()
    qdq = M.quantize_qdq(model, tmp_path, "cnn_u8", activation="uint8")
    for mode, bound in (("ort", 0), ("fixed-point", 2)):
        compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path / mode, mode)
        worst, ndiff, total = M.lsb_diffs(model, qdq, art, compiler.load(art))
        assert worst <= bound, (mode, ndiff, total, worst)



def test_confident_softmax_saturates_like_onnxruntime(tmp_path):
    """Output scale 1/256, zero point -128: a probability of ~1 maps to 128, one step above
    int8. ORT runs a QDQ Softmax in its uint8 domain and saturates to 127 (its int8 kernel
    would wrap); int8-ref follows."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.int8), "xz"),
             numpy_helper.from_array(np.array(1 / 256, np.float32), "ys"),
             numpy_helper.from_array(np.array(-128, np.int8), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"], name="dq"),
             helper.make_node("Softmax", ["xf"], ["yf"], name="softmax", axis=-1),
             helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"], name="q")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT8,
                                                                     [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, [4, 8])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "softmax.onnx"
    onnx.save(m, str(path))
    x = np.full((4, 8), -128, np.int8)
    x[np.arange(4), np.arange(4)] = 127
    x[3] = np.arange(-4, 4)  # and an ordinary row
    want = M.ort_session(path).run(None, {"x": x})[0]
    assert want[0, 0] == 127
    from tapeout.compilers.interface import TensorSpec

    compiler, art = M.compile_path(path, [TensorSpec("x", (4, 8), "int8")], tmp_path / "o",
                                   "ort")
    np.testing.assert_array_equal(compiler.load(art).run({"x": x})["y"], want)
