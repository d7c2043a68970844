"""Sign and verify a whole bundle directory with model-signing (DESIGN §6).

The signature (`model.sig`) is a Sigstore bundle holding a DSSE envelope over an in-toto
statement of every file's sha256; it covers every file in the bundle, `.git*` files
included, so nothing can be added beside the signed files unnoticed.

Three methods, one signer value each:
- `key` (`KeySigner`, or a plain key path): an EC P-256 key pair made by `tapeout keys init`;
  the offline default. The signature names the key by the sha256 of its PEM public key.
- `certificate` (`CertificateSigner`): an EC key with its leaf certificate and the chain up
  to a root. Verification checks the chain against pinned roots *and* pins the leaf's subject
  or SANs — any leaf under a trusted root would otherwise pass.
- `sigstore` (`KeylessSigner`): keyless, with the ambient OIDC identity of CI (GitHub Actions
  with `id-token: write`). Signing needs Fulcio and Rekor on the network; verification is
  offline against a pinned trust config (`tapeout.artifacts.sigstore_trust`).

`read_signature` says what a signature claims (method, key hint, certificate subject, SANs,
OIDC issuer) without trusting it; the `verify_*` functions check it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tapeout.artifacts.digest import SIGNATURE_FILE
from tapeout.artifacts.documents import read_json_object
from tapeout.compilers.errors import InvalidInput, TapeoutError

PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub"
METHODS = ("key", "certificate", "sigstore")
# Fulcio's certificate extensions: the OIDC issuer (v2, DER UTF8String; v1, raw bytes).
_FULCIO_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"
_FULCIO_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"
IDENTITY_TOKEN_VARIABLE = "TAPEOUT_SIGSTORE_IDENTITY_TOKEN"


class VerificationFailed(TapeoutError):
    """A bundle does not match its signature, or the signature is not from an allowed signer."""

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
    """A successful verification: who signed, by which method, how many files were checked."""

    signer: str
    files: int
    method: str = "key"


@dataclass(frozen=True)
class KeySigner:
    """Sign with an EC private key (the `key` method)."""

    private_key: Path


@dataclass(frozen=True)
class CertificateSigner:
    """Sign with an EC private key and its leaf certificate; `chain` holds the intermediates
    (and optionally the root), leaf first order not required."""

    private_key: Path
    certificate: Path
    chain: tuple[Path, ...] = ()


@dataclass(frozen=True)
class KeylessSigner:
    """Sign keyless through Sigstore with CI's ambient OIDC identity.

    `identity_token` (or `$TAPEOUT_SIGSTORE_IDENTITY_TOKEN`) takes precedence over the ambient
    credential; without either, signing is refused rather than opening a browser.
    """

    trust_config: Path | None = None
    oidc_issuer: str | None = None
    identity_token: str | None = None


Signer = Path | KeySigner | CertificateSigner | KeylessSigner


@dataclass(frozen=True)
class SignatureInfo:
    """What `model.sig` claims about its signer — read, not yet trusted."""

    method: str
    key_hint: str | None = None
    subject: str | None = None
    sans: tuple[str, ...] = ()
    issuer: str | None = None
    certificates: tuple[bytes, ...] = field(default=(), repr=False)

    def describe(self) -> str:
        if self.method == "key":
            return f"an EC key (public key hint {self.key_hint})"
        if self.method == "certificate":
            return f"certificate subject {self.subject!r}, SANs {list(self.sans)}"
        return f"keyless identity {', '.join(self.sans) or '?'} from issuer {self.issuer}"


def init_keys(keys_dir: Path) -> tuple[KeyPair, bool]:
    """Create an EC P-256 key pair under `keys_dir` unless one exists; returns (pair, created).

    The private key is written with mode 0600 from the start (never world-readable).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pair = KeyPair(keys_dir / PRIVATE_KEY_FILE, keys_dir / PUBLIC_KEY_FILE)
    if pair.private_key.exists():
        if not pair.public_key.exists():
            write_atomically(pair.public_key, _public_pem(pair.private_key), 0o644, replace=True)
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
    return _identity(_load_public(public_key))


def _identity(key) -> str:
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"key:sha256:{hashlib.sha256(der).hexdigest()}"


def key_hint(public_key: Path) -> str:
    """model-signing's key hint: sha256 of the PEM SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    pem = _load_public(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def public_key_for(private_key: Path) -> bytes:
    """The PEM public key of a private key file, after checking it is a usable EC key."""
    return _public_pem(private_key)


def private_key_identity(private_key: Path) -> str:
    """`signer_identity` of a private key's public half.

    Raises:
        InvalidInput: the key is unusable (see `public_key_for`).
    """
    from cryptography.hazmat.primitives import serialization

    return _identity(serialization.load_pem_public_key(_public_pem(private_key)))


def sign_statement(private_key: Path, data: bytes) -> str:
    """Sign a short statement (an audit head) with an EC key: the base64 DER ECDSA-SHA256
    signature.

    Raises:
        InvalidInput: the key is unusable (see `public_key_for`).
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    _public_pem(private_key)  # the checks: readable, EC, unencrypted, not readable by others
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
            keys[signer_identity(path)] = _load_public(path)
        except InvalidInput:
            continue  # an unreadable key trusts nothing
    if signer not in keys:
        return f"signed by {signer or 'nobody'}, not by a key trusted here ({sorted(keys) or 'none'})"
    try:
        keys[signer].verify(base64.b64decode(signature, validate=True), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return f"the signature by {signer} does not match what it signs"
    return None


# -- signing ------------------------------------------------------------------------------


def sign_bundle(bundle: Path, signer: Signer) -> Path:
    """Write `model.sig` over every file in `bundle`; `signer` is a key path or a signer value.

    Raises:
        InvalidInput: a key or certificate is missing, unreadable, encrypted, not EC, or the
            certificate does not belong to the key; keyless signing without an OIDC identity.
        TapeoutError: keyless signing failed (Fulcio or Rekor unreachable or refused).
    """
    from model_signing import signing

    if isinstance(signer, Path):
        signer = KeySigner(signer)
    signature = bundle / SIGNATURE_FILE
    config = signing.Config().set_hashing_config(_hashing_config())
    if isinstance(signer, KeySigner):
        _public_pem(signer.private_key)  # fails clearly before model-signing's own, vaguer errors
        config.use_elliptic_key_signer(private_key=signer.private_key)
    elif isinstance(signer, CertificateSigner):
        _check_certificate_signer(signer)
        config.use_certificate_signer(
            private_key=signer.private_key,
            signing_certificate=signer.certificate,
            certificate_chain=list(signer.chain),
        )
    elif isinstance(signer, KeylessSigner):
        _configure_keyless(config, signer)
    else:
        raise InvalidInput(f"unknown signer {signer!r}")
    try:
        config.sign(bundle, signature)
    except TapeoutError:
        raise
    except Exception as error:
        if isinstance(signer, KeylessSigner):
            raise TapeoutError(
                f"keyless signing through Sigstore failed ({type(error).__name__}: {error})"
            ) from error
        raise
    return signature


def _configure_keyless(config, signer: KeylessSigner) -> None:
    from tapeout.artifacts.sigstore_trust import trust_config_file

    token = signer.identity_token or os.environ.get(IDENTITY_TOKEN_VARIABLE)
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
    trust_config = signer.trust_config or trust_config_file()
    config.use_sigstore_signer(
        oidc_issuer=signer.oidc_issuer,
        use_ambient_credentials=False,
        identity_token=token,
        trust_config=trust_config,
    )


def _check_certificate_signer(signer: CertificateSigner) -> None:
    from cryptography.hazmat.primitives import serialization

    from tapeout.artifacts.certificates import validity_problems

    public = _public_pem(signer.private_key)
    leaf = _read_certificates(signer.certificate)[0]
    leaf_public = leaf.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if leaf_public != public:
        raise InvalidInput(
            f"{signer.certificate}: the certificate's public key does not match {signer.private_key}"
        )
    chain = [certificate for path in signer.chain for certificate in _read_certificates(path)]
    problems = validity_problems([leaf, *chain])
    if problems:
        # Verification would refuse it: a certificate signature carries no trusted time.
        raise InvalidInput(f"{signer.certificate}: cannot sign now: " + "; ".join(problems))


# -- reading what a signature claims -------------------------------------------------------


def read_signature(bundle: Path) -> SignatureInfo:
    """What `bundle/model.sig` says about its signer, without verifying anything.

    Raises:
        VerificationFailed: no signature file, or one that is not a Sigstore bundle.
    """
    from cryptography import x509

    path = bundle / SIGNATURE_FILE
    if not path.is_file():
        raise VerificationFailed(bundle, [f"no signature file {SIGNATURE_FILE}"])
    try:
        material = read_json_object(path)["verificationMaterial"]
    except InvalidInput as error:
        raise VerificationFailed(bundle, [f"{SIGNATURE_FILE} is not a Sigstore bundle ({error})"]) from None
    except KeyError as error:
        raise VerificationFailed(bundle, [f"{SIGNATURE_FILE} is not a Sigstore bundle (no {error} in it)"]) from None
    try:
        if "publicKey" in material:
            return SignatureInfo("key", key_hint=str(material["publicKey"].get("hint") or "") or None)
        if "x509CertificateChain" in material:
            raw = [base64.b64decode(item["rawBytes"]) for item in material["x509CertificateChain"]["certificates"]]
            leaf = x509.load_der_x509_certificate(raw[0])
            return SignatureInfo(
                "certificate", subject=leaf.subject.rfc4514_string(), sans=_sans(leaf), certificates=tuple(raw)
            )
        if "certificate" in material:
            raw = base64.b64decode(material["certificate"]["rawBytes"])
            leaf = x509.load_der_x509_certificate(raw)
            return SignatureInfo(
                "sigstore", subject=leaf.subject.rfc4514_string(), sans=_sans(leaf),
                issuer=_fulcio_issuer(leaf), certificates=(raw,),
            )
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise VerificationFailed(
            bundle, [f"{SIGNATURE_FILE}: unreadable verification material ({type(error).__name__}: {error})"]
        ) from None
    raise VerificationFailed(bundle, [f"{SIGNATURE_FILE}: no public key hint, certificate or chain in it"])


def _sans(certificate) -> tuple[str, ...]:
    from cryptography import x509

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(name.value) for name in names)


def _fulcio_issuer(certificate) -> str | None:
    from cryptography import x509

    for extension in certificate.extensions:
        oid = extension.oid.dotted_string
        if oid not in (_FULCIO_ISSUER_V2, _FULCIO_ISSUER_V1):
            continue
        value = extension.value.value  # UnrecognizedExtension: raw bytes
        if oid == _FULCIO_ISSUER_V2 and len(value) >= 2 and value[0] == 0x0C:
            length, offset = value[1], 2  # DER UTF8String, short form (issuer URLs are short)
            if length & 0x80:
                count = length & 0x7F
                length, offset = int.from_bytes(value[2 : 2 + count], "big"), 2 + count
            return value[offset : offset + length].decode("utf-8", "replace")
        return value.decode("utf-8", "replace")
    return None


# -- verifying ------------------------------------------------------------------------------


def verify_bundle(bundle: Path, public_key: Path) -> Verification:
    """Check every file of `bundle` against `model.sig` and the signature against the key.

    Raises:
        VerificationFailed: no signature; a file changed, added, removed or renamed (each
            named); a symlink; or a signature not made by `public_key`.
        InvalidInput: the public key is missing or not an EC public key.
    """
    _load_public(public_key)
    identity = signer_identity(public_key)
    _verify(bundle, lambda config: config.use_elliptic_key_verifier(public_key=public_key), "this key")
    return Verification(identity, _count_files(bundle), "key")


def verify_certificate(
    bundle: Path,
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
    subjects, sans = tuple(subjects), tuple(sans)
    if not roots:
        raise InvalidInput("certificate verification needs at least one pinned root certificate")
    if not subjects and not sans:
        raise InvalidInput(
            "certificate verification needs pinned subjects or SANs: any leaf under the root "
            "would pass otherwise"
        )
    from cryptography import x509

    from tapeout.artifacts.certificates import order_hint, subject_matches, validity_problems

    pinned_roots = [certificate for root in roots for certificate in _read_certificates(root)]
    _precheck(bundle)
    info = read_signature(bundle)
    if info.method != "certificate":
        raise VerificationFailed(bundle, [f"expected a certificate signature, found one by {info.describe()}"])
    chain = [x509.load_der_x509_certificate(raw) for raw in info.certificates]
    if not (subject_matches(chain[0].subject, subjects) or set(info.sans) & set(sans)):
        raise VerificationFailed(
            bundle,
            [f"signer outside the policy: certificate subject {info.subject!r}, SANs {list(info.sans)}; "
             f"allowed subjects {list(subjects)}, SANs {list(sans)}" + order_hint(chain[0].subject, subjects)],
        )
    problems = validity_problems(chain, pinned_roots)
    if problems:
        raise VerificationFailed(
            bundle,
            problems + ["a certificate signature carries no trusted timestamp, so its chain must be valid when it is verified"],
        )
    _verify(
        bundle,
        lambda config: config.use_certificate_verifier(certificate_chain=list(roots)),
        "the pinned certificate roots",
    )
    return Verification(certificate_identity(info), _count_files(bundle), "certificate")


def verify_keyless(
    bundle: Path, *, identity: str, issuer: str, trust_config: Path | None = None
) -> Verification:
    """Check a Sigstore keyless signature offline: the certificate chains to Fulcio in the
    pinned trust config, the Rekor entry and timestamps check, the certificate names
    `identity` (SAN) and `issuer` (OIDC issuer), and every file matches.

    Raises:
        VerificationFailed: any of the above, naming the file or the reason.
    """
    from tapeout.artifacts.sigstore_trust import trust_config_file

    _precheck(bundle)
    info = read_signature(bundle)
    if info.method != "sigstore":
        raise VerificationFailed(bundle, [f"expected a keyless Sigstore signature, found one by {info.describe()}"])
    config_path = trust_config or trust_config_file()
    _verify(
        bundle,
        lambda config: config.use_sigstore_verifier(
            identity=identity, oidc_issuer=issuer, trust_config=config_path
        ),
        f"identity {identity} from {issuer}",
    )
    return Verification(f"sigstore:{identity} (issuer {issuer})", _count_files(bundle), "sigstore")


def certificate_identity(info: SignatureInfo) -> str:
    sans = f" SAN {','.join(info.sans)}" if info.sans else ""
    return f"x509:{info.subject}{sans}"


def _precheck(bundle: Path) -> None:
    if not bundle.is_dir():
        raise VerificationFailed(bundle, ["not a bundle directory"])
    if not (bundle / SIGNATURE_FILE).is_file():
        raise VerificationFailed(bundle, [f"no signature file {SIGNATURE_FILE}"])
    links = [path.relative_to(bundle).as_posix() for path in bundle.rglob("*") if path.is_symlink()]
    if links:
        raise VerificationFailed(bundle, [f"symbolic links are not allowed in a bundle: {links}"])


def _verify(bundle: Path, configure: Callable, expected: str) -> None:
    from model_signing import verifying

    _precheck(bundle)
    config = configure(verifying.Config().set_hashing_config(_hashing_config()))
    try:
        config.verify(bundle, bundle / SIGNATURE_FILE)
    except ValueError as error:
        raise VerificationFailed(bundle, _reasons(str(error))) from None
    except Exception as error:  # signature parsing / crypto / chain errors from model-signing's stack
        detail = str(error) or type(error).__name__
        raise VerificationFailed(
            bundle, [f"signature is invalid or not made by {expected} ({type(error).__name__}: {detail})"]
        ) from None


def _count_files(bundle: Path) -> int:
    return sum(1 for path in bundle.rglob("*") if path.is_file() and path.name != SIGNATURE_FILE)


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


def _read_certificates(path: Path):
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise InvalidInput(f"{path}: cannot read the certificate ({error.strerror})") from error
    except ValueError as error:
        raise InvalidInput(f"{path}: expected PEM certificates ({error})") from error
    return certificates


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
