"""`compiled/compiler.json`: the record that lets anyone reload a compiled artifact.

It holds every field of a CompiledArtifact except its directory, so `tapeout infer DIR`,
`tapeout bench DIR` and the gates can load the artifact with its plugin later.
"""

from __future__ import annotations

import json
from pathlib import Path

from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import CompiledArtifact, TensorSpec

RECORD_FILE = "compiler.json"


def write_record(artifact: CompiledArtifact, target_firmware: str) -> Path:
    record = {
        "compiler": artifact.compiler,
        "compiler_version": artifact.compiler_version,
        "artifact_id": artifact.artifact_id,
        "files": list(artifact.files),
        "options": dict(artifact.options),
        "target": artifact.target,
        "firmware_revision": target_firmware,
        "minimum_firmware_revision": artifact.minimum_firmware_revision,
        "inputs": [_spec_json(spec) for spec in artifact.inputs],
        "outputs": [_spec_json(spec) for spec in artifact.outputs],
        "report": dict(artifact.report),
    }
    path = artifact.directory / RECORD_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def read_record(directory: Path) -> tuple[CompiledArtifact, dict[str, object]]:
    """The artifact in `directory` (a compiled/ folder), and the raw record.

    Raises:
        InvalidInput: no readable compiler.json, or a field is missing or wrong.
    """
    path = directory / RECORD_FILE
    try:
        record = json.loads(path.read_text())
        artifact = CompiledArtifact(
            compiler=str(record["compiler"]),
            compiler_version=str(record["compiler_version"]),
            artifact_id=str(record["artifact_id"]),
            directory=directory,
            files=tuple(str(name) for name in record["files"]),
            options={str(k): str(v) for k, v in record["options"].items()},
            target=str(record["target"]),
            minimum_firmware_revision=str(record["minimum_firmware_revision"]),
            inputs=tuple(_spec(item) for item in record["inputs"]),
            outputs=tuple(_spec(item) for item in record["outputs"]),
            report=record.get("report", {}),
        )
    except OSError as error:
        raise InvalidInput(f"{path}: cannot read the compiler record ({error.strerror})") from error
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as error:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and int("x") in a shape.
        raise InvalidInput(f"{path}: malformed compiler record ({type(error).__name__}: {error})") from error
    if not isinstance(artifact.report, dict):
        raise InvalidInput(f"{path}: malformed compiler record (report: expected an object)")
    for name in artifact.files:
        resolved = (directory / name).resolve()
        if not resolved.is_relative_to(directory.resolve()) or not resolved.is_file():
            raise InvalidInput(f"{path}: artifact file {name!r} is missing or outside {directory}")
    return artifact, record


def _spec_json(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}


def _spec(item: dict[str, object]) -> TensorSpec:
    return TensorSpec(str(item["name"]), tuple(int(d) for d in item["shape"]), str(item["dtype"]))
