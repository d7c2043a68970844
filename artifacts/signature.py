"""A bundle's signature, `model.sig`: what a signing method is, reading what a signature claims,
and checking the bundle's files against it.

`model.sig` is model-signing's format: a Sigstore bundle holding a DSSE envelope over an in-toto
statement of every file's sha256. It covers every file in the bundle, `.git*` files included,
so nothing can be added beside the signed files unnoticed. A signing method is one module of
tapeout.artifacts.signing_methods holding a `Signer` (what signs) and, where its signatures
carry verification material of their own, a `Signature` (what such a `model.sig` claims and
how it is checked against a trust policy).

The same signer signs, and the same policy checks, three kinds of thing, each a `Signed`: a
bundle's files (`BundleFiles`: `model.sig`), a model imported already signed by its maker
(`SignedModel`: a file or folder with the model-signing signature beside it), and one in-toto
statement of the bundle's chain of attestations (`SignedStatement`: the statement is the
signature's own DSSE payload; docs/trust.md, "The chain of attestations").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, Union

from tapeout.artifacts.digest import SIGNATURE_FILE
from tapeout.compilers.errors import InvalidInput, TapeoutError

if TYPE_CHECKING:  # annotations only
    from model_signing import signing, verifying
    from sigstore_models.bundle.v1 import Bundle, VerificationMaterial

    from in_toto_attestation.v1.statement import Statement as InTotoStatement

    from tapeout.artifacts.policy import ModelRule


class VerificationFailed(TapeoutError):
    """A bundle does not match its signature, or the signature is not from an allowed signer."""

    exit_code = 1

    def __init__(self, bundle: Path | Signed, reasons: list[str]) -> None:
        self.bundle, self.reasons = _path(bundle), reasons
        super().__init__(f"{self.bundle}: verification failed: " + "; ".join(reasons))


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
        self, bundle: Path | Signed, admitted: Sequence[ModelRule], resolve: Callable[[str], Path], allows: str
    ) -> Verification:
        """Check `bundle` (a bundle folder, or any `Signed`) against the signers the policy
        rules `admitted` name for this method
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

    def sign_statement(self, statement: InTotoStatement, path: Path) -> Path:
        """Write `path`: a Sigstore bundle holding a DSSE envelope over `statement`, signed
        as `sign` signs a bundle; returns `path`.

        Raises:
            InvalidInput, TapeoutError: as `sign`.
        """

    def identity(self, signature: Signature) -> str:
        """Who `signature`, which this signer just made, names as its signer: the `signer` tag
        of a registered version and `Verification.signer`."""


@dataclass(frozen=True)
class BundleFiles:
    """A bundle folder: `model.sig` covers every other file in it, `.git*` files included."""

    path: Path

    @property
    def signature(self) -> Path:
        return self.path / SIGNATURE_FILE

    def precheck(self) -> None:
        """What model-signing would not say clearly: no bundle, no signature, a symbolic link."""
        if not self.path.is_dir():
            raise VerificationFailed(self, ["not a bundle directory"])
        if not self.signature.is_file():
            raise VerificationFailed(self, [f"no signature file {SIGNATURE_FILE}"])
        links = [path.relative_to(self.path).as_posix() for path in self.path.rglob("*") if path.is_symlink()]
        if links:
            raise VerificationFailed(self, [f"symbolic links are not allowed in a bundle: {links}"])

    def check(self, configure: Callable[[verifying.Config], verifying.Config], expected: str) -> int:
        """Verify every file against the signature (see `check_files`); the number of files."""
        return _check_model(self, self.path, configure(_verifying_config().set_hashing_config(hashing_config())),
                            expected, self._differences)

    def _differences(self) -> list[str]:
        """How the files differ from the manifest the signature states (not yet trusted), in
        model-signing's words; empty when they agree or the statement cannot be read."""
        from model_signing._signing.signing import dsse_payload_to_manifest

        try:
            stated = dsse_payload_to_manifest(json.loads(read_bundle(self).dsse_envelope.payload))
        except Exception:  # noqa: BLE001 — an unreadable statement: the signature error says why
            return []
        found = hashing_config().hash(self.path)
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


@dataclass(frozen=True)
class SignedModel:
    """A model imported already signed by its maker: a file or a folder (`path`) and the
    model-signing signature over it (`signature`), hashed as the signature says it was
    signed (model-signing's own default: its signature file and `.git*` paths left out)."""

    path: Path
    signature: Path

    def precheck(self) -> None:
        if not self.path.exists():
            raise VerificationFailed(self, ["the signed model is not there"])
        if not self.signature.is_file():
            raise VerificationFailed(self, [f"no signature file {self.signature}"])

    def check(self, configure: Callable[[verifying.Config], verifying.Config], expected: str) -> int:
        return _check_model(self, self.path, configure(_verifying_config()), expected, list)


@dataclass(frozen=True)
class SignedStatement:
    """One in-toto statement in a Sigstore bundle (`path`): the signature covers the DSSE
    envelope's payload, which is the statement itself."""

    path: Path

    @property
    def signature(self) -> Path:
        return self.path

    def precheck(self) -> None:
        if not self.path.is_file():
            raise VerificationFailed(self, ["no such signed statement"])

    def check(self, configure: Callable[[verifying.Config], verifying.Config], expected: str) -> int:
        """Check the envelope's signature (not the statement's claims); 1, the statement."""
        config = configure(_verifying_config())
        try:
            # model-signing 1.1.1 keeps the configured verifier private; its public `verify`
            # expects a model-signing manifest, not any statement.
            signature = _signature_type(config).read(self.path)
            payload_type, _ = config._verifier._verify_signed_content(signature)
        except Exception as error:  # model-signing raises ValueError, crypto and chain errors alike
            detail = str(error) or type(error).__name__
            raise VerificationFailed(
                self, [f"signature is invalid or not made by {expected} ({type(error).__name__}: {detail})"]
            ) from None
        if payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise VerificationFailed(self, [f"expected a DSSE payload of type {IN_TOTO_PAYLOAD_TYPE}, found {payload_type!r}"])
        return 1


Signed = Union[BundleFiles, SignedModel, SignedStatement]
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def signed(target: Path | Signed) -> Signed:
    """`target` as what a signature covers: a plain path is a bundle folder."""
    return BundleFiles(target) if isinstance(target, Path) else target


def _path(target: Path | Signed) -> Path:
    return target if isinstance(target, Path) else target.path


def _verifying_config() -> verifying.Config:
    from model_signing import verifying

    return verifying.Config()


def _signature_type(config: verifying.Config):
    from model_signing._signing import sign_sigstore, sign_sigstore_pb

    return sign_sigstore.Signature if config._uses_sigstore else sign_sigstore_pb.Signature


def read_bundle(target: Path | Signed) -> Bundle:
    """The signature of `target` (a bundle folder's `model.sig`, or any `Signed`'s) as
    sigstore's protobuf bundle type, read by model-signing's own reader (the one its verifier
    uses, model-signing 1.1.1 `_signing.sign_sigstore_pb.Signature`).

    Raises:
        VerificationFailed: no signature file, or one that is not a Sigstore bundle.
    """
    from model_signing._signing import sign_sigstore_pb

    from tapeout.artifacts.documents import read_json_object

    target = signed(target)
    path = target.signature
    if not path.is_file():
        raise VerificationFailed(target, [f"no signature file {path.name}"])
    try:
        read_json_object(path)  # one line for what is no JSON object at all, however deep
    except InvalidInput as error:
        raise VerificationFailed(target, [f"{path.name} is not a Sigstore bundle ({error})"]) from None
    try:
        return sign_sigstore_pb.Signature.read(path).bundle
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise VerificationFailed(target, [f"{path.name} is not a Sigstore bundle ({_one_line(error)})"]) from None


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


def write_statement(path: Path, statement: InTotoStatement, configure: Callable[[signing.Config], object]) -> Path:
    """Sign `statement` with model-signing's signer set up by `configure` (the same as signs
    a bundle) and write the Sigstore bundle it makes — a DSSE envelope over the statement — to
    `path`."""
    from model_signing import signing
    from model_signing._signing.signing import Payload

    class _StatementPayload(Payload):
        """A payload that is any in-toto statement: model-signing's signers sign
        `payload.statement` as it is (model-signing 1.1.1 `_signing/sign_*.py`)."""

        def __init__(self, statement: InTotoStatement) -> None:
            self.statement = statement

    statement.validate()
    config = signing.Config()
    configure(config)
    config._signer.sign(_StatementPayload(statement)).write(path)
    return path


def statement_payload(path: Path) -> dict:
    """The in-toto statement inside a signed statement file, as JSON — read, not verified.

    Raises:
        VerificationFailed: not a Sigstore bundle with a DSSE envelope over a JSON object.
    """
    target = SignedStatement(path)
    envelope = read_bundle(target).dsse_envelope
    if envelope is None:
        raise VerificationFailed(target, ["no DSSE envelope in it"])
    try:
        document = json.loads(envelope.payload)
    except (ValueError, RecursionError):
        raise VerificationFailed(target, ["its DSSE payload is not JSON"]) from None
    if not isinstance(document, dict):
        raise VerificationFailed(target, ["its DSSE payload is not a JSON object"])
    return document


def precheck(bundle: Path | Signed) -> None:
    """What model-signing would not say clearly: nothing there, no signature, a symbolic link."""
    signed(bundle).precheck()


def check_files(bundle: Path | Signed, configure: Callable[[verifying.Config], verifying.Config], expected: str) -> int:
    """Verify `bundle` (a bundle folder, or any `Signed`) against its signature with
    model-signing (its verifier set up by `configure`; `expected` names the signer in a
    refusal). Returns the number of files (1 for a statement).

    When model-signing refuses a bundle, the reasons are found by comparing the manifest the
    signature states with the bundle's own, file by file: each file added, missing or changed
    is named. When the two agree, the signature itself is what failed, and model-signing's
    error says why.

    Raises:
        VerificationFailed: a file was added, removed, renamed or changed (each named), or the
            signature is invalid or not made by `expected`.
    """
    target = signed(bundle)
    target.precheck()
    return target.check(configure, expected)


def _check_model(
    target: Signed,
    path: Path,
    config: verifying.Config,
    expected: str,
    differences: Callable[[], list[str]],
) -> int:
    try:
        config.verify(path, target.signature)
    except Exception as error:  # model-signing raises ValueError, crypto and chain errors alike
        found = differences()
        if found:
            raise VerificationFailed(target, found) from None
        detail = str(error) or type(error).__name__
        if isinstance(error, ValueError):
            raise VerificationFailed(target, [detail]) from None
        raise VerificationFailed(
            target, [f"signature is invalid or not made by {expected} ({type(error).__name__}: {detail})"]
        ) from None
    if path.is_file():
        return 1
    return sum(1 for item in path.rglob("*") if item.is_file() and item != target.signature)


def read_signature(bundle: Path | Signed) -> Signature:
    """What the signature of `bundle` (a bundle folder's `model.sig`, or any `Signed`'s) says
    about its signer, without verifying anything: the claim of the signing method whose
    verification material it holds.

    Raises:
        VerificationFailed: no signature file, one that is not a Sigstore bundle, or one whose
            verification material no method reads.
    """
    from tapeout.artifacts.signing_methods import signature_types

    target = signed(bundle)
    material = read_bundle(target).verification_material
    name = target.signature.name
    try:
        for kind in signature_types():
            claimed = kind.read(material)
            if claimed is not None:
                return claimed
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise VerificationFailed(
            target, [f"{name}: unreadable verification material ({type(error).__name__}: {error})"]
        ) from None
    raise VerificationFailed(target, [f"{name}: no public key hint, certificate or chain in it"])
