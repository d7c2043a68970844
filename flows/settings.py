"""Where a build keeps its files, which registry it talks to and how it signs: decided once,
before anything runs, from the pipeline's config and the tapeout home."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tapeout.artifacts.keyring import key_for_build, published_public_key
from tapeout.artifacts.registry import Registry
from tapeout.artifacts.signing import public_key_for
from tapeout.flows.config import Pipeline
from tapeout.flows.environment import default_tracking_uri

Progress = Callable[[str], None]


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
        public_key_for(private_key)  # fail fast on an unusable or shared key
        public_key = private_key.with_suffix(".pub")
        if not public_key.exists():
            public_key = published_public_key(home / "keys", private_key)
    else:
        pair, created = key_for_build(
            home / "keys", lambda: Registry(tracking_uri, home / "artifacts"), tracking_uri == default_tracking_uri(home)
        )
        if created:
            progress(f"created a signing key: {pair.private_key}")
        private_key, public_key = pair.private_key, pair.public_key
    return BuildSettings(home, tracking_uri, private_key, public_key, progress)
