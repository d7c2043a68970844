"""Approvals: a person's signed word that a version may move an alias (docs/trust.md, "Approvals").

An approval is an in-toto Statement v1 whose subject is the version's bundle digest and whose
predicate names the registered model, the version, the alias, the approver, the time and the
reason. The approver signs it with their own key or certificate through a signing method
(tapeout.artifacts.signing_methods), the way a bundle is signed: the statement is a file of a
small folder, `model.sig` covers it — and the approver's public key, when they sign with a
key, so that a policy may name the key by its identity. The folder is kept with an `approve`
record of the alias's audit chain (tapeout.artifacts.audit), whose digest covers the folder's:
an approval is not removed or changed without the chain or its signed head showing it.

The trust policy's `aliases` section (tapeout.artifacts.policy) says how many distinct
approvers an alias needs, who they are, and whether the builder (the bundle's signer) may be
one. An approval counts for the alias's next move: a promotion looks at the approvals recorded
since the alias last moved, each judged afresh against the policy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tapeout.artifacts.audit import ATTACHMENTS, AuditRecord, History
from tapeout.artifacts.digest import directory_manifest
from tapeout.artifacts.documents import read_json_object
from tapeout.artifacts.keys import load_public_key, signer_identity
from tapeout.artifacts.policy import AliasRule, ModelRule, TrustPolicy
from tapeout.artifacts.registry import RegisteredVersion, Registry
from tapeout.artifacts.signature import Signer, VerificationFailed, read_signature
from tapeout.compilers.errors import InvalidInput, TapeoutError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:tapeout:predicate:approval:v1"
BUNDLE_DIGEST_SCHEME = "sha256-bundle-manifest-v1"  # tapeout.artifacts.digest.bundle_digest
STATEMENT_FILE = "approval.json"
PUBLIC_KEY_FILE = "approver.pub"
_MOVES = ("promote", "rollback")


class ApprovalRefused(TapeoutError):
    """An approval was not given, or was recorded but does not count (the reason named)."""

    exit_code = 1


@dataclass(frozen=True)
class Approval:
    """One recorded approval as its signed statement says, judged against the policy now:
    `refused` says why it does not count ("" when it does)."""

    record_id: str
    sequence: int
    approver: str
    model: str
    version: str
    alias: str
    bundle_digest: str
    when: str
    reason: str
    digest: str
    refused: str = ""

    @property
    def counts(self) -> bool:
        return not self.refused

    def describe(self) -> str:
        return f"approval #{self.sequence} by {self.approver or '(unknown)'}"


@dataclass(frozen=True)
class ApprovalStatus:
    """Where a version stands against the approval rule of one alias: the distinct approvals
    that count and those that do not. `rule` None: the policy asks for none."""

    alias: str
    rule: AliasRule | None
    policy: TrustPolicy
    builder: str
    counted: tuple[Approval, ...] = ()
    refused: tuple[Approval, ...] = ()

    @property
    def met(self) -> bool:
        return self.rule is None or len(self.counted) >= self.rule.approvals

    def describe(self) -> str:
        """In words: how many of how many, what is missing from whom, and what did not count."""
        if self.rule is None:
            return f"the policy ({self.policy.source}) asks for no approvals for {self.alias}"
        have, need = len(self.counted), self.rule.approvals
        text = f"{have} of {need} distinct approvals for {self.alias}"
        if self.counted:
            text += " (" + ", ".join(f"{item.approver} at {item.when}" for item in self.counted) + ")"
        if not self.met:
            text += f"; missing {need - have} more from {approvers_text(self.rule, self.policy)}"
            if not self.rule.builder_may_approve and self.builder:
                text += f", not the builder {self.builder}"
        if self.refused:
            text += "; not counted: " + "; ".join(f"{item.describe()}: {item.refused}" for item in self.refused)
        return text

    def as_record(self) -> str:
        """The counted approvals, for the promotion's audit record."""
        if self.rule is None:
            return ""
        return json.dumps(
            [{"record": item.record_id, "sequence": item.sequence, "approver": item.approver, "digest": item.digest}
             for item in self.counted],
            sort_keys=True,
        )


def folder_digest(folder: Path) -> str:
    """sha256 of the canonical JSON map of the folder's files to their sha256, the signature
    included: what an `approve` record holds of its files."""
    canonical = json.dumps(directory_manifest(folder), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def approval_statement(
    version: RegisteredVersion, alias: str, bundle_digest: str, approver: str, when: str, reason: str
) -> dict[str, object]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"{version.name}@{version.version}", "digest": {"sha256": bundle_digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "model": version.name,
            "version": version.version,
            "alias": alias,
            "bundle_digest_scheme": BUNDLE_DIGEST_SCHEME,
            "approver": approver,
            "approved_at": when,
            "reason": reason,
        },
    }


def sign_approval(
    folder: Path, version: RegisteredVersion, alias: str, bundle_digest: str, signer: Signer, *, when: str, reason: str
) -> str:
    """Write the approval statement into the new folder `folder` and sign it with `signer`
    (the approver's own key or certificate); returns the approver, as the signature names them.

    Raises:
        InvalidInput: the signer's key or certificate is unusable (named).
    """
    approver = _signs_as(signer)
    folder.mkdir(parents=True)
    statement = approval_statement(version, alias, bundle_digest, approver, when, reason)
    (folder / STATEMENT_FILE).write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n")
    try:
        load_public_key(signer.shows)
    except InvalidInput:
        pass  # a certificate (its chain rides in the signature) or a trust config
    else:
        shutil.copyfile(signer.shows, folder / PUBLIC_KEY_FILE)
    signer.sign(folder)
    return approver


def _signs_as(signer: Signer) -> str:
    """Who `signer`'s signatures name: what a signature it makes says, asked of the signer."""
    with tempfile.TemporaryDirectory(prefix="tapeout-approver-") as scratch:
        probe = Path(scratch)
        (probe / "probe").write_text("who signs\n")
        signer.sign(probe)
        return signer.identity(read_signature(probe))


def judge(
    folder: Path | None,
    record: AuditRecord,
    policy: TrustPolicy,
    version: RegisteredVersion,
    alias: str,
    bundle_digest: str,
    builder: str,
) -> Approval:
    """Does the approval `record` (its files in `folder`, None when they are gone) count for
    moving `alias` to `version`, whose bundle hashes to `bundle_digest` and was signed by
    `builder`? Never raises for an approval that does not count: `refused` says why.

    Raises:
        InvalidInput: a key or certificate the policy names is unreadable.
    """
    found = Approval(
        record.record_id, record.sequence, record.signer, record.model, record.to_version, record.alias,
        record.bundle_digest, record.when, record.reason, record.approval_digest,
    )
    if folder is None or not folder.is_dir():
        return replace(found, refused="its signed statement is missing from the audit store")
    digest = folder_digest(folder)
    if digest != record.approval_digest:
        return replace(
            found, refused=f"its files were changed after it was recorded: they hash to {digest}, "
            f"the audit record says {record.approval_digest}",
        )
    try:
        claims = _claims(read_json_object(folder / STATEMENT_FILE))
    except InvalidInput as error:
        return replace(found, refused=f"{STATEMENT_FILE} is not an approval statement ({error})")
    found = replace(found, **claims)
    rule = policy.alias_rule(version.name, alias)
    if rule is None:
        return replace(found, refused=f"the policy ({policy.source}) names no approvers for {alias} of {version.name}")
    try:
        verification = read_signature(folder).verify(
            folder, [_signers(rule, folder, policy)], policy.path,
            f"the policy ({policy.source}) allows approving {alias} of {version.name}",
        )
    except VerificationFailed as failure:
        named = [key for key in rule.approvers.keys if key.startswith("key:")]
        also = f" (and the keys {named}, named by identity)" if named else ""
        return replace(found, refused="untrusted: " + "; ".join(failure.reasons) + also)
    if verification.signer != found.approver:
        return replace(
            found, refused=f"the statement names {found.approver} as approver but is signed by {verification.signer}"
        )
    asked = (version.name, version.version, bundle_digest)
    if (found.model, found.version, found.bundle_digest) != asked:
        return replace(
            found, refused=f"it approves {found.model}@{found.version} (bundle {found.bundle_digest}), "
            f"not {version.name}@{version.version} (bundle {bundle_digest})",
        )
    if found.alias != alias:
        return replace(found, refused=f"it approves moving {found.alias}, not {alias}")
    if verification.signer == builder and not rule.builder_may_approve:
        return replace(found, refused=f"the approver is the builder: {builder} signed the bundle")
    return found


def _claims(statement: dict) -> dict[str, str]:
    """The fields an approval statement states, checked for shape.

    Raises:
        InvalidInput: not a tapeout approval statement (the field named).
    """
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
        raise InvalidInput(f"_type/predicateType: expected {STATEMENT_TYPE} / {PREDICATE_TYPE}")
    predicate = statement.get("predicate")
    subjects = statement.get("subject")
    if not isinstance(predicate, dict) or not isinstance(subjects, list) or len(subjects) != 1:
        raise InvalidInput("expected one subject and a predicate")
    digest = (subjects[0] or {}).get("digest", {}).get("sha256") if isinstance(subjects[0], dict) else None
    values = {name: predicate.get(name) for name in ("model", "version", "alias", "approver", "approved_at", "reason")}
    missing = [name for name, value in values.items() if not isinstance(value, str)]
    if missing or not isinstance(digest, str):
        raise InvalidInput(f"predicate: expected text for {missing or ['subject digest']}")
    return {
        "model": values["model"], "version": values["version"], "alias": values["alias"],
        "approver": values["approver"], "when": values["approved_at"], "reason": values["reason"],
        "bundle_digest": digest,
    }


def _signers(rule: AliasRule, folder: Path, policy: TrustPolicy) -> ModelRule:
    """The approvers as a signer rule a signature checks itself against: key files as they
    are, a key named by its identity as the public key the approval carries, when it is that key."""
    carried = folder / PUBLIC_KEY_FILE
    carried_identity = _identity_or_none(carried) if carried.is_file() else None
    keys = [
        str(carried) if key == carried_identity else str(policy.path(key))
        for key in rule.approvers.keys
        if not key.startswith("key:") or key == carried_identity
    ]
    return ModelRule(keys=keys, certificates=rule.approvers.certificates, sigstore=rule.approvers.sigstore)


def _identity_or_none(path: Path) -> str | None:
    try:
        return signer_identity(path)
    except InvalidInput:
        return None


def approvers_text(rule: AliasRule, policy: TrustPolicy) -> str:
    """Who may approve, in words."""
    parts = []
    if rule.approvers.keys:
        named = [
            key if key.startswith("key:") else f"{key} ({_identity_or_none(policy.path(key)) or 'unreadable'})"
            for key in rule.approvers.keys
        ]
        parts.append(f"keys {', '.join(named)}")
    certificates = rule.approvers.certificates
    if certificates is not None:
        pins = [f"subject {subject!r}" for subject in certificates.subjects] + [f"SAN {san}" for san in certificates.sans]
        parts.append(f"certificates under {', '.join(certificates.roots)} with {' or '.join(pins)}")
    if rule.approvers.sigstore is not None:
        parts.append("keyless identities " + ", ".join(
            f"{item.identity} ({item.issuer})" for item in rule.approvers.sigstore.identities
        ))
    return "; ".join(parts)


def since_last_move(history: History, alias: str) -> list[AuditRecord]:
    """The `approve` records of `alias` written since it last moved (a promotion or rollback):
    the approvals its next move may count."""
    records = sorted((record for record in history.records if record.alias == alias), key=lambda r: r.sequence)
    moved = max((record.sequence for record in records if record.action in _MOVES), default=0)
    return [record for record in records if record.action == "approve" and record.sequence > moved]


def status(
    registry: Registry,
    history: History,
    policy: TrustPolicy,
    version: RegisteredVersion,
    alias: str,
    bundle_digest: str,
    builder: str,
) -> ApprovalStatus:
    """Where moving `alias` to `version` stands: the approvals recorded since the alias last
    moved, each judged now; a second approval by the same approver counts once.

    Raises:
        InvalidInput: a key or certificate the policy names is unreadable.
    """
    rule = policy.alias_rule(version.name, alias)
    if rule is None:
        return ApprovalStatus(alias, None, policy, builder)
    judged = _judge_all(registry, since_last_move(history, alias), policy, version, bundle_digest, builder)
    counted: list[Approval] = []
    refused: list[Approval] = []
    for approval in judged:
        if approval.counts and approval.approver in {item.approver for item in counted}:
            refused.append(replace(approval, refused="another approval by the same approver (counted once)"))
        elif approval.counts:
            counted.append(approval)
        else:
            refused.append(approval)
    return ApprovalStatus(alias, rule, policy, builder, tuple(counted), tuple(refused))


def of_version(
    registry: Registry, history: History, policy: TrustPolicy, version: RegisteredVersion, bundle_digest: str, builder: str
) -> list[dict[str, object]]:
    """Every approval recorded for `version`, judged now, with the promotion that counted it
    (its sequence number; None when none did): what `tapeout trace` shows.

    Raises:
        InvalidInput: a key or certificate the policy names is unreadable.
    """
    used: dict[str, int] = {}
    for record in history.records:
        if record.action == "promote" and record.approvals:
            for item in json.loads(record.approvals):
                used[item["record"]] = record.sequence
    records = [record for record in history.records if record.action == "approve" and record.to_version == version.version]
    return [
        {**asdict(approval), "counts": approval.counts, "promotion": used.get(approval.record_id)}
        for approval in _judge_all(registry, records, policy, version, bundle_digest, builder)
    ]


def _judge_all(
    registry: Registry,
    records: Iterable[AuditRecord],
    policy: TrustPolicy,
    version: RegisteredVersion,
    bundle_digest: str,
    builder: str,
) -> list[Approval]:
    judged = []
    with tempfile.TemporaryDirectory(prefix="tapeout-approvals-") as scratch:
        for record in records:
            folder = _download(registry, record, Path(scratch) / record.record_id)
            judged.append(judge(folder, record, policy, version, record.alias, bundle_digest, builder))
    return judged


def _download(registry: Registry, record: AuditRecord, destination: Path) -> Path | None:
    destination.mkdir(parents=True)
    try:
        return registry.download_run_file(record.record_id, ATTACHMENTS, destination)
    except Exception:  # MLflow's artifact errors are not typed: the files are gone, and judge says so
        return None
