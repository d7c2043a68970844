"""Starting a build: everything that happens before Prefect is needed.

`build()` validates what every target shares (config, the files and compilers it names, commit,
signing key) and asks the registry which targets this commit already has; only when something
is left to build does it import Prefect and run the flow (flows/pipeline.py). A rebuild of a
registered commit thus costs a registry query, not a Prefect start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tapeout.artifacts.provenance import SourceRevision
from tapeout.artifacts.registry import Registry, registered_name
from tapeout.artifacts.signing import init_keys, public_key_for
from tapeout.compilers.errors import TapeoutError
from tapeout.flows import preflight
from tapeout.flows.config import Pipeline, load_pipeline
from tapeout.flows.environment import default_tracking_uri
from tapeout.flows.gates import GateResult
from tapeout.flows.source import Checkout, checkout

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
    metrics: Mapping[str, float] = field(default_factory=dict)  # this build's, when it measured


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


def already_registered(
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


def build(
    pipeline_file: Path,
    commit: str | None,
    home: Path,
    progress: Progress = lambda m: None,
    root: Path | None = None,
) -> BuildResult:
    """Run the whole pipeline once, reporting each stage to `progress`. Without `commit` the
    work tree at HEAD is built; with it, that commit's own files (tapeout.flows.source).
    `root`: the repository, when the pipeline file is named inside it but not read from it.

    Raises:
        TapeoutError: bad input shared by every target (config, commit, model, data, key).
    """
    with checkout(pipeline_file, commit, home, root) as files:
        try:
            source, outcomes = _build(files, home, progress)
        except TapeoutError as error:
            error.args = (files.public(str(error)),)  # name the commit, not its removed checkout
            raise
    return BuildResult(source, tuple(replace(item, message=files.public(item.message)) for item in outcomes))


def _build(files: Checkout, home: Path, progress: Progress) -> tuple[SourceRevision, list[TargetOutcome]]:
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
    from tapeout.flows import pipeline as flow_module  # imports Prefect

    flow_module._progress = progress
    try:
        return source, flow_module.build_flow(str(files.pipeline_file), source, str(home))
    finally:
        flow_module._progress = lambda message: None
