"""Sign and verify a whole bundle directory with model-signing (docs/trust.md).

Three methods, one module each in tapeout.artifacts.signing_methods (docs/architecture.md,
"The bundle"):
- `key` (`KeySigner`, or a plain key path): an EC P-256 key pair made by `tapeout keys init`;
  the offline default. The signature names the key by the sha256 of its PEM public key.
- `certificate` (`CertificateSigner`): an EC key with its leaf certificate and the chain up
  to a root. Verification checks the chain against pinned roots *and* pins the leaf's subject
  or SANs — any leaf under a trusted root would otherwise pass.
- `sigstore` (`KeylessSigner`): keyless, with the ambient OIDC identity of CI (GitHub Actions
  with `id-token: write`). Signing needs Fulcio and Rekor on the network; verification is
  offline against a pinned trust config (`tapeout.artifacts.sigstore_trust`).

`read_signature` says what a signature claims (method, key hint, certificate subject, SANs,
OIDC issuer) without trusting it; the `verify_*` functions check it, and a trust policy
(tapeout.artifacts.policy) picks the one its rules allow. This module is the public face of
signing: the keys (tapeout.artifacts.keys), the signature (tapeout.artifacts.signature) and
the methods are imported from here.
"""

from __future__ import annotations

from pathlib import Path

from tapeout.artifacts.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    KeyPair,
    init_keys,
    private_key_identity,
    public_key_for,
    signer_identity,
)
from tapeout.artifacts.signature import Signature, Signer, Verification, VerificationFailed, read_signature
from tapeout.artifacts.signing_methods.certificate import CertificateSigner, verify_certificate
from tapeout.artifacts.signing_methods.key import KeySigner, verify_bundle
from tapeout.artifacts.signing_methods.keyless import KeylessSigner, verify_keyless
from tapeout.compilers.errors import InvalidInput

__all__ = [
    "PRIVATE_KEY_FILE", "PUBLIC_KEY_FILE", "CertificateSigner", "KeyPair", "KeySigner", "KeylessSigner",
    "Signature", "Signer", "Verification", "VerificationFailed", "init_keys", "private_key_identity",
    "public_key_for", "read_signature", "sign_bundle", "signer_identity", "verify_bundle",
    "verify_certificate", "verify_keyless",
]


def sign_bundle(bundle: Path, signer: Signer | Path) -> Path:
    """Write `model.sig` over every file in `bundle`; `signer` is a key path (the `key` method)
    or any method's signer.

    Raises:
        InvalidInput: a key or certificate is missing, unreadable, encrypted, not EC, or the
            certificate does not belong to the key; keyless signing without an OIDC identity.
        TapeoutError: keyless signing failed (Fulcio or Rekor unreachable or refused).
    """
    if isinstance(signer, Path):
        signer = KeySigner(signer)
    if not callable(getattr(signer, "sign", None)):
        raise InvalidInput(f"unknown signer {signer!r}")
    return signer.sign(bundle)
