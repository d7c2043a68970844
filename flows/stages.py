"""The pipeline's stages as plain functions: the work itself, which the flow wraps thinly and
tests call directly (docs/architecture.md, "One run"). Each takes typed inputs and an explicit
work directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from tapeout.artifacts.bundle import Bundle, BundleContents, build_bundle
from tapeout.artifacts.provenance import SourceRevision
from tapeout.artifacts.registry import Registry, RegisteredVersion, registered_name
from tapeout.artifacts.signing import Signer, read_signature
from tapeout.artifacts.statements import ChainInputs, ExportInputs
from tapeout.calibration.calibrate import calibrate
from tapeout.calibration.dataset import SampleSet, load_sample_set
from tapeout.calibration.quantizer import quantize
from tapeout.calibration.table import CalibrationTable
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.frontends import ExportedModel, export_model
from tapeout.compilers.interface import CompiledArtifact, QuantizedModel, TargetProfile
from tapeout.compilers.registry import load_compiler
from tapeout.compilers.versions import at_least
from tapeout.flows.config import Pipeline, TargetConfig
from tapeout.flows.evaluate import Evaluation, Predictions, evaluate, predict
from tapeout.flows.gates import GateResult, check_gates, gates_report


@dataclass(frozen=True)
class Calibrated:
    samples: SampleSet
    table: CalibrationTable
    table_path: Path


@dataclass(frozen=True)
class Gated:
    """A target's evaluation and gate results."""

    evaluation: Evaluation
    gates: tuple[GateResult, ...]
    # Where a derived metric came from, e.g. energy_work_source: what was counted for the
    # energy estimate. Printed in gates.md and gates.json beside the numbers.
    notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)


@dataclass(frozen=True)
class SharedStages:
    """What the shared stages of one build made, which every target starts from: the source,
    the fp32 export, the calibration, the quantized model, the validation set with the fp32
    model's predictions on it, the per-layer sensitivity document (None when the model
    could not be analysed), and the export's inputs for the chain of attestations."""

    source: SourceRevision
    invocation_id: str
    model: ExportedModel
    calibrated: Calibrated
    quantized: QuantizedModel
    validation: SampleSet
    reference: Predictions
    reference_digest: str
    calibration_pointer: Mapping[str, object] | None
    sensitivity: Mapping[str, object] | None
    export_inputs: ExportInputs  # what the export read, the imported model's signature checked

    def files(self) -> dict[str, Path]:
        """The files a target reads from these stages, by what they are."""
        files = {
            "fp32 model": self.model.path, "quantized model": self.quantized.path,
            "calibration table": self.calibrated.table_path, "calibration set": self.calibrated.samples.path,
            "validation set": self.validation.path,
        }
        if self.reference.outputs is not None:
            files["fp32 reference outputs"] = self.reference.outputs
        return files


def export_stage(pipeline: Pipeline, workdir: Path) -> ExportedModel:
    return export_model(
        pipeline.model_source(),
        pipeline.inputs,
        tuple(pipeline.config.model.outputs),
        workdir / "model.onnx",
    )


def calibration_set(pipeline: Pipeline, model: ExportedModel) -> SampleSet:
    """Open and validate the calibration set against the model, before any model runs."""
    settings = pipeline.config.calibration
    return load_sample_set(pipeline.resolve(settings.set), model.inputs, minimum_count=settings.samples)


def calibrate_stage(
    pipeline: Pipeline, model: ExportedModel, samples: SampleSet, workdir: Path
) -> Calibrated:
    table = calibrate(
        model.path,
        samples,
        method=pipeline.config.calibration.method,
        batch_size=pipeline.batch_size,
        workdir=workdir / "work",
    )
    # Keep the set with its table: the stage's output must outlive the checkout it came from
    # (a watcher builds from worktrees it removes afterwards).
    kept = workdir / "set" / samples.path.name
    kept.parent.mkdir(parents=True, exist_ok=True)
    if samples.path.is_dir():
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(samples.path, kept, symlinks=False)
    else:
        shutil.copyfile(samples.path, kept)
    return Calibrated(replace(samples, path=kept), table, table.write(workdir / "table.json"))


def quantize_stage(model: ExportedModel, calibrated: Calibrated, workdir: Path) -> QuantizedModel:
    return quantize(
        model.path,
        calibrated.table,
        inputs=model.inputs,
        outputs=model.outputs,
        output_path=workdir / "model.qdq.onnx",
    )


def validation_set(pipeline: Pipeline, model: ExportedModel) -> SampleSet:
    """Open and validate the validation set against the model, before any model runs."""
    settings = pipeline.config.validation
    return load_sample_set(pipeline.resolve(settings.set), model.inputs, label_key=settings.labels)


def reference_stage(model: ExportedModel, samples: SampleSet, workdir: Path) -> Predictions:
    """The fp32 model's predictions on the validation set, computed once for all targets: its
    top-1 and, in `workdir`, its outputs (flows/evaluate.py)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])

    class _Float:
        def run(self, inputs: Mapping[str, object]) -> dict[str, object]:
            names = [output.name for output in session.get_outputs()]
            return dict(zip(names, session.run(names, dict(inputs))))

    return predict(_Float(), samples, model.inputs, workdir)


def predictions_digest(predictions: Predictions) -> str:
    return hashlib.sha256(predictions.top1.astype("<i8").tobytes()).hexdigest()


# What the compile stage measured about its own run, beside compiled/compiler.json in the
# stage folder. Not a compiled file: two builds of the same inputs compile the same bytes in
# different times, and the compiled record (signed, in every bundle) must not differ.
TIMINGS_FILE = "timings.json"
TIMING_METRICS = ("compile_seconds",)


def compile_stage(model: QuantizedModel, target: TargetProfile, workdir: Path) -> CompiledArtifact:
    """Compile for one target with its plugin, and check the artifact fits the firmware. The
    compile time goes to `workdir/timings.json` (a plugin's own `compile_seconds` too), not
    into the artifact's report.

    Raises:
        PluginError, UnsupportedOperator, CompilationFailed, InvalidInput.
    """
    compiler = load_compiler(target.compiler)
    start = time.perf_counter()
    artifact = compiler.compile(model, target, workdir)
    seconds = time.perf_counter() - start
    artifact = replace(artifact, report={k: v for k, v in artifact.report.items() if k not in TIMING_METRICS})
    (Path(workdir) / TIMINGS_FILE).write_text(json.dumps({"compile_seconds": round(seconds, 4)}) + "\n")
    if not at_least(target.firmware_revision, artifact.minimum_firmware_revision):
        raise InvalidInput(
            f"target {target.name!r}: firmware_revision {target.firmware_revision} is older than "
            f"the {artifact.minimum_firmware_revision} the {target.compiler} artifact needs"
        )
    return artifact


def compile_timings(artifact: CompiledArtifact) -> dict[str, float]:
    """What `compile_stage` measured for `artifact` (empty for an artifact compiled elsewhere)."""
    try:
        recorded = json.loads((artifact.directory / TIMINGS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in recorded.items() if k in TIMING_METRICS and isinstance(v, (int, float))}


def evaluate_stage(
    artifact: CompiledArtifact, validation: SampleSet, reference: Predictions
) -> Evaluation:
    runner = load_compiler(artifact.compiler).load(artifact)
    evaluation = evaluate(
        runner,
        validation,
        artifact.inputs,
        reference,
        [artifact.directory / name for name in artifact.files],
    )
    # What the compiler reported (int8-ref: the static memory plan's peak; ethos-u: the share of
    # MACs Vela placed on the NPU) and how long it took.
    reported = {
        metric: float(artifact.report[metric])  # type: ignore[arg-type]
        for metric in ("peak_memory_bytes", "npu_mac_share")
        if isinstance(artifact.report.get(metric), (int, float))
    }
    reported.update(compile_timings(artifact))
    return replace(evaluation, metrics={**evaluation.metrics, **reported}) if reported else evaluation


def gate_stage(
    pipeline: Pipeline,
    target: TargetConfig,
    evaluation: Evaluation,
    model: QuantizedModel | None = None,
    artifact: CompiledArtifact | None = None,
) -> Gated:
    """Check the target's gates. With the target's `cost_model`, the energy per inference is
    estimated first (flows/energy.py), from the work `artifact`'s compiler counted in its
    lowered program, else from `model` (the QDQ model compiled)."""
    notes: dict[str, str] = {}
    if model is not None and target.cost_model is not None:
        from tapeout.flows.energy import energy_metrics, work_for

        cost = target.cost_model
        work = work_for(artifact.report if artifact is not None else {}, model.path)
        estimate = energy_metrics(work, cost.energy_per_mac_pj, cost.energy_per_byte_pj)
        evaluation = replace(evaluation, metrics={**evaluation.metrics, **estimate})
        notes["energy_work_source"] = work.source
    peak = artifact.report.get("peak_memory_op") if artifact is not None else None
    if isinstance(peak, dict):
        notes["peak_memory_op"] = (
            f"{peak.get('op_type')} {peak.get('node')!r}: {peak.get('live_bytes'):,} bytes of live tensors "
            f"+ {peak.get('scratch_bytes'):,} bytes of its scratch"
        )
    return Gated(evaluation, check_gates(pipeline.gates_for(target), evaluation.metrics), notes)


def failed_gates(gated: Gated) -> str:
    """Every failed gate in one line, with where a memory peak is when that gate failed."""
    parts = []
    for gate in gated.gates:
        if gate.passed:
            continue
        text = gate.describe()
        if gate.metric == "peak_memory_bytes" and "peak_memory_op" in gated.notes:
            text += f"; the peak is at {gated.notes['peak_memory_op']}"
        parts.append(text)
    return "; ".join(parts)


def benchmark_report(artifact: CompiledArtifact, gated: Gated) -> dict[str, object]:
    metrics = gated.evaluation.metrics
    report = {
        "latency_p50_ms": metrics.get("latency_p50_ms"),
        "latency_p95_ms": metrics.get("latency_p95_ms"),
        "latency_p99_ms": metrics.get("latency_p99_ms"),
        "warmup_ms": metrics.get("warmup_ms"),
        "throughput_per_s": metrics.get("throughput_per_s"),
        "artifact_size_bytes": metrics.get("artifact_size_bytes"),
        "compile_seconds": metrics.get("compile_seconds"),
        "batch_size": artifact.inputs[0].shape[0],
        "threads": 1,
        "compiler_report": dict(artifact.report),
    }
    if "peak_memory_bytes" in artifact.report:
        report["peak_memory_bytes"] = artifact.report["peak_memory_bytes"]
    return report


def bundle_stage(
    *,
    pipeline: Pipeline,
    target: TargetConfig,
    model: ExportedModel,
    quantized: QuantizedModel,
    calibrated: Calibrated,
    artifact: CompiledArtifact,
    gated: Gated,
    source: SourceRevision,
    invocation_id: str,
    started_on: str,
    finished_on: str,
    bundles_root: Path,
    private_key: Signer | Path,
    chain: ChainInputs,
    extra_reports: Mapping[str, Path] | None = None,
    calibration_pointer: Mapping[str, object] | None = None,
) -> Bundle:
    resolved = pipeline.resolved()
    contents = BundleContents(
        model_name=pipeline.config.model.name,
        target=target.name,
        firmware_revision=target.firmware_revision,
        float_model=model.path,
        quantized_model=quantized.path,
        calibration_data=calibrated.samples.path,
        calibration_manifest=calibrated.samples.manifest(),
        calibration_table=calibrated.table_path,
        artifact=artifact,
        gates=gates_report(gated.gates, gated.evaluation.validation_digest, gated.notes),
        benchmark=benchmark_report(artifact, gated),
        config_text=yaml.safe_dump(resolved, sort_keys=False),
        resolved_config=resolved,
        config_digest=pipeline.digest(target),
        source=source,
        invocation_id=invocation_id,
        started_on=started_on,
        finished_on=finished_on,
        chain=chain,
        extra_reports=dict(extra_reports or {}),
        calibration_pointer=calibration_pointer,
    )
    return build_bundle(contents, bundles_root, private_key)


def calibration_pointer(pipeline: Pipeline, samples: SampleSet, registry: Registry) -> dict[str, object] | None:
    """A set above `calibration.embed_max_bytes`: stored once in the artifact store, and the
    pointer every bundle of this build holds; None when the set goes into the bundles."""
    from tapeout.artifacts.set_store import pointer_document, set_size, store_set

    if set_size(samples.path) <= pipeline.config.calibration.embed_max_bytes:
        return None
    return pointer_document(store_set(registry, samples.path, samples.digest), samples.manifest())


def version_tags(
    pipeline: Pipeline,
    target: TargetConfig,
    source: SourceRevision,
    artifact: CompiledArtifact,
    calibrated: Calibrated,
    bundle: Bundle,
    signer: Signer,
) -> dict[str, str]:
    """What a registered version carries (docs/architecture.md, "The registry"): enough for
    `trace` without the bundle.

    `artifact_sha256` lists the compiled files' digests (comma-separated) so that
    `tapeout trace FILE` finds the version of a file found in the field; the `signer` tag is
    who the bundle's signature, made by `signer`, names (key fingerprint, certificate subject
    or keyless identity), and `signed_on` the worker that made it.

    Raises:
        VerificationFailed: `signing.policy` is set and does not admit the bundle's signer.
    """
    from tapeout.artifacts.digest import file_digest
    from tapeout.artifacts.owner import current_worker
    from tapeout.artifacts.policy import load_policy

    if pipeline.config.signing.policy:
        # The build's own signature must satisfy the configured trust policy, or nothing is
        # registered (raises VerificationFailed naming the signer and the policy).
        policy = load_policy(pipeline.resolve(pipeline.config.signing.policy))
        policy.verify(bundle.path, registered_name(pipeline.config.model.name, target.name))
    claimed = read_signature(bundle.path)
    compiled = bundle.path / "compiled"
    return {
        "signing_method": claimed.method,
        "artifact_sha256": ",".join(file_digest(compiled / name) for name in artifact.files),
        "commit": source.commit,
        "source_dirty": str(source.dirty).lower(),
        "config_digest": pipeline.digest(target),
        "bundle_digest": bundle.digest,
        "signer": signer.identity(claimed),
        # Which machine and worker held the key and signed (artifacts.owner.Worker): with
        # several workers sharing one key, the audit names the one that used it.
        "signed_on": current_worker().describe(),
        "gate_verdict": "pass",
        "compiler": artifact.compiler,
        "compiler_version": artifact.compiler_version,
        "artifact_id": artifact.artifact_id,
        "firmware_revision": target.firmware_revision,
        "minimum_firmware_revision": artifact.minimum_firmware_revision,
        "calibration_set_digest": calibrated.samples.digest,
        "calibration_method": calibrated.table.method,
    }


def run_params(pipeline: Pipeline, target: TargetConfig, artifact: CompiledArtifact) -> dict[str, str]:
    params = {
        "model": pipeline.config.model.name,
        "target": target.name,
        "compiler": artifact.compiler,
        "compiler_version": artifact.compiler_version,
        "firmware_revision": target.firmware_revision,
        "calibration_method": pipeline.config.calibration.method,
        "calibration_set": pipeline.config.calibration.set,
        "validation_set": pipeline.config.validation.set,
    }
    params.update({f"option.{key}": value for key, value in artifact.options.items()})
    return params


def _start_target_run(
    registry: Registry,
    pipeline: Pipeline,
    target: TargetConfig,
    source: SourceRevision,
    artifact: CompiledArtifact,
    gated: Gated,
    tags: Mapping[str, str],
) -> str:
    """The MLflow run of one (commit, target), named and tagged alike whatever its verdict,
    with the run's params and the gates' metrics logged."""
    name = registered_name(pipeline.config.model.name, target.name)
    run_id = registry.start_run(
        pipeline.config.model.name,
        f"{source.commit[:12]}-{target.name}",
        {**tags, "target": target.name, "registered_model": name},
    )
    try:
        registry.log(run_id, params=run_params(pipeline, target, artifact), metrics=gated.evaluation.metrics)
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    return run_id


def record_failed_gates(
    registry: Registry,
    pipeline: Pipeline,
    target: TargetConfig,
    source: SourceRevision,
    artifact: CompiledArtifact,
    gated: Gated,
    workdir: Path,
    extra_reports: Mapping[str, Path] | None = None,
) -> str:
    """A failed-gate run: recorded in MLflow as FAILED with its reasons; nothing registered.
    `extra_reports` (gates.md, plots, fallback.json...) are logged beside gates.json."""
    run_id = _start_target_run(
        registry, pipeline, target, source, artifact, gated,
        {
            "commit": source.commit,
            "config_digest": pipeline.digest(target),
            "gate_verdict": "fail",
            "failed_gates": failed_gates(gated),
        },
    )
    try:
        reports = workdir / "reports"
        reports.mkdir(parents=True, exist_ok=True)
        report = gates_report(gated.gates, gated.evaluation.validation_digest, gated.notes)
        (reports / "gates.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        for name, path in (extra_reports or {}).items():
            if path.resolve() != (reports / name).resolve():
                shutil.copyfile(path, reports / name)
        registry.log_directory(run_id, reports, "reports")
    finally:
        registry.end_run(run_id, "FAILED")
    return run_id


def register_stage(
    registry: Registry,
    pipeline: Pipeline,
    target: TargetConfig,
    source: SourceRevision,
    artifact: CompiledArtifact,
    gated: Gated,
    bundle: Bundle,
    tags: Mapping[str, str],
) -> RegisteredVersion:
    """Log the run with its bundle, then register the version and move `candidate` to it.

    Idempotent: when a version for this (commit, config) exists — an earlier attempt, or a
    concurrent run that got there first — that version is returned and nothing is added.
    """
    name = registered_name(pipeline.config.model.name, target.name)
    # Only clean builds converge on one version: a dirty one of the same commit is another build.
    identity = {"commit": tags["commit"], "config_digest": tags["config_digest"], "source_dirty": "false"}
    if not source.dirty:
        existing = registry.find_version(name, identity)
        if existing is not None:
            return registry.complete(existing)  # finishes one a killed run left half done
    run_id = _start_target_run(registry, pipeline, target, source, artifact, gated, tags)
    try:
        registry.log_directory(run_id, bundle.path, "bundle")
        version = registry.register(name, run_id, tags, unique_by=None if source.dirty else identity)
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    if version.run_id != run_id:
        registry.log(run_id, tags={"superseded_by": f"{name}/{version.version}"})
        registry.end_run(run_id, "FINISHED")
        return registry.complete(version)  # the winner may have been killed before its alias
    registry.end_run(run_id, "FINISHED")
    return version
