"""Append-only audit records of promotions, refusals and rollbacks (docs/trust.md).

MLflow keeps no alias history (mlflow/mlflow#2169), so every promotion, refused promotion and
rollback writes one record: one run in the `tapeout-audit` experiment, its fields logged as
*params* — MLflow refuses to change a param once logged — plus a few tags to search by. Each
record carries the digest of the previous record for the same model and alias and its own
digest over all its fields, so an edited, inserted or deleted record shows up as a broken
chain when the history is read. Nothing here ever updates or deletes a record.

A chain cannot show that its *last* records are gone: what is left is still a valid chain.
So the head of each (model, alias) chain is anchored outside the records, in a tag of the
registered model (`tapeout.audit.head.<alias>`): the last record's sequence and digest and
the version the alias points to, signed with the home's signing key. Reading the history
compares the records with their head and the alias with both; a deleted, hidden or replaced
last record, a deleted head, and an alias moved or set outside tapeout are reported.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from tapeout.artifacts.registry import CANDIDATE_ALIAS, Registry, RegistryUnavailable, RunRecord
from tapeout.compilers.errors import InvalidInput

AUDIT_EXPERIMENT = "tapeout-audit"
ACTIONS = ("promote", "refuse", "rollback", "approve")
_TAG = "tapeout.audit"
HEAD_TAG = f"{_TAG}.head."  # + alias: a registered-model tag holding the signed head
ATTACHMENTS = "attached"  # a record's files (an approval's signed statement), in its run
_LATER_FIELDS = ("approval_digest", "approvals")


@dataclass(frozen=True)
class AuditRecord:
    """One event. `to_version` is what was asked for (or, for a refusal, refused)."""

    action: str
    model: str
    alias: str
    from_version: str
    to_version: str
    user: str
    actor: str
    when: str
    reason: str
    outcome: str
    verification: str
    signer: str
    bundle_digest: str
    # An approval: the digest of its signed files, kept with the record (tapeout.artifacts.approvals).
    approval_digest: str = ""
    # A promotion: the approvals it counted, as JSON (record, approver, approval digest each).
    approvals: str = ""
    sequence: int = 0
    previous_digest: str = ""
    record_id: str = ""
    record_digest: str = ""

    def fields(self) -> dict[str, str]:
        """Every field that goes into the digest (not the run id or the digest itself). The
        approval fields count only when set, so records written before they existed keep
        their digests."""
        values = asdict(self)
        values.pop("record_id")
        values.pop("record_digest")
        for name in _LATER_FIELDS:
            if not values[name]:
                values.pop(name)
        return {key: str(value) for key, value in values.items()}

    def computed_digest(self) -> str:
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Anchor:
    """How heads are signed and checked: `signing_key` (the home's private key; None writes
    unsigned heads) and the public keys a head's signature may come from. With no trusted
    keys, signatures are not checked (nothing to check them with); records, heads and
    aliases are still compared."""

    signing_key: Path | None = None
    trusted_keys: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Head:
    """The anchored end of one (model, alias) chain: its last record and where the alias
    points after it ("" for nowhere)."""

    model: str
    alias: str
    version: str
    sequence: int
    record_digest: str
    signer: str = ""
    signature: str = ""

    def signed_bytes(self) -> bytes:
        fields = {key: value for key, value in asdict(self).items() if key != "signature"}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class History:
    """The records for one (model, alias), oldest first, and whether their chain holds."""

    records: tuple[AuditRecord, ...]
    chain_ok: bool
    problems: tuple[str, ...]

    def alias_stack(self) -> list[str]:
        """The versions the alias has pointed to, as an undo stack: a promotion pushes, a
        rollback pops. The last item is where the alias should point now."""
        stack: list[str] = []
        for record in self.records:
            if record.action == "promote":
                stack.append(record.to_version)
            elif record.action == "rollback" and stack:
                stack.pop()
        return stack


def home_anchor(keys: Path, admitted: Iterable[Path], model: str, *, signs: bool = False) -> Anchor:
    """The anchor a command uses for `model`'s heads: a head may be signed by a key the trust
    policy admits for the model (`admitted`) or by the home's own key (in `keys`); the home's
    private key signs the heads a promotion or rollback (`signs`) writes.

    Raises:
        InvalidInput: `signs`, trusted keys exist, but the home holds no private key (an
            unsigned head would be flagged by every later read); or the key is unusable.
    """
    from tapeout.artifacts.keys import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, public_key_for

    trusted = tuple(dict.fromkeys(path for path in (*admitted, keys / PUBLIC_KEY_FILE) if path.is_file()))
    signing = keys / PRIVATE_KEY_FILE
    if not signs or not signing.exists():
        if signs and trusted:
            raise InvalidInput(
                f"{signing}: missing, and the audit head of {model} must be signed by one of "
                f"{[str(path) for path in trusted]}; promote from the home that holds the key"
            )
        return Anchor(None, trusted)
    public_key_for(signing)  # an unusable or shared key fails here, before anything is written
    return Anchor(signing, trusted)


def require_whole(registry: Registry, model: str, anchor: Anchor, bundle: Path) -> None:
    """A read through the registry: refuse while `model`'s audit log is not whole.

    Raises:
        VerificationFailed: naming what is wrong with the log.
    """
    from tapeout.artifacts.signature import VerificationFailed

    history = read_history(registry, model, anchor=anchor)
    if not history.chain_ok:
        raise VerificationFailed(bundle, [f"the audit log of {model} is not whole: " + "; ".join(history.problems)])


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER: containers
        return "unknown"


def append(
    registry: Registry,
    record: AuditRecord,
    version_after: str,
    anchor: Anchor = Anchor(),
    attachments: Path | None = None,
) -> AuditRecord:
    """Write `record` after the last one for its model and alias, then move the head to it
    (`version_after`: where the alias points once the record stands). Returns the record as
    stored. The files of the folder `attachments` are kept with the record (under
    `ATTACHMENTS` in its run), stored before the record is finished: a record that can be
    read has its files.

    The record follows the *head* when there is one, so that records deleted from the end
    stay visible as a gap. When the chain's end is already in doubt (its head is missing,
    forged, or disagrees with the records or the alias), the record is written but the
    head is left where it was: a new record never makes a broken end look whole.

    Raises:
        RegistryUnavailable: the record or its head could not be written (the caller undoes
            the change).
    """
    if record.action not in ACTIONS:
        raise ValueError(f"unknown audit action {record.action!r}")
    history = read_history(registry, record.model, record.alias)
    heads, aliases = _registered_state(registry, record.model)
    head = heads.get(record.alias)
    # Judge the end as it was before this event: a promotion has just moved the alias from
    # `from_version`, and that move is what this record and its head will say.
    before = {**aliases, record.alias: record.from_version}
    sound = not _anchor_problems(record.model, record.alias, history, heads, before, anchor)
    # Follow whichever comes later, the head or the last record (the head on a tie: a last
    # record that differs from its head was replaced).
    sequence, previous = 0, ""
    if history.records:
        last = max(history.records, key=lambda r: r.sequence)
        sequence, previous = last.sequence, last.record_digest
    if isinstance(head, Head) and head.sequence >= sequence:
        sequence, previous = head.sequence, head.record_digest
    record = replace(record, sequence=sequence + 1, previous_digest=previous)
    record = replace(record, record_digest=record.computed_digest())
    run_id = registry.start_run(
        AUDIT_EXPERIMENT,
        f"{record.action}-{record.model}-{record.alias}-{record.sequence}",
        {
            f"{_TAG}.model": record.model,
            f"{_TAG}.alias": record.alias,
            f"{_TAG}.action": record.action,
            f"{_TAG}.to_version": record.to_version,
        },
    )
    try:
        registry.log(run_id, params={**record.fields(), "record_digest": record.record_digest})
        if attachments is not None:
            registry.log_directory(run_id, attachments, ATTACHMENTS)
    except Exception as error:
        registry.end_run(run_id, "FAILED")
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot write the audit record ({type(error).__name__}: {error})"
        ) from error
    registry.end_run(run_id, "FINISHED")
    if sound:
        _write_head(registry, Head(record.model, record.alias, version_after, record.sequence, record.record_digest), anchor)
    return replace(record, record_id=run_id)


def read_history(registry: Registry, model: str, alias: str | None = None, anchor: Anchor = Anchor()) -> History:
    """Every finished audit record for `model` (and `alias`, when given), oldest first, and
    whether they hold: each record against its digest and the one before, each chain's end
    against its head, and each alias (but `candidate`, which `tapeout run` sets) against
    the head and the last promotion recorded. Problems are reported, never repaired.
    """
    query = f"tags.`{_TAG}.model` = '{model}' and attributes.status = 'FINISHED'"
    if alias is not None:
        query += f" and tags.`{_TAG}.alias` = '{alias}'"
    try:
        runs = registry.search_runs(AUDIT_EXPERIMENT, query)
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot read the audit records ({type(error).__name__}: {error})"
        ) from error
    records = sorted((_record(run) for run in runs), key=lambda r: (r.alias, r.sequence))
    problems = []
    last: dict[str, AuditRecord] = {}
    for record in records:
        if record.computed_digest() != record.record_digest:
            problems.append(f"record {record.record_id} (#{record.sequence}) does not match its digest")
        before = last.get(record.alias)
        expected = before.record_digest if before else ""
        if record.previous_digest != expected:
            problems.append(
                f"record {record.record_id} (#{record.sequence}, {record.alias}) does not follow "
                f"the previous record: a record was removed, inserted or written concurrently"
            )
        last[record.alias] = record
    if alias is None:  # several aliases: show them interleaved in time
        records.sort(key=lambda r: (r.when, r.alias, r.sequence))
    history = History(tuple(records), True, ())
    heads, aliases = _registered_state(registry, model)
    names = {alias} if alias is not None else ({r.alias for r in records} | set(heads) | set(aliases))
    for name in sorted(names - {CANDIDATE_ALIAS}):
        problems += _anchor_problems(model, name, history, heads, aliases, anchor)
    return History(tuple(records), not problems, tuple(problems))


def _anchor_problems(
    model: str,
    alias: str,
    history: History,
    heads: Mapping[str, "Head | str"],
    aliases: Mapping[str, str],
    anchor: Anchor,
) -> list[str]:
    """What is wrong with the end of the (model, alias) chain and with the alias itself."""
    where = f"{model}@{alias}"
    records = [record for record in history.records if record.alias == alias]
    last = max(records, key=lambda r: r.sequence) if records else None
    head = heads.get(alias)
    current = aliases.get(alias, "")
    if isinstance(head, str):  # unreadable: the reason
        return [f"the audit head of {where} is unreadable ({head})"]
    if head is None:
        if last is not None:
            return [
                f"nothing anchors the end of the audit log of {where} (records #1..#{last.sequence}): "
                "its head was deleted"
            ]
        if current:
            return [f"{where} points to version {current} but no promotion is recorded: the alias was set outside tapeout"]
        return []
    problems = []
    if anchor.trusted_keys:
        from tapeout.artifacts.keys import check_statement

        reason = (
            "it is not signed" if not head.signature
            else check_statement(anchor.trusted_keys, head.signer, head.signed_bytes(), head.signature)
        )
        if reason:
            problems.append(f"the audit head of {where} cannot be trusted: {reason}")
    ends_at = last.sequence if last else 0
    if ends_at < head.sequence:
        problems.append(
            f"the audit log of {where} ends at #{ends_at} but its head says #{head.sequence}: "
            f"the last {head.sequence - ends_at} record(s) were deleted or hidden"
        )
    elif ends_at > head.sequence:
        problems.append(
            f"record #{ends_at} of {where} comes after its head (#{head.sequence}): written outside "
            "tapeout, or by a promotion killed before it finished"
        )
    elif last is not None and last.record_digest != head.record_digest:
        problems.append(f"the last audit record of {where} (#{ends_at}) is not the one its head anchors: it was replaced")
    if current != head.version:
        problems.append(
            f"{where} points to version {current or '(none)'} but its audit head says "
            f"{head.version or '(none)'}: the alias was moved outside tapeout"
        )
    return problems


def _registered_state(registry: Registry, model: str) -> tuple[dict[str, "Head | str"], dict[str, str]]:
    """The model's heads by alias (a Head, or why one is unreadable) and its aliases."""
    try:
        found = registry.registered_model(model)
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot read {model} ({type(error).__name__}: {error})"
        ) from error
    if found is None:
        return {}, {}
    heads: dict[str, Head | str] = {}
    for key, value in found.tags.items():
        if key.startswith(HEAD_TAG):
            heads[key[len(HEAD_TAG):]] = _parse_head(model, key[len(HEAD_TAG):], value)
    return heads, dict(found.aliases)


def _parse_head(model: str, alias: str, text: str) -> "Head | str":
    try:
        fields = json.loads(text)
        head = Head(**{name: fields[name] for name in Head.__dataclass_fields__})
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        return f"{type(error).__name__}: {error}"
    if (head.model, head.alias) != (model, alias) or not isinstance(head.sequence, int):
        return f"it names {head.model}@{head.alias} #{head.sequence!r}"
    return head


def _write_head(registry: Registry, head: Head, anchor: Anchor) -> None:
    if anchor.signing_key is not None:
        from tapeout.artifacts.keys import private_key_identity, sign_statement

        head = replace(head, signer=private_key_identity(anchor.signing_key))
        head = replace(head, signature=sign_statement(anchor.signing_key, head.signed_bytes()))
    try:
        registry.set_model_tag(head.model, HEAD_TAG + head.alias, json.dumps(asdict(head), sort_keys=True))
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: the audit record #{head.sequence} of {head.model}@{head.alias} "
            f"was written but its head could not be ({type(error).__name__}: {error})"
        ) from error


def _record(run: RunRecord) -> AuditRecord:
    params = run.params
    values = {name: params.get(name, "") for name in AuditRecord.__dataclass_fields__}
    values["sequence"] = int(params.get("sequence", "0") or 0)
    values["record_id"] = run.run_id
    return AuditRecord(**values)
