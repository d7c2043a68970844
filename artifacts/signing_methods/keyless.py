"""The `sigstore` method: keyless, with the ambient OIDC identity of CI (GitHub Actions with
`id-token: write`). Signing needs Fulcio and Rekor on the network; verification is offline
against a pinned trust config (tapeout.artifacts.sigstore_trust). The trust policy's `sigstore`
rules pin the identities (the certificate's SAN) and their OIDC issuers."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from tapeout.artifacts.signature import (
    Signed,
    Verification,
    VerificationFailed,
    check_files,
    precheck,
    read_signature,
    write_signature,
    write_statement,
)
from tapeout.compilers.errors import InvalidInput, TapeoutError

if TYPE_CHECKING:  # annotations only
    from in_toto_attestation.v1.statement import Statement as InTotoStatement
    from sigstore_models.bundle.v1 import VerificationMaterial

    from tapeout.artifacts.policy import ModelRule

METHOD = "sigstore"
IDENTITY_TOKEN_VARIABLE = "TAPEOUT_SIGSTORE_IDENTITY_TOKEN"
# Fulcio's certificate extensions for the OIDC issuer (Fulcio's docs/oid-info.md): v2 holds a
# DER UTF8String, the deprecated v1 the raw bytes. sigstore-python reads them the same way
# (sigstore/verify/policy.py, OIDCIssuerV2 and OIDCIssuer).
_FULCIO_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"
_FULCIO_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"


@dataclass(frozen=True)
class KeylessSigner:
    """Sign keyless through Sigstore with CI's ambient OIDC identity.

    `identity_token` (or `$TAPEOUT_SIGSTORE_IDENTITY_TOKEN`) takes precedence over the ambient
    credential; without either, signing is refused rather than opening a browser.
    """

    trust_config: Path | None = None
    oidc_issuer: str | None = None
    identity_token: str | None = None
    method: ClassVar[str] = METHOD

    @classmethod
    def from_config(cls, signing, resolve: Callable[[str], Path], keys_dir: Path) -> KeylessSigner:
        """`signing.trust_config` (resolved) and `oidc_issuer`."""
        return cls(trust_config=resolve(signing.trust_config) if signing.trust_config else None,
                   oidc_issuer=signing.oidc_issuer)

    @property
    def shows(self) -> Path:
        from tapeout.artifacts.sigstore_trust import trust_config_file

        return self.trust_config or trust_config_file()

    def sign(self, bundle: Path) -> Path:
        return self._through_sigstore(lambda configure: write_signature(bundle, configure))

    def sign_statement(self, statement: InTotoStatement, path: Path) -> Path:
        return self._through_sigstore(lambda configure: write_statement(path, statement, configure))

    def _through_sigstore(self, write: Callable[[Callable], Path]) -> Path:
        """`write` with a signing config set up for Sigstore with this signer's identity."""
        token = self.identity_token or os.environ.get(IDENTITY_TOKEN_VARIABLE)
        if not token:
            from sigstore.oidc import detect_credential

            try:
                token = detect_credential()
            except Exception as error:  # sigstore's IdentityError: a detector found a broken setup
                raise InvalidInput(f"keyless signing: the ambient OIDC credential is unusable ({error})") from error
        if not token:
            raise InvalidInput(
                "keyless signing needs an OIDC identity: run in CI with an ambient credential "
                "(GitHub Actions: `permissions: id-token: write`) or set "
                f"${IDENTITY_TOKEN_VARIABLE}; tapeout never opens a browser to sign"
            )
        try:
            return write(
                lambda config: config.use_sigstore_signer(
                    oidc_issuer=self.oidc_issuer, use_ambient_credentials=False, identity_token=token,
                    trust_config=self.shows,
                )
            )
        except TapeoutError:
            raise
        except Exception as error:
            raise TapeoutError(f"keyless signing through Sigstore failed ({type(error).__name__}: {error})") from error

    def identity(self, signature: KeylessSignature) -> str:
        return signature.identity()


@dataclass(frozen=True)
class KeylessSignature:
    """A keyless signature: the Fulcio certificate's identities (SANs) and OIDC issuer."""

    subject: str
    sans: tuple[str, ...]
    issuer: str | None
    certificates: tuple[bytes, ...] = field(repr=False)
    method: ClassVar[str] = METHOD

    @classmethod
    def read(cls, material: VerificationMaterial) -> KeylessSignature | None:
        from cryptography import x509

        from tapeout.artifacts.certificates import subject_alternative_names

        if material.certificate is None:
            return None
        raw = bytes(material.certificate.raw_bytes)
        leaf = x509.load_der_x509_certificate(raw)
        return cls(leaf.subject.rfc4514_string(), subject_alternative_names(leaf), _fulcio_issuer(leaf), (raw,))

    def describe(self) -> str:
        return f"keyless identity {', '.join(self.sans) or '?'} from issuer {self.issuer}"

    def identity(self) -> str:
        return f"sigstore:{','.join(self.sans)} (issuer {self.issuer})"

    def verify(
        self, bundle: Path | Signed, admitted: Sequence[ModelRule], resolve: Callable[[str], Path], allows: str
    ) -> Verification:
        rules = [rule.sigstore for rule in admitted if rule.sigstore]
        for rule in rules:
            for allowed in rule.identities:
                if allowed.identity in self.sans and allowed.issuer == self.issuer:
                    return verify_keyless(
                        bundle, identity=allowed.identity, issuer=allowed.issuer,
                        trust_config=resolve(rule.trust_config) if rule.trust_config else None,
                    )
        allowed = [f"{i.identity} ({i.issuer})" for rule in rules for i in rule.identities]
        raise VerificationFailed(
            bundle, [f"signer outside the policy: {self.describe()}; {allows}: {allowed or 'no keyless identities'}"]
        )


def verify_keyless(bundle: Path | Signed, *, identity: str, issuer: str, trust_config: Path | None = None) -> Verification:
    """Check a Sigstore keyless signature offline: the certificate chains to Fulcio in the
    pinned trust config, the Rekor entry and timestamps check, the certificate names
    `identity` (SAN) and `issuer` (OIDC issuer), and every file matches.

    Raises:
        VerificationFailed: any of the above, naming the file or the reason.
    """
    from tapeout.artifacts.sigstore_trust import trust_config_file

    precheck(bundle)
    claimed = read_signature(bundle)
    if not isinstance(claimed, KeylessSignature):
        raise VerificationFailed(bundle, [f"expected a keyless Sigstore signature, found one by {claimed.describe()}"])
    config_path = trust_config or trust_config_file()
    files = check_files(
        bundle,
        lambda config: config.use_sigstore_verifier(identity=identity, oidc_issuer=issuer, trust_config=config_path),
        f"identity {identity} from {issuer}",
    )
    return Verification(f"sigstore:{identity} (issuer {issuer})", files, METHOD)


def _fulcio_issuer(certificate) -> str | None:
    from cryptography import x509
    from cryptography.hazmat import asn1

    for oid, decode in ((_FULCIO_ISSUER_V2, lambda value: asn1.decode_der(str, value)),
                        (_FULCIO_ISSUER_V1, lambda value: value.decode())):
        try:
            extension = certificate.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
        except x509.ExtensionNotFound:
            continue
        return decode(extension.value.value)  # an UnrecognizedExtension: its raw bytes
    return None


SIGNER = KeylessSigner
SIGNATURE = KeylessSignature
