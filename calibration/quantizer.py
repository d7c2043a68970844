"""Quantize an fp32 ONNX model to QDQ int8 with the ranges of a calibration table.

Settings (DESIGN §1): QDQ format, int8 weights symmetric per output channel, int8 activations
asymmetric per tensor, int32 bias — what integer-only NPUs and TFLite's int8 spec expect.
ONNX Runtime's quantizer takes the table's ranges through its calibration cache, so it
never re-calibrates.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from tapeout.calibration.table import CalibrationTable
from tapeout.compilers.interface import QuantizedModel, TensorSpec


def quantize(
    float_model: Path,
    table: CalibrationTable,
    *,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    output_path: Path,
    symmetric_activations: bool = False,
    nodes_to_exclude: tuple[str, ...] = (),
) -> QuantizedModel:
    """Write the QDQ model to `output_path` and describe it.

    `symmetric_activations` gives activations zero point 0 (a target that asks for it; pair it
    with a table calibrated with `symmetric=True`, whose ranges are already [-t, t]).
    `nodes_to_exclude` names fp32 nodes the quantizer leaves in float (ONNX Runtime's
    `nodes_to_exclude`; the accuracy fallback, tapeout.flows.fallback, uses it).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

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
            onnx.load(str(float_model)),
            str(output_path),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=cache_path,
            nodes_to_exclude=list(nodes_to_exclude),
            extra_options={
                "ActivationSymmetric": symmetric_activations,
                "WeightSymmetric": True,
            },
        )
    finally:
        root.setLevel(previous_level)
        cache_path.unlink(missing_ok=True)
    return QuantizedModel(
        path=output_path,
        digest=hashlib.sha256(output_path.read_bytes()).hexdigest(),
        float_path=float_model,
        inputs=inputs,
        outputs=outputs,
    )
