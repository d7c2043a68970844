"""Convolutions and fully-connected layers: Conv, Gemm, MatMul by a constant, BatchNormalization.

Weights stay int8 with ONNX Runtime's per-channel scales on the output-channel axis and zero
point 0 (TFLite's int8 spec), biases int32 at scale input × weight. Layout: OIHW -> OHWI,
depthwise O1HW -> 1HWO (depth multiplier O/I). A grouped convolution that is neither plain nor
depthwise becomes SPLIT (channels, one part per group) + one CONV_2D per group +
CONCATENATION: each group's CONV_2D writes the node's output quantization, so the
concatenation copies bytes.
"""

from __future__ import annotations

import numpy as np

from tapeout.compilers.tflite import layout as layouts
from tapeout.compilers.tflite.flatbuffer import FbTensor, array_bytes
from tapeout.compilers.tflite.lowering import NO_ACTIVATION, Lowering, dequantize_constant, refuse
from tapeout.compilers.tflite.ops.window import pad, window_padding
from tapeout.compilers.tflite.qdq import Activation, Constant, attributes


def _check_weights(node, weight, ndim: int) -> None:
    if not isinstance(weight, Constant) or weight.values.dtype != np.int8 or weight.values.ndim != ndim:
        raise refuse(node, f"expected constant {ndim}-D int8 weights (DequantizeLinear of an initializer)")
    if np.any(weight.zero_points != 0):
        raise refuse(node, "TFLite int8 weights need zero point 0 (symmetric), found non-zero")


def weights(lowering: Lowering, name: str, values: np.ndarray, scales, axis: int) -> int:
    channels = len(scales)
    return lowering.add(FbTensor(
        name, values.shape, "int8", tuple(float(s) for s in scales), (0,) * channels, axis,
        array_bytes(np.ascontiguousarray(values)),
    ))


def bias(lowering: Lowering, node, value, source: Activation, weight_scales, out_channels: int,
         name: str | None = None) -> int:
    """int32 bias with scale input_scale * weight_scale per channel (zero point 0), taken as
    ONNX Runtime quantized it; zeros when the node has none."""
    if value is None:
        values = np.zeros(out_channels, np.int32)
        scales = np.float32(source.scale) * weight_scales
    else:
        if not isinstance(value, Constant) or value.values.dtype != np.int32:
            raise refuse(node, "expected an int32 bias (DequantizeLinear of an initializer)")
        if np.any(value.zero_points != 0):
            raise refuse(node, "TFLite int32 biases need zero point 0")
        values = value.values.reshape(-1)
        scales = np.broadcast_to(value.scales.astype(np.float32).reshape(-1), (out_channels,))
    if values.shape != (out_channels,):
        raise refuse(node, f"expected {out_channels} bias values, found {values.shape}")
    return lowering.add(FbTensor(
        name or f"{node.name}_bias", (out_channels,), "int32", tuple(float(s) for s in scales),
        (0,) * out_channels, 0, array_bytes(values.astype(np.int32)),
    ))


def lower_conv(lowering: Lowering, node) -> None:
    qdq = lowering.qdq
    source = lowering.input(node, 0)
    if len(source.shape) != 4:
        raise refuse(node, f"expected a 4-D NCHW input, found shape {list(source.shape)}")
    weight = qdq.input_of(node, 1)
    bias_value = qdq.input_of(node, 2)
    result = qdq.output_of(node)
    if isinstance(weight, Constant) and weight.values.ndim != 4:
        raise refuse(node, f"expected a 2-D convolution, found weights of rank {weight.values.ndim}")
    _check_weights(node, weight, 4)
    if weight.axis not in (None, 0):
        raise refuse(node, f"per-channel weight scales must be on axis 0, found axis {weight.axis}")
    attrs = attributes(node)
    group = int(attrs.get("group", 1))
    out_channels, _, kh, kw = weight.values.shape
    in_channels = source.shape[1]
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    padding, pads = window_padding(node, source.shape[2:], (kh, kw), strides, dilations, result.shape[2:])
    scales = np.broadcast_to(weight.scales.astype(np.float32).reshape(-1), (out_channels,))
    window = {"Padding": padding, "StrideW": strides[1], "StrideH": strides[0]}
    dilation = {"DilationWFactor": dilations[1], "DilationHFactor": dilations[0]}
    if group == 1 or (group == in_channels and out_channels % in_channels == 0):
        if group == 1:
            opcode, table, options = "CONV_2D", "Conv2DOptions", {}
            values, axis = weight.values.transpose(0, 2, 3, 1), 0  # OIHW -> OHWI
        else:
            opcode, table = "DEPTHWISE_CONV_2D", "DepthwiseConv2DOptions"
            values, axis = weight.values.transpose(1, 2, 3, 0), 3  # O1HW -> 1HWO
            options = {"DepthMultiplier": out_channels // in_channels}
        weight_index = weights(lowering, f"{node.name}_weights", values, scales, axis)
        bias_index = bias(lowering, node, bias_value, source, scales, out_channels)
        source_index = lowering.read(node, source, layouts.NHWC)
        if pads is not None:
            source_index = pad(lowering, node, source, source_index, pads)
        output = lowering.define(result, layouts.NHWC)
        lowering.emit(opcode, (source_index, weight_index, bias_index), (output,), (table, {
            **window, **options, "FusedActivationFunction": NO_ACTIVATION, **dilation,
        }))
        return
    if in_channels % group or out_channels % group:
        raise refuse(node, f"group={group} does not divide {in_channels} input and {out_channels} output channels")
    _grouped(lowering, node, source, result, weight, bias_value, scales, group, pads, window, dilation)


def _grouped(lowering, node, source, result, weight, bias_value, scales, group, pads, window, dilation):
    """SPLIT + one CONV_2D per group + CONCATENATION (see the module's docstring)."""
    out_channels = weight.values.shape[0]
    per_group = out_channels // group
    source_index = lowering.read(node, source, layouts.NHWC)
    if pads is not None:
        source_index = pad(lowering, node, source, source_index, pads)
    n, h, w, c = lowering.shape_of(source_index)
    parts = [
        lowering.temporary(f"{node.name}_group{g}_input", (n, h, w, c // group), source.scale, source.zero_point)
        for g in range(group)
    ]
    axis = lowering.int32_constant(f"{node.name}_split_axis", np.array(3, np.int32))
    lowering.emit("SPLIT", (axis, source_index), parts, ("SplitOptions", {"NumSplits": group}))
    output_shape = layouts.tflite_shape(result.shape, layouts.NHWC)
    group_outputs = []
    for g, part in enumerate(parts):
        channels = slice(g * per_group, (g + 1) * per_group)
        group_weight = Constant(weight.values[channels], scales[channels], weight.zero_points, 0)
        weight_index = weights(
            lowering, f"{node.name}_group{g}_weights", group_weight.values.transpose(0, 2, 3, 1),
            scales[channels], 0,
        )
        group_bias = None
        if bias_value is not None:
            group_bias = Constant(
                bias_value.values.reshape(-1)[channels],
                np.broadcast_to(bias_value.scales.reshape(-1), (out_channels,))[channels],
                bias_value.zero_points, 0,
            )
        bias_index = bias(lowering, node, group_bias, source, scales[channels], per_group,
                          f"{node.name}_group{g}_bias")
        output = lowering.temporary(
            f"{node.name}_group{g}", output_shape[:3] + (per_group,), result.scale, result.zero_point
        )
        lowering.emit("CONV_2D", (part, weight_index, bias_index), (output,), ("Conv2DOptions", {
            **window, "FusedActivationFunction": NO_ACTIVATION, **dilation,
        }))
        group_outputs.append(output)
    output = lowering.define(result, layouts.NHWC)
    lowering.emit("CONCATENATION", group_outputs, (output,),
                  ("ConcatenationOptions", {"Axis": 3, "FusedActivationFunction": NO_ACTIVATION}))


def lower_batchnormalization(lowering: Lowering, node) -> None:
    """Inference BatchNormalization as a 1x1 DEPTHWISE_CONV_2D: per channel
    y = x * (gamma / sqrt(var + eps)) + (beta - mean * gamma / sqrt(var + eps)).

    ONNX Runtime runs it in float between its DequantizeLinear and QuantizeLinear, so each
    channel maps the 256 input codes to 256 output codes. Those codes are read off ONNX Runtime
    itself (compilers/tflite/reference_codes.py) and each channel's weight, weight scale and
    bias are chosen so that the depthwise convolution writes the same codes
    (compilers/tflite/affine_fit.py); a channel no choice reproduces takes the one that misses
    the fewest input codes. The plain folding (gamma's int8 value as weight at scale
    gamma_scale / sqrt(var + eps), the offset rounded to the int32 bias) is kept only for an
    output ONNX Runtime leaves in float; it is off by one LSB near rounding boundaries.
    """
    from tapeout.compilers.tflite.affine_fit import fit_channel
    from tapeout.compilers.tflite.reference_codes import channel_codes

    qdq = lowering.qdq
    source = lowering.input(node, 0)
    if len(source.shape) != 4:
        raise refuse(node, f"expected a 4-D NCHW input, found shape {list(source.shape)}")
    if len(node.output) > 1 and any(node.output[1:]):
        raise refuse(node, "training-mode BatchNormalization (running statistics outputs)")
    gamma, beta = qdq.input_of(node, 1), qdq.input_of(node, 2)
    mean = np.asarray(qdq.constant(node, 3), np.float64).reshape(-1)
    variance = np.asarray(qdq.constant(node, 4), np.float64).reshape(-1)
    result = qdq.output_of(node)
    channels = source.shape[1]
    if not isinstance(gamma, Constant) or gamma.values.dtype != np.int8 or np.any(gamma.zero_points != 0):
        raise refuse(node, "expected a symmetric int8 scale (gamma) input")
    if not isinstance(beta, Constant):
        raise refuse(node, "expected a quantized constant bias (beta) input")
    epsilon = float(attributes(node).get("epsilon", 1e-5))
    deviation = np.sqrt(variance + np.float32(epsilon))
    gamma_scales = np.broadcast_to(gamma.scales.astype(np.float64).reshape(-1), (channels,))
    weight_scales = (gamma_scales / deviation).astype(np.float32)
    weight_values = gamma.values.reshape(-1).copy()
    slope = weight_values.astype(np.float64) * weight_scales
    offset = dequantize_constant(beta).astype(np.float64).reshape(-1) - mean * slope
    accumulator_scales = np.float64(source.scale) * weight_scales.astype(np.float64)
    bias_values = np.rint(offset / accumulator_scales)
    if _quantized_output(qdq, node):
        codes = channel_codes(qdq, node, channels)
        for channel in range(channels):
            weight_values[channel], weight_scales[channel], bias_values[channel] = fit_channel(
                codes[channel], slope[channel], source.scale, source.zero_point, result.scale, result.zero_point,
            )
    if np.any(np.abs(bias_values) >= 2**31):
        raise refuse(node, "the folded offset does not fit an int32 bias")
    accumulator_scales = (np.float64(source.scale) * weight_scales.astype(np.float64)).astype(np.float32)
    weight_index = weights(
        lowering, f"{node.name}_weights", weight_values.reshape(1, 1, 1, channels), weight_scales, 3
    )
    bias_index = bias(lowering, node, Constant(bias_values.astype(np.int32), accumulator_scales,
                                               np.zeros(1, np.int32), 0), source, weight_scales, channels)
    source_index = lowering.read(node, source, layouts.NHWC)
    output = lowering.define(result, layouts.NHWC)
    lowering.emit("DEPTHWISE_CONV_2D", (source_index, weight_index, bias_index), (output,), (
        "DepthwiseConv2DOptions", {"Padding": 1, "StrideW": 1, "StrideH": 1, "DepthMultiplier": 1,
                                   "FusedActivationFunction": NO_ACTIVATION, "DilationWFactor": 1,
                                   "DilationHFactor": 1},
    ))


def _quantized_output(qdq, node) -> bool:
    consumers = qdq.consumers.get(node.output[0], [])
    return len(consumers) == 1 and consumers[0].op_type == "QuantizeLinear"


def lower_gemm(lowering: Lowering, node) -> None:
    attrs = attributes(node)
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise refuse(node, "only Gemm with transA=0, alpha=1, beta=1 maps to FULLY_CONNECTED")
    fully_connected(lowering, node, transposed=bool(attrs.get("transB", 0)))


def lower_matmul(lowering: Lowering, node) -> None:
    if isinstance(lowering.qdq.input_of(node, 1), Constant):
        fully_connected(lowering, node, transposed=False)
        return
    from tapeout.compilers.tflite.ops.attention import batch_matmul

    batch_matmul(lowering, node)


def fully_connected(lowering: Lowering, node, transposed: bool) -> None:
    """FULLY_CONNECTED over the last axis. An input of rank > 2 is reshaped to 2-D around it
    (the rows are whatever order the other axes have in TFLite; the output keeps that layout)."""
    qdq = lowering.qdq
    source = lowering.input(node, 0)
    weight = qdq.input_of(node, 1)
    bias_value = qdq.input_of(node, 2) if node.op_type == "Gemm" else None
    result = qdq.output_of(node)
    rank = len(source.shape)
    perm = lowering.perm[source.name]
    if rank < 2 or (rank == 2 and perm != (0, 1)) or (node.op_type == "Gemm" and rank != 2):
        raise refuse(node, f"FULLY_CONNECTED takes a 2-D input, found shape {list(source.shape)}")
    _check_weights(node, weight, 2)
    values = weight.values if transposed else weight.values.T  # -> [out, in]
    output_axis = 0 if transposed else 1
    if weight.axis is not None and weight.axis != output_axis:
        raise refuse(node, f"per-channel weight scales must be on the output axis {output_axis}, "
                           f"found axis {weight.axis}")
    out_features = values.shape[0]
    if source.name in lowering.flattened:
        c, h, w = lowering.flattened[source.name]
        # Column c*H*W + h*W + w in ONNX's order is column (h*W + w)*C + c in TFLite's.
        values = values.reshape(out_features, c, h, w).transpose(0, 2, 3, 1).reshape(out_features, -1)
    scales = np.broadcast_to(weight.scales.astype(np.float32).reshape(-1), (out_features,))
    weight_index = weights(lowering, f"{node.name}_weights", values, scales, 0)
    bias_index = bias(lowering, node, bias_value, source, scales, out_features)
    options = ("FullyConnectedOptions", {"FusedActivationFunction": NO_ACTIVATION})
    if rank == 2:
        output = lowering.define(result, (0, 1))
        lowering.emit("FULLY_CONNECTED", (lowering.index[source.name], weight_index, bias_index), (output,), options)
        return
    if perm[-1] != rank - 1:
        perm = tuple(axis for axis in perm if axis != rank - 1) + (rank - 1,)
    source_index = lowering.read(node, source, perm)
    rows = int(np.prod(source.shape)) // source.shape[-1]
    flat = lowering.temporary(f"{node.name}_rows", (rows, source.shape[-1]), source.scale, source.zero_point)
    lowering.emit("RESHAPE", (source_index, lowering.int32_constant(f"{node.name}_rows_shape", (rows, source.shape[-1]))),
                  (flat,))
    product = lowering.temporary(f"{node.name}_product", (rows, out_features), result.scale, result.zero_point)
    lowering.emit("FULLY_CONNECTED", (flat, weight_index, bias_index), (product,), options)
    output = lowering.define(result, perm)
    lowering.emit("RESHAPE", (product, lowering.int32_constant(f"{node.name}_shape", lowering.shape_of(output))),
                  (output,))


def requantize(lowering: Lowering, name: str, index: int, source: Activation, target: int) -> None:
    """Write int8 tensor `index` (quantized as `source`) into `target` at `target`'s quantization.

    A 4-D tensor goes through a 1x1 DEPTHWISE_CONV_2D of weight 1: its requantization is
    round((q - z) * s / s') in float, half to even, as ONNX Runtime's QuantizeLinear of the
    dequantized value; TFLite's QUANTIZE (int8 to int8) uses a fixed-point multiplier that
    rounds ties away from zero. Other ranks use QUANTIZE."""
    shape = lowering.shape_of(index)
    if len(shape) != 4 or lowering.fb.tensors[index].dtype != "int8":
        lowering.emit("QUANTIZE", (index,), (target,), ("QuantizeOptions", {}))
        return
    channels = shape[3]
    ones = np.full(channels, np.float32(1.0))
    weight_index = weights(lowering, f"{name}_weights", np.ones((1, 1, 1, channels), np.int8), ones, 3)
    bias_index = bias(lowering, None, None, source, ones, channels, f"{name}_bias")
    lowering.emit("DEPTHWISE_CONV_2D", (index, weight_index, bias_index), (target,), (
        "DepthwiseConv2DOptions", {"Padding": 1, "StrideW": 1, "StrideH": 1, "DepthMultiplier": 1,
                                   "FusedActivationFunction": NO_ACTIVATION, "DilationWFactor": 1,
                                   "DilationHFactor": 1},
    ))


LOWERINGS = {
    "Conv": lower_conv,
    "BatchNormalization": lower_batchnormalization,
    "Gemm": lower_gemm,
    "MatMul": lower_matmul,
}
