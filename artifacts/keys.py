"""The EC P-256 keys of the `key` signing method and of audit heads: made, checked, named.

A key is named by `signer_identity`, the sha256 of its DER public key ("key:sha256:..."); a
model-signing signature names it only by its hint, the sha256 of its PEM public key
(`key_hint`). A private key is refused unless it is an unencrypted PEM EC key that only its
owner can read (as ssh refuses such keys).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tapeout.compilers.errors import InvalidInput

PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub"


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    public_key: Path


def init_keys(keys_dir: Path) -> tuple[KeyPair, bool]:
    """Create an EC P-256 key pair under `keys_dir` unless one exists; returns (pair, created).

    The private key is written with mode 0600 from the start (never world-readable).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pair = KeyPair(keys_dir / PRIVATE_KEY_FILE, keys_dir / PUBLIC_KEY_FILE)
    if pair.private_key.exists():
        if not pair.public_key.exists():
            write_atomically(pair.public_key, public_key_for(pair.private_key), 0o644, replace=True)
        return pair, False
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Concurrent first runs race here: each key is written whole under a temporary name and
    # linked into place, so exactly one wins and nobody ever reads a half-written key.
    if not write_atomically(pair.private_key, pem, 0o600, replace=False):
        return init_keys(keys_dir)  # another process created it first: use theirs
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomically(pair.public_key, public, 0o644, replace=True)
    return pair, True


def write_atomically(path: Path, data: bytes, mode: int, *, replace: bool) -> bool:
    """Write `data` to `path` atomically (temporary file, fsync, link or rename). With
    `replace` False an existing `path` is kept and False returned."""
    import tempfile

    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def signer_identity(public_key: Path) -> str:
    """'key:sha256:<fingerprint>' — sha256 of the DER SubjectPublicKeyInfo."""
    return _identity(load_public_key(public_key))


def _identity(key) -> str:
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"key:sha256:{hashlib.sha256(der).hexdigest()}"


def key_hint(public_key: Path) -> str:
    """model-signing's key hint: sha256 of the PEM SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    pem = load_public_key(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def private_key_identity(private_key: Path) -> str:
    """`signer_identity` of a private key's public half.

    Raises:
        InvalidInput: the key is unusable (see `public_key_for`).
    """
    from cryptography.hazmat.primitives import serialization

    return _identity(serialization.load_pem_public_key(public_key_for(private_key)))


def sign_statement(private_key: Path, data: bytes) -> str:
    """Sign a short statement (an audit head) with an EC key: the base64 DER ECDSA-SHA256
    signature.

    Raises:
        InvalidInput: the key is unusable (see `public_key_for`).
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public_key_for(private_key)  # the checks: readable, EC, unencrypted, not readable by others
    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()  # type: ignore[union-attr]


def check_statement(public_keys: Iterable[Path], signer: str, data: bytes, signature: str) -> str | None:
    """None when `signature` over `data` was made by the key named `signer` among
    `public_keys`; else why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = {}
    for path in public_keys:
        try:
            keys[signer_identity(path)] = load_public_key(path)
        except InvalidInput:
            continue  # an unreadable key trusts nothing
    if signer not in keys:
        return f"signed by {signer or 'nobody'}, not by a key trusted here ({sorted(keys) or 'none'})"
    try:
        keys[signer].verify(base64.b64decode(signature, validate=True), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return f"the signature by {signer} does not match what it signs"
    return None


def public_key_for(private_key: Path) -> bytes:
    """The PEM public key of a private key file, after checking it is a usable EC key.

    Raises:
        InvalidInput: the key is unreadable, encrypted, not an EC key, or others can read it.
    """
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
    _refuse_shared_key(private_key)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _refuse_shared_key(private_key: Path) -> None:
    """A signing key others can read is not the signer's alone (as ssh refuses such keys)."""
    import stat

    mode = stat.S_IMODE(private_key.stat().st_mode)
    if mode & 0o077:
        who = " and ".join(name for name, bits in (("its group", 0o070), ("everyone", 0o007)) if mode & bits)
        raise InvalidInput(
            f"{private_key}: mode {mode:04o} gives {who} access to the signing key; "
            f"a signing key must be private to its owner: chmod 600 {private_key}"
        )


def load_public_key(public_key: Path):
    """The EC public key in a PEM file.

    Raises:
        InvalidInput: unreadable, not PEM, or not an EC key.
    """
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
