"""Starting a build: everything that happens before Prefect is needed.

`build()` validates what every target shares (config, the files and compilers it names, commit,
signing key) and asks the registry which targets this commit already has; only when something
is left to build does it import Prefect and run the flow (flows/pipeline.py). A rebuild of a
registered commit thus costs a registry query, not a Prefect start-up.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tapeout.artifacts.provenance import SourceRevision
from tapeout.artifacts.registry import Registry
from tapeout.compilers.errors import TapeoutError
from tapeout.flows import preflight
from tapeout.flows.config import load_pipeline
from tapeout.flows.outcome import BuildResult, TargetOutcome, already_registered
from tapeout.flows.settings import Progress, settings_for
from tapeout.flows.source import Checkout, checkout


def build(
    pipeline_file: Path,
    commit: str | None,
    home: Path,
    progress: Progress = lambda m: None,
    root: Path | None = None,
    dask_scheduler: str | None = None,
) -> BuildResult:
    """Run the whole pipeline once, reporting each stage to `progress`. Without `commit` the
    work tree at HEAD is built; with it, that commit's own files (tapeout.flows.source).
    `root`: the repository, when the pipeline file is named inside it but not read from it.
    `dask_scheduler`: run the targets on that scheduler's workers, whatever the pipeline's
    `runner` says (tapeout.flows.runners).

    Raises:
        TapeoutError: bad input shared by every target (config, commit, model, data, key).
    """
    with checkout(pipeline_file, commit, home, root) as files:
        try:
            source, outcomes = _build(files, home, progress, dask_scheduler)
        except TapeoutError as error:
            error.args = (files.public(str(error)),)  # name the commit, not its removed checkout
            raise
    return BuildResult(source, tuple(replace(item, message=files.public(item.message)) for item in outcomes))


def _build(
    files: Checkout, home: Path, progress: Progress, dask_scheduler: str | None
) -> tuple[SourceRevision, list[TargetOutcome]]:
    # Fail fast on what every target shares, and skip Prefect entirely when every target of
    # this commit is already registered.
    pipeline = load_pipeline(files.pipeline_file)
    preflight.check(pipeline)
    source = files.source(pipeline)
    if source.dirty:
        progress(
            f"dirty: files this build reads differ from commit {source.commit[:12]}: "
            f"{', '.join(source.dirty_files)}; it is registered as a new version"
        )
    settings = settings_for(pipeline, home, progress)
    registry = Registry(settings.tracking_uri, settings.home / "artifacts")
    said: list[str] = []
    done = already_registered(pipeline, source, registry, said.append)
    if len(done) == len(pipeline.config.targets):
        for message in said:
            progress(message)
        return source, [done[target.name] for target in pipeline.config.targets]
    from tapeout.flows.pipeline import build_flow  # imports Prefect
    from tapeout.flows.prefect_server import prefect_api

    flow = build_flow
    address, field = (dask_scheduler, "--dask-scheduler") if dask_scheduler else (
        pipeline.config.runner.dask_scheduler, f"{pipeline.path}: runner.dask_scheduler"
    )
    if address:
        from tapeout.flows.runners import dask_task_runner

        flow = build_flow.with_options(task_runner=dask_task_runner(address, field))
        progress(f"targets run on the Dask workers of {address}")
    with prefect_api():  # a temporary server dies with this process, even on SIGKILL
        return source, flow(str(files.pipeline_file), source, str(home), progress)
