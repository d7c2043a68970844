"""The three signing methods with real cryptography, and the trust policy.

- `certificate`: a root → intermediate → leaf CA made here; verification pins the leaf's
  subject or SANs, so another leaf under the same root is refused.
- `sigstore`: keyless *verification* offline with a real signature made on Sigstore's
  production instance (tests/artifacts/data/sigstore-keyless, see its README). Keyless
  *signing* needs Fulcio, Rekor and an OIDC token, so only its wiring is tested, offline.
- tamper coverage through `tapeout verify`: each case exits 1 naming the file or the reason.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest

from tapeout.artifacts.policy import TrustPolicy, load_policy
from tapeout.artifacts.signing import (
    CertificateSigner,
    KeylessSigner,
    VerificationFailed,
    init_keys,
    read_signature,
    sign_bundle,
    signer_identity,
    verify_certificate,
    verify_keyless,
)
from tapeout.compilers.errors import InvalidInput
from tapeout.flows.cli import main

DATA = Path(__file__).parent / "data" / "sigstore-keyless"
KEYLESS_IDENTITY = "stefanb@us.ibm.com"
KEYLESS_ISSUER = "https://sigstore.verify.ibm.com/oauth2"


# -- a small PKI, made fresh ------------------------------------------------------------------


def _certificate(subject, issuer_name, public_key, signing_key, *, ca, path_length=None, sans=(), valid=None, name=None):
    """`valid`: (not before, not after), default from yesterday for 30 days; `name`: the
    subject as an x509.Name, default CN=`subject`,O=Example (DER order O, then CN)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = valid or (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    name = name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)  # None: self-signed
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(s) for s in sans]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _write_pem(path: Path, *objects) -> Path:
    from cryptography.hazmat.primitives import serialization

    data = b""
    for item in objects:
        if hasattr(item, "private_bytes"):
            data += item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        else:
            data += item.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(data)
    if any(hasattr(item, "private_bytes") for item in objects):
        path.chmod(0o600)  # tapeout refuses a signing key others can read
    return path


def make_ca(folder: Path, name: str = "Example", *, intermediate_valid=None) -> dict:
    """Root → intermediate, and a function that issues leaves under the intermediate
    (`valid` and `name` as for `_certificate`)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    root_key, intermediate_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _certificate(f"{name} Root CA", None, root_key.public_key(), root_key, ca=True, path_length=1)
    intermediate = _certificate(
        f"{name} Intermediate CA", root.subject, intermediate_key.public_key(), root_key, ca=True, path_length=0,
        valid=intermediate_valid,
    )

    def leaf(subject: str, sans=(), *, valid=None, name=None) -> CertificateSigner:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _certificate(
            subject, intermediate.subject, key.public_key(), intermediate_key, ca=False, sans=sans, valid=valid, name=name
        )
        stem = subject.replace(" ", "-")
        return CertificateSigner(
            _write_pem(folder / f"{stem}.key", key),
            _write_pem(folder / f"{stem}.pem", certificate),
            (_write_pem(folder / "intermediate.pem", intermediate),),
        )

    return {"root": _write_pem(folder / "root.pem", root), "leaf": leaf}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder / "trusted")
    other = make_ca(folder / "other", "Other")
    return {
        "root": ca["root"],
        "release": ca["leaf"]("tapeout release", sans=("release@example.com",)),
        "intern": ca["leaf"]("summer intern", sans=("intern@example.com",)),
        "foreign": other["leaf"]("tapeout release", sans=("release@example.com",)),
    }


def make_bundle(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "compiled").mkdir()
    (root / "model" / "model.onnx").write_bytes(b"fp32 model bytes" * 100)
    (root / "compiled" / "artifact.bin").write_bytes(bytes(range(256)) * 4)
    (root / "provenance.json").write_text('{"subject": []}\n')
    return root




# -- certificate ------------------------------------------------------------------------------


def test_certificate_signature_verifies_with_the_pinned_subject_and_san(tmp_path, pki):
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, pki["release"])
    claimed = read_signature(bundle)
    assert claimed.method == "certificate" and claimed.sans == ("release@example.com",)
    by_subject = verify_certificate(bundle, [pki["root"]], subjects=[claimed.subject])
    by_san = verify_certificate(bundle, [pki["root"]], sans=["release@example.com"])
    assert by_subject.method == "certificate" and by_subject.files == 3
    assert by_subject.signer == by_san.signer and "tapeout release" in by_san.signer


def test_another_leaf_under_the_same_root_is_refused_by_the_pins(tmp_path, pki):
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, pki["intern"])
    with pytest.raises(VerificationFailed, match="signer outside the policy.*summer intern"):
        verify_certificate(bundle, [pki["root"]], sans=["release@example.com"])


def test_a_leaf_from_an_untrusted_root_fails_even_with_the_pinned_name(tmp_path, pki):
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, pki["foreign"])
    with pytest.raises(VerificationFailed, match="not made by the pinned certificate roots"):
        verify_certificate(bundle, [pki["root"]], sans=["release@example.com"])


def test_certificate_verification_without_pins_is_refused(tmp_path, pki):
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, pki["release"])
    with pytest.raises(InvalidInput, match="pinned subjects or SANs"):
        verify_certificate(bundle, [pki["root"]])


def test_certificate_tampering_names_the_file(tmp_path, pki):
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, pki["release"])
    (bundle / "compiled" / "artifact.bin").write_bytes(b"patched")
    with pytest.raises(VerificationFailed, match="Hash mismatch for 'compiled/artifact.bin'"):
        verify_certificate(bundle, [pki["root"]], sans=["release@example.com"])


def test_a_certificate_that_is_not_the_keys_is_refused_before_signing(tmp_path, pki):
    bundle = make_bundle(tmp_path / "bundle")
    mixed = CertificateSigner(pki["intern"].private_key, pki["release"].certificate, pki["release"].chain)
    with pytest.raises(InvalidInput, match="does not match"):
        sign_bundle(bundle, mixed)
    assert not (bundle / "model.sig").exists()


# -- sigstore keyless -------------------------------------------------------------------------


@pytest.fixture
def keyless(tmp_path):
    copy = tmp_path / "model-dir"
    shutil.copytree(DATA / "model-dir", copy)
    return copy


def test_real_keyless_signature_verifies_offline_with_the_shipped_trust_config(keyless):
    claimed = read_signature(keyless)
    assert claimed.method == "sigstore"
    assert claimed.sans == (KEYLESS_IDENTITY,) and claimed.issuer == KEYLESS_ISSUER
    # No trust_config: tapeout's pinned copy is used, never a TUF fetch.
    result = verify_keyless(keyless, identity=KEYLESS_IDENTITY, issuer=KEYLESS_ISSUER)
    assert result.method == "sigstore" and KEYLESS_IDENTITY in result.signer
    again = verify_keyless(
        keyless, identity=KEYLESS_IDENTITY, issuer=KEYLESS_ISSUER, trust_config=DATA / "production_trust_config.json"
    )
    assert again.signer == result.signer


@pytest.mark.parametrize(
    "identity, issuer",
    [("someone@example.com", KEYLESS_ISSUER), (KEYLESS_IDENTITY, "https://token.actions.githubusercontent.com")],
)
def test_keyless_with_the_wrong_identity_or_issuer_fails(keyless, identity, issuer):
    with pytest.raises(VerificationFailed) as caught:
        verify_keyless(keyless, identity=identity, issuer=issuer)
    assert "Traceback" not in str(caught.value)


def test_keyless_tampering_names_the_file(keyless):
    (keyless / "signme-1").write_bytes(b"changed!")
    with pytest.raises(VerificationFailed, match="signme-1"):
        verify_keyless(keyless, identity=KEYLESS_IDENTITY, issuer=KEYLESS_ISSUER)


def test_keyless_signing_uses_the_ambient_token_and_the_pinned_trust_config(tmp_path, monkeypatch):
    """Wiring only: real keyless signing needs Fulcio, Rekor and a CI OIDC token."""
    from model_signing import signing

    from tapeout.artifacts.sigstore_trust import trust_config_file

    seen = {}

    class FakeSignature:
        def write(self, path):
            path.write_text("{}")

    class FakeSigner:
        def sign(self, payload):
            seen["resources"] = sorted(rd.identifier for rd in payload.manifest.resource_descriptors()) if hasattr(payload, "manifest") else None
            return FakeSignature()

    def use_sigstore_signer(self, **kwargs):
        seen.update(kwargs)
        self._signer = FakeSigner()
        return self

    monkeypatch.setattr(signing.Config, "use_sigstore_signer", use_sigstore_signer)
    monkeypatch.setattr("sigstore.oidc.detect_credential", lambda *args: "ambient-ci-token")
    monkeypatch.delenv("TAPEOUT_SIGSTORE_IDENTITY_TOKEN", raising=False)
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, KeylessSigner())
    assert seen["identity_token"] == "ambient-ci-token"
    assert seen["use_ambient_credentials"] is False  # the token is passed explicitly
    assert seen["trust_config"] == trust_config_file()
    assert (bundle / "model.sig").read_text() == "{}"


def test_keyless_signing_without_an_identity_never_opens_a_browser(tmp_path, monkeypatch):
    monkeypatch.setattr("sigstore.oidc.detect_credential", lambda *args: None)
    monkeypatch.delenv("TAPEOUT_SIGSTORE_IDENTITY_TOKEN", raising=False)
    bundle = make_bundle(tmp_path / "bundle")
    with pytest.raises(InvalidInput, match="id-token: write"):
        sign_bundle(bundle, KeylessSigner())


# -- the trust policy ---------------------------------------------------------------------------


def _policy(tmp_path: Path, text: str) -> TrustPolicy:
    path = tmp_path / "trust-policy.yaml"
    path.write_text(text)
    return load_policy(path)


def test_policy_picks_the_method_from_the_signature_and_pins_each(tmp_path, pki, keyless):
    keys, _ = init_keys(tmp_path / "keys")
    shutil.copyfile(pki["root"], tmp_path / "root.pem")
    policy = _policy(
        tmp_path,
        f"""
version: 1
models:
  - match: "digits-*"
    keys: [keys/signing-key.pub]
    certificates: {{roots: [root.pem], sans: [release@example.com]}}
  - match: "*"
    sigstore:
      identities: [{{identity: {KEYLESS_IDENTITY}, issuer: "{KEYLESS_ISSUER}"}}]
""",
    )
    by_key = make_bundle(tmp_path / "by-key")
    sign_bundle(by_key, keys.private_key)
    by_certificate = make_bundle(tmp_path / "by-certificate")
    sign_bundle(by_certificate, pki["release"])
    assert policy.verify(by_key, "digits-cnn-cpu").signer == signer_identity(keys.public_key)
    assert policy.verify(by_certificate, "digits-cnn-cpu").method == "certificate"
    assert policy.verify(keyless, "anything-npu").method == "sigstore"
    # The key and certificate rules are for digits-* only.
    with pytest.raises(VerificationFailed, match="signer outside the policy.*for other-cpu"):
        policy.verify(by_key, "other-cpu")
    with pytest.raises(VerificationFailed, match="signer outside the policy"):
        policy.verify(by_certificate, "other-cpu")


def test_a_keyless_identity_outside_the_policy_is_refused(tmp_path, keyless):
    policy = _policy(
        tmp_path,
        "models:\n  - sigstore:\n      identities: [{identity: release@example.com, issuer: https://accounts.google.com}]\n",
    )
    with pytest.raises(VerificationFailed, match=f"signer outside the policy: keyless identity {KEYLESS_IDENTITY}"):
        policy.verify(keyless, "x-y")


@pytest.mark.parametrize(
    "text, message",
    [
        ("models: []\n", "models"),
        ("models:\n  - certificates: {roots: [r.pem]}\n", "pin at least one subject or SAN"),
        ("models:\n  - keyz: []\n", "keyz"),
        ("models: [\n", "not valid YAML"),
    ],
)
def test_bad_policy_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(InvalidInput, match=message):
        _policy(tmp_path, text)


# -- tamper coverage through `tapeout verify` -------------------------------------------------------


def _swap_signature(bundle: Path, keys, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    (other / "provenance.json").write_text('{"subject": ["other"]}\n')
    sign_bundle(other, keys.private_key)
    shutil.copyfile(other / "model.sig", bundle / "model.sig")


TAMPERING = {
    "changed byte": (lambda b, k, t: (b / "compiled" / "artifact.bin").write_bytes(b"\x01" + (b / "compiled" / "artifact.bin").read_bytes()[1:]), "compiled/artifact.bin"),
    "added file": (lambda b, k, t: (b / "compiled" / "extra.bin").write_bytes(b"x"), "compiled/extra.bin"),
    "removed file": (lambda b, k, t: (b / "model" / "model.onnx").unlink(), "model/model.onnx"),
    "renamed file": (lambda b, k, t: (b / "model" / "model.onnx").rename(b / "model" / "other.onnx"), "model/other.onnx"),
    "swapped signature": (_swap_signature, "provenance.json"),
    "no signature": (lambda b, k, t: (b / "model.sig").unlink(), "no signature file model.sig"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tapeout_verify_names_each_kind_of_tampering(tmp_path, capsys, case):
    keys, _ = init_keys(tmp_path / "keys")
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, keys.private_key)
    home = ["--home", str(tmp_path / "home"), "--public-key", str(keys.public_key)]
    assert main(["verify", str(bundle), *home]) == 0
    capsys.readouterr()
    tamper, expected = TAMPERING[case]
    tamper(bundle, keys, tmp_path)
    assert main(["verify", str(bundle), *home]) == 1
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error and error.count("\n") == 1


def test_tapeout_verify_refuses_a_wrong_key_and_a_signer_outside_the_policy(tmp_path, capsys):
    keys, _ = init_keys(tmp_path / "keys")
    stranger, _ = init_keys(tmp_path / "stranger")
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, keys.private_key)
    home = ["--home", str(tmp_path / "home")]
    assert main(["verify", str(bundle), *home, "--public-key", str(stranger.public_key)]) == 1
    assert "signer outside the policy: signed by an EC key" in capsys.readouterr().err
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"models:\n  - match: 'nothing-*'\n    keys: [{keys.public_key}]\n")
    assert main(["verify", str(bundle), *home, "--policy", str(policy)]) == 1
    error = capsys.readouterr().err
    assert "signer outside the policy" in error and "no keys" in error


# -- the signing section of pipeline.yaml -----------------------------------------------------------

EXAMPLE_PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "digits" / "pipeline.yaml"


def _pipeline(tmp_path: Path, signing: str):
    from tapeout.flows.config import load_pipeline

    text = EXAMPLE_PIPELINE.read_text()
    start = text.index("signing:")
    end = text.index("registry:")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text[:start] + signing + "\n" + text[end:])
    return load_pipeline(path)


@pytest.mark.parametrize(
    "signing, message",
    [
        ("signing: {method: certificate, private_key: k.pem}", "needs 'private_key' and 'certificate'"),
        ("signing: {method: key, certificate: c.pem}", "need method certificate"),
        ("signing: {method: sigstore, private_key: k.pem}", "keyless"),
        ("signing: {method: key, oidc_issuer: https://example.com}", "need method sigstore"),
        ("signing: {method: gpg}", "signing.method"),
    ],
)
def test_signing_config_fields_must_fit_the_method(tmp_path, signing, message):
    from tapeout.flows.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _pipeline(tmp_path, signing)


def test_settings_for_builds_the_configured_signer(tmp_path, pki):
    from tapeout.flows.settings import settings_for

    keyless = settings_for(_pipeline(tmp_path, "signing: {method: sigstore}"), tmp_path / "home", print)
    assert isinstance(keyless.private_key, KeylessSigner) and keyless.private_key.trust_config is None
    shutil.copyfile(pki["release"].private_key, tmp_path / "release.key")
    (tmp_path / "release.key").chmod(0o600)
    shutil.copyfile(pki["release"].certificate, tmp_path / "release.pem")
    shutil.copyfile(pki["release"].chain[0], tmp_path / "intermediate.pem")
    certificate = settings_for(
        _pipeline(
            tmp_path,
            "signing: {method: certificate, private_key: release.key, certificate: release.pem,"
            " certificate_chain: [intermediate.pem]}",
        ),
        tmp_path / "home",
        print,
    )
    assert certificate.private_key == CertificateSigner(
        tmp_path / "release.key", tmp_path / "release.pem", (tmp_path / "intermediate.pem",)
    )
    (tmp_path / "broken.yaml").write_text("models: []\n")
    with pytest.raises(InvalidInput, match="broken.yaml"):
        settings_for(_pipeline(tmp_path, "signing: {policy: broken.yaml}"), tmp_path / "home", print)


def test_tapeout_verify_and_trace_check_a_keyless_signature_against_the_policy(tmp_path, keyless, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"models:\n  - sigstore:\n      identities: [{{identity: {KEYLESS_IDENTITY}, issuer: '{KEYLESS_ISSUER}'}}]\n"
    )
    home = ["--home", str(tmp_path / "home"), "--policy", str(policy)]
    assert main(["verify", str(keyless), "--json", *home]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "sigstore" and KEYLESS_IDENTITY in result["signer"]
    (keyless / "signme-2").write_bytes(b"changed!")
    assert main(["verify", str(keyless), *home]) == 1
    assert "signme-2" in capsys.readouterr().err
    assert not (tmp_path / "home" / "mlflow.db").exists()
