"""The build flow: one Prefect flow, a thin task per stage (DESIGN §1, §8).

Targets fan out as concurrent task runs after the shared stages (export, calibrate, quantize,
fp32 reference). A target whose commit and config were already built and registered is
reported, not rebuilt. A gate failure is an outcome, not an exception: the run is recorded
as failed and nothing is registered.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tapeout.artifacts.registry import Registry, registered_name
from tapeout.artifacts.signing import init_keys, public_key_for
from tapeout.compilers.errors import TapeoutError
from tapeout.flows import stages
from tapeout.flows.config import Pipeline, TargetConfig, load_pipeline
from tapeout.flows.environment import default_tracking_uri
from tapeout.flows.gates import GateResult

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TargetOutcome:
    """What happened to one target. `verdict`: pass, fail (a gate) or error (bad input)."""

    target: str
    registered_model: str
    verdict: str
    version: str | None = None
    bundle_path: str | None = None
    bundle_digest: str | None = None
    reused: bool = False
    gates: tuple[GateResult, ...] = ()
    message: str = ""
    exit_code: int = 0


@dataclass(frozen=True)
class BuildSettings:
    """Where a build keeps its files and which key signs it."""

    home: Path
    tracking_uri: str
    private_key: Path
    public_key: Path
    progress: Progress = field(default=lambda message: None)


def settings_for(pipeline: Pipeline, home: Path, progress: Progress) -> BuildSettings:
    configured = pipeline.config.signing.private_key
    if configured:
        private_key = pipeline.resolve(configured)
        public_key = private_key.with_suffix(".pub")
        if not public_key.exists():
            public_key = home / "keys" / f"{private_key.stem}.pub"
            public_key.parent.mkdir(parents=True, exist_ok=True)
            public_key.write_bytes(public_key_for(private_key))
    else:
        pair, created = init_keys(home / "keys")
        if created:
            progress(f"created a signing key: {pair.private_key}")
        private_key, public_key = pair.private_key, pair.public_key
    tracking_uri = pipeline.config.registry.tracking_uri or default_tracking_uri(home)
    return BuildSettings(home, tracking_uri, private_key, public_key, progress)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Thin tasks: retries only where I/O can flake (registration); pure stages get none. Cache
# keys by input digest come with the scheduled-runs issue; until then nothing is cached.
export_task = task(stages.export_stage, name="export", cache_policy=NO_CACHE)
calibrate_task = task(stages.calibrate_stage, name="calibrate", cache_policy=NO_CACHE)
quantize_task = task(stages.quantize_stage, name="quantize", cache_policy=NO_CACHE)
validation_task = task(stages.validation_stage, name="fp32-reference", cache_policy=NO_CACHE)


@task(name="build-target", cache_policy=NO_CACHE)
def build_target(
    pipeline: Pipeline,
    target: TargetConfig,
    shared: dict,
    settings: BuildSettings,
    registry: Registry,
) -> TargetOutcome:
    """Compile, evaluate, gate, bundle, sign and register one target."""
    name = registered_name(pipeline.config.model.name, target.name)
    progress = settings.progress
    workdir = shared["workdir"] / target.name
    started_on = _now()
    try:
        profile = pipeline.target_profile(target)
        progress(f"[{target.name}] compile with {target.compiler}")
        artifact = stages.compile_stage(shared["quantized"], profile, workdir / "compiled")
        progress(f"[{target.name}] evaluate on {shared['validation'].count} validation samples")
        gated = stages.gate_stage(pipeline, target, artifact, shared["validation"], shared["reference"])
        if not gated.passed:
            run_id = stages.record_failed_gates(
                registry, pipeline, target, shared["source"], artifact, gated, workdir
            )
            failed = [gate for gate in gated.gates if not gate.passed]
            return TargetOutcome(
                target.name, name, "fail", gates=gated.gates, exit_code=1,
                message=f"gate(s) failed, MLflow run {run_id} recorded as FAILED, nothing registered: "
                + "; ".join(gate.describe() for gate in failed),
            )
        progress(f"[{target.name}] bundle and sign")
        bundle = stages.bundle_stage(
            pipeline=pipeline, target=target, model=shared["model"], quantized=shared["quantized"],
            calibrated=shared["calibrated"], artifact=artifact, gated=gated, source=shared["source"],
            invocation_id=shared["invocation_id"], started_on=started_on, finished_on=_now(),
            bundles_root=settings.home / "bundles", private_key=settings.private_key,
        )
        tags = stages.version_tags(
            pipeline, target, shared["source"], artifact, shared["calibrated"], bundle, settings.public_key
        )
        progress(f"[{target.name}] register {name}")
        version = stages.register_stage(
            registry, pipeline, target, shared["source"], artifact, gated, bundle, tags
        )
    except TapeoutError as error:
        return TargetOutcome(target.name, name, "error", message=str(error), exit_code=error.exit_code)
    return TargetOutcome(
        target.name, name, "pass", version=version.version, bundle_path=str(bundle.path),
        bundle_digest=bundle.digest, gates=gated.gates,
    )


_progress: Progress = lambda message: None


def build(
    pipeline_file: Path, commit: str | None, home: Path, progress: Progress = lambda m: None
) -> list[TargetOutcome]:
    """Run the whole pipeline once, reporting each stage to `progress`.

    Raises:
        TapeoutError: bad input shared by every target (config, model, data, key).
    """
    global _progress
    # Fail fast on what every target shares, before Prefect starts: config, commit, key.
    pipeline = load_pipeline(pipeline_file)
    stages.source_revision(pipeline.path, commit)
    settings_for(pipeline, home, progress)
    _progress = progress
    try:
        return build_flow(str(pipeline_file), commit, str(home))
    finally:
        _progress = lambda message: None


@flow(name="tapeout-build", log_prints=False)
def build_flow(pipeline_file: str, commit: str | None = None, home: str = ".tapeout") -> list[TargetOutcome]:
    """One build of every target of the pipeline at `pipeline_file`, for `commit` (default:
    the git HEAD of the folder holding the file)."""
    progress = _progress
    pipeline = load_pipeline(Path(pipeline_file))
    source = stages.source_revision(pipeline.path, commit)
    settings = settings_for(pipeline, Path(home), progress)
    registry = Registry(settings.tracking_uri, settings.home / "artifacts")
    outcomes: dict[str, TargetOutcome] = {}
    pending = []
    for target in pipeline.config.targets:
        name = registered_name(pipeline.config.model.name, target.name)
        existing = None
        if not source.dirty:
            existing = registry.find_version(
                name, {"commit": source.commit, "config_digest": pipeline.digest(target)}
            )
        if existing is not None:
            progress(f"[{target.name}] {name} version {existing.version} already built from this commit")
            outcomes[target.name] = TargetOutcome(
                target.name, name, "pass", version=existing.version,
                bundle_digest=existing.tags.get("bundle_digest"), reused=True,
                message="already registered for this commit and config",
            )
        else:
            pending.append(target)
    if pending:
        workdir = settings.home / "work" / uuid.uuid4().hex
        try:
            progress(f"export {pipeline.config.model.name}")
            model = export_task(pipeline, workdir)
            progress(f"calibrate ({pipeline.config.calibration.method}) and quantize")
            calibrated = calibrate_task(pipeline, model, workdir)
            quantized = quantize_task(model, calibrated, workdir)
            validation, reference = validation_task(pipeline, model)
            shared = {
                "workdir": workdir, "model": model, "calibrated": calibrated, "quantized": quantized,
                "validation": validation, "reference": reference, "source": source,
                "invocation_id": uuid.uuid4().hex,
            }
            futures = [
                build_target.submit(pipeline, target, shared, settings, registry) for target in pending
            ]
            for target, future in zip(pending, futures):
                outcomes[target.name] = future.result()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return [outcomes[target.name] for target in pipeline.config.targets]
