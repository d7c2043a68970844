"""A bundle's signature, `model.sig`: what a signing method is, reading what a signature claims,
and checking the bundle's files against it.

`model.sig` is model-signing's format: a Sigstore bundle holding a DSSE envelope over an in-toto
statement of every file's sha256. It covers every file in the bundle, `.git*` files included,
so nothing can be added beside the signed files unnoticed. A signing method is one module of
tapeout.artifacts.signing_methods holding a `Signer` (what signs) and, where its signatures
carry verification material of their own, a `Signature` (what such a `model.sig` claims and
how it is checked against a trust policy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from tapeout.artifacts.digest import SIGNATURE_FILE
from tapeout.compilers.errors import InvalidInput, TapeoutError

if TYPE_CHECKING:  # annotations only
    from model_signing import signing, verifying
    from sigstore_models.bundle.v1 import Bundle, VerificationMaterial

    from tapeout.artifacts.policy import ModelRule


class VerificationFailed(TapeoutError):
    """A bundle does not match its signature, or the signature is not from an allowed signer."""

    exit_code = 1

    def __init__(self, bundle: Path, reasons: list[str]) -> None:
        self.bundle, self.reasons = bundle, reasons
        super().__init__(f"{bundle}: verification failed: " + "; ".join(reasons))


@dataclass(frozen=True)
class Verification:
    """A successful verification: who signed, by which method, how many files were checked."""

    signer: str
    files: int
    method: str = "key"


class Signature(Protocol):
    """What a `model.sig` of one signing method claims about its signer: read, not trusted."""

    method: ClassVar[str]

    @classmethod
    def read(cls, material: VerificationMaterial) -> Signature | None:
        """The claim, when `material` (the bundle's verification material) is this method's."""

    def describe(self) -> str:
        """The claimed signer, in words, for messages."""

    def verify(
        self, bundle: Path, admitted: Sequence[ModelRule], resolve: Callable[[str], Path], allows: str
    ) -> Verification:
        """Check `bundle` against the signers the policy rules `admitted` name for this method
        (`resolve` makes a path in a rule absolute; `allows` starts the refusal's sentence).

        Raises:
            VerificationFailed: the signer is not one of them, or a file or the signature does
                not check (named).
        """


class Signer(Protocol):
    """What signs a bundle by one method: its key, certificate or identity token."""

    method: ClassVar[str]

    @property
    def shows(self) -> Path:
        """The public material the signer shows: a public key, a certificate, a trust config."""

    def sign(self, bundle: Path) -> Path:
        """Write `bundle/model.sig` over every file in `bundle`; returns its path.

        Raises:
            InvalidInput: the signer's material is missing or unusable (named).
            TapeoutError: the signing service refused or could not be reached.
        """

    def identity(self, signature: Signature) -> str:
        """Who `signature`, which this signer just made, names as its signer: the `signer` tag
        of a registered version and `Verification.signer`."""


def read_bundle(bundle: Path) -> Bundle:
    """`bundle/model.sig` as sigstore's protobuf bundle type, read by model-signing's own reader
    (the one its verifier uses, model-signing 1.1.1 `_signing.sign_sigstore_pb.Signature`).

    Raises:
        VerificationFailed: no signature file, or one that is not a Sigstore bundle.
    """
    from model_signing._signing import sign_sigstore_pb

    from tapeout.artifacts.documents import read_json_object

    path = bundle / SIGNATURE_FILE
    if not path.is_file():
        raise VerificationFailed(bundle, [f"no signature file {SIGNATURE_FILE}"])
    try:
        read_json_object(path)  # one line for what is no JSON object at all, however deep
    except InvalidInput as error:
        raise VerificationFailed(bundle, [f"{SIGNATURE_FILE} is not a Sigstore bundle ({error})"]) from None
    try:
        return sign_sigstore_pb.Signature.read(path).bundle
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise VerificationFailed(bundle, [f"{SIGNATURE_FILE} is not a Sigstore bundle ({_one_line(error)})"]) from None


def _one_line(error: Exception) -> str:
    """An error of the signature's parser in one line: pydantic's first complaint with where
    it is, a missing key, or the error itself."""
    if callable(getattr(error, "errors", None)):  # pydantic's ValidationError
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "(top)"
        return f"{where}: {first.get('msg', '')}"
    if isinstance(error, KeyError):
        return f"no {error} in it"
    return " ".join(f"{type(error).__name__}: {error}".split())


def hashing_config() -> signing.hashing.Config:
    from model_signing import hashing

    # Sign .git* files too: a bundle never legitimately holds them.
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def write_signature(bundle: Path, configure: Callable[[signing.Config], object]) -> Path:
    """Sign `bundle` with model-signing, its signing config set up by `configure`."""
    from model_signing import signing

    signature = bundle / SIGNATURE_FILE
    config = signing.Config().set_hashing_config(hashing_config())
    configure(config)
    config.sign(bundle, signature)
    return signature


def precheck(bundle: Path) -> None:
    """What model-signing would not say clearly: no bundle, no signature, a symbolic link."""
    if not bundle.is_dir():
        raise VerificationFailed(bundle, ["not a bundle directory"])
    if not (bundle / SIGNATURE_FILE).is_file():
        raise VerificationFailed(bundle, [f"no signature file {SIGNATURE_FILE}"])
    links = [path.relative_to(bundle).as_posix() for path in bundle.rglob("*") if path.is_symlink()]
    if links:
        raise VerificationFailed(bundle, [f"symbolic links are not allowed in a bundle: {links}"])


def check_files(bundle: Path, configure: Callable[[verifying.Config], verifying.Config], expected: str) -> int:
    """Verify `bundle` against its signature with model-signing (its verifier set up by
    `configure`; `expected` names the signer in a refusal). Returns the number of files.

    When model-signing refuses, the reasons are found by comparing the manifest the signature
    states with the bundle's own, file by file: each file added, missing or changed is named.
    When the two agree, the signature itself is what failed, and model-signing's error says why.

    Raises:
        VerificationFailed: a file was added, removed, renamed or changed (each named), or the
            signature is invalid or not made by `expected`.
    """
    from model_signing import verifying

    precheck(bundle)
    config = configure(verifying.Config().set_hashing_config(hashing_config()))
    try:
        config.verify(bundle, bundle / SIGNATURE_FILE)
    except Exception as error:  # model-signing raises ValueError, crypto and chain errors alike
        differences = _manifest_differences(bundle)
        if differences:
            raise VerificationFailed(bundle, differences) from None
        detail = str(error) or type(error).__name__
        if isinstance(error, ValueError):
            raise VerificationFailed(bundle, [detail]) from None
        raise VerificationFailed(
            bundle, [f"signature is invalid or not made by {expected} ({type(error).__name__}: {detail})"]
        ) from None
    return sum(1 for path in bundle.rglob("*") if path.is_file() and path.name != SIGNATURE_FILE)


def _manifest_differences(bundle: Path) -> list[str]:
    """How the bundle's files differ from the manifest its signature states (not yet trusted),
    in model-signing's words; empty when they agree or the statement cannot be read."""
    import json

    from model_signing._signing.signing import dsse_payload_to_manifest

    try:
        stated = dsse_payload_to_manifest(json.loads(read_bundle(bundle).dsse_envelope.payload))
    except Exception:  # noqa: BLE001 — an unreadable statement: the signature error says why
        return []
    found = hashing_config().hash(bundle)
    expected = {item.identifier: item.digest for item in stated.resource_descriptors()}
    actual = {item.identifier: item.digest for item in found.resource_descriptors()}
    differences = []
    if set(actual) - set(expected):
        differences.append(
            f"Extra files found in model '{found.model_name}': {', '.join(sorted(set(actual) - set(expected)))}"
        )
    if set(expected) - set(actual):
        differences.append(
            f"Missing files in model '{found.model_name}': {', '.join(sorted(set(expected) - set(actual)))}"
        )
    for name in sorted(set(actual) & set(expected)):
        if actual[name] != expected[name]:
            differences.append(
                f"Hash mismatch for '{name}': Expected '{expected[name]}', Actual '{actual[name]}'"
            )
    return differences


def read_signature(bundle: Path) -> Signature:
    """What `bundle/model.sig` says about its signer, without verifying anything: the claim of
    the signing method whose verification material it holds.

    Raises:
        VerificationFailed: no signature file, one that is not a Sigstore bundle, or one whose
            verification material no method reads.
    """
    from tapeout.artifacts.signing_methods import signature_types

    material = read_bundle(bundle).verification_material
    try:
        for kind in signature_types():
            claimed = kind.read(material)
            if claimed is not None:
                return claimed
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise VerificationFailed(
            bundle, [f"{SIGNATURE_FILE}: unreadable verification material ({type(error).__name__}: {error})"]
        ) from None
    raise VerificationFailed(bundle, [f"{SIGNATURE_FILE}: no public key hint, certificate or chain in it"])
