"""A worker's signing key from its environment: a PEM in a variable, a key file's path, or a
Prefect Secret block; written nowhere others can read; what it signs verifies with its
public key, and the registered version names the worker that signed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tapeout.artifacts.keys import init_keys, signer_identity
from tapeout.artifacts.signing import KeySigner, sign_bundle, verify_bundle
from tapeout.artifacts.worker_key import FOLDER, KEY_VARIABLE, SECRET_VARIABLE, key_from_environment
from tapeout.compilers.errors import InvalidInput


@pytest.fixture()
def pair(tmp_path):
    pair, _ = init_keys(tmp_path / "elsewhere")
    return pair


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def a_bundle(root: Path) -> Path:
    bundle = root / "bundle"
    (bundle / "compiled").mkdir(parents=True)
    (bundle / "compiled" / "model.onnx").write_bytes(b"\x08\x07model bytes")
    (bundle / "provenance.json").write_text("{}")
    return bundle


def test_a_pem_in_the_environment_becomes_a_private_file_that_signs(pair, tmp_path):
    keys = tmp_path / "home" / "keys"
    key = key_from_environment(keys, {KEY_VARIABLE: pair.private_key.read_text()})
    assert key.parent == keys / FOLDER and key.read_bytes() == pair.private_key.read_bytes()
    assert mode(key) == 0o600 and mode(key.parent) == 0o700
    assert [path.name for path in key.parent.iterdir()] == [key.name]  # no temporary file left
    assert key_from_environment(keys, {KEY_VARIABLE: pair.private_key.read_text()}) == key  # same key, same file

    bundle = a_bundle(tmp_path)
    sign_bundle(bundle, KeySigner(key))
    assert verify_bundle(bundle, pair.public_key).signer == signer_identity(pair.public_key)


def test_a_key_path_in_the_environment_is_used_where_it_is(pair, tmp_path):
    keys = tmp_path / "home" / "keys"
    assert key_from_environment(keys, {KEY_VARIABLE: str(pair.private_key)}) == pair.private_key
    assert not keys.exists()  # nothing copied


def test_no_variable_no_key(tmp_path):
    assert key_from_environment(tmp_path / "keys", {}) is None
    assert key_from_environment(tmp_path / "keys", {KEY_VARIABLE: "  "}) is None


def test_a_key_file_others_can_read_is_refused(pair, tmp_path):
    pair.private_key.chmod(0o644)
    with pytest.raises(InvalidInput, match=r"mode 0644 gives its group and everyone access to the signing key"):
        key_from_environment(tmp_path / "keys", {KEY_VARIABLE: str(pair.private_key)})


def test_a_value_that_is_neither_key_nor_file_is_refused_without_echoing_it(tmp_path):
    headless = "MHcCAQEEIB" + "x" * 40  # a key pasted without its PEM header
    with pytest.raises(InvalidInput, match=rf"\${KEY_VARIABLE}: expected a PEM private key .* found neither") as raised:
        key_from_environment(tmp_path / "keys", {KEY_VARIABLE: headless})
    assert headless not in str(raised.value)


def test_a_pem_that_is_no_ec_key_is_refused_and_not_kept(tmp_path):
    pem = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    with pytest.raises(InvalidInput, match=rf"^\${KEY_VARIABLE}: expected an unencrypted PEM EC private key"):
        key_from_environment(tmp_path / "keys", {KEY_VARIABLE: pem})
    assert list((tmp_path / "keys" / FOLDER).iterdir()) == []


def test_two_sources_at_once_are_refused(pair, tmp_path):
    with pytest.raises(InvalidInput, match="are both set: expected one signing key, found two"):
        key_from_environment(tmp_path / "keys", {KEY_VARIABLE: str(pair.private_key), SECRET_VARIABLE: "signing-key"})


@pytest.mark.slow
def test_a_prefect_secret_block_holds_the_key(prefect_harness, pair, tmp_path):
    from prefect.blocks.system import Secret

    Secret(value=pair.private_key.read_text()).save("tapeout-test-signing-key", overwrite=True)
    key = key_from_environment(tmp_path / "keys", {SECRET_VARIABLE: "tapeout-test-signing-key"})
    assert key.read_bytes() == pair.private_key.read_bytes() and mode(key) == 0o600

    with pytest.raises(InvalidInput, match=rf"\${SECRET_VARIABLE}=no-such-block: no Prefect Secret block by that name"):
        key_from_environment(tmp_path / "keys", {SECRET_VARIABLE: "no-such-block"})
    Secret(value="not a key").save("tapeout-test-not-a-key", overwrite=True)
    with pytest.raises(InvalidInput, match="expected a PEM private key in the Secret block, found none"):
        key_from_environment(tmp_path / "keys", {SECRET_VARIABLE: "tapeout-test-not-a-key"})
