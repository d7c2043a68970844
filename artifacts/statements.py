"""The chain of attestations: one in-toto Statement v1 per transformation of the model, each
made from its stage's inputs and outputs (docs/trust.md, "The chain of attestations").

| stage     | materials (inputs)                                         | subject (output)        |
|-----------|------------------------------------------------------------|-------------------------|
| export    | the imported model's signature (if any), commit, files     | model/model.onnx        |
| calibrate | model/model.onnx, the calibration set (its digest)         | calibration/table.json  |
| quantize  | model/model.onnx, calibration/table.json (, fallback.json) | model/model.qdq.onnx    |
| compile   | model/model.qdq.onnx, compiler (name, version), firmware   | compiled/<files>        |
| evaluate  | compiled/<files>, validation set, model/model.onnx, gates  | the gates' results      |

The four transformations carry a SLSA provenance v1 predicate (https://slsa.dev/spec/v1.0/
provenance): their inputs are its `resolvedDependencies`, their settings its
`externalParameters`. The evaluation carries in-toto's test-result predicate
(https://github.com/in-toto/attestation/blob/main/spec/predicates/test-result.md): its subject
is what was tested (the compiled files), its `configuration` what it was tested with, and the
gates are its tests. Materials and subjects that are files of the bundle are named by their
path in it alone; the export's source files and the imported model's signature by their path
in the repository with a `git+<repository>@<commit>#<path>` uri, so that a source file at
`model/model.onnx` is never taken for the bundle's.

A statement holds no time, invocation id or host: it is a function of its stage's inputs and
outputs, so a stage taken from the cache is attested by the same statement. The statements are
built with in-toto-attestation's Python bindings, which check them (`Statement.validate`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tapeout.artifacts.digest import file_digest

if TYPE_CHECKING:  # annotations only
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    from tapeout.artifacts.imports import ImportedModel
    from tapeout.artifacts.provenance import SourceRevision

SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
BUILDER_ID = "urn:tapeout:builder:local"
STAGES = ("export", "calibrate", "quantize", "compile", "evaluate")
FLOAT_MODEL = "model/model.onnx"
QUANTIZED_MODEL = "model/model.qdq.onnx"
TABLE = "calibration/table.json"
FALLBACK_REPORT = "reports/fallback.json"
CALIBRATION_SET = "calibration-set"
VALIDATION_SET = "validation-set"
GATES = "gates"


def build_type(stage: str) -> str:
    return f"urn:tapeout:build-type:{stage}:v1"


@dataclass(frozen=True)
class ExportInputs:
    """What the export read, beyond the commit: the front end, the source as the config
    names it (`model.source`), every file it read by repository path with its sha256, the
    tools' versions, the model's declared interface, and the imported model file with its
    maker's signature (tapeout.artifacts.imports; None for a model built by code)."""

    frontend: str
    source: Mapping[str, object]
    files: Mapping[str, str]
    tools: Mapping[str, str]
    interface: Mapping[str, object]
    imported: ImportedModel | None = None


@dataclass(frozen=True)
class ChainInputs:
    """What the chain's statements need beyond the bundle's own files: the export's inputs,
    the calibration's settings, the validation set's manifest, and the tools whose versions
    change what calibration and quantization write."""

    export: ExportInputs
    calibration_method: str
    batch_size: int
    validation: Mapping[str, object]
    tools: Mapping[str, str] = field(default_factory=dict)


def chain_statements(
    root: Path, chain: ChainInputs, source: SourceRevision, target: str
) -> list[tuple[str, Statement]]:
    """The statement of every stage, in order, for the bundle being assembled in `root`
    (its model, calibration, compiled and reports files already written).

    Raises:
        ValueError: a statement the bindings find invalid (a bug, not bad input).
    """
    from tapeout.artifacts.documents import read_json_object

    record = read_json_object(root / "compiled" / "compiler.json")
    compiled = sorted(f"compiled/{name}" for name in record["files"])
    manifest = read_json_object(root / "calibration" / "manifest.json")
    gates = read_json_object(root / "reports" / "gates.json")
    statements = [
        ("export", export_statement(root, chain.export, source)),
        ("calibrate", calibrate_statement(root, manifest, chain)),
        ("quantize", quantize_statement(root, chain)),
        ("compile", compile_statement(root, compiled, record, target)),
        ("evaluate", evaluate_statement(root, compiled, chain.validation, gates)),
    ]
    for _, statement in statements:
        statement.validate()
    return statements


def export_statement(root: Path, inputs: ExportInputs, source: SourceRevision) -> Statement:
    commit = source.commit
    location = source.repository if "://" in source.repository else f"file://{source.repository}"
    materials = []
    imported: dict[str, object] = {}
    if inputs.imported is not None:
        model = inputs.imported
        imported = {"file": model.name, "signed": model.signed}
        if model.signed:
            imported.update(signature=model.signature_name, signer=model.signer, method=model.method)
            # The maker's signature comes first: the chain starts where the model came from.
            materials.append(_descriptor(
                name=str(model.signature_name), digest={"sha256": str(model.signature_digest)},
                uri=f"git+{location}@{commit}#{model.signature_name}",
                annotations={"signs": model.name, "signer": str(model.signer), "method": str(model.method)},
            ))
    # A dirty build read files that differ from the commit: the statement says which.
    dirty = {"dirty": source.dirty, **({"dirtyFiles": list(source.dirty_files)} if source.dirty_files else {})}
    materials.append(_descriptor(uri=f"git+{location}@{commit}", digest={"gitCommit": commit}, annotations=dirty))
    for name, digest in sorted(inputs.files.items()):
        materials.append(_descriptor(name=name, uri=f"git+{location}@{commit}#{name}", digest={"sha256": digest}))
    parameters = {"frontend": inputs.frontend, "source": dict(inputs.source), "interface": _interface(inputs.interface)}
    if imported:
        parameters["import"] = imported
    return _provenance("export", [_file(root, FLOAT_MODEL)], parameters, materials, {"tools": dict(inputs.tools)})


def _interface(interface: Mapping[str, object]) -> dict[str, object]:
    """The declared inputs as `name: dtype[shape]` (a protobuf Struct would write every size
    as a float) and the outputs' names."""
    inputs = [
        f"{item['name']}: {item['dtype']}{list(item['shape'])}" if isinstance(item, dict) else str(item)
        for item in interface.get("inputs", [])  # type: ignore[union-attr]
    ]
    return {"inputs": inputs, "outputs": list(interface.get("outputs", []))}  # type: ignore[arg-type]


def calibrate_statement(root: Path, manifest: Mapping[str, object], chain: ChainInputs) -> Statement:
    materials = [
        _file(root, FLOAT_MODEL),
        _descriptor(
            name=CALIBRATION_SET, digest={"sha256": str(manifest["digest"])},
            annotations={"digest_scheme": str(manifest.get("digest_scheme")), "count": manifest.get("count")},
        ),
    ]
    parameters = {"method": chain.calibration_method, "batch_size": chain.batch_size}
    return _provenance("calibrate", [_file(root, TABLE)], parameters, materials, {"tools": dict(chain.tools)})


def quantize_statement(root: Path, chain: ChainInputs) -> Statement:
    materials = [_file(root, FLOAT_MODEL), _file(root, TABLE)]
    if (root / FALLBACK_REPORT).is_file():
        # The accuracy fallback re-quantized with layers kept out of int8: which, and why.
        materials.append(_file(root, FALLBACK_REPORT))
    parameters = {"format": "QDQ", "fallback": (root / FALLBACK_REPORT).is_file()}
    return _provenance("quantize", [_file(root, QUANTIZED_MODEL)], parameters, materials, {"tools": dict(chain.tools)})


def compile_statement(root: Path, compiled: list[str], record: Mapping[str, object], target: str) -> Statement:
    compiler, version = str(record["compiler"]), str(record["compiler_version"])
    firmware = str(record.get("firmware_revision"))
    materials = [
        _file(root, QUANTIZED_MODEL),
        _descriptor(
            uri=f"urn:tapeout:compiler:{compiler}@{version}", name=f"compiler:{compiler}",
            annotations={"version": version, "artifact_id": str(record.get("artifact_id"))},
        ),
        _descriptor(
            uri=f"urn:tapeout:firmware:{target}@{firmware}", name=f"firmware:{target}",
            annotations={"revision": firmware, "minimum_revision": str(record.get("minimum_firmware_revision"))},
        ),
    ]
    parameters = {"target": target, "compiler": compiler, "options": dict(record.get("options") or {})}
    return _provenance("compile", [_file(root, name) for name in compiled], parameters, materials, {})


def evaluate_statement(
    root: Path, compiled: list[str], validation: Mapping[str, object], gates: Mapping[str, object]
) -> Statement:
    from in_toto_attestation.v1.statement import Statement

    thresholds = {
        gate["metric"]: {"bound": gate["bound"], "threshold": gate["threshold"]} for gate in gates.get("gates", [])
    }
    configuration = [
        _descriptor(
            name=VALIDATION_SET, digest={"sha256": str(validation["digest"])},
            annotations={"digest_scheme": str(validation.get("digest_scheme")), "count": validation.get("count")},
        ),
        _file(root, FLOAT_MODEL),  # the fp32 reference the accuracy gates compare with
        _descriptor(name=GATES, digest={"sha256": _canonical_digest(thresholds)}, annotations=thresholds),
    ]
    passed = [test_name(gate) for gate in gates.get("gates", []) if gate["passed"]]
    failed = [test_name(gate) for gate in gates.get("gates", []) if not gate["passed"]]
    predicate = {
        "result": "PASSED" if gates.get("verdict") == "pass" else "FAILED",
        "configuration": [_json(item) for item in configuration],
        "passedTests": passed,
        "failedTests": failed,
    }
    return Statement([_file(root, name).pb for name in compiled], TEST_RESULT, predicate)


def test_name(gate: Mapping[str, object]) -> str:
    """A gate as a test's name: its metric, bound and threshold, and what was observed
    (`top1_agreement >= 0.97 (observed 0.995)`)."""
    relation = "<=" if gate["bound"] == "max" else ">="
    observed = "not measured" if gate["observed"] is None else f"observed {float(gate['observed']):.6g}"
    return f"{gate['metric']} {relation} {float(gate['threshold']):.6g} ({observed})"


def _provenance(
    stage: str,
    subjects: list[ResourceDescriptor],
    parameters: Mapping[str, object],
    materials: list[ResourceDescriptor],
    internal: Mapping[str, object],
) -> Statement:
    from in_toto_attestation.v1.statement import Statement

    definition: dict[str, object] = {
        "buildType": build_type(stage),
        "externalParameters": dict(parameters),
        "resolvedDependencies": [_json(item) for item in materials],
    }
    if internal:
        definition["internalParameters"] = dict(internal)
    predicate = {"buildDefinition": definition, "runDetails": {"builder": {"id": BUILDER_ID}}}
    return Statement([item.pb for item in subjects], SLSA_PROVENANCE, predicate)


def _file(root: Path, name: str) -> ResourceDescriptor:
    return _descriptor(name=name, digest={"sha256": file_digest(root / name)})


def _descriptor(**fields: object) -> ResourceDescriptor:
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor

    descriptor = ResourceDescriptor(**fields)  # type: ignore[arg-type]
    descriptor.validate()
    return descriptor


def _json(descriptor: ResourceDescriptor) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(descriptor.pb)


def _canonical_digest(document: object) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
