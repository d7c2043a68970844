"""The differential check behind `tapeout diff BUNDLE_OR_ARTIFACT --against int8-ref`: build
the subject's QDQ model with a reference compiler and compare the two on the same samples
(tapeout.compilers.diff counts the differences).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from tapeout.compilers.diff import TensorDiff, compare_runners, output_lsb
from tapeout.compilers.errors import InvalidInput, TapeoutError
from tapeout.compilers.interface import CompiledArtifact, QuantizedModel, TargetProfile


class DiffExceeded(TapeoutError):
    """An output differs from the reference by more than the allowed number of LSB."""

    exit_code = 1


@dataclass(frozen=True)
class DiffReport:
    candidate: Mapping[str, str]
    reference: Mapping[str, str]
    samples: int
    sample_set: str
    outputs: tuple[TensorDiff, ...]
    layers: tuple[TensorDiff, ...]
    layers_note: str
    first_divergent_layer: str | None
    tolerance_lsb: int

    def to_json(self) -> dict[str, object]:
        document = asdict(self)
        for group in ("outputs", "layers"):
            for entry, item in zip(document[group], getattr(self, group)):
                entry["histogram"] = {str(k): v for k, v in sorted(item.histogram.items())}
                entry["differing"] = item.differing
        return document


@dataclass(frozen=True)
class _Subject:
    artifact: CompiledArtifact
    qdq_model: Path
    float_model: Path
    sample_set: Path | None
    sample_kind: str


def _subject(path: Path, model: Path | None) -> _Subject:
    """A bundle folder (model/, compiled/, calibration/) or a compiled artifact folder."""
    from tapeout.artifacts.compiled import read_record

    if (path / "compiled").is_dir() and (path / "model").is_dir():
        artifact, _ = read_record((path / "compiled").resolve())
        qdq = model or path / "model" / "model.qdq.onnx"
        fp32 = path / "model" / "model.onnx"
        calibration = sorted(
            entry for entry in (path / "calibration").iterdir() if entry.name not in ("manifest.json", "table.json")
        ) if (path / "calibration").is_dir() else []
        sample_set = calibration[0] if calibration else None
        return _Subject(artifact, qdq, fp32 if fp32.is_file() else qdq, sample_set, "the bundle's calibration set")
    if (path / "compiler.json").is_file():
        artifact, _ = read_record(path.resolve())
        if model is None:
            raise InvalidInput(
                f"{path}: a compiled artifact folder holds no QDQ model; pass --model MODEL.qdq.onnx "
                "(or give the bundle folder)"
            )
        return _Subject(artifact, model, model, None, "")
    raise InvalidInput(f"{path}: expected a bundle folder (model/, compiled/) or a compiled folder with compiler.json")


def _default_firmware(compiler) -> str:
    from tapeout.compilers.versions import parse_version

    oldest, newest = compiler.capabilities().firmware_range
    candidates = [oldest] + ([newest] if newest else [])
    try:
        parse_version(compiler.version)
        candidates.append(compiler.version)
    except InvalidInput:
        pass
    return max(candidates, key=parse_version)


def run_diff(
    subject_path: Path,
    against: str,
    *,
    model: Path | None = None,
    sample_set: Path | None = None,
    options: Mapping[str, str] | None = None,
    firmware: str | None = None,
    lsb_overrides: Mapping[str, float] | None = None,
    limit: int | None = None,
    tolerance_lsb: int = 1,
    workdir: Path,
) -> DiffReport:
    """Build the subject's QDQ model with `against`, run both on the sample set, compare.

    Raises:
        InvalidInput: the subject, model or sample set is missing or does not fit.
        PluginError, UnsupportedOperator, CompilationFailed: from loading or compiling.
    """
    from tapeout.calibration.dataset import load_sample_set
    from tapeout.compilers.frontends import check_model
    from tapeout.compilers.registry import load_compiler

    subject = _subject(subject_path, model)
    described = check_model(subject.qdq_model)
    set_path, kind = (sample_set, "given") if sample_set is not None else (subject.sample_set, subject.sample_kind)
    if set_path is None:
        raise InvalidInput(f"{subject_path}: no sample set to run; pass --set SET (.npz or folder)")
    samples = load_sample_set(set_path, described.inputs)
    count = samples.count if limit is None else min(limit, samples.count)
    candidate_compiler = load_compiler(subject.artifact.compiler)
    candidate = candidate_compiler.load(subject.artifact)
    reference_compiler = load_compiler(against)
    target = TargetProfile(
        "diff-reference", against, firmware or _default_firmware(reference_compiler), dict(options or {})
    )
    quantized = QuantizedModel(
        subject.qdq_model, described.digest, subject.float_model, described.inputs, described.outputs
    )
    try:
        reference_artifact = reference_compiler.compile(quantized, target, workdir)
    except InvalidInput as error:
        if firmware is not None:
            raise
        raise InvalidInput(
            f"{error} (the reference was built for firmware {target.firmware_revision}, the default "
            f"for {against}: pass --firmware)"
        ) from error
    reference = reference_compiler.load(reference_artifact)
    lsb = {**output_lsb(subject.qdq_model), **dict(lsb_overrides or {})}
    outputs, layers, note, first = compare_runners(
        candidate, reference, samples.chunks(described.inputs[0].shape[0]), described.inputs, count, lsb,
        tolerance_lsb,
    )
    return DiffReport(
        candidate={
            "compiler": subject.artifact.compiler,
            "compiler_version": subject.artifact.compiler_version,
            "artifact_id": subject.artifact.artifact_id,
            "path": str(subject_path),
        },
        reference={
            "compiler": against,
            "compiler_version": reference_artifact.compiler_version,
            "artifact_id": reference_artifact.artifact_id,
            "firmware_revision": target.firmware_revision,
            "options": json.dumps(dict(reference_artifact.options), sort_keys=True),
        },
        samples=count,
        # The bundle's own set is named inside the bundle: a downloaded bundle's folder is gone
        # when the command ends.
        sample_set=f"{set_path.relative_to(subject_path) if sample_set is None else set_path} "
        f"({kind}, digest {samples.digest[:16]})",
        outputs=outputs,
        layers=layers,
        layers_note=note,
        first_divergent_layer=first,
        tolerance_lsb=tolerance_lsb,
    )
