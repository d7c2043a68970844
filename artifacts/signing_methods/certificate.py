"""The `certificate` method: an EC key with its leaf certificate and the chain up to a root.

Verification checks the chain against the policy's pinned roots *and* pins the leaf's subject
or SANs: any leaf under a trusted root would otherwise pass. A certificate signature carries no
trusted time, so its chain must be valid when it is verified (tapeout.artifacts.certificates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from tapeout.artifacts.keys import public_key_for
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
from tapeout.compilers.errors import InvalidInput

if TYPE_CHECKING:  # annotations only
    from in_toto_attestation.v1.statement import Statement as InTotoStatement
    from sigstore_models.bundle.v1 import VerificationMaterial

    from tapeout.artifacts.policy import ModelRule

METHOD = "certificate"


@dataclass(frozen=True)
class CertificateSigner:
    """Sign with an EC private key and its leaf certificate; `chain` holds the intermediates
    (and optionally the root), leaf first order not required."""

    private_key: Path
    certificate: Path
    chain: tuple[Path, ...] = ()
    method: ClassVar[str] = METHOD

    @classmethod
    def from_config(cls, signing, resolve: Callable[[str], Path], keys_dir: Path) -> CertificateSigner:
        """`signing.private_key`, `certificate` and `certificate_chain`, each resolved.

        Raises:
            InvalidInput: the key is unusable or others can read it.
        """
        signer = cls(
            resolve(signing.private_key),
            resolve(signing.certificate),
            tuple(resolve(item) for item in signing.certificate_chain),
        )
        public_key_for(signer.private_key)  # fail fast on an unusable key
        return signer

    @property
    def shows(self) -> Path:
        return self.certificate

    def sign(self, bundle: Path) -> Path:
        self._check_usable()
        return write_signature(bundle, self._configure)

    def sign_statement(self, statement: InTotoStatement, path: Path) -> Path:
        self._check_usable()
        return write_statement(path, statement, self._configure)

    def _check_usable(self) -> None:
        """The key is the certificate's, and every certificate of the chain is valid now."""
        from cryptography.hazmat.primitives import serialization

        from tapeout.artifacts.certificates import read_certificates, validity_problems

        public = public_key_for(self.private_key)
        leaf = read_certificates(self.certificate)[0]
        leaf_public = leaf.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if leaf_public != public:
            raise InvalidInput(f"{self.certificate}: the certificate's public key does not match {self.private_key}")
        chain = [certificate for path in self.chain for certificate in read_certificates(path)]
        problems = validity_problems([leaf, *chain])
        if problems:
            # Verification would refuse it: a certificate signature carries no trusted time.
            raise InvalidInput(f"{self.certificate}: cannot sign now: " + "; ".join(problems))

    def _configure(self, config) -> None:
        config.use_certificate_signer(
            private_key=self.private_key, signing_certificate=self.certificate, certificate_chain=list(self.chain)
        )

    def identity(self, signature: CertificateSignature) -> str:
        return signature.identity()


@dataclass(frozen=True)
class CertificateSignature:
    """A signature by a certificate's key, with the chain it carries (DER, leaf first)."""

    subject: str
    sans: tuple[str, ...]
    certificates: tuple[bytes, ...] = field(repr=False)
    method: ClassVar[str] = METHOD

    @classmethod
    def read(cls, material: VerificationMaterial) -> CertificateSignature | None:
        from cryptography import x509

        from tapeout.artifacts.certificates import subject_alternative_names

        if material.x509_certificate_chain is None:
            return None
        raw = tuple(bytes(item.raw_bytes) for item in material.x509_certificate_chain.certificates)
        leaf = x509.load_der_x509_certificate(raw[0])
        return cls(leaf.subject.rfc4514_string(), subject_alternative_names(leaf), raw)

    def describe(self) -> str:
        return f"certificate subject {self.subject!r}, SANs {list(self.sans)}"

    def identity(self) -> str:
        sans = f" SAN {','.join(self.sans)}" if self.sans else ""
        return f"x509:{self.subject}{sans}"

    def verify(
        self, bundle: Path | Signed, admitted: Sequence[ModelRule], resolve: Callable[[str], Path], allows: str
    ) -> Verification:
        from cryptography import x509

        from tapeout.artifacts.certificates import order_hint, subject_matches

        subject = x509.load_der_x509_certificate(self.certificates[0]).subject
        rules = [rule.certificates for rule in admitted if rule.certificates]
        for rule in rules:
            if subject_matches(subject, rule.subjects) or set(self.sans) & set(rule.sans):
                return verify_certificate(
                    bundle, [resolve(root) for root in rule.roots], subjects=rule.subjects, sans=rule.sans
                )
        allowed = [{"subjects": rule.subjects, "sans": rule.sans} for rule in rules]
        hint = order_hint(subject, [pin for rule in rules for pin in rule.subjects])
        raise VerificationFailed(
            bundle, [f"signer outside the policy: {self.describe()}; {allows}: {allowed or 'no certificate signers'}{hint}"]
        )


def verify_certificate(
    bundle: Path | Signed,
    roots: Sequence[Path],
    *,
    subjects: Iterable[str] = (),
    sans: Iterable[str] = (),
) -> Verification:
    """Check `bundle` against a certificate signature whose chain ends in one of `roots`, and
    whose leaf has one of the pinned `subjects` (RFC 4514, e.g. 'CN=release,O=Example') or
    one of the pinned `sans` (e-mail, DNS or URI).

    Raises:
        VerificationFailed: the chain does not lead to a pinned root, the leaf is not allowed
            to sign, its subject/SANs are not pinned, or any file differs (named).
        InvalidInput: no roots, or neither subjects nor SANs pinned.
    """
    from cryptography import x509

    from tapeout.artifacts.certificates import order_hint, read_certificates, subject_matches, validity_problems

    subjects, sans = tuple(subjects), tuple(sans)
    if not roots:
        raise InvalidInput("certificate verification needs at least one pinned root certificate")
    if not subjects and not sans:
        raise InvalidInput(
            "certificate verification needs pinned subjects or SANs: any leaf under the root "
            "would pass otherwise"
        )
    pinned_roots = [certificate for root in roots for certificate in read_certificates(root)]
    precheck(bundle)
    claimed = read_signature(bundle)
    if not isinstance(claimed, CertificateSignature):
        raise VerificationFailed(bundle, [f"expected a certificate signature, found one by {claimed.describe()}"])
    chain = [x509.load_der_x509_certificate(raw) for raw in claimed.certificates]
    if not (subject_matches(chain[0].subject, subjects) or set(claimed.sans) & set(sans)):
        raise VerificationFailed(
            bundle,
            [f"signer outside the policy: certificate subject {claimed.subject!r}, SANs {list(claimed.sans)}; "
             f"allowed subjects {list(subjects)}, SANs {list(sans)}" + order_hint(chain[0].subject, subjects)],
        )
    problems = validity_problems(chain, pinned_roots)
    if problems:
        raise VerificationFailed(
            bundle,
            problems + ["a certificate signature carries no trusted timestamp, so its chain must be valid when it is verified"],
        )
    files = check_files(
        bundle,
        lambda config: config.use_certificate_verifier(certificate_chain=list(roots)),
        "the pinned certificate roots",
    )
    return Verification(claimed.identity(), files, METHOD)


SIGNER = CertificateSigner
SIGNATURE = CertificateSignature
