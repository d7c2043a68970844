"""The build flow: one Prefect flow, a thin task per stage (DESIGN §1, §8).

Shared stages (export, calibrate, quantize, fp32 reference) run once; targets then fan out as
concurrent task runs. Pure stages are cached by the digest of their inputs (flows/cache_keys)
with results persisted under the tapeout home, so a rebuild in a new process re-runs nothing
expensive and a changed target re-runs only that target. Registration, the one stage that
talks to a server, is retried and idempotent. A target whose (commit, config) is already
registered is reported, not rebuilt. A gate failure is an outcome, not an exception: the run
is recorded as failed and nothing is registered.
"""

from __future__ import annotations

import fcntl
import hashlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tapeout.artifacts.provenance import SourceRevision
from tapeout.artifacts.registry import Registry, registered_name
from tapeout.artifacts.signing import init_keys, public_key_for
from tapeout.compilers.errors import TapeoutError
from tapeout.compilers.registry import load_compiler
from tapeout.flows import cache_keys, stages
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
    """Where the build keeps its files and how it signs. For the `key` method `private_key`
    is the key path; for `certificate` and `sigstore` it is the signer value
    (tapeout.artifacts.signing) and `public_key` names the material the signer shows."""
    from tapeout.artifacts.signing import CertificateSigner, KeylessSigner

    signing = pipeline.config.signing
    if signing.policy:
        from tapeout.artifacts.policy import load_policy

        load_policy(pipeline.resolve(signing.policy))  # fail fast on a broken policy file
    tracking_uri = pipeline.config.registry.tracking_uri or default_tracking_uri(home)
    if signing.method == "certificate":
        assert signing.private_key and signing.certificate  # guaranteed by SigningConfig
        signer = CertificateSigner(
            pipeline.resolve(signing.private_key),
            pipeline.resolve(signing.certificate),
            tuple(pipeline.resolve(item) for item in signing.certificate_chain),
        )
        public_key_for(signer.private_key)  # fail fast on an unusable key
        return BuildSettings(home, tracking_uri, signer, signer.certificate, progress)  # type: ignore[arg-type]
    if signing.method == "sigstore":
        from tapeout.artifacts.sigstore_trust import trust_config_file

        trust_config = pipeline.resolve(signing.trust_config) if signing.trust_config else None
        signer = KeylessSigner(trust_config=trust_config, oidc_issuer=signing.oidc_issuer)
        return BuildSettings(home, tracking_uri, signer, trust_config or trust_config_file(), progress)  # type: ignore[arg-type]
    configured = signing.private_key
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
    return BuildSettings(home, tracking_uri, private_key, public_key, progress)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- tasks ----------------------------------------------------------------------------------


def _key_from_workdir(context, parameters: dict) -> str:
    """Pure stages write into <home>/cache/<stage>/<key>: the folder names the inputs' digest,
    and the folder's own path tells homes apart (each home keeps its own outputs)."""
    workdir: Path = parameters["workdir"]
    home = hashlib.sha256(str(workdir.resolve().parent).encode()).hexdigest()[:12]
    return f"tapeout-{workdir.parent.name}-{workdir.name}-{home}"


def _cached(function, name: str):
    return task(
        function,
        name=name,
        cache_key_fn=_key_from_workdir,
        persist_result=True,
        cache_result_in_memory=False,
    )


export_task = _cached(stages.export_stage, "export")
calibrate_task = _cached(stages.calibrate_stage, "calibrate")
quantize_task = _cached(stages.quantize_stage, "quantize")
compile_task = _cached(stages.compile_stage, "compile")


def _evaluate(artifact, validation, reference, workdir: Path):
    return stages.evaluate_stage(artifact, validation, reference)


evaluate_task = _cached(_evaluate, "evaluate")
reference_task = task(stages.validation_stage, name="fp32-reference", cache_policy=NO_CACHE)
bundle_task = task(stages.bundle_stage, name="bundle-and-sign", cache_policy=NO_CACHE)
# The registry is the one stage that talks to a server: retry it. It is idempotent.
register_task = task(
    stages.register_stage, name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=3
)


@contextmanager
def _stage_lock(workdir: Path) -> Iterator[None]:
    """One writer per stage folder: concurrent runs of the same inputs take turns, and the
    second finds the first one's cached result."""
    workdir.parent.mkdir(parents=True, exist_ok=True)
    with open(workdir.parent / f".{workdir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_cached(stage_task, workdir: Path, outputs: Callable[[object], list[Path]], **arguments):
    """Run a cached stage; if its cached result points at files that are gone, run it again."""
    with _stage_lock(workdir):
        result = stage_task(**arguments, workdir=workdir)
        if not all(path.exists() for path in outputs(result)):
            result = stage_task.with_options(refresh_cache=True)(**arguments, workdir=workdir)
    return result


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
    cache = settings.home / "cache"
    source: SourceRevision = shared["source"]
    started_on = _now()
    try:
        profile = pipeline.target_profile(target)
        compiler_version = load_compiler(profile.compiler).version
        key = cache_keys.compile_key(shared["quantized"].digest, profile, compiler_version)
        progress(f"[{target.name}] compile with {target.compiler} {compiler_version}")
        artifact = _run_cached(
            compile_task, cache / "compile" / key,
            lambda a: [a.directory / f for f in a.files], model=shared["quantized"], target=profile,
        )
        files = [artifact.directory / f for f in artifact.files]
        key = cache_keys.evaluate_key(files, shared["validation"].digest, shared["reference_digest"])
        progress(f"[{target.name}] evaluate on {shared['validation'].count} validation samples")
        evaluation = _run_cached(
            evaluate_task, cache / "evaluate" / key, lambda e: [],
            artifact=artifact, validation=shared["validation"], reference=shared["reference"],
        )
        gated = stages.gate_stage(pipeline, target, evaluation)
        if not gated.passed:
            run_id = stages.record_failed_gates(
                registry, pipeline, target, source, artifact, gated, cache / "reports" / uuid.uuid4().hex
            )
            failed = [gate for gate in gated.gates if not gate.passed]
            return TargetOutcome(
                target.name, name, "fail", gates=gated.gates, exit_code=1,
                message=f"gate(s) failed, MLflow run {run_id} recorded as FAILED, nothing registered: "
                + "; ".join(gate.describe() for gate in failed),
            )
        progress(f"[{target.name}] bundle and sign")
        bundle = bundle_task(
            pipeline=pipeline, target=target, model=shared["model"], quantized=shared["quantized"],
            calibrated=shared["calibrated"], artifact=artifact, gated=gated, source=source,
            invocation_id=shared["invocation_id"], started_on=started_on, finished_on=_now(),
            bundles_root=settings.home / "bundles", private_key=settings.private_key,
        )
        tags = stages.version_tags(
            pipeline, target, source, artifact, shared["calibrated"], bundle, settings.public_key
        )
        progress(f"[{target.name}] register {name}")
        version = register_task(registry, pipeline, target, source, artifact, gated, bundle, tags)
    except TapeoutError as error:
        return TargetOutcome(target.name, name, "error", message=str(error), exit_code=error.exit_code)
    reused = version.tags.get("bundle_digest") != bundle.digest
    return TargetOutcome(
        target.name, name, "pass", version=version.version,
        bundle_path=None if reused else str(bundle.path),
        bundle_digest=version.tags.get("bundle_digest"), gates=gated.gates, reused=reused,
        message="registered concurrently by another run" if reused else "",
    )


# -- the flow ---------------------------------------------------------------------------------

_progress: Progress = lambda message: None


def _already_registered(
    pipeline: Pipeline, source: SourceRevision, registry: Registry, progress: Progress
) -> dict[str, TargetOutcome]:
    """Targets whose (commit, per-target config digest) already has a registered version."""
    found: dict[str, TargetOutcome] = {}
    if source.dirty:
        return found
    for target in pipeline.config.targets:
        name = registered_name(pipeline.config.model.name, target.name)
        existing = registry.find_version(
            name, {"commit": source.commit, "config_digest": pipeline.digest(target)}
        )
        if existing is not None:
            progress(f"[{target.name}] {name} version {existing.version} already built from this commit")
            found[target.name] = TargetOutcome(
                target.name, name, "pass", version=existing.version,
                bundle_digest=existing.tags.get("bundle_digest"), reused=True,
                message="already registered for this commit and config",
            )
    return found


def build(
    pipeline_file: Path, commit: str | None, home: Path, progress: Progress = lambda m: None
) -> list[TargetOutcome]:
    """Run the whole pipeline once, reporting each stage to `progress`.

    Raises:
        TapeoutError: bad input shared by every target (config, commit, model, data, key).
    """
    global _progress
    # Fail fast on what every target shares, and skip Prefect entirely when every target of
    # this commit is already registered.
    pipeline = load_pipeline(pipeline_file)
    source = stages.source_revision(pipeline.path, commit)
    settings = settings_for(pipeline, home, progress)
    registry = Registry(settings.tracking_uri, settings.home / "artifacts")
    done = _already_registered(pipeline, source, registry, progress)
    if len(done) == len(pipeline.config.targets):
        return [done[target.name] for target in pipeline.config.targets]
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
    outcomes = _already_registered(pipeline, source, registry, progress)
    pending = [target for target in pipeline.config.targets if target.name not in outcomes]
    if pending:
        cache = settings.home / "cache"
        progress(f"export {pipeline.config.model.name}")
        model = _run_cached(
            export_task, cache / "export" / cache_keys.export_key(pipeline), lambda m: [m.path],
            pipeline=pipeline,
        )
        samples = stages.calibration_set(pipeline, model)
        method = pipeline.config.calibration.method
        progress(f"calibrate ({method}, {samples.count} samples) and quantize")
        key = cache_keys.calibrate_key(model.digest, samples.digest, method, pipeline.batch_size)
        calibrated = _run_cached(
            calibrate_task, cache / "calibrate" / key, lambda c: [c.table_path, c.samples.path],
            pipeline=pipeline, model=model, samples=samples,
        )
        quantized = _run_cached(
            quantize_task, cache / "quantize" / cache_keys.quantize_key(model.digest, calibrated.table_path),
            lambda q: [q.path], model=model, calibrated=calibrated,
        )
        validation, reference = reference_task(pipeline, model)
        shared = {
            "model": model, "calibrated": calibrated, "quantized": quantized,
            "validation": validation, "reference": reference,
            "reference_digest": stages.predictions_digest(reference), "source": source,
            "invocation_id": uuid.uuid4().hex,
        }
        futures = [
            build_target.submit(pipeline, target, shared, settings, registry) for target in pending
        ]
        for target, future in zip(pending, futures):
            outcomes[target.name] = future.result()
    return [outcomes[target.name] for target in pipeline.config.targets]
