"""The `key` method: an EC P-256 key pair (`tapeout keys init`, tapeout.artifacts.keys), the
offline default. A signature names its key only by a hint, the sha256 of its PEM public key;
the trust policy's `keys` say which public keys may sign a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from tapeout.artifacts.keys import key_hint, load_public_key, private_key_identity, public_key_for, signer_identity
from tapeout.artifacts.signature import (
    Signed,
    Verification,
    VerificationFailed,
    check_files,
    write_signature,
    write_statement,
)

if TYPE_CHECKING:  # annotations only
    from in_toto_attestation.v1.statement import Statement as InTotoStatement
    from sigstore_models.bundle.v1 import VerificationMaterial

    from tapeout.artifacts.policy import ModelRule

METHOD = "key"


@dataclass(frozen=True)
class KeySigner:
    """Sign with an EC private key. `public_key`: its public half as published (the `.pub`
    a verifier trusts); None derives it from the private key."""

    private_key: Path
    public_key: Path | None = None
    method: ClassVar[str] = METHOD

    @classmethod
    def from_config(cls, signing, resolve: Callable[[str], Path], keys_dir: Path) -> KeySigner | None:
        """The configured `signing.private_key`, its public half beside it (`.pub`) or else
        published under `keys_dir`; None when no key is configured (the home's own key signs).

        Raises:
            InvalidInput: the key is unusable or others can read it.
        """
        from tapeout.artifacts.keyring import published_public_key

        if not signing.private_key:
            return None
        private_key = resolve(signing.private_key)
        public_key_for(private_key)  # fail fast on an unusable or shared key
        public_key = private_key.with_suffix(".pub")
        if not public_key.exists():
            public_key = published_public_key(keys_dir, private_key)
        return cls(private_key, public_key)

    @property
    def shows(self) -> Path:
        return self.public_key or self.private_key

    def sign(self, bundle: Path) -> Path:
        public_key_for(self.private_key)  # fails clearly before model-signing's own, vaguer errors
        return write_signature(bundle, self._configure)

    def sign_statement(self, statement: InTotoStatement, path: Path) -> Path:
        public_key_for(self.private_key)
        return write_statement(path, statement, self._configure)

    def _configure(self, config) -> None:
        config.use_elliptic_key_signer(private_key=self.private_key)

    def identity(self, signature: KeySignature) -> str:
        if self.public_key is not None:
            return signer_identity(self.public_key)
        return private_key_identity(self.private_key)


@dataclass(frozen=True)
class KeySignature:
    """A signature by an EC key, named by its hint."""

    key_hint: str | None
    method: ClassVar[str] = METHOD

    @classmethod
    def read(cls, material: VerificationMaterial) -> KeySignature | None:
        if material.public_key is None:
            return None
        return cls(material.public_key.hint or None)

    def describe(self) -> str:
        return f"an EC key (public key hint {self.key_hint})"

    def verify(
        self, bundle: Path | Signed, admitted: Sequence[ModelRule], resolve: Callable[[str], Path], allows: str
    ) -> Verification:
        keys = [resolve(key) for rule in admitted for key in rule.keys]
        for key in keys:
            if key_hint(key) == self.key_hint:
                return verify_bundle(bundle, key)
        allowed = [signer_identity(key) for key in keys]
        raise VerificationFailed(
            bundle,
            [f"signer outside the policy: signed by an EC key with hint {self.key_hint}; "
             f"{allows}: {allowed or 'no keys'}"],
        )


def verify_bundle(bundle: Path | Signed, public_key: Path) -> Verification:
    """Check every file of `bundle` against `model.sig` (or any `Signed` against its
    signature) and the signature against the key.

    Raises:
        VerificationFailed: no signature; a file changed, added, removed or renamed (each
            named); a symlink; or a signature not made by `public_key`.
        InvalidInput: the public key is missing or not an EC public key.
    """
    load_public_key(public_key)
    identity = signer_identity(public_key)
    files = check_files(bundle, lambda config: config.use_elliptic_key_verifier(public_key=public_key), "this key")
    return Verification(identity, files, METHOD)


SIGNER = KeySigner
SIGNATURE = KeySignature
