"""Pooling and means: MaxPool, AveragePool, GlobalAveragePool, ReduceMean.

MAX_POOL_2D and AVERAGE_POOL_2D keep their input's scale and zero point (TFLite's int8 spec); a
node whose QDQ output differs is refused. Pads that are neither SAME nor VALID, and `ceil_mode`,
become a PAD before a VALID pool (compilers/tflite/ops/window.py). ReduceMean, which ONNX Runtime
leaves in float, is TFLite's MEAN over the same axes: MEAN requantizes to the quantization the
float mean ends up with.
"""

from __future__ import annotations

import numpy as np

from tapeout.compilers.tflite import layout as layouts
from tapeout.compilers.tflite.flatbuffer import FbTensor
from tapeout.compilers.tflite.lowering import NO_ACTIVATION, VALID, Lowering, refuse
from tapeout.compilers.tflite.ops.window import pad, window_padding
from tapeout.compilers.tflite.qdq import Activation, Constant, attributes


# Vela runs a depthwise convolution on the NPU only up to stride 3 (its constraint tables); an
# average pool of larger stride stays AVERAGE_POOL_2D, which it runs at any stride.
MAX_DEPTHWISE_STRIDE = 3


def same_quantization(node, source: Activation, result: Activation, op: str) -> None:
    if (source.scale, source.zero_point) != (result.scale, result.zero_point):
        raise refuse(
            node,
            f"TFLite int8 {op} keeps its input's quantization: expected output scale "
            f"{source.scale!r} and zero point {source.zero_point}, found {result.scale!r} and "
            f"{result.zero_point}",
        )


def _pool(lowering: Lowering, node, opcode: str) -> None:
    source = lowering.input(node, 0)
    if len(source.shape) != 4:
        raise refuse(node, f"expected a 4-D NCHW input, found shape {list(source.shape)}")
    result = lowering.qdq.output_of(node)
    attrs = attributes(node)
    kernel = tuple(attrs["kernel_shape"])
    strides = tuple(attrs.get("strides", (1, 1)))
    if tuple(attrs.get("dilations", (1, 1))) != (1, 1):
        raise refuse(node, f"TFLite pooling has no dilation, found {list(attrs['dilations'])}")
    if attrs.get("storage_order", 0):
        raise refuse(node, "storage_order=1 (column-major indices) has no TFLite equivalent")
    # TFLite's SAME average counts real pixels only; counting the pads needs them written.
    counted = opcode == "AVERAGE_POOL_2D" and bool(attrs.get("count_include_pad", 0))
    padding, pads = window_padding(node, source.shape[2:], kernel, strides, (1, 1), result.shape[2:], counted)
    source_index = lowering.read(node, source, layouts.NHWC)
    global_mean = pads is None and padding == VALID and tuple(kernel) == tuple(source.shape[2:])
    if opcode == "AVERAGE_POOL_2D" and global_mean:
        # One window over the whole plane: MEAN, which rounds half to even and which Vela runs
        # on the NPU whatever the stride.
        output = lowering.define(result, layouts.NHWC)
        axes = lowering.int32_constant(f"{node.name}_axes", [1, 2])
        lowering.emit("MEAN", (source_index, axes), (output,), ("ReducerOptions", {"KeepDims": True}))
        return
    if opcode == "AVERAGE_POOL_2D" and (padding == VALID or counted) and max(strides) <= MAX_DEPTHWISE_STRIDE:
        if pads is not None and attrs.get("ceil_mode", 0):
            raise refuse(node, "ceil_mode with count_include_pad=1: the windows past the pads "
                               "average fewer pixels, which no TFLite padding reproduces")
        if pads is not None:
            source_index = pad(lowering, node, source, source_index, pads)
        _window_mean(lowering, node, source, source_index, result, kernel, strides)
        return
    same_quantization(node, source, result, opcode)
    if pads is not None:
        if opcode == "AVERAGE_POOL_2D" and not counted:
            raise refuse(node, f"pads {list(pads)} differ from TFLite's SAME and VALID, and the "
                               "average must not count them (count_include_pad=0)")
        source_index = pad(lowering, node, source, source_index, pads, minimum=opcode == "MAX_POOL_2D")
    output = lowering.define(result, layouts.NHWC)
    lowering.emit(opcode, (source_index,), (output,), ("Pool2DOptions", {
        "Padding": padding, "StrideW": strides[1], "StrideH": strides[0],
        "FilterWidth": kernel[1], "FilterHeight": kernel[0],
        "FusedActivationFunction": NO_ACTIVATION,
    }))


def _window_mean(lowering: Lowering, node, source: Activation, index: int, result: Activation, kernel, strides) -> None:
    """An average over every pixel of each window (no padding, or padding that counts) as a
    DEPTHWISE_CONV_2D with weights 1 at scale 1/(kernel height × width), whose requantization
    (XNNPACK's, in float) rounds half to even, where AVERAGE_POOL_2D rounds half away from zero.

    ONNX Runtime's QLinearAveragePool rounds `avg / s + z` half to even, the output zero point
    z included (onnxruntime/contrib_ops/cpu/quantization/qlinear_pool.cc `quantize_value`),
    where a TFLite kernel rounds `avg / s` and adds z after. The two differ on every tie when z
    is odd, and ties are a quarter of a 2×2 average's values when input and output share their
    scale (as ONNX Runtime's quantizer makes them). Then the convolution adds one output LSB
    through its bias and writes at zero point z - 1 (even), so that it rounds `avg / s + 1`,
    which ties the same way as `avg / s + z`; an ADD of minus one LSB brings the codes, now
    ONNX Runtime's, to zero point z.
    """
    from tapeout.compilers.tflite.ops.convolution import bias, weights

    channels = source.shape[1]
    count = kernel[0] * kernel[1]
    scales = np.full(channels, np.float32(1.0 / count))
    weight_index = weights(lowering, f"{node.name}_weights", np.ones((1, *kernel, channels), np.int8), scales, 3)
    output = lowering.define(result, layouts.NHWC)
    options = ("DepthwiseConv2DOptions", {
        "Padding": VALID, "StrideW": strides[1], "StrideH": strides[0], "DepthMultiplier": 1,
        "FusedActivationFunction": NO_ACTIVATION, "DilationWFactor": 1, "DilationHFactor": 1,
    })
    if result.zero_point % 2 == 0 or result.scale != source.scale:
        bias_index = bias(lowering, node, None, source, scales, channels)
        lowering.emit("DEPTHWISE_CONV_2D", (index, weight_index, bias_index), (output,), options)
        return
    one_lsb = Constant(np.full(channels, count, np.int32), scales * np.float32(source.scale),
                       np.zeros(1, np.int32), 0)
    bias_index = bias(lowering, node, one_lsb, source, scales, channels)
    shifted = lowering.temporary(f"{node.name}_shifted", lowering.shape_of(output), result.scale,
                                 result.zero_point - 1)
    lowering.emit("DEPTHWISE_CONV_2D", (index, weight_index, bias_index), (shifted,), options)
    minus_one = lowering.quantized_constant(f"{node.name}_minus_one", np.array([-1], np.int8), result.scale, 0)
    lowering.emit("ADD", (shifted, minus_one), (output,), ("AddOptions", {"FusedActivationFunction": NO_ACTIVATION}))


def lower_maxpool(lowering: Lowering, node) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise refuse(node, "MaxPool's Indices output has no TFLite equivalent")
    _pool(lowering, node, "MAX_POOL_2D")


def lower_averagepool(lowering: Lowering, node) -> None:
    _pool(lowering, node, "AVERAGE_POOL_2D")


def lower_globalaveragepool(lowering: Lowering, node) -> None:
    source = lowering.input(node, 0)
    if len(source.shape) != 4:
        raise refuse(node, f"expected a 4-D NCHW input, found shape {list(source.shape)}")
    result = lowering.qdq.output_of(node)
    source_index = lowering.read(node, source, layouts.NHWC)
    output = lowering.define(result, layouts.NHWC)
    n, c, h, w = source.shape
    if (source.scale, source.zero_point) == (result.scale, result.zero_point):
        # Same quantization: AVERAGE_POOL_2D over the whole plane needs no requantization.
        lowering.emit("AVERAGE_POOL_2D", (source_index,), (output,), ("Pool2DOptions", {
            "Padding": VALID, "StrideW": 1, "StrideH": 1, "FilterWidth": w, "FilterHeight": h,
            "FusedActivationFunction": NO_ACTIVATION,
        }))
        return
    axes = lowering.int32_constant(f"{node.name}_axes", [1, 2])
    lowering.emit("MEAN", (source_index, axes), (output,), ("ReducerOptions", {"KeepDims": True}))


def lower_reducemean(lowering: Lowering, node) -> None:
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    attrs = attributes(node)
    rank = len(source.shape)
    axes = lowering.qdq.constant(node, 1)
    axes = attrs.get("axes") if axes is None else axes
    if axes is None or len(np.asarray(axes).reshape(-1)) == 0:
        if attrs.get("noop_with_empty_axes", 0):
            raise refuse(node, "ReduceMean with no axes and noop_with_empty_axes=1")
        axes = range(rank)
    axes = sorted({int(a) % rank for a in np.asarray(axes).reshape(-1)})
    keep = bool(attrs.get("keepdims", 1))
    perm = lowering.perm[source.name]
    if rank == 4 and axes == [2, 3]:
        perm = layouts.NHWC  # a global average pool: the mean over H and W of an NHWC tensor
    source_index = lowering.read(node, source, perm)
    tflite_axes = sorted(layouts.tflite_axis(perm, a) for a in axes)
    if keep:
        out_perm = perm
    else:
        kept = [a for a in perm if a not in axes]
        out_perm = tuple(sorted(kept).index(a) for a in kept)
    output = lowering.define(result, out_perm)
    axes_index = lowering.int32_constant(f"{node.name}_axes", tflite_axes)
    if lowering.fb.tensors[source_index].dtype == "float32":
        # A float input (HARD_SWISH in `float_ops` before it): ONNX Runtime's float ReduceMean,
        # then QuantizeLinear.
        mean = lowering.add(FbTensor(f"{node.name}_float", lowering.shape_of(output), "float32"))
        lowering.emit("MEAN", (source_index, axes_index), (mean,), ("ReducerOptions", {"KeepDims": keep}))
        lowering.emit("QUANTIZE", (mean,), (output,), ("QuantizeOptions", {}))
        return
    lowering.emit("MEAN", (source_index, axes_index), (output,), ("ReducerOptions", {"KeepDims": keep}))


LOWERINGS = {
    "MaxPool": lower_maxpool,
    "AveragePool": lower_averagepool,
    "GlobalAveragePool": lower_globalaveragepool,
    "ReduceMean": lower_reducemean,
}
