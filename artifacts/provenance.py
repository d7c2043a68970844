"""`provenance.json`: an in-toto statement with a SLSA provenance v1 predicate.

Subjects are the bundle's outputs (the compiled files and the quantized model); resolved
dependencies are every material that went in: the source commit, the fp32 model, the
calibration set, the compiler and its version, the firmware revision.
Spec: https://slsa.dev/spec/v1.0/provenance and in-toto Statement v1.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass

from tapeout.compilers.versions import package_versions

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:tapeout:build-type:pipeline:v1"
BUILDER_ID = "urn:tapeout:builder:local"
_RECORDED_PACKAGES = (
    "tapeout", "onnx", "onnxruntime", "torch", "numpy", "mlflow", "prefect", "model-signing",
)


@dataclass(frozen=True)
class SourceRevision:
    """Where the build came from: the repository (a URL, or a folder), the commit, and whether
    a file the build read differed from it (`dirty_files` says which and how)."""

    repository: str
    commit: str
    dirty: bool
    dirty_files: tuple[str, ...] = ()


def environment_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **package_versions(*_RECORDED_PACKAGES)}


def provenance_statement(
    *,
    subjects: Mapping[str, str],
    materials: list[dict[str, object]],
    source: SourceRevision,
    resolved_config: Mapping[str, object],
    target: str,
    config_digest: str,
    invocation_id: str,
    started_on: str,
    finished_on: str,
) -> dict[str, object]:
    """The statement as a JSON-ready dict. `subjects` map bundle paths to sha256;
    `config_digest` is the per-target config digest the registry tags the version with, so
    that a verifier can compare what was signed with what a version is served as."""
    location = source.repository if "://" in source.repository else f"file://{source.repository}"
    annotations: dict[str, object] = {"dirty": source.dirty}
    if source.dirty_files:
        annotations["dirtyFiles"] = list(source.dirty_files)
    dependencies = [
        {
            "uri": f"git+{location}@{source.commit}",
            "digest": {"gitCommit": source.commit},
            "annotations": annotations,
        },
        *materials,
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": name, "digest": {"sha256": digest}} for name, digest in sorted(subjects.items())
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "pipeline": dict(resolved_config), "target": target, "config_digest": config_digest,
                },
                "internalParameters": {"environment": environment_versions(), "platform": platform.platform()},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"tapeout": environment_versions()["tapeout"]}},
                "metadata": {
                    "invocationId": invocation_id,
                    "startedOn": started_on,
                    "finishedOn": finished_on,
                },
            },
        },
    }
