"""The home's signing key as the trust anchor. Deleting `<home>/keys/signing-key.pem` used
to make the next run create a new key and overwrite the `.pub`, so every earlier version —
production included — stopped verifying without a word; a pipeline's own key elsewhere
overwrote the home's `.pub`; a key readable by everyone was used silently.

The runs here fail before Prefect starts (the key is checked with the config), so they are
quick; the versions are registered by hand, tagged as `tapeout run` tags them."""

from __future__ import annotations

import pytest

from conftest import make_project
from tapeout.artifacts.signing import init_keys, private_key_identity, signer_identity
from tapeout.compilers.errors import InvalidInput
from tapeout.flows.cli import main
from test_trust_end_to_end import DEFAULT_SIGNING
from test_trust_promotion import NAME, make_world


@pytest.fixture()
def world(tmp_path):
    """A home with versions 1 and 2 signed by its key, tagged with that signer."""
    world = make_world(tmp_path, only_good=True)
    identity = signer_identity(world["keys"].public_key)
    for version in world["versions"].values():
        world["registry"]._client.set_model_version_tag(NAME, version, "signing_method", "key")
        world["registry"]._client.set_model_version_tag(NAME, version, "signer", identity)
    world["pipeline"] = make_project(tmp_path)
    return world


def run(world, capsys) -> tuple[int, str]:
    code = main(["run", str(world["pipeline"]), "--home", str(world["home"])])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return code, errors[0]


def test_a_deleted_key_whose_public_key_remains_stops_the_run(world, capsys):
    keys = world["keys"]
    published = keys.public_key.read_bytes()
    keys.private_key.unlink()
    code, error = run(world, capsys)
    assert code == 2
    assert f"{keys.private_key}: the signing key is missing, but its public key {keys.public_key} remains" in error
    assert f"versions {NAME}@1, {NAME}@2 were signed with it" in error
    assert "tapeout keys rotate" in error
    assert keys.public_key.read_bytes() == published and not keys.private_key.exists()


def test_a_rotation_on_purpose_keeps_the_earlier_versions_verifying(world, capsys):
    keys, home = world["keys"], str(world["home"])
    old = signer_identity(keys.public_key)
    keys.private_key.unlink()
    assert main(["keys", "rotate", "--home", home]) == 0
    out = capsys.readouterr().out
    assert f"signed {NAME}@1, {NAME}@2" in out and "trusts both" in out
    assert signer_identity(keys.public_key) != old
    assert (world["home"] / "trust-policy.yaml").is_file()
    assert main(["verify", f"{NAME}@1", "--home", home]) == 0  # through the policy the rotation wrote
    assert main(["promote", f"{NAME}@2", "--to", "production", "--home", home]) == 0


def test_with_both_halves_gone_the_home_registry_still_says_what_the_key_signed(world, capsys):
    keys = world["keys"]
    keys.private_key.unlink()
    keys.public_key.unlink()
    code, error = run(world, capsys)
    assert code == 2
    assert f"this home's registry holds versions {NAME}@1, {NAME}@2 signed with a key" in error
    assert not keys.private_key.exists()
    # On purpose: a new key; the versions it cannot vouch for are the operator's choice now.
    assert main(["keys", "init", "--home", str(world["home"])]) == 0
    assert keys.private_key.is_file()


def test_keys_init_on_purpose_keeps_the_orphaned_public_key(world, capsys):
    keys = world["keys"]
    old = keys.public_key.read_bytes()
    keys.private_key.unlink()
    assert main(["keys", "init", "--home", str(world["home"])]) == 0
    out = capsys.readouterr().out
    assert "the previous public key is kept as" in out and f"{NAME}@1, {NAME}@2" in out
    retired = list((keys.public_key.parent / "retired").iterdir())
    assert [path.read_bytes() for path in retired] == [old]


def test_a_key_kept_elsewhere_never_overwrites_the_homes_public_key(tmp_path):
    from tapeout.flows.settings import settings_for
    from tapeout.flows.config import load_pipeline

    home = tmp_path / "home"
    own, _ = init_keys(home / "keys")
    published = own.public_key.read_bytes()
    elsewhere, _ = init_keys(tmp_path / "elsewhere")
    elsewhere.public_key.unlink()  # no .pub beside it
    pipeline = make_project(tmp_path)
    text = pipeline.read_text()
    assert DEFAULT_SIGNING in text
    pipeline.write_text(text.replace(DEFAULT_SIGNING, f"signing:\n  method: key\n  private_key: {elsewhere.private_key}\n"))
    settings = settings_for(load_pipeline(pipeline), home, print)
    assert own.public_key.read_bytes() == published
    assert settings.public_key.parent == home / "keys" / "configured"
    assert signer_identity(settings.public_key) == private_key_identity(elsewhere.private_key)


@pytest.mark.parametrize("mode, who", [(0o644, "its group and everyone"), (0o640, "its group"), (0o604, "everyone")])
def test_a_signing_key_others_can_read_is_refused(tmp_path, capsys, mode, who):
    keys, _ = init_keys(tmp_path / "home" / "keys")
    keys.private_key.chmod(mode)
    pipeline = make_project(tmp_path)
    code = main(["run", str(pipeline), "--home", str(tmp_path / "home")])
    error = capsys.readouterr().err
    assert code == 2
    assert f"error: {keys.private_key}: mode {mode:04o} gives {who} access to the signing key" in error
    assert f"chmod 600 {keys.private_key}" in error and "Traceback" not in error
    with pytest.raises(InvalidInput, match=f"mode {mode:04o}"):
        from tapeout.artifacts.signing import sign_bundle

        sign_bundle(tmp_path, keys.private_key)
