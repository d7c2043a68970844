"""Cache keys: the digest of everything a stage's output depends on (docs/architecture.md,
"One run").

A key names the stage's output folder under `<home>/cache/<stage>/<key>` and Prefect's
persisted result record, so an unchanged stage is not run again, also in a new process.
Each key includes the versions of the libraries whose output it is: a new onnxruntime means
a new quantized model, so it must mean a new key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tapeout.artifacts.digest import file_digest
from tapeout.compilers.frontends import frontend_for
from tapeout.compilers.interface import TargetProfile
from tapeout.compilers.versions import package_versions
from tapeout.flows.config import Pipeline

# Bump when a stage's own code changes what it writes for the same inputs.
STAGE_FORMAT = {"export": 1, "calibrate": 2, "quantize": 1, "reference": 1, "compile": 2, "evaluate": 2}


def _key(stage: str, document: dict) -> str:
    document = {"stage": stage, "format": STAGE_FORMAT[stage], **document}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def export_key(pipeline: Pipeline) -> str:
    source = pipeline.model_source()
    # The front end says what its export depends on (file digests, tool versions).
    material = frontend_for(source).material(source)
    config = pipeline.config.model
    return _key(
        "export",
        {**material, "inputs": [item.model_dump() for item in config.inputs], "outputs": config.outputs},
    )


def calibrate_key(model_digest: str, set_digest: str, method: str, batch_size: int) -> str:
    return _key(
        "calibrate",
        {
            "model": model_digest,
            "set": set_digest,
            "method": method,
            "batch_size": batch_size,
            "tools": package_versions("onnxruntime", "tapeout"),
        },
    )


def quantize_key(model_digest: str, table: Path) -> str:
    return _key(
        "quantize",
        {"model": model_digest, "table": file_digest(table), "tools": package_versions("onnxruntime", "tapeout")},
    )


# What a cached compile record holds. Raised when compilers start reporting something new
# (2: report["cost"], the work counted from the lowered program; 3: the compile time moved from
# the report to the stage folder's timings.json, and int8-ref's report names the op where its
# memory peaks), so an older record, which lacks it, is not reused in its place.
COMPILE_RECORD = 3


def compile_key(quantized_digest: str, target: TargetProfile, compiler_version: str) -> str:
    return _key(
        "compile",
        {
            "record": COMPILE_RECORD,
            "model": quantized_digest,
            "compiler": target.compiler,
            "compiler_version": compiler_version,
            "firmware": target.firmware_revision,
            "options": target.options_digest(),
            "memory_budget_bytes": target.memory_budget_bytes,
        },
    )


def reference_key(model_digest: str, validation_digest: str) -> str:
    """The fp32 model's predictions on the validation set (flows.stages.reference_stage)."""
    return _key(
        "reference",
        {"model": model_digest, "validation": validation_digest, "tools": package_versions("onnxruntime", "tapeout")},
    )


def evaluate_key(artifact_files: list[Path], validation_digest: str, reference_digest: str) -> str:
    return _key(
        "evaluate",
        {
            "artifact": [file_digest(path) for path in artifact_files],
            "validation": validation_digest,
            "reference": reference_digest,
            "metrics": "v2",  # v2 added p99, throughput, warm-up, output SQNR/cosine and every latency
        },
    )
