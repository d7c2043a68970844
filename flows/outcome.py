"""What a build reports per target, and the targets a commit already has registered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tapeout.artifacts.provenance import SourceRevision
from tapeout.artifacts.registry import Registry, registered_name
from tapeout.flows.config import Pipeline
from tapeout.flows.gates import GateResult
from tapeout.flows.settings import Progress


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
    metrics: Mapping[str, float] = field(default_factory=dict)  # this build's, when it measured


def already_registered(
    pipeline: Pipeline, source: SourceRevision, registry: Registry, progress: Progress
) -> dict[str, TargetOutcome]:
    """Targets whose (commit, per-target config digest) already has a version registered from
    a clean build: a version built from files that differed from the commit is not what the
    commit builds, and never answers for it."""
    found: dict[str, TargetOutcome] = {}
    if source.dirty:
        return found
    for target in pipeline.config.targets:
        name = registered_name(pipeline.config.model.name, target.name)
        existing = registry.find_version(
            name, {"commit": source.commit, "config_digest": pipeline.digest(target), "source_dirty": "false"}
        )
        if existing is not None:
            existing = registry.complete(existing)  # finishes one a killed run left half done
            progress(f"[{target.name}] {name} version {existing.version} already built from this commit")
            found[target.name] = TargetOutcome(
                target.name, name, "pass", version=existing.version,
                bundle_digest=existing.tags.get("bundle_digest"), reused=True,
                message="already registered for this commit and config",
            )
    return found


@dataclass(frozen=True)
class BuildResult:
    """One build: the source it read (commit, and what made it dirty) and each target's outcome."""

    source: SourceRevision
    outcomes: tuple[TargetOutcome, ...]

    @property
    def exit_code(self) -> int:
        return max((outcome.exit_code for outcome in self.outcomes), default=0)
