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
    """Write `compiler.json` beside the artifact's files. The newest firmware that can run
    the artifact is the compiler's declared upper bound (its capabilities' `firmware_range`:
    exact for OpenVINO, whose blob imports only into the release that exported it; none for
    most), recorded here so that promotion checks the deployed revision against the signed
    range rather than against the plugin installed where it runs."""
    from tapeout.compilers.registry import load_compiler

    maximum = load_compiler(artifact.compiler).capabilities().firmware_range[1]
    record = {
        "compiler": artifact.compiler,
        "compiler_version": artifact.compiler_version,
        "artifact_id": artifact.artifact_id,
        "files": list(artifact.files),
        "options": dict(artifact.options),
        "target": artifact.target,
        "firmware_revision": target_firmware,
        "minimum_firmware_revision": artifact.minimum_firmware_revision,
        "maximum_firmware_revision": maximum,
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


def file_digests(directory: Path, names: object) -> dict[str, str]:
    """sha256 of each file a record's `files` names, by name; a name that is missing is left
    out (the signature check names it), one that leads outside `directory` is refused.

    Raises:
        InvalidInput: `names` is not a list of strings, or one leads outside `directory`.
    """
    from tapeout.artifacts.digest import file_digest

    path = directory / RECORD_FILE
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise InvalidInput(f"{path}: files: expected a list of paths, found {names!r}")
    root = directory.resolve()
    digests = {}
    for name in names:
        resolved = (directory / name).resolve()
        if not resolved.is_relative_to(root):
            raise InvalidInput(f"{path}: files: {name!r} leads outside {directory}; refusing to read it")
        if resolved.is_file():
            digests[name] = file_digest(resolved)
    return digests


def _spec_json(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}


def _spec(item: dict[str, object]) -> TensorSpec:
    return TensorSpec(str(item["name"]), tuple(int(d) for d in item["shape"]), str(item["dtype"]))
