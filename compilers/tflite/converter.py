"""Lower a QDQ ONNX model to an int8 TFLite model, keeping its quantization exactly.

Every scale and zero point is copied from the QDQ pairs as written by ONNX Runtime's quantizer;
nothing is re-calibrated. Weights stay int8 with per-channel scales on the output-channel axis
(zero point 0, as TFLite's int8 spec requires), biases stay int32. Activations are NCHW in
ONNX and NHWC in TFLite: 4-D tensors are transposed, weights OIHW -> OHWI (depthwise: -> 1HWO),
and a flatten before a fully-connected layer keeps TFLite's NHWC order by permuting the layer's
weight columns instead of transposing the activation.

TFLite's int8 rules (tensorflow.org/lite/performance/quantization_spec) are checked node by
node, and a node that cannot meet one is refused by name (UnsupportedOperator):
- RESHAPE, MAX_POOL_2D, AVERAGE_POOL_2D, PAD keep their input's scale and zero point;
- SOFTMAX writes scale 1/256, zero point -128: when ONNX's output quantization differs (ONNX
  Runtime fixes it to 1/255, -128), a QUANTIZE op requantizes to ONNX's;
- weight zero points are 0.
Relu and Clip that ONNX Runtime removed (it narrows the producer's output range to [0, max] so
its zero point is -128, onnxruntime/quantization/base_quantizer.py `adjust_tensor_ranges`) need
nothing here: TFLite's int8 saturation at -128 is that Relu, bit for bit.

The graph's inputs and outputs are int8 in TFLite (as Vela wants them); `Conversion.inputs`
and `.outputs` record each edge's scale, zero point and layout so a runner can quantize and
transpose at the edges exactly as ONNX's QuantizeLinear/DequantizeLinear do.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tapeout.compilers.errors import UnsupportedOperator
from tapeout.compilers.tflite.flatbuffer import FbGraph, FbOperator, FbTensor, array_bytes, serialise
from tapeout.compilers.tflite.qdq import COMPILER, Activation, Constant, QdqGraph, attributes

# BuiltinOperator codes (schema.fbs).
ADD, AVERAGE_POOL_2D, CONCATENATION, CONV_2D, DEPTHWISE_CONV_2D = 0, 1, 2, 3, 4
FULLY_CONNECTED, MAX_POOL_2D, MUL, RELU, RELU_N1_TO_1, RELU6 = 9, 17, 18, 19, 20, 21
RESHAPE, SOFTMAX, PAD, TRANSPOSE, MEAN, QUANTIZE = 22, 25, 34, 39, 40, 114
# Padding (schema.fbs `enum Padding`), ActivationFunctionType NONE.
SAME, VALID, NO_ACTIVATION = 0, 1, 0

SUPPORTED_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Relu", "Clip", "Add", "Mul", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Reshape", "Flatten", "Concat", "Softmax", "Pad",
})

# Layouts of a TFLite tensor relative to its ONNX tensor.
SAME_ORDER = "same"          # identical shape and element order
NHWC = "nhwc"                # ONNX NCHW, TFLite NHWC
FLAT_NHWC = "flat_nhwc"      # ONNX [N, C*H*W] in CHW order, TFLite [N, H*W*C] in HWC order


@dataclass(frozen=True)
class EdgeTensor:
    """A graph input or output: ONNX name and shape, TFLite tensor name and shape, its int8
    quantization, and the layout ("same" or "nhwc") that maps one onto the other."""

    onnx_name: str
    onnx_shape: tuple[int, ...]
    tflite_name: str
    tflite_shape: tuple[int, ...]
    scale: float
    zero_point: int
    layout: str


@dataclass(frozen=True)
class Conversion:
    """The written `.tflite` file, its edges, and the TFLite ops it holds (in order)."""

    path: Path
    inputs: tuple[EdgeTensor, ...]
    outputs: tuple[EdgeTensor, ...]
    operators: tuple[str, ...]

    def io_json(self) -> str:
        return json.dumps(
            {"inputs": [asdict(e) for e in self.inputs], "outputs": [asdict(e) for e in self.outputs]},
            indent=2, sort_keys=True,
        ) + "\n"


def read_edges(text: str) -> tuple[tuple[EdgeTensor, ...], tuple[EdgeTensor, ...]]:
    """The inputs and outputs written by `Conversion.io_json`."""
    data = json.loads(text)

    def edge(item: dict) -> EdgeTensor:
        return EdgeTensor(**{**item, "onnx_shape": tuple(item["onnx_shape"]),
                             "tflite_shape": tuple(item["tflite_shape"])})

    return tuple(map(edge, data["inputs"])), tuple(map(edge, data["outputs"]))


_OP_NAMES = {
    ADD: "ADD", AVERAGE_POOL_2D: "AVERAGE_POOL_2D", CONCATENATION: "CONCATENATION",
    CONV_2D: "CONV_2D", DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D", FULLY_CONNECTED: "FULLY_CONNECTED",
    MAX_POOL_2D: "MAX_POOL_2D", MUL: "MUL", RELU: "RELU", RELU_N1_TO_1: "RELU_N1_TO_1",
    RELU6: "RELU6", RESHAPE: "RESHAPE", SOFTMAX: "SOFTMAX", PAD: "PAD", TRANSPOSE: "TRANSPOSE",
    MEAN: "MEAN", QUANTIZE: "QUANTIZE",
}


def convert(model_path: Path, output_path: Path) -> Conversion:
    """Write the int8 TFLite model for the QDQ model at `model_path` to `output_path`.

    Raises:
        UnsupportedOperator: a node outside the supported op set, or one whose quantization
            or attributes TFLite's int8 kernels cannot reproduce (the reason says which rule).
    """
    import onnx

    lowering = _Lowering(QdqGraph(onnx.load(str(model_path))))
    graph = lowering.run()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(serialise(graph))
    return Conversion(
        path=output_path,
        inputs=tuple(lowering.edge_inputs),
        outputs=tuple(lowering.edge_outputs),
        operators=tuple(_OP_NAMES[op.opcode] for op in graph.operators),
    )


def _refuse(node, reason: str) -> UnsupportedOperator:
    return UnsupportedOperator(COMPILER, node.name, node.op_type, reason)


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, h, w, c)


class _Lowering:
    """One pass over the ONNX nodes in order, emitting TFLite tensors and operators."""

    def __init__(self, qdq: QdqGraph) -> None:
        self.qdq = qdq
        self.fb = FbGraph()
        self.index: dict[str, int] = {}       # activation name -> TFLite tensor index
        self.layout: dict[str, tuple] = {}    # activation name -> (layout, extra)
        self.edge_inputs: list[EdgeTensor] = []
        self.edge_outputs: list[EdgeTensor] = []

    # -- tensors -----------------------------------------------------------------------------

    def _add(self, tensor: FbTensor) -> int:
        self.fb.tensors.append(tensor)
        return len(self.fb.tensors) - 1

    def _activation(self, act: Activation, layout: str, tflite_shape: tuple[int, ...]) -> int:
        if act.name in self.index:
            return self.index[act.name]
        index = self._add(FbTensor(act.name, tflite_shape, "int8", (act.scale,), (act.zero_point,)))
        self.index[act.name] = index
        self.layout[act.name] = (layout, act.shape)
        return index

    def _temporary(self, name: str, shape, scale: float, zero_point: int) -> int:
        return self._add(FbTensor(name, tuple(shape), "int8", (scale,), (zero_point,)))

    def _int32_constant(self, name: str, values) -> int:
        array = np.asarray(values, dtype=np.int32)
        return self._add(FbTensor(name, array.shape, "int32", data=array_bytes(array)))

    def _emit(self, opcode: int, inputs, outputs, options=None) -> None:
        self.fb.operators.append(FbOperator(opcode, tuple(inputs), tuple(outputs), options))

    def _input(self, node, index: int) -> Activation:
        value = self.qdq.input_of(node, index)
        if not isinstance(value, Activation):
            raise _refuse(node, f"input {index} must be an activation, found a constant")
        if value.name not in self.index:
            raise _refuse(node, f"input {value.name!r} is not produced by a converted node")
        return value

    # -- graph -------------------------------------------------------------------------------

    def run(self) -> FbGraph:
        qdq = self.qdq
        inputs = []
        for name in qdq.graph_inputs:
            consumers = qdq.consumers.get(name, [])
            if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
                raise UnsupportedOperator(
                    COMPILER, name, "graph input",
                    "a graph input must feed exactly one QuantizeLinear (a QDQ model)",
                )
            act = qdq.activation_of_q(consumers[0])
            layout = NHWC if len(act.shape) == 4 else SAME_ORDER
            shape = _nhwc(act.shape) if layout == NHWC else act.shape
            inputs.append(self._activation(act, layout, shape))
            self.edge_inputs.append(
                EdgeTensor(name, act.shape, act.name, shape, act.scale, act.zero_point, layout)
            )
        for node in qdq.nodes:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                raise _refuse(
                    node,
                    "not in the int8 TFLite op set of this converter "
                    f"({', '.join(sorted(SUPPORTED_OPS))}); transformer-style graphs are out of scope",
                )
            getattr(self, f"_lower_{node.op_type.lower()}")(node)
        outputs = []
        for name in qdq.graph_outputs:
            dq = qdq.producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.index:
                raise UnsupportedOperator(
                    COMPILER, name, "graph output",
                    "a graph output must be the DequantizeLinear of a converted int8 tensor",
                )
            act = qdq.activation_of_q(qdq.producer[dq.input[0]])
            layout, _ = self.layout[act.name]
            if layout == FLAT_NHWC:
                raise UnsupportedOperator(COMPILER, name, "graph output", "flattened NHWC output")
            index = self.index[act.name]
            outputs.append(index)
            self.edge_outputs.append(EdgeTensor(
                name, act.shape, act.name, self.fb.tensors[index].shape, act.scale,
                act.zero_point, layout,
            ))
        self.fb.inputs, self.fb.outputs = tuple(inputs), tuple(outputs)
        return self.fb

    # -- helpers -----------------------------------------------------------------------------

    def _same_quantization(self, node, source: Activation, result: Activation, op: str) -> None:
        if (source.scale, source.zero_point) != (result.scale, result.zero_point):
            raise _refuse(
                node,
                f"TFLite int8 {op} keeps its input's quantization: expected output scale "
                f"{source.scale!r} and zero point {source.zero_point}, found {result.scale!r} and "
                f"{result.zero_point}",
            )

    def _require_nhwc(self, node, act: Activation) -> None:
        if self.layout[act.name][0] != NHWC:
            raise _refuse(node, f"expected a 4-D NCHW input, found shape {list(act.shape)}")

    def _spatial_padding(self, node, in_hw, kernel, strides, dilations, out_hw):
        """SAME, VALID, or explicit (top, left, bottom, right) pads for a 2-D window op.

        TFLite's SAME puts the odd pixel after (bottom/right), as ONNX's SAME_UPPER does;
        ONNX's explicit pads that equal it become SAME, zeros become VALID.
        """
        attrs = attributes(node)
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        same = []
        for size, k, s, d in zip(in_hw, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            same.append((total // 2, total - total // 2))
        same_pads = (same[0][0], same[1][0], same[0][1], same[1][1])
        if auto_pad == "SAME_UPPER":
            return SAME, None
        if auto_pad == "VALID":
            return VALID, None
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        if auto_pad == "SAME_LOWER":
            pads = (same[0][1], same[1][1], same[0][0], same[1][0])
        same_out = tuple(-(-size // s) for size, s in zip(in_hw, strides))
        if pads == (0, 0, 0, 0):
            return VALID, None
        if pads == same_pads and tuple(out_hw) == same_out:
            return SAME, None
        return VALID, pads

    def _pad_explicitly(self, node, source: Activation, pads, value_name: str) -> int:
        """A PAD op in front of a window op (pads with the input's zero point, i.e. real 0)."""
        top, left, bottom, right = pads
        if min(pads) < 0:
            raise _refuse(node, f"negative pads {list(pads)}")
        n, h, w, c = self.fb.tensors[self.index[source.name]].shape
        padded = self._temporary(
            f"{value_name}_padded", (n, h + top + bottom, w + left + right, c),
            source.scale, source.zero_point,
        )
        paddings = self._int32_constant(
            f"{value_name}_paddings", [[0, 0], [top, bottom], [left, right], [0, 0]]
        )
        self._emit(PAD, (self.index[source.name], paddings), (padded,), ("PadOptions", {}))
        return padded

    # -- ops ---------------------------------------------------------------------------------

    def _lower_conv(self, node) -> None:
        qdq = self.qdq
        source = self._input(node, 0)
        self._require_nhwc(node, source)
        weight = qdq.input_of(node, 1)
        bias = qdq.input_of(node, 2)
        result = qdq.output_of(node)
        if not isinstance(weight, Constant) or weight.values.dtype != np.int8:
            raise _refuse(node, "expected constant int8 weights (DequantizeLinear of an initializer)")
        if weight.values.ndim != 4:
            raise _refuse(node, f"expected a 2-D convolution, found weights of rank {weight.values.ndim}")
        if np.any(weight.zero_points != 0):
            raise _refuse(node, "TFLite int8 weights need zero point 0 (symmetric), found non-zero")
        if weight.axis not in (None, 0):
            raise _refuse(node, f"per-channel weight scales must be on axis 0, found axis {weight.axis}")
        attrs = attributes(node)
        group = int(attrs.get("group", 1))
        out_channels, _, kh, kw = weight.values.shape
        in_channels = source.shape[1]
        strides = tuple(attrs.get("strides", (1, 1)))
        dilations = tuple(attrs.get("dilations", (1, 1)))
        padding, pads = self._spatial_padding(
            node, source.shape[2:], (kh, kw), strides, dilations, result.shape[2:]
        )
        scales = np.broadcast_to(weight.scales.astype(np.float32).reshape(-1), (out_channels,))
        if group == 1:
            opcode, table = CONV_2D, "Conv2DOptions"
            values = weight.values.transpose(0, 2, 3, 1)  # OIHW -> OHWI
            axis = 0
            options = {}
        elif group == in_channels and out_channels % in_channels == 0:
            opcode, table = DEPTHWISE_CONV_2D, "DepthwiseConv2DOptions"
            values = weight.values.transpose(1, 2, 3, 0)  # O1HW -> 1HWO
            axis = 3
            options = {"DepthMultiplier": out_channels // in_channels}
        else:
            raise _refuse(node, f"grouped convolution (group={group}) is neither plain nor depthwise")
        weight_index = self._add(FbTensor(
            f"{node.name}_weights", values.shape, "int8", tuple(float(s) for s in scales),
            (0,) * out_channels, axis, array_bytes(np.ascontiguousarray(values)),
        ))
        bias_index = self._bias(node, bias, source, scales, out_channels)
        source_index = self.index[source.name]
        if pads is not None:
            source_index = self._pad_explicitly(node, source, pads, node.name)
        output = self._activation(result, NHWC, _nhwc(result.shape))
        self._emit(opcode, (source_index, weight_index, bias_index), (output,), (table, {
            "Padding": padding, "StrideW": strides[1], "StrideH": strides[0],
            **options, "FusedActivationFunction": NO_ACTIVATION,
            "DilationWFactor": dilations[1], "DilationHFactor": dilations[0],
        }))

    def _bias(self, node, bias, source: Activation, weight_scales, out_channels: int) -> int:
        """int32 bias with scale input_scale * weight_scale per channel (zero point 0), taken
        as ONNX Runtime quantized it; zeros when the node has none."""
        if bias is None:
            values = np.zeros(out_channels, np.int32)
            scales = np.float32(source.scale) * weight_scales
        else:
            if not isinstance(bias, Constant) or bias.values.dtype != np.int32:
                raise _refuse(node, "expected an int32 bias (DequantizeLinear of an initializer)")
            if np.any(bias.zero_points != 0):
                raise _refuse(node, "TFLite int32 biases need zero point 0")
            values = bias.values.reshape(-1)
            scales = np.broadcast_to(bias.scales.astype(np.float32).reshape(-1), (out_channels,))
        if values.shape != (out_channels,):
            raise _refuse(node, f"expected {out_channels} bias values, found {values.shape}")
        return self._add(FbTensor(
            f"{node.name}_bias", (out_channels,), "int32", tuple(float(s) for s in scales),
            (0,) * out_channels, 0, array_bytes(values.astype(np.int32)),
        ))

    def _lower_gemm(self, node) -> None:
        attrs = attributes(node)
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise _refuse(node, "only Gemm with transA=0, alpha=1, beta=1 maps to FULLY_CONNECTED")
        self._fully_connected(node, transposed=bool(attrs.get("transB", 0)))

    def _lower_matmul(self, node) -> None:
        self._fully_connected(node, transposed=False)

    def _fully_connected(self, node, transposed: bool) -> None:
        qdq = self.qdq
        source = self._input(node, 0)
        weight = qdq.input_of(node, 1)
        bias = qdq.input_of(node, 2) if node.op_type == "Gemm" else None
        result = qdq.output_of(node)
        layout, _ = self.layout[source.name]
        if len(source.shape) != 2 or layout == NHWC:
            raise _refuse(node, f"FULLY_CONNECTED takes a 2-D input, found shape {list(source.shape)}")
        if not isinstance(weight, Constant) or weight.values.dtype != np.int8 or weight.values.ndim != 2:
            raise _refuse(node, "expected constant 2-D int8 weights (DequantizeLinear of an initializer)")
        if np.any(weight.zero_points != 0):
            raise _refuse(node, "TFLite int8 weights need zero point 0 (symmetric), found non-zero")
        values = weight.values if transposed else weight.values.T  # -> [out, in]
        output_axis = 0 if transposed else 1
        if weight.axis is not None and weight.axis != output_axis:
            raise _refuse(
                node, f"per-channel weight scales must be on the output axis {output_axis}, "
                f"found axis {weight.axis}",
            )
        out_features = values.shape[0]
        if layout == FLAT_NHWC:
            _, (_, c, h, w) = self.layout[source.name]
            # Column c*H*W + h*W + w in ONNX's order is column (h*W + w)*C + c in TFLite's.
            values = values.reshape(out_features, c, h, w).transpose(0, 2, 3, 1).reshape(out_features, -1)
        scales = np.broadcast_to(weight.scales.astype(np.float32).reshape(-1), (out_features,))
        weight_index = self._add(FbTensor(
            f"{node.name}_weights", values.shape, "int8", tuple(float(s) for s in scales),
            (0,) * out_features, 0, array_bytes(np.ascontiguousarray(values)),
        ))
        bias_index = self._bias(node, bias, source, scales, out_features)
        output = self._activation(result, SAME_ORDER, result.shape)
        self._emit(FULLY_CONNECTED, (self.index[source.name], weight_index, bias_index), (output,),
                   ("FullyConnectedOptions", {"FusedActivationFunction": NO_ACTIVATION}))

    def _lower_relu(self, node) -> None:
        self._activation_op(node, RELU)

    def _lower_clip(self, node) -> None:
        attrs = attributes(node)
        low = self.qdq.constant(node, 1)
        high = self.qdq.constant(node, 2)
        low = float(attrs.get("min", -np.inf) if low is None else np.asarray(low).reshape(()))
        high = float(attrs.get("max", np.inf) if high is None else np.asarray(high).reshape(()))
        opcode = {(0.0, np.inf): RELU, (0.0, 6.0): RELU6, (-1.0, 1.0): RELU_N1_TO_1}.get((low, high))
        if opcode is None:
            raise _refuse(node, f"Clip({low}, {high}) has no TFLite int8 activation (0..inf, 0..6, -1..1)")
        self._activation_op(node, opcode)

    def _activation_op(self, node, opcode: int) -> None:
        source = self._input(node, 0)
        result = self.qdq.output_of(node)
        layout, _ = self.layout[source.name]
        output = self._activation(result, layout, self.fb.tensors[self.index[source.name]].shape)
        self._emit(opcode, (self.index[source.name],), (output,))

    def _binary(self, node, opcode: int, table: str) -> None:
        operands = [self.qdq.input_of(node, 0), self.qdq.input_of(node, 1)]
        result = self.qdq.output_of(node)
        layouts = {self.layout[o.name][0] for o in operands if isinstance(o, Activation)}
        if len(layouts) != 1 or FLAT_NHWC in layouts:
            raise _refuse(node, "both operands must share one layout")
        layout = layouts.pop()
        indices = []
        for position, operand in enumerate(operands):
            if isinstance(operand, Activation):
                if operand.name not in self.index:
                    raise _refuse(node, f"input {operand.name!r} is not produced by a converted node")
                indices.append(self.index[operand.name])
                continue
            if operand.values.dtype != np.int8 or operand.scales.size != 1:
                raise _refuse(node, "a constant operand must be int8 with one scale")
            values = operand.values
            if layout == NHWC:
                values = values.reshape((1,) * (4 - values.ndim) + values.shape).transpose(0, 2, 3, 1)
            indices.append(self._add(FbTensor(
                f"{node.name}_constant{position}", values.shape, "int8",
                (float(operand.scales.reshape(())),), (int(operand.zero_points.reshape(())),), 0,
                array_bytes(np.ascontiguousarray(values)),
            )))
        shape = _nhwc(result.shape) if layout == NHWC else result.shape
        output = self._activation(result, layout, shape)
        self._emit(opcode, indices, (output,), (table, {"FusedActivationFunction": NO_ACTIVATION}))

    def _lower_add(self, node) -> None:
        self._binary(node, ADD, "AddOptions")

    def _lower_mul(self, node) -> None:
        self._binary(node, MUL, "MulOptions")

    def _pool(self, node, opcode: int, name: str) -> None:
        source = self._input(node, 0)
        self._require_nhwc(node, source)
        result = self.qdq.output_of(node)
        self._same_quantization(node, source, result, name)
        attrs = attributes(node)
        kernel = tuple(attrs["kernel_shape"])
        strides = tuple(attrs.get("strides", (1, 1)))
        dilations = tuple(attrs.get("dilations", (1, 1)))
        if dilations != (1, 1):
            raise _refuse(node, f"TFLite pooling has no dilation, found {list(dilations)}")
        if attrs.get("storage_order", 0):
            raise _refuse(node, "storage_order=1 (column-major indices) has no TFLite equivalent")
        padding, pads = self._spatial_padding(
            node, source.shape[2:], kernel, strides, (1, 1), result.shape[2:]
        )
        if pads is not None:
            raise _refuse(node, f"pads {list(pads)} differ from TFLite's SAME and VALID")
        expected = tuple(
            (-(-size // s)) if padding == SAME else (size - k) // s + 1
            for size, k, s in zip(source.shape[2:], kernel, strides)
        )
        if expected != tuple(result.shape[2:]):
            raise _refuse(node, f"output size {list(result.shape[2:])} (ceil_mode?) differs from "
                                f"TFLite's {list(expected)}")
        if opcode == AVERAGE_POOL_2D and padding == SAME and attrs.get("count_include_pad", 0) and any(
            p for p in attributes(node).get("pads", ())
        ):
            raise _refuse(node, "count_include_pad=1 with padding: TFLite averages real pixels only")
        output = self._activation(result, NHWC, _nhwc(result.shape))
        self._emit(opcode, (self.index[source.name],), (output,), ("Pool2DOptions", {
            "Padding": padding, "StrideW": strides[1], "StrideH": strides[0],
            "FilterWidth": kernel[1], "FilterHeight": kernel[0],
            "FusedActivationFunction": NO_ACTIVATION,
        }))

    def _lower_maxpool(self, node) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise _refuse(node, "MaxPool's Indices output has no TFLite equivalent")
        self._pool(node, MAX_POOL_2D, "MAX_POOL_2D")

    def _lower_averagepool(self, node) -> None:
        self._pool(node, AVERAGE_POOL_2D, "AVERAGE_POOL_2D")

    def _lower_globalaveragepool(self, node) -> None:
        source = self._input(node, 0)
        self._require_nhwc(node, source)
        result = self.qdq.output_of(node)
        output = self._activation(result, NHWC, _nhwc(result.shape))
        n, c, h, w = source.shape
        if (source.scale, source.zero_point) == (result.scale, result.zero_point):
            # Same quantization: AVERAGE_POOL_2D over the whole plane needs no requantization.
            self._emit(AVERAGE_POOL_2D, (self.index[source.name],), (output,), ("Pool2DOptions", {
                "Padding": VALID, "StrideW": 1, "StrideH": 1, "FilterWidth": w, "FilterHeight": h,
                "FusedActivationFunction": NO_ACTIVATION,
            }))
            return
        axes = self._int32_constant(f"{node.name}_axes", [1, 2])
        self._emit(MEAN, (self.index[source.name], axes), (output,), ("ReducerOptions", {"KeepDims": True}))

    def _lower_reshape(self, node) -> None:
        source = self._input(node, 0)
        result = self.qdq.output_of(node)
        self._same_quantization(node, source, result, "RESHAPE")
        layout, _ = self.layout[source.name]
        source_index = self.index[source.name]
        target = result.shape
        if layout == NHWC:
            n, c, h, w = source.shape
            if len(target) != 2 or target[0] != n:
                raise _refuse(node, f"only a flatten of NCHW to [N, C*H*W] is supported, "
                                    f"found {list(source.shape)} -> {list(target)}")
            consumers = self.qdq.compute_consumers(result.name)
            if h * w == 1:
                new_layout = SAME_ORDER
            elif consumers and all(
                c is not None and c.op_type in ("Gemm", "MatMul") and i == 0 for c, i in consumers
            ):
                new_layout = FLAT_NHWC  # the fully-connected weights are permuted instead
            else:
                # Another consumer needs ONNX's element order: transpose back to NCHW first.
                nchw = self._temporary(f"{node.name}_nchw", source.shape, source.scale, source.zero_point)
                perm = self._int32_constant(f"{node.name}_perm", [0, 3, 1, 2])
                self._emit(TRANSPOSE, (source_index, perm), (nchw,), ("TransposeOptions", {}))
                source_index, new_layout = nchw, SAME_ORDER
        elif layout == SAME_ORDER and len(target) != 4:
            new_layout = SAME_ORDER
        else:
            raise _refuse(node, f"reshape {list(source.shape)} -> {list(target)} changes the layout")
        shape = self._int32_constant(f"{node.name}_shape", target)
        output = self._activation(result, new_layout, target)
        if new_layout == FLAT_NHWC:
            self.layout[result.name] = (FLAT_NHWC, source.shape)
        self._emit(RESHAPE, (source_index, shape), (output,))

    def _lower_flatten(self, node) -> None:
        axis = int(attributes(node).get("axis", 1))
        if axis != 1:
            raise _refuse(node, f"only Flatten with axis=1 is supported, found axis={axis}")
        self._lower_reshape(node)

    def _lower_concat(self, node) -> None:
        operands = [self.qdq.input_of(node, i) for i in range(len(node.input))]
        if not all(isinstance(o, Activation) and o.name in self.index for o in operands):
            raise _refuse(node, "every Concat input must be a converted activation")
        result = self.qdq.output_of(node)
        layouts = {self.layout[o.name][0] for o in operands}
        if len(layouts) != 1 or FLAT_NHWC in layouts:
            raise _refuse(node, "every Concat input must share one layout")
        layout = layouts.pop()
        shape = _nhwc(result.shape) if layout == NHWC else result.shape
        indices = []
        for operand in operands:
            index = self.index[operand.name]
            if (operand.scale, operand.zero_point) != (result.scale, result.zero_point):
                # TFLite's int8 CONCATENATION copies bytes: every input must already carry the
                # output's quantization, so a QUANTIZE op requantizes the others first.
                requantized = self._temporary(
                    f"{node.name}_{operand.name}_requantized",
                    self.fb.tensors[index].shape, result.scale, result.zero_point,
                )
                self._emit(QUANTIZE, (index,), (requantized,), ("QuantizeOptions", {}))
                index = requantized
            indices.append(index)
        rank = len(result.shape)
        axis = int(attributes(node)["axis"]) % rank
        if layout == NHWC:
            axis = {0: 0, 1: 3, 2: 1, 3: 2}[axis]
        output = self._activation(result, layout, shape)
        self._emit(CONCATENATION, indices, (output,),
                   ("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": NO_ACTIVATION}))

    def _lower_softmax(self, node) -> None:
        source = self._input(node, 0)
        result = self.qdq.output_of(node)
        rank = len(source.shape)
        axis = int(attributes(node).get("axis", -1)) % rank
        if self.layout[source.name][0] != SAME_ORDER or axis != rank - 1:
            raise _refuse(node, "TFLite SOFTMAX runs over the last axis of a tensor in ONNX order")
        output = self._activation(result, SAME_ORDER, result.shape)
        # TFLite's int8 SOFTMAX writes scale 1/256, zero point -128 (quantization spec).
        fixed_scale, fixed_zero_point = 1.0 / 256.0, -128
        target = output
        if (result.scale, result.zero_point) != (fixed_scale, fixed_zero_point):
            target = self._temporary(f"{node.name}_fixed", result.shape, fixed_scale, fixed_zero_point)
        self._emit(SOFTMAX, (self.index[source.name],), (target,), ("SoftmaxOptions", {"Beta": 1.0}))
        if target != output:
            self._emit(QUANTIZE, (target,), (output,), ("QuantizeOptions", {}))

    def _lower_pad(self, node) -> None:
        attrs = attributes(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            raise _refuse(node, f"only constant padding maps to PAD, found mode {mode!r}")
        source = self._input(node, 0)
        result = self.qdq.output_of(node)
        self._same_quantization(node, source, result, "PAD")
        pads = self.qdq.constant(node, 1)
        pads = [int(p) for p in (attrs["pads"] if pads is None else pads)]
        if len(node.input) > 3 and node.input[3]:
            raise _refuse(node, "Pad with an axes input is not supported")
        value = self.qdq.constant(node, 2)
        if value is not None:
            value = float(np.asarray(value).reshape(()))
            # ONNX QuantizeLinear of the pad value: round half to even, saturate.
            quantized = np.rint(np.float32(value) / np.float32(result.scale)) + result.zero_point
            quantized = np.clip(quantized, -128, 127)
            if quantized != result.zero_point:
                raise _refuse(node, f"TFLite PAD pads with the zero point (real 0), found value {value}")
        if min(pads) < 0:
            raise _refuse(node, f"negative pads {pads}")
        rank = len(source.shape)
        paddings = [[pads[i], pads[i + rank]] for i in range(rank)]
        layout, _ = self.layout[source.name]
        if layout == NHWC:
            paddings = [paddings[0], paddings[2], paddings[3], paddings[1]]
            shape = _nhwc(result.shape)
        elif layout == SAME_ORDER:
            shape = result.shape
        else:
            raise _refuse(node, "cannot pad a flattened NHWC tensor")
        constant = self._int32_constant(f"{node.name}_paddings", paddings)
        output = self._activation(result, layout, shape)
        self._emit(PAD, (self.index[source.name], constant), (output,), ("PadOptions", {}))
