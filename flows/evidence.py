"""What a build records for its bundles' chain of attestations (docs/trust.md, "The chain of
attestations"): the export's inputs — every file it read, by repository path, and the imported
model's own signature, checked against the trust policy before anything is exported — and the
settings the later stages ran with.
"""

from __future__ import annotations

from pathlib import Path

from tapeout.artifacts.digest import file_digest
from tapeout.artifacts.imports import check_import
from tapeout.artifacts.policy import POLICY_FILE, TrustPolicy, load_policy
from tapeout.artifacts.statements import ChainInputs, ExportInputs
from tapeout.calibration.dataset import SampleSet
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.frontends import frontend_for, imported_model_file
from tapeout.compilers.versions import package_versions
from tapeout.flows.config import Pipeline
from tapeout.flows.source import repository_root

_SOURCE_FIELD = "model.source"


def import_policy(pipeline: Pipeline, home: Path) -> TrustPolicy | None:
    """The policy an imported model's signature is checked against: the pipeline's
    `signing.policy`, else the home's trust-policy.yaml, else none.

    Raises:
        InvalidInput: the policy file is unreadable or invalid (named).
    """
    if pipeline.config.signing.policy:
        return load_policy(pipeline.resolve(pipeline.config.signing.policy))
    if (home / POLICY_FILE).is_file():
        return load_policy(home / POLICY_FILE)
    return None


def export_inputs(pipeline: Pipeline, home: Path) -> ExportInputs:
    """The export's inputs, with the imported model's signature verified.

    Raises:
        VerificationFailed: the imported model is signed by a signer the policy does not
            admit, its signature or a signed file does not check, or it is unsigned and the
            policy requires signed imports (each with the reason).
        InvalidInput: the trust policy is unreadable or invalid.
    """
    source = pipeline.model_source()
    frontend = frontend_for(source)
    root = _repository(pipeline)
    files = {
        _repository_name(root, path): file_digest(path)
        for field, path in pipeline.input_files().items()
        if field.startswith(_SOURCE_FIELD) and path.is_file()
    }
    model_file = imported_model_file(source)
    imported = None
    if model_file is not None and model_file.is_file():
        imported = check_import(
            model_file, pipeline.config.model.name, import_policy(pipeline, home), _repository_name(root, model_file)
        )
    model = pipeline.config.model
    return ExportInputs(
        frontend=frontend.name,
        source=model.source.model_dump(mode="json", exclude_none=True),
        files=files,
        tools=dict(frontend.material(source).get("tools", {})),
        interface={"inputs": [item.model_dump(mode="json") for item in model.inputs], "outputs": list(model.outputs)},
        imported=imported,
    )


def chain_inputs(pipeline: Pipeline, export: ExportInputs, validation: SampleSet) -> ChainInputs:
    return ChainInputs(
        export=export,
        calibration_method=pipeline.config.calibration.method,
        batch_size=pipeline.batch_size,
        validation=validation.manifest(),
        tools=package_versions("onnxruntime", "tapeout"),
    )


def _repository(pipeline: Pipeline) -> Path | None:
    try:
        return repository_root(pipeline.base)
    except InvalidInput:  # built outside git (a test's folder): files are named by their path
        return None


def _repository_name(root: Path | None, path: Path) -> str:
    """`path` as the repository at `root` names it (relative to its top), or the absolute
    path of a file outside it (which makes the build dirty: tapeout.flows.source)."""
    if root is None:
        return str(path)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
