"""Sign and verify a whole bundle directory with model-signing (DESIGN §6).

The signature (`model.sig`) is a Sigstore bundle holding a DSSE envelope over an in-toto
statement of every file's sha256; it covers every file in the bundle, `.git*` files
included, so nothing can be added beside the signed files unnoticed.
This module does the `key` method: an EC P-256 key pair, created by `tapeout keys init`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from tapeout.artifacts.digest import SIGNATURE_FILE
from tapeout.compilers.errors import InvalidInput, TapeoutError

PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub"


class VerificationFailed(TapeoutError):
    """A bundle does not match its signature, or the signature is not from the expected key."""

    exit_code = 1

    def __init__(self, bundle: Path, reasons: list[str]) -> None:
        self.bundle, self.reasons = bundle, reasons
        super().__init__(f"{bundle}: verification failed: " + "; ".join(reasons))


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class Verification:
    """A successful verification: who signed, and how many files were checked."""

    signer: str
    files: int


def init_keys(keys_dir: Path) -> tuple[KeyPair, bool]:
    """Create an EC P-256 key pair under `keys_dir` unless one exists; returns (pair, created).

    The private key is written with mode 0600 from the start (never world-readable).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pair = KeyPair(keys_dir / PRIVATE_KEY_FILE, keys_dir / PUBLIC_KEY_FILE)
    if pair.private_key.exists():
        if not pair.public_key.exists():
            pair.public_key.write_bytes(_public_pem(pair.private_key))
        return pair, False
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(pair.private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(pem)
    pair.public_key.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pair, True


def signer_identity(public_key: Path) -> str:
    """'key:sha256:<fingerprint>' — sha256 of the DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    key = _load_public(public_key)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"key:sha256:{hashlib.sha256(der).hexdigest()}"


def public_key_for(private_key: Path) -> bytes:
    """The PEM public key of a private key file, after checking it is a usable EC key."""
    return _public_pem(private_key)


def sign_bundle(bundle: Path, private_key: Path) -> Path:
    """Write `model.sig` over every file in `bundle`.

    Raises:
        InvalidInput: the key is missing, unreadable, encrypted or not an EC P-256/P-384 key.
    """
    from model_signing import signing

    _public_pem(private_key)  # fails clearly before model-signing's own, vaguer errors
    signature = bundle / SIGNATURE_FILE
    config = signing.Config().set_hashing_config(_hashing_config())
    config.use_elliptic_key_signer(private_key=private_key).sign(bundle, signature)
    return signature


def verify_bundle(bundle: Path, public_key: Path) -> Verification:
    """Check every file of `bundle` against `model.sig` and the signature against the key.

    Raises:
        VerificationFailed: no signature; a file changed, added, removed or renamed (each
            named); a symlink; or a signature not made by `public_key`.
        InvalidInput: the public key is missing or not an EC public key.
    """
    from model_signing import verifying

    _load_public(public_key)
    signature = bundle / SIGNATURE_FILE
    if not bundle.is_dir():
        raise VerificationFailed(bundle, ["not a bundle directory"])
    if not signature.is_file():
        raise VerificationFailed(bundle, [f"no signature file {SIGNATURE_FILE}"])
    links = [path.relative_to(bundle).as_posix() for path in bundle.rglob("*") if path.is_symlink()]
    if links:
        raise VerificationFailed(bundle, [f"symbolic links are not allowed in a bundle: {links}"])
    config = verifying.Config().set_hashing_config(_hashing_config())
    config = config.use_elliptic_key_verifier(public_key=public_key)
    try:
        config.verify(bundle, signature)
    except ValueError as error:
        raise VerificationFailed(bundle, _reasons(str(error))) from None
    except Exception as error:  # signature parsing / crypto errors from model-signing's stack
        raise VerificationFailed(
            bundle, [f"signature is invalid or not made by this key ({type(error).__name__}: {error})"]
        ) from None
    files = sum(1 for path in bundle.rglob("*") if path.is_file() and path.name != SIGNATURE_FILE)
    return Verification(signer_identity(public_key), files)


def _reasons(message: str) -> list[str]:
    """model-signing reports a manifest mismatch as 'Signature mismatch: [..., ...]'."""
    prefix = "Signature mismatch: "
    if message.startswith(prefix):
        import ast

        try:
            items = ast.literal_eval(message[len(prefix) :])
            if isinstance(items, list) and items:
                return [str(item) for item in items]
        except (ValueError, SyntaxError):
            pass
    return [message]


def _hashing_config():
    from model_signing import hashing

    # Sign .git* files too: a bundle never legitimately holds them.
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def _public_pem(private_key: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        data = private_key.read_bytes()
    except OSError as error:
        raise InvalidInput(f"{private_key}: cannot read the signing key ({error.strerror})") from error
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise InvalidInput(
            f"{private_key}: expected an unencrypted PEM EC private key ({error})"
        ) from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(
            f"{private_key}: expected an EC private key (P-256), found {type(key).__name__}"
        )
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_public(public_key: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(public_key.read_bytes())
    except OSError as error:
        raise InvalidInput(f"{public_key}: cannot read the public key ({error.strerror})") from error
    except ValueError as error:
        raise InvalidInput(f"{public_key}: expected a PEM EC public key ({error})") from error
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InvalidInput(f"{public_key}: expected an EC public key, found {type(key).__name__}")
    return key
