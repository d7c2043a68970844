"""Where a build keeps its files, which registry it talks to and how it signs: decided once,
before anything runs, from the pipeline's config and the tapeout home."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tapeout.artifacts.keyring import key_for_build, published_public_key
from tapeout.artifacts.registry import Registry
from tapeout.artifacts.signing import KeySigner, Signer
from tapeout.artifacts.signing_methods import signer_types
from tapeout.artifacts.worker_key import key_from_environment
from tapeout.flows.config import Pipeline
from tapeout.flows.environment import default_tracking_uri

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildSettings:
    """Where a build keeps its files and what signs it: `private_key` is the signer (one of
    tapeout.artifacts.signing_methods), `public_key` the material it shows (a public key, a
    certificate, a trust config); `stage_store`: whether stage outputs are looked up in and
    uploaded to the artifact store too (tapeout.artifacts.stage_store)."""

    home: Path
    tracking_uri: str
    private_key: Signer
    public_key: Path
    progress: Progress = field(default=lambda message: None)
    stage_store: bool = False


def settings_for(pipeline: Pipeline, home: Path, progress: Progress) -> BuildSettings:
    """Where the build keeps its files and how it signs: the configured method's signer, or,
    with no key configured, the key the environment gives (tapeout.artifacts.worker_key), or
    the home's own key, made on the home's first build.

    Raises:
        InvalidInput: the trust policy, a key or a certificate is unusable (named).
        TrustAnchorMissing: the home's key is gone but what it signed is still there.
    """
    signing = pipeline.config.signing
    if signing.policy:
        from tapeout.artifacts.policy import load_policy

        load_policy(pipeline.resolve(signing.policy))  # fail fast on a broken policy file
    tracking_uri = pipeline.config.registry.tracking_uri or default_tracking_uri(home)
    signer = signer_types()[signing.method].from_config(signing, pipeline.resolve, home / "keys")
    if signer is None and (given := key_from_environment(home / "keys")) is not None:
        # A worker's key from its environment (a mounted or Prefect secret), not its home.
        signer = KeySigner(given, published_public_key(home / "keys", given))
    if signer is None:
        pair, created = key_for_build(
            home / "keys", lambda: Registry(tracking_uri, home / "artifacts"), tracking_uri == default_tracking_uri(home)
        )
        if created:
            progress(f"created a signing key: {pair.private_key}")
        signer = KeySigner(pair.private_key, pair.public_key)
    stage_store = pipeline.config.registry.stage_store
    if stage_store is None:
        stage_store = tracking_uri.startswith(("http://", "https://"))
    return BuildSettings(home, tracking_uri, signer, signer.shows, progress, stage_store)
