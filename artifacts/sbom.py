"""`sbom.cdx.json`: the bundle's AI bill of materials, CycloneDX 1.6 (docs/trust.md, "The AI
bill of materials").

- the model, as the bundle's subject (`metadata.component`, type `machine-learning-model`):
  its name and commit, a model card (the task where the config says it, the datasets, the
  inputs and outputs, the gates' observed values as performance metrics, the quantization as
  properties) and the bundle's model and compiled files with their sha256;
- the calibration and validation sets (type `data`), with their content digests;
- the compiler (the plugin, with its version and the artifact id) and the runtime on the
  device (the target's firmware revision);
- every package of the Python environment that built it, by name, version and purl.

Written with cyclonedx-python-lib. Its release 11.12 has no types for two CycloneDX 1.6
fields yet — a component's `modelCard` and `data` — so those are added to its JSON output;
the tests check the whole document against the CycloneDX 1.6 schema the library ships.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from tapeout.artifacts.digest import file_digest

SPEC_VERSION = "1.6"
_MODEL_REF = "model"


def write_sbom(
    path: Path,
    root: Path,
    *,
    model_name: str,
    target: str,
    commit: str,
    config: Mapping[str, object],
    calibration: Mapping[str, object],
    validation: Mapping[str, object],
    compiler: Mapping[str, object],
    gates: Mapping[str, object],
    finished_on: str,
    invocation_id: str,
) -> Path:
    """Write the bill of materials of the bundle being assembled in `root` to `path`.
    `calibration` and `validation` are the sets' manifests, `compiler` the compiled record
    (`compiled/compiler.json`), `gates` reports/gates.json, `config` the resolved config."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion

    def sha256(digest: str) -> list[HashType]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=digest)]

    # One serial number per bundle: the build and the target name it.
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"urn:tapeout:{invocation_id}:{model_name}-{target}"))
    bom.metadata.timestamp = datetime.fromisoformat(finished_on)
    files = sorted(
        ["model/model.onnx", "model/model.qdq.onnx", *(f"compiled/{name}" for name in compiler.get("files", []))]
    )
    model = Component(
        name=model_name, version=commit, type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref=_MODEL_REF,
        description=f"{model_name} compiled for {target} by {compiler.get('compiler')} {compiler.get('compiler_version')}",
        components=[
            Component(name=name, type=ComponentType.FILE, bom_ref=f"file:{name}", hashes=sha256(file_digest(root / name)))
            for name in files
        ],
    )
    bom.metadata.component = model
    datasets = [
        Component(
            name=f"{role} set", type=ComponentType.DATA, bom_ref=f"data:{role}", hashes=sha256(str(manifest["digest"])),
            properties=[
                Property(name="tapeout:digest_scheme", value=str(manifest.get("digest_scheme"))),
                Property(name="tapeout:count", value=str(manifest.get("count"))),
            ],
        )
        for role, manifest in (("calibration", calibration), ("validation", validation))
    ]
    options = json.dumps(compiler.get("options") or {}, sort_keys=True)
    compiler_component = Component(
        name=str(compiler.get("compiler")), version=str(compiler.get("compiler_version")),
        type=ComponentType.APPLICATION, bom_ref="compiler",
        description="the compiler plugin that built the compiled files",
        properties=[
            Property(name="tapeout:artifact_id", value=str(compiler.get("artifact_id"))),
            Property(name="tapeout:options", value=options),
        ],
    )
    runtime = Component(
        name=f"{target} runtime", version=str(compiler.get("firmware_revision")), type=ComponentType.FIRMWARE,
        bom_ref="runtime", description=f"the firmware revision the {target} artifact was built for",
        properties=[Property(name="tapeout:minimum_revision", value=str(compiler.get("minimum_firmware_revision")))],
    )
    packages = _environment_packages()
    for component in (*datasets, compiler_component, runtime, *packages):
        bom.components.add(component)
    bom.register_dependency(model, [*datasets, compiler_component, runtime])
    document = json.loads(make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string())
    _add_model_card(document["metadata"]["component"], config, calibration, validation, gates)
    for component in document["components"]:
        if component.get("type") == "data":
            role = component["bom-ref"].removeprefix("data:")
            manifest = calibration if role == "calibration" else validation
            component["data"] = [_dataset(role, manifest)]
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def _environment_packages():
    """Every distribution installed in this Python environment, once by name."""
    from importlib.metadata import distributions

    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    found: dict[str, str] = {}
    for distribution in distributions():
        name = distribution.metadata["Name"]
        if name and name.lower() not in found:
            found[name.lower()] = distribution.version
    return [
        Component(
            name=name, version=version, type=ComponentType.LIBRARY,
            purl=PackageURL("pypi", name=name, version=version), bom_ref=f"pkg:pypi/{name}@{version}",
        )
        for name, version in sorted(found.items())
    ]


def _add_model_card(
    component: dict,
    config: Mapping[str, object],
    calibration: Mapping[str, object],
    validation: Mapping[str, object],
    gates: Mapping[str, object],
) -> None:
    """CycloneDX 1.6 `modelCard`: what the model takes and gives, what it was calibrated and
    evaluated on, how it scored, and how it was quantized."""
    model = config.get("model", {}) if isinstance(config.get("model"), dict) else {}
    parameters: dict[str, object] = {
        "datasets": [{"ref": "data:calibration"}, {"ref": "data:validation"}],
        "inputs": [{"format": _tensor(item)} for item in model.get("inputs", [])],
        "outputs": [{"format": f"tensor {name}"} for name in model.get("outputs", [])],
    }
    metric = (config.get("validation") or {}).get("metric") if isinstance(config.get("validation"), dict) else None
    if metric == "top1_accuracy":
        parameters["task"] = "classification"
    metrics = [
        {
            "type": str(gate["metric"]),
            "value": "not measured" if gate.get("observed") is None else f"{float(gate['observed']):.6g}",
            "slice": f"validation set sha256:{validation.get('digest')}",
        }
        for gate in gates.get("gates", [])
    ]
    calibration_settings = config.get("calibration") if isinstance(config.get("calibration"), dict) else {}
    component["modelCard"] = {
        "modelParameters": parameters,
        "quantitativeAnalysis": {"performanceMetrics": metrics},
        "properties": [
            {"name": "tapeout:quantization:format", "value": "QDQ (ONNX QuantizeLinear/DequantizeLinear), int8"},
            {"name": "tapeout:quantization:calibration_method", "value": str(calibration_settings.get("method"))},
            {"name": "tapeout:quantization:calibration_set", "value": f"sha256:{calibration.get('digest')}"},
            {"name": "tapeout:gates:verdict", "value": str(gates.get("verdict"))},
        ],
    }


def _tensor(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    return f"tensor {item.get('name')}: {item.get('dtype')}{list(item.get('shape', []))}"


def _dataset(role: str, manifest: Mapping[str, object]) -> dict[str, object]:
    return {
        "type": "dataset",
        "name": f"{role} set",
        "description": (
            f"{manifest.get('count')} samples ({manifest.get('format')}, {manifest.get('file')}); content digest "
            f"{manifest.get('digest')} ({manifest.get('digest_scheme')})"
        ),
    }
