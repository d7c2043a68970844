"""Quantize an fp32 ONNX model to QDQ int8 with the ranges of a calibration table.

Settings (docs/calibration.md): QDQ format, int8 weights symmetric per output channel, int8 activations
asymmetric per tensor, int32 bias — what integer-only NPUs and TFLite's int8 spec expect.
ONNX Runtime's quantizer takes the table's ranges through its calibration cache, so it
never re-calibrates. Named activations can be widened to int16 (mixed precision, for the
accuracy fallback on integer-only targets).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from tapeout.calibration.table import CalibrationTable
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import QuantizedModel, TensorSpec

# How many tensor names an error message lists as examples.
_SHOWN = 8


def quantize(
    float_model: Path,
    table: CalibrationTable,
    *,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    output_path: Path,
    symmetric_activations: bool = False,
    nodes_to_exclude: tuple[str, ...] = (),
    int16_activations: tuple[str, ...] = (),
) -> QuantizedModel:
    """Write the QDQ model to `output_path` and describe it.

    `symmetric_activations` gives activations zero point 0 (a target that asks for it; pair it
    with a table calibrated with `symmetric=True`, whose ranges are already [-t, t]).
    `nodes_to_exclude` names fp32 nodes the quantizer leaves in float (ONNX Runtime's
    `nodes_to_exclude`; the accuracy fallback, tapeout.flows.fallback, uses it).
    `int16_activations` names fp32 activation tensors quantized to int16 instead of int8
    (ONNX Runtime's mixed precision, `TensorQuantOverrides` with `QuantType.QInt16`; the
    accuracy fallback on an integer-only target uses it). A name is valid when the quantizer
    gives that tensor a QuantizeLinear of its own: a graph input, or the output of a node it
    quantizes. Not valid: a Conv/Gemm output that a Relu/Clip follows (the quantizer fuses the
    activation, so name the Relu's output instead), and the output of MaxPool, Reshape,
    Flatten, Transpose, Squeeze, Unsqueeze and other ops that inherit their input's
    parameters (name their input; the int16 parameters then propagate through them). The
    int16 scale follows the same rule as int8 (asymmetric: zero point -32768 for a
    non-negative range; `symmetric_activations`: zero point 0). ONNX Runtime raises the model
    to opset 21 for int16 QuantizeLinear. The empty default writes exactly what it wrote
    before the option existed (the stage cache depends on it).

    Raises:
        InvalidInput: a name in `int16_activations` is not an activation tensor of the model,
            or is one the quantizer does not quantize on its own (the message lists valid ones).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    float_proto = onnx.load(str(float_model))
    wanted = tuple(dict.fromkeys(int16_activations))  # order kept, duplicates dropped
    known = _activation_names(float_proto)  # before ONNX Runtime sees (and may edit) the proto
    _check_activations(known, wanted, float_model)
    extra_options: dict[str, object] = {
        "ActivationSymmetric": symmetric_activations,
        "WeightSymmetric": True,
    }
    if wanted:
        # ONNX Runtime's per-tensor override (onnxruntime/quantization/tensor_quant_overrides.py):
        # a list with one dict applies to every consumer of the tensor.
        extra_options["TensorQuantOverrides"] = {
            name: [{"quant_type": QuantType.QInt16}] for name in wanted
        }
    output_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path = output_path.with_name(output_path.stem + ".ranges.json")
    # ONNX Runtime's calibration-cache format (onnxruntime/quantization/calibrate.py,
    # TensorsData.to_dict): the quantizer only reads lowest/highest for MinMax.
    cache = {
        "calibration_method": {"CLS": "CalibrationMethod", "value": "CalibrationMethod.MinMax"},
        "data": {
            name: {"lowest": value.low, "highest": value.high, "CLS": "TensorData"}
            for name, value in table.ranges.items()
        },
    }
    cache_path.write_text(json.dumps(cache))
    # ONNX Runtime's quantizer logs a pre-processing suggestion on the root logger on every
    # call; the export already ran shape inference, so keep a run's output to what matters.
    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            # A ModelProto, not the path: given a path, ONNX Runtime writes
            # "<model>-inferred.onnx" beside the model and deletes it again, so two
            # quantizations of one model at once (targets' fallbacks run concurrently) would
            # remove each other's file. With a ModelProto it works in a temporary folder.
            float_proto,
            str(output_path),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=cache_path,
            nodes_to_exclude=list(nodes_to_exclude),
            extra_options=extra_options,
        )
    finally:
        root.setLevel(previous_level)
        cache_path.unlink(missing_ok=True)
    if wanted:
        _check_int16_applied(output_path, wanted, known)
    return describe_quantized(output_path, float_model, inputs, outputs)


def describe_quantized(
    path: Path, float_model: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> QuantizedModel:
    """The QuantizedModel of a QDQ file written from `float_model` (its digest: the file's sha256)."""
    return QuantizedModel(
        path=path,
        digest=hashlib.sha256(path.read_bytes()).hexdigest(),
        float_path=float_model,
        inputs=inputs,
        outputs=outputs,
    )


def _activation_names(model) -> list[str]:
    """Graph inputs that are not initializers, then node outputs, in graph order."""
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    names += [o for node in model.graph.node for o in node.output if o]
    return list(dict.fromkeys(names))


def _check_activations(known: list[str], wanted: tuple[str, ...], where: Path) -> None:
    """Every requested name must be an activation tensor of the fp32 model."""
    known_set = set(known)
    for name in wanted:
        if name not in known_set:
            raise InvalidInput(
                f"int16_activations: tensor {name!r} is not an activation of {where}; "
                f"activations include {known[:_SHOWN]}"
            )


def _check_int16_applied(quantized: Path, wanted: tuple[str, ...], known: list[str]) -> None:
    """ONNX Runtime ignores an override on a tensor it does not quantize on its own (a fused
    Conv output, a MaxPool/Reshape output that inherits its input's parameters): refuse that
    rather than return a model that is silently int8 there."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(quantized))
    init_types = {i.name: i.data_type for i in model.graph.initializer}
    known_set = set(known)
    dq_of = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    int16: set[str] = set()
    own: list[str] = []
    seen_scales: set[str] = set()
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        # The fp32 tensor this QuantizeLinear stands for: its input, or, for a graph output
        # (which the quantizer gives to the DequantizeLinear after it), that DQ's output.
        name = q.input[0]
        dq = dq_of.get(q.output[0])
        if name not in known_set and dq is not None:
            name = dq.output[0]
        if len(q.input) > 2 and init_types.get(q.input[2]) == TensorProto.INT16:
            int16.add(name)
        # Parameters of its own: the first QuantizeLinear (in graph order) to use that scale
        # initializer; later users inherit them.
        if q.input[1] not in seen_scales:
            seen_scales.add(q.input[1])
            own.append(name)
    missing = [name for name in wanted if name not in int16]
    if missing:
        quantized.unlink(missing_ok=True)
        raise InvalidInput(
            f"int16_activations: tensor {missing[0]!r} is not quantized on its own by ONNX "
            "Runtime's quantizer (a Conv/Gemm output fused with its Relu/Clip, or the output "
            "of an op such as MaxPool or Reshape that inherits its input's parameters), so it "
            f"cannot be made int16; tensors it quantizes include {own[:_SHOWN]}"
        )
