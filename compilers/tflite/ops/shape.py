"""Ops that move values: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split,
Gather, Slice, Pad.

A Transpose emits nothing: its output is the same TFLite tensor in another layout
(compilers/tflite/layout.py). A Reshape is a RESHAPE when the axes it regroups are in order in
the TFLite tensor, else its input is transposed to an order where they are. A Gather or Slice
of a constant range is a STRIDED_SLICE (and a RESHAPE where Gather drops the axis); other
constant indices are a GATHER. All of these keep their input's quantization, as TFLite's int8
kernels require; so does PAD, which pads with the zero point (real 0). CONCATENATION copies
bytes, so an input at another quantization is requantized (QUANTIZE) first, and a constant
input is requantized here, as ONNX Runtime's float Concat followed by QuantizeLinear does.
"""

from __future__ import annotations

import numpy as np

from tapeout.compilers.tflite import layout as layouts
from tapeout.compilers.tflite.lowering import NO_ACTIVATION, Lowering, dequantize_constant, quantize_values, refuse
from tapeout.compilers.tflite.ops.convolution import requantize
from tapeout.compilers.tflite.ops.pooling import same_quantization
from tapeout.compilers.tflite.qdq import Activation, Constant, attributes


def reshape(lowering: Lowering, node, source: Activation, result: Activation, op: str = "RESHAPE") -> None:
    """`result` is `source` with another ONNX shape (same elements, row-major order)."""
    same_quantization(node, source, result, op)
    perm = lowering.perm[source.name]
    if source.name in lowering.flattened:
        raise refuse(node, "cannot reshape a flattened NHWC tensor again")
    out_perm = layouts.reshape_layout(source.shape, perm, result.shape)
    if out_perm is None and perm == layouts.NHWC and len(result.shape) == 2 and result.shape[0] == source.shape[0]:
        readers = lowering.qdq.compute_consumers(result.name)
        if readers and all(r is not None and r.op_type in ("Gemm", "MatMul") and i == 0 for r, i in readers):
            # A flatten read only by fully-connected layers stays in HWC order; their weight
            # columns are permuted instead (compilers/tflite/ops/convolution.py).
            shape = lowering.int32_constant(f"{node.name}_shape", result.shape)
            output = lowering.define(result, (0, 1))
            lowering.flattened[result.name] = tuple(source.shape[1:])
            lowering.emit("RESHAPE", (lowering.index[source.name], shape), (output,))
            return
    if out_perm is None:
        perm = layouts.reshape_input_layout(source.shape, perm, result.shape)
        out_perm = layouts.reshape_layout(source.shape, perm, result.shape)
    source_index = lowering.read(node, source, perm)
    tflite_shape = layouts.tflite_shape(result.shape, out_perm)
    if tflite_shape == lowering.shape_of(source_index):
        # Same bytes, same shape: the result is the input tensor under another name.
        lowering.index[result.name], lowering.perm[result.name] = source_index, out_perm
        return
    shape = lowering.int32_constant(f"{node.name}_shape", tflite_shape)
    output = lowering.define(result, out_perm)
    lowering.emit("RESHAPE", (source_index, shape), (output,))


def lower_reshape(lowering: Lowering, node) -> None:
    reshape(lowering, node, lowering.input(node, 0), lowering.qdq.output_of(node))


lower_flatten = lower_squeeze = lower_unsqueeze = lower_reshape


def lower_transpose(lowering: Lowering, node) -> None:
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    same_quantization(node, source, result, "TRANSPOSE")
    rank = len(source.shape)
    order = tuple(int(a) for a in attributes(node).get("perm", range(rank - 1, -1, -1)))
    perm = lowering.perm[source.name]
    if source.name in lowering.flattened:
        raise refuse(node, "cannot transpose a flattened NHWC tensor")
    lowering.index[result.name] = lowering.index[source.name]
    lowering.perm[result.name] = layouts.after_transpose(perm, order)


def lower_concat(lowering: Lowering, node) -> None:
    result = lowering.qdq.output_of(node)
    operands, activations = lowering.operands(node)
    lead = activations[0]
    perm = lowering.perm[lead.name]
    rank = len(result.shape)
    indices = []
    for position, operand in enumerate(operands):
        if isinstance(operand, Constant):
            # ONNX Runtime: DequantizeLinear, float Concat, QuantizeLinear at the output's.
            values = quantize_values(dequantize_constant(operand), result.scale, result.zero_point)
            values = values.reshape(operand.values.shape).transpose(perm)
            indices.append(lowering.quantized_constant(
                f"{node.name}_constant{position}", values, result.scale, result.zero_point
            ))
            continue
        index = lowering.read(node, operand, perm)
        if (operand.scale, operand.zero_point) != (result.scale, result.zero_point):
            # TFLite's int8 CONCATENATION copies bytes: every input must already carry the
            # output's quantization, so a QUANTIZE op requantizes the others first.
            requantized = lowering.temporary(
                f"{node.name}_{operand.name}_requantized", lowering.shape_of(index), result.scale,
                result.zero_point,
            )
            requantize(lowering, f"{node.name}_{operand.name}_requantized", index, operand, requantized)
            index = requantized
        indices.append(index)
    axis = layouts.tflite_axis(perm, int(attributes(node)["axis"]) % rank)
    output = lowering.define(result, perm)
    lowering.emit("CONCATENATION", indices, (output,),
                  ("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": NO_ACTIVATION}))


def lower_split(lowering: Lowering, node) -> None:
    source = lowering.input(node, 0)
    rank = len(source.shape)
    axis = int(attributes(node).get("axis", 0)) % rank
    results = [lowering.qdq.output_of(node, i) for i in range(len(node.output))]
    perm = lowering.perm[source.name]
    source_index = lowering.read(node, source, perm)
    tflite_axis = layouts.tflite_axis(perm, axis)
    sizes = [r.shape[axis] for r in results]
    outputs = []
    for result in results:
        if (result.scale, result.zero_point) == (source.scale, source.zero_point):
            outputs.append(lowering.define(result, perm))
        else:  # split at the input's quantization, then requantize that part
            outputs.append(lowering.temporary(f"{result.name}_split", layouts.tflite_shape(result.shape, perm),
                                              source.scale, source.zero_point))
    axis_index = lowering.int32_constant(f"{node.name}_axis", np.array(tflite_axis, np.int32))
    if len(set(sizes)) == 1:
        lowering.emit("SPLIT", (axis_index, source_index), outputs, ("SplitOptions", {"NumSplits": len(sizes)}))
    else:
        splits = lowering.int32_constant(f"{node.name}_sizes", sizes)
        lowering.emit("SPLIT_V", (source_index, splits, axis_index), outputs, ("SplitVOptions", {"NumSplits": len(sizes)}))
    for output, result in zip(outputs, results):
        if result.name not in lowering.index or lowering.index[result.name] != output:
            lowering.define(result, perm)
            lowering.requantize(output, result)


def _strided_slice(lowering: Lowering, node, source: Activation, begins, ends, name: str, scale, zero_point) -> int:
    """STRIDED_SLICE of `source` (in its layout) from ONNX `begins` to `ends` (per ONNX axis)."""
    perm = lowering.perm[source.name]
    source_index = lowering.read(node, source, perm)
    begin = [begins[axis] for axis in perm]
    end = [ends[axis] for axis in perm]
    shape = tuple(e - b for b, e in zip(begin, end))
    output = lowering.temporary(name, shape, scale, zero_point)
    lowering.emit("STRIDED_SLICE", (
        source_index, lowering.int32_constant(f"{name}_begin", begin),
        lowering.int32_constant(f"{name}_end", end), lowering.int32_constant(f"{name}_strides", [1] * len(perm)),
    ), (output,), ("StridedSliceOptions", {"BeginMask": 0, "EndMask": 0, "EllipsisMask": 0, "NewAxisMask": 0,
                                           "ShrinkAxisMask": 0, "Offset": False}))
    return output


def _sliced(lowering: Lowering, node, source: Activation, result: Activation, begins, ends) -> None:
    """`result` = the ONNX slice [begins, ends) of `source`, reshaped to `result.shape`."""
    if list(begins) == [0] * len(begins) and list(ends) == list(source.shape):
        reshape(lowering, node, source, result, node.op_type.upper())
        return
    same_quantization(node, source, result, node.op_type.upper())
    shape = tuple(e - b for b, e in zip(begins, ends))
    perm = lowering.perm[source.name]
    exact = shape == tuple(result.shape)
    name = result.name if exact else f"{node.name}_slice"
    index = _strided_slice(lowering, node, source, begins, ends, name, result.scale, result.zero_point)
    part = result if exact else Activation(name, result.scale, result.zero_point, shape)
    lowering.index[part.name], lowering.perm[part.name] = index, perm
    if not exact:
        reshape(lowering, node, part, result)


def lower_gather(lowering: Lowering, node) -> None:
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    indices = lowering.qdq.constant(node, 1)
    if indices is None:
        raise refuse(node, "Gather indices must be a constant")
    rank = len(source.shape)
    axis = int(attributes(node).get("axis", 0)) % rank
    flat = np.asarray(indices).reshape(-1).astype(np.int64) % source.shape[axis]
    if flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
        begins = [0] * rank
        ends = list(source.shape)
        begins[axis], ends[axis] = int(flat[0]), int(flat[0] + flat.size)
        _sliced(lowering, node, source, result, begins, ends)
        return
    same_quantization(node, source, result, "GATHER")
    if np.asarray(indices).ndim != 1:
        raise refuse(node, "GATHER of non-contiguous indices takes 1-D indices")
    perm = layouts.identity(rank)
    source_index = lowering.read(node, source, perm)
    output = lowering.define(result, perm)
    lowering.emit("GATHER", (source_index, lowering.int32_constant(f"{node.name}_indices", flat)), (output,),
                  ("GatherOptions", {"Axis": axis, "BatchDims": 0}))


def lower_slice(lowering: Lowering, node) -> None:
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    rank = len(source.shape)
    starts, ends = lowering.qdq.constant(node, 1), lowering.qdq.constant(node, 2)
    axes, steps = lowering.qdq.constant(node, 3), lowering.qdq.constant(node, 4)
    axes = range(rank) if axes is None else [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    if steps is not None and np.any(np.asarray(steps) != 1):
        raise refuse(node, f"Slice steps {np.asarray(steps).tolist()}: only step 1 is supported")
    begins, stops = [0] * rank, list(source.shape)
    for axis, start, end in zip(axes, np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)):
        size = source.shape[axis]
        start, end = int(start), int(end)
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, 0), size)
        begins[axis], stops[axis] = start, max(end, start)
    _sliced(lowering, node, source, result, begins, stops)


def lower_pad(lowering: Lowering, node) -> None:
    attrs = attributes(node)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise refuse(node, f"only constant padding maps to PAD, found mode {mode!r}")
    source = lowering.input(node, 0)
    result = lowering.qdq.output_of(node)
    same_quantization(node, source, result, "PAD")
    pads = lowering.qdq.constant(node, 1)
    pads = [int(p) for p in (attrs["pads"] if pads is None else pads)]
    if len(node.input) > 3 and node.input[3]:
        raise refuse(node, "Pad with an axes input is not supported")
    value = lowering.qdq.constant(node, 2)
    if value is not None:
        value = float(np.asarray(value).reshape(()))
        if quantize_values(value, result.scale, result.zero_point) != result.zero_point:
            raise refuse(node, f"TFLite PAD pads with the zero point (real 0), found value {value}")
    if min(pads) < 0:
        raise refuse(node, f"negative pads {pads}")
    if source.name in lowering.flattened:
        raise refuse(node, "cannot pad a flattened NHWC tensor")
    rank = len(source.shape)
    perm = lowering.perm[source.name]
    paddings = [[pads[axis], pads[axis + rank]] for axis in perm]
    source_index = lowering.read(node, source, perm)
    constant = lowering.int32_constant(f"{node.name}_paddings", paddings)
    output = lowering.define(result, perm)
    lowering.emit("PAD", (source_index, constant), (output,), ("PadOptions", {}))


LOWERINGS = {
    "Reshape": lower_reshape,
    "Flatten": lower_flatten,
    "Squeeze": lower_squeeze,
    "Unsqueeze": lower_unsqueeze,
    "Transpose": lower_transpose,
    "Concat": lower_concat,
    "Split": lower_split,
    "Gather": lower_gather,
    "Slice": lower_slice,
    "Pad": lower_pad,
}
