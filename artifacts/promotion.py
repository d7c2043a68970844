"""Promote, roll back and pull registered versions — refusing what cannot be verified.

A promotion moves an alias (normally `production`) to a version only when every check holds:
the version's `gate_verdict` tag is `pass`; its bundle, downloaded afresh, verifies against
the trust policy; the bundle is the one the version claims (its digest equals the version's
`bundle_digest` tag, and its signed provenance names this registered model, commit and
config digest); the signed gates report says `pass`; the deployed firmware revision
(`--firmware`) is within the artifact's signed range; and the model's audit log is whole
(every record, its anchored head, and every alias where the log says); and, when the trust
policy asks for approvals to move the alias, enough distinct approvers have signed one
(tapeout.artifacts.approvals). Any failure refuses: the alias is left alone and a `refuse`
audit record says why. A rollback moves the alias back to the version promoted before the
current one, after the same checks but approvals: it undoes a move that was approved.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from tapeout.artifacts import approvals, audit, identity
from tapeout.artifacts.digest import bundle_digest
from tapeout.artifacts.documents import read_json_object
from tapeout.artifacts.policy import TrustPolicy
from tapeout.artifacts.registry import RegisteredVersion, Registry, RegistryUnavailable, ReferenceNotFound
from tapeout.artifacts.signature import Signer, VerificationFailed
from tapeout.compilers.errors import InvalidInput, TapeoutError
from tapeout.compilers.versions import parse_version

PRODUCTION_ALIAS = "production"


class PromotionRefused(TapeoutError):
    """A promotion or rollback was refused; the alias is unchanged. Carries every failed check."""

    exit_code = 1

    def __init__(self, action: str, subject: str, alias: str, reasons: list[str]) -> None:
        self.action, self.subject, self.alias, self.reasons = action, subject, alias, reasons
        super().__init__(f"{action} {subject} to {alias} refused, alias unchanged: " + "; ".join(reasons))


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Checked:
    """The checks on one version, and what verification found."""

    version: RegisteredVersion
    checks: tuple[Check, ...]
    signer: str
    verification: str
    bundle_digest: str

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{check.name}: {check.detail}" for check in self.checks if not check.passed]


@dataclass(frozen=True)
class Outcome:
    """A promotion or rollback that happened (or was already in place: `record` is None)."""

    name: str
    alias: str
    from_version: str | None
    to_version: str
    checked: Checked
    record: audit.AuditRecord | None


def check_version(
    registry: Registry, version: RegisteredVersion, policy: TrustPolicy, firmware: str | None = None
) -> Checked:
    """Run every promotion check on `version`; never raises for a failed check.

    Raises:
        InvalidInput: `firmware` is not a version string.
    """
    if firmware is not None:
        parse_version(firmware, "--firmware")
    checks = []
    verdict = version.tags.get("gate_verdict")
    checks.append(Check("gate verdict", verdict == "pass", f"version tag gate_verdict is {verdict!r}"))
    signer, verification, digest = "", "not checked", ""
    with tempfile.TemporaryDirectory(prefix="tapeout-promote-") as scratch:
        try:
            bundle = registry.download_bundle(version, Path(scratch))
        except Exception as error:  # MLflow's artifact repository errors are not typed
            checks.append(Check("bundle", False, f"cannot download the bundle ({type(error).__name__}: {error})"))
            return Checked(version, tuple(checks), signer, "bundle not downloaded", digest)
        try:
            result = policy.verify(bundle, version.name)
            signer = result.signer
            verification = f"verified: {result.files} files, {result.method} signature by {result.signer}"
            checks.append(Check("signature", True, verification))
        except VerificationFailed as failure:
            verification = "failed: " + "; ".join(failure.reasons)
            checks.append(Check("signature", False, "; ".join(failure.reasons)))
        digest = bundle_digest(bundle)
        checks.append(_served_as_check(bundle, version, digest))
        checks.append(_gates_check(bundle))
        checks.append(_firmware_check(bundle, firmware))
    return Checked(version, tuple(checks), signer, verification, digest)


def promote(
    registry: Registry,
    reference: str,
    alias: str,
    policy: TrustPolicy,
    *,
    firmware: str | None = None,
    reason: str = "",
    actor: str = "",
    anchor: audit.Anchor = audit.Anchor(),
) -> Outcome:
    """Move `alias` to the version `reference` names, after every check; `anchor` signs
    the audit head and says which keys a head may be signed by.

    When the trust policy asks for approvals to move `alias`, the approvals recorded since it
    last moved must hold enough distinct approvers (the `approvals` check names what is
    missing and each approval that does not count, with why); the promotion's record lists
    the approvals it counted.

    Raises:
        PromotionRefused: a check failed, or the model's audit log is not whole (all
            failures named); a `refuse` record is written.
        InvalidInput / ReferenceNotFound: the reference or firmware revision is malformed or
            names nothing.
        RegistryUnavailable: the alias or the audit record could not be written (the alias
            is restored).
    """
    _check_alias(alias)
    version = registry.resolve(reference)
    history = audit.read_history(registry, version.name, anchor=anchor)
    current = _alias_version(registry, version.name, alias)
    checked = check_version(registry, version, policy, firmware)
    approved = approvals.status(registry, history, policy, version, alias, checked.bundle_digest, checked.signer)
    if approved.rule is not None:
        checked = replace(checked, checks=(*checked.checks, Check("approvals", approved.met, approved.describe())))
    if not checked.passed or not history.chain_ok:
        _refuse(registry, "promote", version.name, alias, current, checked, reason, actor, anchor, list(history.problems))
    if current == version.version:
        return Outcome(version.name, alias, current, version.version, checked, None)
    record = _move_alias(
        registry, "promote", version.name, alias, current, checked, reason, actor, anchor, approved.as_record()
    )
    return Outcome(version.name, alias, current, version.version, checked, record)


def approve(
    registry: Registry,
    reference: str,
    alias: str,
    policy: TrustPolicy,
    signer: Signer,
    *,
    reason: str = "",
    actor: str = "",
    anchor: audit.Anchor = audit.Anchor(),
) -> tuple[audit.AuditRecord, approvals.ApprovalStatus]:
    """Sign an approval of moving `alias` to the version `reference` names with the
    approver's `signer`, and record it in the alias's audit chain with its signed files;
    returns the record and where the alias's next move then stands.

    The version must pass every promotion check but approvals (its bundle verifies and is
    the version's, its gates passed) before anything is signed. The approval is recorded
    even when it does not count under the policy — an approver outside it, the builder —
    and then refused, naming why.

    Raises:
        InvalidInput: the policy names no approvers for `alias` of the model; the alias or
            reference is malformed; the signer's key or certificate is unusable.
        ApprovalRefused: the version fails a check, or the audit log is not whole (nothing
            signed or recorded); or the approval was recorded but does not count.
        RegistryUnavailable: the record could not be written.
    """
    _check_alias(alias)
    version = registry.resolve(reference)
    what = f"approval of {version.name}@{version.version} for {alias}"
    if policy.alias_rule(version.name, alias) is None:
        raise InvalidInput(
            f"the trust policy ({policy.source}) names no approvers for {alias} of {version.name}: "
            "add an `aliases:` entry for it (docs/trust.md, Approvals)"
        )
    history = audit.read_history(registry, version.name, anchor=anchor)
    if not history.chain_ok:
        raise approvals.ApprovalRefused(
            f"{what} refused, nothing signed or recorded: the audit log is not whole: " + "; ".join(history.problems)
        )
    checked = check_version(registry, version, policy)
    if not checked.passed:
        raise approvals.ApprovalRefused(f"{what} refused, nothing signed or recorded: " + "; ".join(checked.failures))
    current = _alias_version(registry, version.name, alias)
    with tempfile.TemporaryDirectory(prefix="tapeout-approve-") as scratch:
        folder = Path(scratch) / "approval"
        when = audit.now()
        approver = approvals.sign_approval(
            folder, version, alias, checked.bundle_digest, signer, when=when, reason=reason
        )
        record = audit.AuditRecord(
            action="approve", model=version.name, alias=alias, from_version=current or "",
            to_version=version.version, user=audit.current_user(), actor=actor, when=when, reason=reason,
            outcome="", verification=checked.verification, signer=approver, bundle_digest=checked.bundle_digest,
            approval_digest=approvals.folder_digest(folder),
        )
        judged = approvals.judge(folder, record, policy, version, alias, checked.bundle_digest, checked.signer)
        record = replace(record, outcome="counts" if judged.counts else f"does not count: {judged.refused}")
        stored = audit.append(registry, record, current or "", anchor, attachments=folder)
    if not judged.counts:
        raise approvals.ApprovalRefused(
            f"{what} by {approver} was recorded (audit record {stored.record_id}) but does not count: {judged.refused}"
        )
    history = audit.read_history(registry, version.name, anchor=anchor)
    return stored, approvals.status(registry, history, policy, version, alias, checked.bundle_digest, checked.signer)


def rollback(
    registry: Registry,
    name: str,
    alias: str,
    policy: TrustPolicy,
    *,
    reason: str = "",
    actor: str = "",
    anchor: audit.Anchor = audit.Anchor(),
) -> Outcome:
    """Move `alias` of registered model `name` back to the version promoted before the
    current one, as the audit records tell (a promotion pushes, a rollback pops).

    Raises:
        PromotionRefused: nothing to roll back to, the alias was moved outside tapeout, the
            audit chain is broken, or the earlier version fails a check now.
    """
    _check_alias(alias)
    if "@" in name:
        raise InvalidInput(f"rollback takes MODEL-TARGET without a version, found {name!r}")
    history = audit.read_history(registry, name, alias, anchor)
    stack = history.alias_stack()
    current = _alias_version(registry, name, alias)
    problems = []
    if not history.chain_ok:
        problems += list(history.problems)
    if current is None:
        problems.append(f"{name} has no {alias!r} alias")
    elif stack and stack[-1] != current:
        problems.append(
            f"{alias} points to version {current} but the audit records say {stack[-1]}: "
            "the alias was moved outside tapeout"
        )
    if len(stack) < 2:
        problems.append(f"no earlier promotion of {name} to {alias} to roll back to")
    if problems:
        refusal = audit.AuditRecord(
            action="refuse", model=name, alias=alias, from_version=current or "",
            to_version=stack[-2] if len(stack) >= 2 else "", user=audit.current_user(), actor=actor,
            when=audit.now(), reason=reason, outcome="rollback refused: " + "; ".join(problems),
            verification="not checked", signer="", bundle_digest="",
        )
        raise PromotionRefused("rollback", name, alias, problems + _append_refusal(registry, refusal, current, anchor))
    try:
        target = registry.get_version(name, stack[-2])
    except Exception as error:  # deleted from the registry since it was promoted
        raise PromotionRefused(
            "rollback", name, alias, [f"version {stack[-2]} is no longer registered ({type(error).__name__})"]
        ) from None
    checked = check_version(registry, target, policy)
    if not checked.passed:
        _refuse(registry, "rollback", name, alias, current, checked, reason, actor, anchor)
    record = _move_alias(registry, "rollback", name, alias, current, checked, reason, actor, anchor)
    return Outcome(name, alias, current, target.version, checked, record)


def pull(
    registry: Registry, reference: str, policy: TrustPolicy, output: Path, anchor: audit.Anchor = audit.Anchor()
) -> tuple[RegisteredVersion, Path, str]:
    """Download, verify, then move the bundle into `output` (new or empty folder): nothing is
    written to `output` unless the whole bundle verified and the model's audit log is whole.
    What is written is regular files (mode 0644, or 0755 when the store had any execute bit)
    and the folders holding them (0755): no set-user/group-id or world-writable bits, no
    empty folders, whatever the store held. Returns (version, output, signer).

    Raises:
        VerificationFailed: the bundle does not verify, holds a symlink or a path outside
            itself, is not the bundle the version was signed as, or the audit log of the
            model is broken (each named).
        InvalidInput: `output` exists and is not an empty folder.
    """
    output = output.resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise InvalidInput(f"{output}: exists and is not an empty folder; pull will not overwrite anything")
    version = registry.resolve(reference)
    history = audit.read_history(registry, version.name, anchor=anchor)
    if not history.chain_ok:
        raise VerificationFailed(Path(reference), ["the audit log is not whole: " + "; ".join(history.problems)])
    output.parent.mkdir(parents=True, exist_ok=True)
    # The staging folder is beside `output`, so the final move is one rename on one filesystem.
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-pull-", dir=output.parent))
    try:
        bundle = registry.download_bundle(version, staging)
        _refuse_escapes(bundle)
        result = policy.verify(bundle, version.name)
        check_served_as(bundle, version)
        _normalise_modes(bundle)
        if output.exists():
            output.rmdir()
        os.rename(bundle, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version, output, result.signer


def check_served_as(bundle: Path, version: RegisteredVersion) -> None:
    """Refuse a bundle that is not the one `version` says it is (see artifacts.identity).

    Raises:
        VerificationFailed: a field differs (each named with both values), or the signed
            documents naming it are unreadable.
    """
    try:
        found = identity.mismatches(bundle, version)
    except InvalidInput as error:
        raise VerificationFailed(bundle, [str(error)]) from None
    if found:
        raise VerificationFailed(bundle, [identity.describe(version, found)])


# -- helpers ----------------------------------------------------------------------------------


def _check_alias(alias: str) -> None:
    if not alias or alias.isdigit() or not all(c.isalnum() or c in "_-" for c in alias):
        raise InvalidInput(f"alias {alias!r}: expected a name like production (letters, digits, - and _)")
    if alias == "candidate":
        raise InvalidInput("the candidate alias is set by tapeout run; promote to another alias (e.g. production)")


def _alias_version(registry: Registry, name: str, alias: str) -> str | None:
    try:
        return registry.resolve(f"{name}@{alias}").version
    except ReferenceNotFound:
        return None


def _refuse(registry, action, name, alias, current, checked: Checked, reason, actor, anchor, problems=()) -> None:
    failures = [f"audit log: {problem}" for problem in problems] + checked.failures
    outcome = f"{action} refused: " + "; ".join(failures)
    record = _record("refuse", name, alias, current, checked, reason, actor, outcome)
    note = _append_refusal(registry, record, current, anchor)
    raise PromotionRefused(action, f"{name}@{checked.version.version}", alias, failures + note)


def _append_refusal(registry: Registry, record: audit.AuditRecord, current: str | None, anchor: audit.Anchor) -> list[str]:
    """Record a refusal; a refusal that cannot be recorded is still a refusal (and says so)."""
    try:
        audit.append(registry, record, current or "", anchor)
    except TapeoutError as error:
        return [f"(the refusal could not be recorded: {error})"]
    return []


def _move_alias(
    registry, action, name, alias, current, checked: Checked, reason, actor, anchor, counted: str = ""
) -> audit.AuditRecord:
    target = checked.version.version
    try:
        registry.set_alias(name, alias, target)
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot point {name}@{alias} at version {target} "
            f"({type(error).__name__}: {error}); alias unchanged"
        ) from error
    try:
        record = replace(_record(action, name, alias, current, checked, reason, actor, "done"), approvals=counted)
        return audit.append(registry, record, target, anchor)
    except BaseException:
        # No change without its record: put the alias back where it was.
        if current is None:
            registry.delete_alias(name, alias)
        else:
            registry.set_alias(name, alias, current)
        raise


def _record(action, name, alias, current, checked: Checked, reason, actor, outcome) -> audit.AuditRecord:
    return audit.AuditRecord(
        action=action,
        model=name,
        alias=alias,
        from_version=current or "",
        to_version=checked.version.version,
        user=audit.current_user(),
        actor=actor,
        when=audit.now(),
        reason=reason,
        outcome=outcome,
        verification=checked.verification,
        signer=checked.signer,
        bundle_digest=checked.bundle_digest,
    )


def _gates_check(bundle: Path) -> Check:
    try:
        verdict = read_json_object(bundle / "reports" / "gates.json").get("verdict")
    except InvalidInput as error:
        return Check("gates report", False, f"reports/gates.json unreadable ({error})")
    return Check("gates report", verdict == "pass", f"reports/gates.json verdict is {verdict!r}")


def _served_as_check(bundle: Path, version: RegisteredVersion, digest: str) -> Check:
    expected = version.tags.get("bundle_digest")
    detail = f"bundle hashes to {digest}, version tag says {expected}"
    try:
        check_served_as(bundle, version)
    except VerificationFailed as failure:
        if digest == expected:
            detail = "; ".join(failure.reasons)
        return Check("bundle digest", False, detail)
    return Check("bundle digest", True, detail + "; its signed provenance names this version's model, commit and config")


def _firmware_check(bundle: Path, firmware: str | None) -> Check:
    """The deployed revision against the artifact's signed range. Without `--firmware` there
    is nothing to compare: the bundle's own target revision says nothing about the device, so
    the check says what it assumed instead of comparing the bundle with itself."""
    try:
        record = read_json_object(bundle / "compiled" / "compiler.json")
        built_for = str(record["firmware_revision"])
        minimum = str(record["minimum_firmware_revision"])
        maximum = record.get("maximum_firmware_revision")
        span = f"{minimum} .. {maximum}" if maximum is not None else f">= {minimum}, no maximum"
        if firmware is None:
            return Check(
                "firmware", True,
                f"no --firmware given: assumed the device runs {built_for}, the revision the bundle was "
                f"built for (not checked; the artifact runs on {span})",
            )
        deployed = parse_version(firmware, "--firmware")
        low = parse_version(minimum, "compiled/compiler.json minimum_firmware_revision")
        high = parse_version(str(maximum), "compiled/compiler.json maximum_firmware_revision") if maximum is not None else None
    except (InvalidInput, KeyError) as error:
        return Check("firmware", False, f"compiled/compiler.json unreadable ({error})")
    if deployed < low:
        return Check("firmware", False, f"deployed firmware {firmware} (from --firmware) < the artifact's minimum {minimum}")
    if high is not None and deployed > high:
        return Check(
            "firmware", False,
            f"deployed firmware {firmware} (from --firmware) > the artifact's maximum {maximum}: "
            f"the {record.get('compiler')} artifact runs on {span}",
        )
    return Check("firmware", True, f"deployed firmware {firmware} (from --firmware) within the artifact's range {span}")


def _normalise_modes(bundle: Path) -> None:
    """What pull writes: regular files 0644 (0755 if the store gave any execute bit),
    folders 0755, and no empty folders — the store's own bits (set-user-id, world-writable)
    are not the signer's and never reach the device."""
    for path in sorted(bundle.rglob("*"), key=lambda item: len(item.parts), reverse=True):
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
            else:
                path.chmod(0o755)
        else:
            executable = path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            path.chmod(0o755 if executable else 0o644)
    bundle.chmod(0o755)


def _refuse_escapes(bundle: Path) -> None:
    root = bundle.resolve()
    for path in bundle.rglob("*"):
        relative = path.relative_to(bundle).as_posix()
        if path.is_symlink():
            raise VerificationFailed(bundle, [f"{relative}: symbolic links are not allowed in a bundle"])
        if not path.resolve().is_relative_to(root):
            raise VerificationFailed(bundle, [f"{relative}: path escapes the bundle"])
        if not (path.is_file() or path.is_dir()):
            raise VerificationFailed(bundle, [f"{relative}: not a regular file"])
