"""Signing and verifying a bundle folder with real EC keys: every kind of tampering fails
and names the file or the reason."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from tapeout.artifacts.signing import (
    VerificationFailed,
    init_keys,
    sign_bundle,
    signer_identity,
    verify_bundle,
)
from tapeout.compilers.errors import InvalidInput


@pytest.fixture
def keys(tmp_path):
    pair, created = init_keys(tmp_path / "keys")
    assert created
    return pair


@pytest.fixture
def bundle(tmp_path, keys):
    root = tmp_path / "bundle"
    (root / "model").mkdir(parents=True)
    (root / "compiled").mkdir()
    (root / "model" / "model.onnx").write_bytes(b"fp32 model bytes" * 100)
    (root / "compiled" / "artifact.bin").write_bytes(bytes(range(256)) * 4)
    (root / "provenance.json").write_text('{"subject": []}\n')
    sign_bundle(root, keys.private_key)
    return root


def test_private_key_is_created_once_with_mode_0600(tmp_path, keys):
    assert stat.S_IMODE(os.stat(keys.private_key).st_mode) == 0o600
    again, created = init_keys(tmp_path / "keys")
    assert not created and again.private_key.read_bytes() == keys.private_key.read_bytes()
    assert signer_identity(keys.public_key).startswith("key:sha256:")


def test_untouched_bundle_verifies(bundle, keys):
    result = verify_bundle(bundle, keys.public_key)
    assert result.files == 3
    assert result.signer == signer_identity(keys.public_key)


def test_one_changed_byte_names_the_file(bundle, keys):
    path = bundle / "compiled" / "artifact.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(VerificationFailed, match="Hash mismatch for 'compiled/artifact.bin'"):
        verify_bundle(bundle, keys.public_key)


def test_an_added_file_is_named(bundle, keys):
    (bundle / "model" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(VerificationFailed, match="Extra files .*model/extra.onnx"):
        verify_bundle(bundle, keys.public_key)


def test_an_added_git_file_is_not_ignored(bundle, keys):
    (bundle / ".gitattributes").write_text("* binary\n")
    with pytest.raises(VerificationFailed, match=r"\.gitattributes"):
        verify_bundle(bundle, keys.public_key)


def test_a_removed_file_is_named(bundle, keys):
    (bundle / "provenance.json").unlink()
    with pytest.raises(VerificationFailed, match="Missing files .*provenance.json"):
        verify_bundle(bundle, keys.public_key)


def test_a_renamed_file_is_named_both_ways(bundle, keys):
    (bundle / "model" / "model.onnx").rename(bundle / "model" / "renamed.onnx")
    with pytest.raises(VerificationFailed) as caught:
        verify_bundle(bundle, keys.public_key)
    assert "model/renamed.onnx" in str(caught.value) and "model/model.onnx" in str(caught.value)


def test_a_signature_from_another_bundle_fails(bundle, keys, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    (other / "provenance.json").write_text('{"subject": ["other"]}\n')
    sign_bundle(other, keys.private_key)
    shutil.copyfile(other / "model.sig", bundle / "model.sig")
    with pytest.raises(VerificationFailed, match="provenance.json"):
        verify_bundle(bundle, keys.public_key)


def test_a_wrong_key_fails(bundle, tmp_path):
    stranger, _ = init_keys(tmp_path / "stranger")
    with pytest.raises(VerificationFailed, match="Key mismatch"):
        verify_bundle(bundle, stranger.public_key)


def test_a_missing_signature_fails(bundle, keys):
    (bundle / "model.sig").unlink()
    with pytest.raises(VerificationFailed, match="no signature file model.sig"):
        verify_bundle(bundle, keys.public_key)


def test_a_symlink_in_the_bundle_is_refused(bundle, keys, tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("outside the bundle")
    (bundle / "link").symlink_to(outside)
    with pytest.raises(VerificationFailed, match="symbolic links are not allowed"):
        verify_bundle(bundle, keys.public_key)


def test_signing_with_a_key_of_the_wrong_type_is_refused(bundle, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(InvalidInput, match="expected an EC private key"):
        sign_bundle(bundle, rsa_key)
    with pytest.raises(InvalidInput, match="cannot read the signing key"):
        sign_bundle(bundle, tmp_path / "absent.pem")
