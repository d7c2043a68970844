"""What each cached stage leaves in its folder, so that the folder alone gives its result back:
in a later process, or in another home after the stage store fetched the folder
(artifacts.stage_store). A folder holds files only, never a pickled object: a fetched folder
comes from another machine.

Each stage has a `load_*` (its result, from the folder and the arguments the stage was called
with: a result that names a file of an earlier stage names the caller's copy of it); a stage
whose own function writes no record is run through its `run_*`, which writes one (calibrate
and quantize write theirs: table.json, model.qdq.onnx).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from tapeout.artifacts.compiled import read_record, write_record
from tapeout.calibration.dataset import SampleSet
from tapeout.calibration.quantizer import describe_quantized
from tapeout.calibration.table import CalibrationTable
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.frontends import ExportedModel
from tapeout.compilers.interface import CompiledArtifact, QuantizedModel, TargetProfile, TensorSpec
from tapeout.flows import stages
from tapeout.flows.config import Pipeline
from tapeout.flows.evaluate import Evaluation, Predictions

EXPORT_FILE = "exported.json"
EVALUATION_FILE = "evaluation.json"
TABLE_FILE = "table.json"
QUANTIZED_FILE = "model.qdq.onnx"


def _specs(items) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(str(item["name"]), tuple(int(n) for n in item["shape"]), str(item["dtype"])) for item in items)


def run_export(pipeline: Pipeline, workdir: Path) -> ExportedModel:
    model = stages.export_stage(pipeline, workdir)
    record = {
        "file": model.path.relative_to(workdir).as_posix(), "digest": model.digest, "opset": model.opset,
        "inputs": [asdict(spec) for spec in model.inputs], "outputs": [asdict(spec) for spec in model.outputs],
    }
    (workdir / EXPORT_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return model


def load_export(workdir: Path) -> ExportedModel:
    """Raises: InvalidInput (no readable record)."""
    path = workdir / EXPORT_FILE
    try:
        record = json.loads(path.read_text())
        return ExportedModel(
            workdir / record["file"], str(record["digest"]), int(record["opset"]),
            _specs(record["inputs"]), _specs(record["outputs"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidInput(f"{path}: cannot read the export record ({type(error).__name__}: {error})") from error


def load_calibrate(workdir: Path, samples: SampleSet) -> stages.Calibrated:
    """The table, and the kept copy of `samples` (the set the key was computed from)."""
    kept = workdir / "set" / samples.path.name
    if not kept.exists():
        raise InvalidInput(f"{kept}: the calibration stage's copy of its set is missing")
    return stages.Calibrated(replace(samples, path=kept), CalibrationTable.read(workdir / TABLE_FILE), workdir / TABLE_FILE)


def load_quantize(workdir: Path, model: ExportedModel) -> QuantizedModel:
    path = workdir / QUANTIZED_FILE
    if not path.is_file():
        raise InvalidInput(f"{path}: the quantized model is missing")
    return describe_quantized(path, model.path, model.inputs, model.outputs)


def run_compile(model: QuantizedModel, target: TargetProfile, workdir: Path) -> CompiledArtifact:
    artifact = stages.compile_stage(model, target, workdir)
    write_record(artifact, target.firmware_revision)
    return artifact


def load_compile(workdir: Path) -> CompiledArtifact:
    return read_record(workdir)[0]


def run_evaluate(artifact: CompiledArtifact, validation: SampleSet, reference: Predictions, workdir: Path) -> Evaluation:
    evaluation = stages.evaluate_stage(artifact, validation, reference)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / EVALUATION_FILE).write_text(json.dumps(asdict(evaluation), sort_keys=True, default=float))
    return evaluation


def load_evaluate(workdir: Path) -> Evaluation:
    document = json.loads((workdir / EVALUATION_FILE).read_text())
    document["latencies_ms"] = tuple(document.get("latencies_ms", ()))
    return Evaluation(**document)
