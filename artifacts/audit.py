"""Append-only audit records of promotions, refusals and rollbacks (DESIGN §7).

MLflow keeps no alias history (mlflow/mlflow#2169), so every promotion, refused promotion and
rollback writes one record: one run in the `tapeout-audit` experiment, its fields logged as
*params* — MLflow refuses to change a param once logged — plus a few tags to search by. Each
record carries the digest of the previous record for the same model and alias and its own
digest over all its fields, so an edited, inserted or deleted record shows up as a broken
chain when the history is read. Nothing here ever updates or deletes a record.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from tapeout.artifacts.registry import Registry, RegistryUnavailable

AUDIT_EXPERIMENT = "tapeout-audit"
ACTIONS = ("promote", "refuse", "rollback")
_TAG = "tapeout.audit"


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
    sequence: int = 0
    previous_digest: str = ""
    record_id: str = ""
    record_digest: str = ""

    def fields(self) -> dict[str, str]:
        """Every field that goes into the digest (not the run id or the digest itself)."""
        values = asdict(self)
        values.pop("record_id")
        values.pop("record_digest")
        return {key: str(value) for key, value in values.items()}

    def computed_digest(self) -> str:
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER: containers
        return "unknown"


def append(registry: Registry, record: AuditRecord) -> AuditRecord:
    """Write `record` after the last one for its model and alias; returns it as stored.

    Raises:
        RegistryUnavailable: the record could not be written (the caller undoes the change).
    """
    from dataclasses import replace

    if record.action not in ACTIONS:
        raise ValueError(f"unknown audit action {record.action!r}")
    previous = read_history(registry, record.model, record.alias).records
    record = replace(
        record,
        sequence=(previous[-1].sequence + 1) if previous else 1,
        previous_digest=previous[-1].record_digest if previous else "",
    )
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
    except Exception as error:
        registry.end_run(run_id, "FAILED")
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot write the audit record ({type(error).__name__}: {error})"
        ) from error
    registry.end_run(run_id, "FINISHED")
    return replace(record, record_id=run_id)


def read_history(registry: Registry, model: str, alias: str | None = None) -> History:
    """Every finished audit record for `model` (and `alias`, when given), oldest first.

    A record whose fields do not match its digest, or whose link to the previous record is
    broken, is kept and reported in `problems`.
    """
    client = registry._client
    query = f"tags.`{_TAG}.model` = '{model}' and attributes.status = 'FINISHED'"
    if alias is not None:
        query += f" and tags.`{_TAG}.alias` = '{alias}'"
    runs, token = [], None
    try:
        experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
        if experiment is None:
            return History((), True, ())
        while True:
            page = client.search_runs([experiment.experiment_id], query, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
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
    return History(tuple(records), not problems, tuple(problems))


def _record(run) -> AuditRecord:
    params = run.data.params
    values = {name: params.get(name, "") for name in AuditRecord.__dataclass_fields__}
    values["sequence"] = int(params.get("sequence", "0") or 0)
    values["record_id"] = run.info.run_id
    return AuditRecord(**values)
