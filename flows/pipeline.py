"""The build flow: one Prefect flow, a thin task per stage (docs/architecture.md, "One run" and
"Orchestration").

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
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tapeout.artifacts.provenance import SourceRevision
from tapeout.artifacts.gc import home_in_use
from tapeout.artifacts.registry import Registry, registered_name
from tapeout.artifacts.stage_store import Claim, StageStore
from tapeout.compilers.errors import TapeoutError
from tapeout.compilers.registry import load_compiler
from tapeout.flows import cache_keys, evidence, fallback, runners, stage_marker, stage_records, stages
from tapeout.flows.reports import fallback_note, target_reports
from tapeout.flows.sensitivity import sensitivity_stage
from tapeout.flows.summary import summarize
from tapeout.flows.config import Pipeline, TargetConfig, load_pipeline
from tapeout.flows.outcome import TargetOutcome, already_registered
from tapeout.flows.settings import BuildSettings, Progress, settings_for
from tapeout.flows.evaluate import load_predictions



def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- tasks ----------------------------------------------------------------------------------


def _key_from_workdir(context, parameters: dict) -> str:
    """Pure stages write into <home>/cache/<stage>/<key>: the folder names the inputs' digest,
    and the folder's own path tells homes apart (each home keeps its own outputs)."""
    workdir: Path = parameters["workdir"]
    home = hashlib.sha256(str(workdir.resolve().parent).encode()).hexdigest()[:12]
    name = workdir.name.split(_PRIVATE, 1)[0]  # a private re-run folder shares the key
    return f"tapeout-{workdir.parent.name}-{name}-{home}"


def _cached(function, name: str):
    return task(
        function,
        name=name,
        cache_key_fn=_key_from_workdir,
        persist_result=True,
        cache_result_in_memory=False,
    )


export_task = _cached(stage_records.run_export, "export")
calibrate_task = _cached(stages.calibrate_stage, "calibrate")
quantize_task = _cached(stages.quantize_stage, "quantize")
compile_task = _cached(stage_records.run_compile, "compile")
evaluate_task = _cached(stage_records.run_evaluate, "evaluate")
reference_task = _cached(stages.reference_stage, "fp32-reference")
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


_PRIVATE = "~"


def _run_cached(
    stage_task,
    workdir: Path,
    outputs: Callable[[object], list[Path]],
    load_finished: Callable[[Path], object] | None = None,
    *,
    label: str = "",
    say: Progress = lambda message: None,
    store: StageStore | None = None,
    **arguments,
):
    """Run a cached stage; if its cached result points at files that are gone, run it again.

    A stage whose folder records its own result (`load_finished`, flows/stage_records.py)
    is reloaded from a finished folder without asking Prefect, whose cache lookup misses now
    and then for tasks nested in build-target. A finished stage folder is never written
    again: other runs may be reading it (compiling from it, evaluating it, copying it into a
    bundle). When a stage must run although its folder is finished, it runs in a private
    sibling folder that shares the cache key. `say` gets `label` before a stage runs, and
    "`label` (cached)" when a finished folder's result is used instead.

    With a `store` (the second level, artifacts.stage_store), a stage not finished here is
    looked up there by the same key and fetched into its folder, after waiting while another
    worker builds it; a stage run here in its own folder is uploaded there. The store is a
    cache: when it cannot be reached, or its entry is damaged, the stage runs here.
    """
    finished = stage_marker.marker_path(workdir)
    with _stage_lock(workdir):
        if finished.exists() and load_finished is not None:
            # The folder describes its own result: no need to trust Prefect's cache lookup,
            # which misses for tasks nested in build-target now and then. Its files must be
            # those it finished with: they are signed into the bundle.
            changed = stage_marker.changed_files(workdir)
            if changed is not None:
                say(f"{label}: {workdir} changed since the stage finished ({changed}); running it again")
            result = None if changed is not None else _reload(workdir, outputs, load_finished)
            if result is not None:
                finished.touch()  # a use: `tapeout gc` evicts the least recently used
                say(f"{label} (cached)")
                return result
        claim = None
        if store is not None and load_finished is not None and not finished.exists():
            found = _from_store(store, workdir, label, say)
            if isinstance(found, Claim):
                claim = found
            elif found is not None:
                result = _reload(workdir, outputs, load_finished)
                if result is not None:
                    stage_marker.seal(workdir)
                    say(f"{label} (from the stage store, built by worker {found.built_by})")
                    return result
        target = workdir
        try:
            if finished.exists():
                target = workdir.parent / f"{workdir.name}{_PRIVATE}{uuid.uuid4().hex[:12]}"
            else:
                say(label)
            result = stage_task(**arguments, workdir=target)
            if not all(path.exists() for path in outputs(result)):
                target = workdir.parent / f"{workdir.name}{_PRIVATE}{uuid.uuid4().hex[:12]}"
                result = stage_task.with_options(refresh_cache=True)(**arguments, workdir=target)
        except BaseException:
            if claim is not None:
                claim.abandon()
            raise
        if target == workdir:
            stage_marker.seal(workdir)
        elif target.exists():  # every stage writes its folder: this one ran
            say(f"{label} (ran again: its cached result could not be used)")
        else:  # Prefect returned the finished folder's result
            say(f"{label} (cached)")
        if claim is not None:
            _publish(claim, workdir if target == workdir else None, label, say)
    return result


def _reload(workdir: Path, outputs: Callable[[object], list[Path]], load_finished: Callable[[Path], object]):
    """The result a stage folder records, or None when the record is older, damaged or
    names files that are gone."""
    try:
        result = load_finished(workdir)
    except (OSError, ValueError, KeyError, TypeError, TapeoutError):
        return None
    return result if all(path.exists() for path in outputs(result)) else None


def _from_store(store: StageStore, workdir: Path, label: str, say: Progress):
    """The stage's entry fetched into `workdir`, a claim to build it, or None (the store
    cannot be used: said, and the stage runs here)."""
    try:
        return store.fetch_or_claim(workdir.parent.name, workdir.name, workdir, lambda message: say(f"{label}: {message}"))
    except TapeoutError as error:
        say(f"{label}: not taken from the stage store ({error}); building it here")
        return None


def _publish(claim: Claim, folder: Path | None, label: str, say: Progress) -> None:
    """Upload what a claimed stage built (`folder`; None: it ran elsewhere than its folder,
    so nothing is uploaded and others build it themselves)."""
    if folder is None:
        claim.abandon()
        return
    try:
        claim.publish(folder)
    except TapeoutError as error:
        say(f"{label}: not uploaded to the stage store ({error})")


@task(name="build-target", cache_policy=NO_CACHE)
def build_target(
    pipeline: Pipeline,
    target: TargetConfig,
    shared: stages.SharedStages,
    settings: BuildSettings,
    registry: Registry,
) -> TargetOutcome:
    """Compile, evaluate, gate, bundle, sign and register one target, in the build's home, or
    on a Dask worker in the worker's own (tapeout.flows.runners)."""
    home = runners.target_home(settings.home)
    if home == settings.home:
        return _build_target(pipeline, target, shared, settings, registry, home)
    with home_in_use(home):  # `tapeout gc` on the worker leaves this target's files alone
        return _build_target(pipeline, target, shared, settings, registry, home)


def _build_target(
    pipeline: Pipeline,
    target: TargetConfig,
    shared: stages.SharedStages,
    settings: BuildSettings,
    registry: Registry,
    home: Path,
) -> TargetOutcome:
    name = registered_name(pipeline.config.model.name, target.name)
    progress = settings.progress
    cache = home / "cache"
    store = StageStore(registry) if settings.stage_store else None
    source = shared.source
    started_on = _now()
    try:
        if home != settings.home:  # a worker's home: the shared stages' files must reach it
            runners.require_readable(shared.files())
        profile = pipeline.target_profile(target)
        compiler_version = load_compiler(profile.compiler).version
        key = cache_keys.compile_key(shared.quantized.digest, profile, compiler_version)
        artifact = _run_cached(
            compile_task, cache / "compile" / key,
            lambda a: [a.directory / f for f in a.files], stage_records.load_compile,
            label=f"[{target.name}] compile with {target.compiler} {compiler_version}", say=progress, store=store,
            model=shared.quantized, target=profile,
        )
        files = [artifact.directory / f for f in artifact.files]
        key = cache_keys.evaluate_key(files, shared.validation.digest, shared.reference_digest)
        evaluation = _run_cached(
            evaluate_task, cache / "evaluate" / key, lambda e: [], stage_records.load_evaluate,
            label=f"[{target.name}] evaluate on {shared.validation.count} validation samples", say=progress,
            store=store,
            artifact=artifact, validation=shared.validation, reference=shared.reference,
        )
        gated = stages.gate_stage(pipeline, target, evaluation, shared.quantized, artifact)
        # An accuracy gate failed → keep the most sensitive layers out of int8 (bounded; docs/accuracy.md).
        quantized, artifact, gated, kept = fallback.repair_target(
            pipeline, target, profile, shared, artifact, gated, cache / "fallback" / uuid.uuid4().hex, progress
        )
        representation = fallback.plain_representation(load_compiler(profile.compiler).capabilities())
        reports = target_reports(
            cache / "reports" / uuid.uuid4().hex, name, gated, shared.sensitivity, kept, representation
        )
        if not gated.passed:
            run_id = stages.record_failed_gates(
                registry, pipeline, target, source, artifact, gated, cache / "reports" / uuid.uuid4().hex, reports
            )
            return TargetOutcome(
                target.name, name, "fail", gates=gated.gates, exit_code=1, metrics=dict(gated.evaluation.metrics),
                message=f"gate(s) failed, MLflow run {run_id} recorded as FAILED, nothing registered: "
                + stages.failed_gates(gated) + fallback_note(kept),
            )
        progress(f"[{target.name}] bundle and sign")
        bundle = bundle_task(
            pipeline=pipeline, target=target, model=shared.model, quantized=quantized,
            calibrated=shared.calibrated, artifact=artifact, gated=gated, source=source,
            invocation_id=shared.invocation_id, started_on=started_on, finished_on=_now(),
            bundles_root=home / "bundles", private_key=settings.private_key, extra_reports=reports,
            calibration_pointer=shared.calibration_pointer,
            chain=evidence.chain_inputs(pipeline, shared.export_inputs, shared.validation),
        )
        tags = stages.version_tags(
            pipeline, target, source, artifact, shared.calibrated, bundle, settings.private_key
        )
        tags.update({"fallback_kept_out": ",".join(item["node"] for item in kept["kept_out"])} if kept else {})
        progress(f"[{target.name}] register {name}")
        version = register_task(registry, pipeline, target, source, artifact, gated, bundle, tags)
    except TapeoutError as error:
        return TargetOutcome(target.name, name, "error", message=str(error), exit_code=error.exit_code)
    reused = version.tags.get("bundle_digest") != bundle.digest
    return TargetOutcome(
        target.name, name, "pass", version=version.version,
        bundle_path=None if reused else str(bundle.path),
        bundle_digest=version.tags.get("bundle_digest"), gates=gated.gates, reused=reused,
        metrics=dict(gated.evaluation.metrics),
        message=("registered concurrently by another run" if reused else "") + fallback_note(kept),
    )


# -- the flow ---------------------------------------------------------------------------------

@flow(name="tapeout-build", log_prints=False)
def build_flow(
    pipeline_file: str, source: SourceRevision, home: str = ".tapeout", progress: Progress | None = None
) -> list[TargetOutcome]:
    """One build of every target of the pipeline at `pipeline_file` (checked by
    tapeout.flows.preflight), whose files are those of `source` (tapeout.flows.source),
    reporting each stage to `progress` (Prefect records a callable parameter by its type name
    only). The home is held in use meanwhile, so `tapeout gc` leaves its bundles, stored sets
    and cache alone."""
    with home_in_use(Path(home).resolve()):
        return _build(pipeline_file, source, home, progress or (lambda message: None))


def _build(pipeline_file: str, source: SourceRevision, home: str, progress: Progress) -> list[TargetOutcome]:
    pipeline = load_pipeline(Path(pipeline_file))
    settings = settings_for(pipeline, Path(home), progress)
    registry = Registry(settings.tracking_uri, settings.home / "artifacts")
    outcomes = already_registered(pipeline, source, registry, progress)
    pending = [target for target in pipeline.config.targets if target.name not in outcomes]
    if pending:
        cache = settings.home / "cache"
        export_inputs = evidence.export_inputs(pipeline, settings.home)  # refuses an untrusted import
        store = StageStore(registry) if settings.stage_store else None
        model = _run_cached(
            export_task, cache / "export" / cache_keys.export_key(pipeline), lambda m: [m.path],
            stage_records.load_export, label=f"export {pipeline.config.model.name}", say=progress, store=store,
            pipeline=pipeline,
        )
        samples = stages.calibration_set(pipeline, model)
        method = pipeline.config.calibration.method
        key = cache_keys.calibrate_key(model.digest, samples.digest, method, pipeline.batch_size)
        calibrated = _run_cached(
            calibrate_task, cache / "calibrate" / key, lambda c: [c.table_path, c.samples.path],
            lambda folder: stage_records.load_calibrate(folder, samples),
            label=f"calibrate ({method}, {samples.count} samples)", say=progress, store=store,
            pipeline=pipeline, model=model, samples=samples,
        )
        quantized = _run_cached(
            quantize_task, cache / "quantize" / cache_keys.quantize_key(model.digest, calibrated.table_path),
            lambda q: [q.path], lambda folder: stage_records.load_quantize(folder, model),
            label="quantize", say=progress, store=store, model=model, calibrated=calibrated,
        )
        validation = stages.validation_set(pipeline, model)
        reference = _run_cached(
            reference_task, cache / "reference" / cache_keys.reference_key(model.digest, validation.digest),
            lambda p: [p.outputs], load_predictions,
            label=f"fp32 reference on {validation.count} validation samples", say=progress, store=store,
            model=model, samples=validation,
        )
        pointer = stages.calibration_pointer(pipeline, calibrated.samples, registry)
        if pointer is not None:
            progress(f"calibration set {samples.digest[:12]} ({pointer['size_bytes']} bytes) stored once at {pointer['uri']}")
        sensitivity = sensitivity_stage(
            model.path, calibrated.table, calibrated.table_path, quantized, validation,
            samples=pipeline.config.sensitivity.samples, top_k=pipeline.config.sensitivity.top_k,
            cache=cache / "sensitivity", progress=progress,
            label=f"per-layer sensitivity on {min(validation.count, pipeline.config.sensitivity.samples)} validation samples",
        )
        shared = stages.SharedStages(
            source=source, invocation_id=uuid.uuid4().hex, model=model, calibrated=calibrated, quantized=quantized,
            validation=validation, reference=reference, reference_digest=stages.predictions_digest(reference),
            calibration_pointer=pointer, sensitivity=sensitivity, export_inputs=export_inputs,
        )
        futures = [
            build_target.submit(pipeline, target, shared, settings, registry) for target in pending
        ]
        for target, future in zip(pending, futures):
            outcomes[target.name] = future.result()
    ordered = [outcomes[target.name] for target in pipeline.config.targets]
    if pending:
        # One folder per build: a later build of the same commit keeps this one's summary.
        build_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{shared.invocation_id[:8]}"
        folder = settings.home / "reports" / source.commit[:12] / build_id
        thresholds = {target.name: pipeline.gates_for(target) for target in pipeline.config.targets}
        try:
            files, run_id = summarize(
                pipeline.config.model.name, source.commit, ordered, registry, folder, thresholds
            )
        except Exception as error:  # the targets are registered and stand; say what is missing
            progress(f"build summary not written: {type(error).__name__}: {error}")
        else:
            progress(f"build summary: {files['summary.md']} (MLflow run {run_id})")
    return ordered
