"""Approvals before promotion, through the command line against a real MLflow store (SQLite),
with real signatures: approvers sign with their own EC keys and certificates, the builder is
the home's key that signed the bundles (small bundles registered by hand, no pipeline run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tapeout.artifacts.approvals import approval_statement, folder_digest, sign_approval
from tapeout.artifacts.audit import ATTACHMENTS, AuditRecord, append, current_user, home_anchor, now, read_history
from tapeout.artifacts.signing import KeySigner, init_keys, signer_identity
from tapeout.flows.cli import main
from test_trust_promotion import NAME, make_world
from test_trust_signing import make_ca


def write_policy(home: Path, approvers: dict, *, approvals: int = 2, **extra) -> Path:
    policy = {
        "version": 1,
        "models": [{"match": "*", "keys": ["keys/signing-key.pub"]}],
        "aliases": [{"alias": "production", "match": "digits-cnn-*", "approvals": approvals, "approvers": approvers, **extra}],
    }
    path = home / "trust-policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


@pytest.fixture()
def world(tmp_path):
    """A home with two good versions signed by its key (the builder), approvers alice and bob
    (EC keys: alice's by file, bob's by identity), carol (a certificate) and mallory (a key
    the policy does not name)."""
    world = make_world(tmp_path, only_good=True)
    people = tmp_path / "people"
    for name in ("alice", "bob", "mallory"):
        world[name], _ = init_keys(people / name)
    ca = make_ca(people / "pki")
    world["carol"] = ca["leaf"]("carol", sans=("carol@example.com",))
    shutil.copyfile(world["alice"].public_key, world["home"] / "alice.pub")
    write_policy(world["home"], {
        # The builder is listed too: what keeps it out is that it built the bundle.
        "keys": ["alice.pub", signer_identity(world["bob"].public_key), "keys/signing-key.pub"],
        "certificates": {"roots": [str(ca["root"])], "sans": ["carol@example.com"]},
    })
    return world


def cli(world, *arguments) -> int:
    return main([*arguments, "--home", str(world["home"])])


def approve(world, capsys, version: str, person: str, *extra: str) -> tuple[int, str, str]:
    signer = world[person]
    if hasattr(signer, "certificate"):
        keys = ["--key", str(signer.private_key), "--certificate", str(signer.certificate)]
        keys += [argument for path in signer.chain for argument in ("--certificate-chain", str(path))]
    else:
        keys = ["--key", str(signer.private_key)]
    code = cli(world, "approve", f"{NAME}@{version}", "--to", "production", *keys, "--reason", f"{person} agrees", *extra)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def promote(world, capsys, version: str) -> tuple[int, str, str]:
    code = cli(world, "promote", f"{NAME}@{version}", "--to", "production")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def production(world) -> str | None:
    aliases = world["registry"].registered_model(NAME).aliases
    return aliases.get("production")


def test_promotion_waits_for_distinct_approvers_and_names_what_is_missing(world, capsys):
    one, two = world["versions"]["good1"], world["versions"]["good2"]
    builder = signer_identity(world["keys"].public_key)
    alice, bob = signer_identity(world["alice"].public_key), signer_identity(world["bob"].public_key)

    code, _, error = promote(world, capsys, one)
    assert code == 1 and production(world) is None
    assert "approvals: 0 of 2 distinct approvals for production; missing 2 more from keys alice.pub" in error
    assert bob in error and "carol@example.com" in error and f"not the builder {builder}" in error

    # The builder and a key the policy does not name: recorded, refused, with the reason.
    code, _, error = approve(world, capsys, one, "keys")
    assert code == 1
    assert "was recorded" in error and f"does not count: the approver is the builder: {builder} signed the bundle" in error
    code, _, error = approve(world, capsys, one, "mallory")
    assert code == 1 and "does not count: untrusted: signer outside the policy" in error

    code, out, _ = approve(world, capsys, one, "alice")
    assert code == 0
    assert f"approved {NAME} version {one} for production as {alice}" in out and "1 of 2 distinct approvals" in out
    # The same approver again counts once.
    assert approve(world, capsys, one, "alice")[0] == 0
    code, _, error = promote(world, capsys, one)
    assert code == 1 and production(world) is None
    assert "approvals: 1 of 2 distinct approvals for production" in error and "missing 1 more" in error
    assert "the approver is the builder" in error and "untrusted: signer outside the policy" in error
    assert "another approval by the same approver (counted once)" in error

    code, out, _ = approve(world, capsys, one, "carol")
    assert code == 0 and "2 of 2 distinct approvals" in out
    carol = "x509:O=Example,CN=carol SAN carol@example.com"  # the subject in RFC 4514 order, then the SANs
    assert cli(world, "promote", f"{NAME}@{one}", "--to", "production", "--json") == 0
    moved = json.loads(capsys.readouterr().out)
    assert production(world) == one
    check = next(item for item in moved["checks"] if item["name"] == "approvals")
    assert check["passed"] and alice in check["detail"] and carol in check["detail"]
    counted = json.loads(moved["record"]["approvals"])
    assert [item["approver"] for item in counted] == [alice, carol]

    # The alias moved: those approvals are spent. Bob approves version 1 again (named by his
    # key's identity); it does not move the alias to version 2.
    assert approve(world, capsys, one, "bob")[0] == 0
    code, _, error = promote(world, capsys, two)
    assert code == 1 and production(world) == one
    assert "0 of 2 distinct approvals" in error
    assert f"it approves {NAME}@{one} (bundle " in error and f"not {NAME}@{two} (bundle " in error
    assert approve(world, capsys, two, "bob")[0] == 0
    assert approve(world, capsys, two, "alice")[0] == 0
    assert promote(world, capsys, two)[0] == 0 and production(world) == two

    history = read_history(world["registry"], NAME, "production")
    assert history.chain_ok, history.problems
    approvals = [record for record in history.records if record.action == "approve"]
    assert len(approvals) == 8 and all(record.approval_digest for record in approvals)

    # trace: the approvals of version 1, judged now, and which promotion counted them.
    assert cli(world, "trace", f"{NAME}@{one}", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    by_whom = {(item["approver"], item["counts"], item["promotion"]) for item in record["approvals"]}
    first_promotion = next(r.sequence for r in history.records if r.action == "promote")
    assert (alice, True, first_promotion) in by_whom and (carol, True, first_promotion) in by_whom
    assert (bob, True, None) in by_whom and (builder, False, None) in by_whom
    assert cli(world, "trace", f"{NAME}@{one}") == 0
    text = capsys.readouterr().out
    assert f"approve  production: version {one} by {alice}" in text
    assert f"approved by {alice}, {carol}" in text
    assert f"production by {builder}" in text and "DOES NOT COUNT: the approver is the builder" in text
    report = world["home"] / "trace.html"
    assert cli(world, "trace", f"{NAME}@{one}", "--html", str(report)) == 0
    page = report.read_text()
    assert "<h2>Approvals</h2>" in page and alice in page and carol in page and f"#{first_promotion}" in page
    # The chain's picture ends with them: the builder's own approval is listed, not counted.
    assert "<b>approvals</b>" in page and f"production by {builder} (does not count)" in page


def test_a_builder_the_policy_allows_counts_and_one_approval_can_be_enough(world, capsys):
    one = world["versions"]["good1"]
    write_policy(world["home"], {"keys": ["keys/signing-key.pub"]}, approvals=1, builder_may_approve=True)
    code, out, _ = approve(world, capsys, one, "keys")
    assert code == 0 and "1 of 1 distinct approvals" in out
    assert promote(world, capsys, one)[0] == 0 and production(world) == one


def test_an_approval_whose_files_were_changed_or_removed_does_not_count(world, capsys):
    one = world["versions"]["good1"]
    assert approve(world, capsys, one, "alice")[0] == 0
    assert approve(world, capsys, one, "bob")[0] == 0
    records = [r for r in read_history(world["registry"], NAME, "production").records if r.action == "approve"]
    statement = world["home"] / "artifacts" / "tapeout-audit" / records[0].record_id / "artifacts" / ATTACHMENTS / "approval.json"
    assert statement.is_file()
    statement.write_text(statement.read_text().replace('"production"', '"production" '))
    code, _, error = promote(world, capsys, one)
    assert code == 1 and "1 of 2" in error and "its files were changed after it was recorded" in error

    # A record removed from the store: the chain says so, and nothing is promoted.
    world["registry"].delete_run(records[1].record_id)
    code, _, error = promote(world, capsys, one)
    assert code == 1 and "audit log:" in error
    assert cli(world, "trace", f"{NAME}@{one}") == 1
    assert "audit log       BROKEN" in capsys.readouterr().out


def test_an_approval_for_another_alias_does_not_count(world, capsys):
    """A statement signed for staging, recorded in production's chain (not by tapeout approve)."""
    one = world["versions"]["good1"]
    registry, home = world["registry"], world["home"]
    version = registry.get_version(NAME, one)
    digest = version.tags["bundle_digest"]
    for person in ("alice", "bob"):
        folder = home / f"forged-{person}"
        signer = KeySigner(world[person].private_key, world[person].public_key)
        approver = sign_approval(folder, version, "staging", digest, signer, when=now(), reason="")
        record = AuditRecord(
            action="approve", model=NAME, alias="production", from_version="", to_version=one, user=current_user(),
            actor="", when=now(), reason="", outcome="", verification="", signer=approver, bundle_digest=digest,
            approval_digest=folder_digest(folder),
        )
        anchor = home_anchor(home / "keys", [world["keys"].public_key], NAME, signs=True)
        append(registry, record, "", anchor, attachments=folder)
    code, _, error = promote(world, capsys, one)
    assert code == 1 and "it approves moving staging, not production" in error


def test_the_statement_names_the_bundle_alias_approver_time_and_reason(world, tmp_path):
    version = world["registry"].get_version(NAME, world["versions"]["good1"])
    folder = tmp_path / "approval"
    signer = KeySigner(world["alice"].private_key, world["alice"].public_key)
    approver = sign_approval(folder, version, "production", "d" * 64, signer, when="2026-01-01T00:00:00.000+00:00", reason="ok")
    statement = json.loads((folder / "approval.json").read_text())
    assert statement == approval_statement(version, "production", "d" * 64, approver, "2026-01-01T00:00:00.000+00:00", "ok")
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": f"{NAME}@{version.version}", "digest": {"sha256": "d" * 64}}]
    assert approver == signer_identity(world["alice"].public_key)
    assert sorted(path.name for path in folder.iterdir()) == ["approval.json", "approver.pub", "model.sig"]
    assert (folder / "approver.pub").read_bytes() == world["alice"].public_key.read_bytes()
    assert "PRIVATE" not in "".join(path.read_text() for path in folder.iterdir())


@pytest.mark.parametrize(
    "alias_rule, message",
    [
        ({"alias": "production", "approvals": 0, "approvers": {"keys": ["a.pub"]}}, "aliases.0.approvals"),
        ({"alias": "candidate", "approvals": 1, "approvers": {"keys": ["a.pub"]}}, "not candidate, which tapeout run sets"),
        ({"alias": "production", "approvals": 1, "approvers": {}}, "name at least one approver"),
        ({"alias": "production", "approvals": 1, "approvers": {"keys": ["key:sha256:abc"]}}, "key:sha256:<64 lowercase hex digits>"),
        ({"alias": "production", "approvals": 1, "approvers": {"keys": ["a.pub"]}, "quorum": 2}, "aliases.0.quorum"),
    ],
)
def test_a_bad_alias_section_is_named_when_the_policy_loads(world, capsys, alias_rule, message):
    policy = {"version": 1, "models": [{"match": "*", "keys": ["keys/signing-key.pub"]}], "aliases": [alias_rule]}
    (world["home"] / "trust-policy.yaml").write_text(yaml.safe_dump(policy))
    code, _, error = promote(world, capsys, world["versions"]["good1"])
    assert code == 2 and "trust-policy.yaml" in error and message in error
    code = cli(world, "approve", f"{NAME}@1", "--to", "production", "--key", str(world["alice"].private_key))
    assert code == 2 and message in capsys.readouterr().err


def test_approving_an_alias_the_policy_has_no_rule_for_is_bad_input(world, capsys):
    code = cli(world, "approve", f"{NAME}@1", "--to", "staging", "--key", str(world["alice"].private_key))
    error = capsys.readouterr().err
    assert code == 2 and "names no approvers for staging of digits-cnn-npu" in error
    assert not [r for r in read_history(world["registry"], NAME).records if r.action == "approve"]


def test_a_version_that_fails_a_check_is_not_approved(world, capsys):
    one = world["versions"]["good1"]
    stored = world["registry"].get_version(NAME, one)
    bundle = world["home"] / "artifacts" / "digits-cnn" / stored.run_id / "artifacts" / "bundle"
    (bundle / "reports" / "gates.json").write_text('{"verdict": "pass", "gates": []}')
    code, _, error = approve(world, capsys, one, "alice")
    assert code == 1 and "nothing signed or recorded" in error and "Hash mismatch for 'reports/gates.json'" in error
    assert not [r for r in read_history(world["registry"], NAME).records if r.action == "approve"]


def test_key_rotation_keeps_the_alias_section(world, capsys):
    assert cli(world, "keys", "rotate") == 0
    capsys.readouterr()
    policy = yaml.safe_load((world["home"] / "trust-policy.yaml").read_text())
    assert policy["aliases"][0]["approvals"] == 2
    assert policy["aliases"][0]["approvers"]["certificates"]["sans"] == ["carol@example.com"]
