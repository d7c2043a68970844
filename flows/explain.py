"""What `tapeout explain` shows: a bundle's per-layer sensitivity, ranked, and what the accuracy
fallback kept out of int8.

A bundle built since the sensitivity report carries reports/sensitivity.json (measured on the
validation set during the build) and, when the accuracy fallback ran, reports/fallback.json.
An older bundle has neither: the analysis is then computed from the bundle's own models,
table and calibration set (the only data a bundle holds; it has no labels, so accuracy
columns stay empty) and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tapeout.compilers.errors import InvalidInput


@dataclass(frozen=True)
class Explanation:
    """The sensitivity document (tapeout.flows.sensitivity), whether it was computed now
    rather than read from the bundle, and the fallback report if the bundle has one."""

    sensitivity: dict
    computed_now: bool
    fallback: dict | None


def explain_bundle(bundle: Path, samples: int, workdir: Path) -> Explanation:
    """The bundle's recorded sensitivity, else one computed from at most `samples` of its
    calibration set in `workdir`.

    Raises:
        InvalidInput: not a tapeout bundle (a model or the calibration manifest is missing).
    """
    report = bundle / "reports" / "sensitivity.json"
    computed = not report.exists()
    document = _compute(bundle, samples, workdir) if computed else json.loads(report.read_text())
    fallback_path = bundle / "reports" / "fallback.json"
    fallback = json.loads(fallback_path.read_text()) if fallback_path.exists() else None
    return Explanation(document, computed, fallback)


def _compute(bundle: Path, samples: int, workdir: Path) -> dict[str, object]:
    """Sensitivity from what an older bundle holds: its models, table and calibration set."""
    from tapeout.calibration.dataset import load_sample_set
    from tapeout.calibration.table import CalibrationTable
    from tapeout.compilers.frontends import check_model
    from tapeout.compilers.interface import QuantizedModel
    from tapeout.flows.sensitivity import analyse

    float_path = bundle / "model" / "model.onnx"
    quantized_path = bundle / "model" / "model.qdq.onnx"
    manifest_path = bundle / "calibration" / "manifest.json"
    for path in (float_path, quantized_path, manifest_path):
        if not path.exists():
            raise InvalidInput(f"{bundle}: not a tapeout bundle ({path.relative_to(bundle)} is missing)")
    manifest = json.loads(manifest_path.read_text())
    described = check_model(quantized_path)
    quantized = QuantizedModel(quantized_path, described.digest, float_path, described.inputs, described.outputs)
    data = load_sample_set(bundle / "calibration" / str(manifest["file"]), described.inputs)
    table = CalibrationTable.read(bundle / "calibration" / "table.json")
    result = analyse(
        float_path, quantized, data, table=table, samples_limit=samples, data_name="calibration",
        workdir=workdir,
    )
    return result.to_document()
