"""Trace: from a deployed artifact back to everything it was built from (docs/trust.md).

The record is read from the bundle itself (provenance, reports, manifests), checked afresh
against its signature and the trust policy, and joined with what the registry knows about
the version and with the audit records of its promotions. A file found in the field is
looked up by its sha256 among the versions' `artifact_sha256` tags.
"""

from __future__ import annotations

import html
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from tapeout.artifacts import chain_view, identity
from tapeout.artifacts.audit import History
from tapeout.artifacts.compiled import file_digests
from tapeout.artifacts.digest import bundle_digest, file_digest
from tapeout.artifacts.documents import read_json_object
from tapeout.artifacts.policy import TrustPolicy, bundle_model_name
from tapeout.artifacts.registry import RegisteredVersion, Registry
from tapeout.artifacts.signature import VerificationFailed, read_signature
from tapeout.artifacts.set_store import read_pointer
from tapeout.compilers.errors import InvalidInput, TapeoutError

ARTIFACT_DIGESTS_TAG = "artifact_sha256"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class NotRegistered(TapeoutError):
    """A file or digest from the field that no registered version contains."""

    exit_code = 1


def look_up(registry: Registry, path: Path | None, digest: str | None = None) -> tuple[dict, str]:
    """Which registered versions hold the compiled file `path` (or the file whose sha256 is
    `digest`, with or without a `sha256:` prefix): the lookup record and the newest of them,
    as MODEL-TARGET@VERSION.

    Raises:
        NotRegistered: no registered version holds it.
        InvalidInput: `digest` is not a sha256 digest.
    """
    digest = file_digest(path) if path is not None else str(digest).removeprefix("sha256:")
    versions = versions_for_digest(registry, digest)
    if not versions:
        raise NotRegistered(
            f"{path or 'digest'}: sha256 {digest} is not a compiled file of any registered version "
            "(versions are searched by their artifact_sha256 tag)"
        )
    matches = [f"{v.name}@{v.version}" for v in versions]
    newest = max(versions, key=lambda v: int(v.version))
    return {"file": str(path) if path else None, "sha256": digest, "matches": matches}, f"{newest.name}@{newest.version}"


def version_of_bundle(registry: Registry, bundle: Path) -> RegisteredVersion | None:
    """A bundle folder's registered version, found by its model name and bundle digest."""
    from tapeout.artifacts.policy import bundle_model_name

    name = bundle_model_name(bundle)
    if name is None:
        return None
    return registry.find_version(name, {"bundle_digest": bundle_digest(bundle)})


def versions_for_file(registry: Registry, path: Path) -> tuple[str, list[RegisteredVersion]]:
    """(sha256 of `path`, every registered version whose compiled files include it)."""
    digest = file_digest(path)
    return digest, versions_for_digest(registry, digest)


def versions_for_digest(registry: Registry, digest: str) -> list[RegisteredVersion]:
    if not _SHA256.match(digest):
        raise InvalidInput(f"expected a sha256 digest (64 lowercase hex digits), found {digest!r}")
    found = registry.search_versions(f"tags.`{ARTIFACT_DIGESTS_TAG}` LIKE '%{digest}%'")
    versions = [
        registry.get_version(item.name, item.version)
        for item in found
        if digest in str(item.tags.get(ARTIFACT_DIGESTS_TAG, "")).split(",")
    ]
    return sorted(versions, key=lambda v: (v.name, int(v.version)))


def trace_bundle(
    bundle: Path,
    version: RegisteredVersion | None,
    policy: TrustPolicy,
    history: History | None = None,
) -> dict:
    """The auditor's record for one bundle.

    Raises:
        InvalidInput: a file the record needs is missing or not JSON (the signature check
            reports tampering; this is for folders that are not bundles at all).
    """
    try:
        verification = policy.verify(bundle, version.name if version else None)
        verified = {
            "verified": True, "signer": verification.signer, "method": verification.method,
            "files": verification.files, "reasons": [], "policy": policy.source,
        }
    except VerificationFailed as failure:
        verified = {
            "verified": False, "signer": None, "method": None, "files": None,
            "reasons": failure.reasons, "policy": policy.source,
        }
    try:
        claimed = read_signature(bundle).describe()
    except VerificationFailed as failure:
        claimed = "; ".join(failure.reasons)
    provenance = _json(bundle / "provenance.json")
    compiler = _json(bundle / "compiled" / "compiler.json")
    gates = _json(bundle / "reports" / "gates.json")
    calibration = _json(bundle / "calibration" / "manifest.json")
    table = _json(bundle / "calibration" / "table.json")
    try:
        definition = provenance["predicate"]["buildDefinition"]
        source = definition["resolvedDependencies"][0]
        run_details = provenance["predicate"]["runDetails"]
    except (KeyError, IndexError, TypeError) as error:
        raise InvalidInput(f"{bundle / 'provenance.json'}: not a SLSA provenance statement ({error!r})") from None
    parameters = definition.get("externalParameters", {})
    record = {
        # A registered bundle is traced from a temporary download: name where it is kept.
        "bundle": {"path": version.source if version is not None else str(bundle), "digest": bundle_digest(bundle)},
        "source": {
            "uri": source.get("uri"),
            "commit": source.get("digest", {}).get("gitCommit"),
            "dirty": source.get("annotations", {}).get("dirty"),
        },
        "config": {
            "file": "config/pipeline.yaml",
            "digest": next(
                (m["digest"]["sha256"] for m in definition["resolvedDependencies"] if m.get("name") == "config/pipeline.yaml"),
                None,
            ),
            "target": parameters.get("target"),
            "resolved": parameters.get("pipeline"),
        },
        "calibration_set": {
            "digest": calibration.get("digest"),
            "count": calibration.get("count"),
            "source": calibration.get("file"),
            # None: the set is in the bundle; else where the artifact store keeps it.
            "stored_at": (read_pointer(bundle) or {}).get("uri"),
        },
        "quantization": {"method": table.get("method"), "options": table.get("options")},
        "compiler": {
            "name": compiler.get("compiler"),
            "version": compiler.get("compiler_version"),
            "artifact_id": compiler.get("artifact_id"),
            "options": compiler.get("options"),
            "files": file_digests(bundle / "compiled", compiler.get("files", [])),
        },
        "firmware": {
            "revision": compiler.get("firmware_revision"),
            "minimum_revision": compiler.get("minimum_firmware_revision"),
        },
        "gates": gates,
        "build": run_details,
        "environment": definition.get("internalParameters", {}).get("environment"),
        "signature": {"claimed_signer": claimed},
        "verification": verified,
        "chain": chain_view.chain_record(
            bundle, policy, version.name if version else bundle_model_name(bundle) or ""
        ),
        "traced_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if version is not None:
        record["registry"] = {
            "name": version.name,
            "version": version.version,
            "run_id": version.run_id,
            "aliases": list(version.aliases),
            "tags": dict(version.tags),
            "bundle_digest_matches_tag": version.tags.get("bundle_digest") == record["bundle"]["digest"],
            # Where the signed bundle is not what the registry serves it as (artifacts.identity).
            "mismatches": [item.describe() for item in identity.mismatches(bundle, version)],
        }
    if history is not None:
        record["promotions"] = {
            "chain_ok": history.chain_ok,
            "problems": list(history.problems),
            "records": [
                {key: value for key, value in vars(item).items()} for item in history.records
            ],
        }
    return record


def render_text(record: dict) -> str:
    lines = []
    registry = record.get("registry")
    if registry:
        aliases = f" (aliases: {', '.join(registry['aliases'])})" if registry["aliases"] else ""
        lines.append(f"{registry['name']} version {registry['version']}{aliases}, MLflow run {registry['run_id']}")
    compiler = record["compiler"]
    lines += [
        f"bundle          {record['bundle']['digest']}  {record['bundle']['path']}",
        f"source          {record['source']['uri']}" + (" (dirty work tree)" if record["source"]["dirty"] else ""),
        f"commit          {record['source']['commit']}",
        f"config          config/pipeline.yaml sha256 {record['config']['digest']} (target {record['config'].get('target')})",
        f"calibration set {record['calibration_set']['digest']} ({record['calibration_set']['count']} samples, {record['calibration_set']['source']})"
        + (f", stored at {record['calibration_set']['stored_at']}" if record["calibration_set"].get("stored_at") else ", in the bundle"),
        f"quantization    {record['quantization']['method']} {record['quantization'].get('options') or ''}".rstrip(),
        f"compiler        {compiler['name']} {compiler['version']} ({compiler['artifact_id']}) options {compiler['options']}",
    ]
    for name, digest in compiler.get("files", {}).items():
        lines.append(f"                  compiled/{name} sha256 {digest}")
    lines += [
        f"firmware        {record['firmware']['revision']} (artifact needs >= {record['firmware']['minimum_revision']})",
        f"gates           {record['gates'].get('verdict')} on validation set {record['gates'].get('validation_set_digest')}",
    ]
    for gate in record["gates"].get("gates", []):
        relation = "<=" if gate["bound"] == "max" else ">="
        observed = "not measured" if gate["observed"] is None else f"{gate['observed']:.6g}"
        lines.append(f"                  {gate['metric']}: {observed} {relation} {gate['threshold']:.6g}: {'pass' if gate['passed'] else 'FAIL'}")
    verification = record["verification"]
    # A verified key is named as every other record names it (key:sha256 of the public key);
    # only an unverified signature falls back to what model.sig claims (a hint, another digest).
    signer = verification["signer"] if verification["verified"] else record["signature"]["claimed_signer"]
    lines.append(f"signer          {signer}")
    if registry and registry["tags"].get("signed_on"):
        lines.append(f"signed on       {registry['tags']['signed_on']}")
    if verification["verified"]:
        lines.append(
            f"signature       verified now ({record['traced_at']}): {verification['files']} files, {verification['method']} "
            f"signature by {verification['signer']} (policy: {verification['policy']})"
        )
    else:
        lines.append("signature       FAILED: " + "; ".join(verification["reasons"]))
    lines += chain_view.render_lines(record)
    for mismatch in registry.get("mismatches", []) if registry else []:
        lines.append(f"registry        NOT THIS VERSION'S BUNDLE: {mismatch}")
    metadata = record["build"]["metadata"]
    lines.append(f"built           {metadata['startedOn']} .. {metadata['finishedOn']} (invocation {metadata['invocationId']})")
    promotions = record.get("promotions")
    if promotions is not None:
        if not promotions["records"]:
            lines.append("promotions      none recorded")
        for index, item in enumerate(promotions["records"]):
            lines.append(("promotions      " if index == 0 else " " * 16) + _history_line(item))
        for problem in promotions["problems"]:
            lines.append(f"audit log       BROKEN: {problem}")
    for index, item in enumerate(record.get("approvals", [])):
        verdict = "counts" if item["counts"] else f"DOES NOT COUNT: {item['refused']}"
        used = f", counted by promotion #{item['promotion']}" if item["promotion"] is not None else ""
        reason = f" \"{item['reason']}\"" if item["reason"] else ""
        lines.append(
            ("approvals       " if index == 0 else " " * 16)
            + f"{item['alias']} by {item['approver']} at {item['when']}{reason}: {verdict}{used}"
        )
    return "\n".join(lines)


def _history_line(item: dict) -> str:
    who = item["user"] + (f" as {item['actor']}" if item["actor"] else "")
    reason = f" \"{item['reason']}\"" if item["reason"] else ""
    outcome = "" if item["outcome"] == "done" else f" [{item['outcome']}]"
    if item["action"] == "approve":
        return f"{item['when']} approve  {item['alias']}: version {item['to_version']} by {item['signer']} ({who}){reason}{outcome}"
    moved = f"{item['from_version'] or '—'} → {item['to_version']}"
    approvers = [entry["approver"] for entry in json.loads(item.get("approvals") or "[]")]
    approved = f", approved by {', '.join(approvers)}" if approvers else ""
    return f"{item['when']} {item['action']:<8} {item['alias']}: {moved} by {who}{approved}{reason}{outcome}"


def render_html(record: dict) -> str:
    """One self-contained page (no scripts, no external resources) an auditor can file."""
    e = html.escape
    registry = record.get("registry")
    title = (
        f"{registry['name']} version {registry['version']}" if registry else f"bundle {record['bundle']['digest'][:16]}"
    )
    verification = record["verification"]
    verdict = (
        f"<p class=ok>Signature verified when this page was made ({e(record['traced_at'])}): {verification['files']} files, "
        f"{e(str(verification['method']))} signature by {e(str(verification['signer']))}.</p>"
        if verification["verified"]
        else f"<p class=bad>Signature verification FAILED ({e(record['traced_at'])}): " + e("; ".join(verification["reasons"])) + "</p>"
    )

    def table(rows: list[tuple[str, object]]) -> str:
        return "<table>" + "".join(
            f"<tr><th>{e(name)}</th><td>{e(value if isinstance(value, str) else json.dumps(value, sort_keys=True))}</td></tr>"
            for name, value in rows
        ) + "</table>"

    compiler = record["compiler"]
    sections = [
        ("Chain of attestations", chain_view.render_html(record)),
        ("Identity", table([
            ("bundle digest", record["bundle"]["digest"]),
            ("registered", f"{registry['name']} v{registry['version']} (aliases: {', '.join(registry['aliases']) or 'none'}), run {registry['run_id']}" if registry else "not looked up"),
            *[("NOT THIS VERSION'S BUNDLE", mismatch) for mismatch in (registry or {}).get("mismatches", [])],
            ("signer (claimed)", record["signature"]["claimed_signer"]),
            ("trust policy", verification["policy"]),
        ])),
        ("Source and config", table([
            ("source", record["source"]["uri"]),
            ("commit", record["source"]["commit"]),
            ("dirty work tree", record["source"]["dirty"]),
            ("config digest", record["config"]["digest"]),
            ("target", record["config"].get("target")),
        ]) + "<h3>Resolved config</h3><pre class=yaml>" + e(_yaml(record["config"].get("resolved"))) + "</pre>"),
        ("Calibration and quantization", table([
            ("calibration set digest", record["calibration_set"]["digest"]),
            ("samples", record["calibration_set"]["count"]),
            ("source", record["calibration_set"]["source"]),
            ("stored at", record["calibration_set"].get("stored_at") or "in the bundle"),
            ("method", record["quantization"]["method"]),
            ("options", record["quantization"].get("options")),
        ])),
        ("Compiler and firmware", table([
            ("compiler", f"{compiler['name']} {compiler['version']}"),
            ("artifact id", compiler["artifact_id"]),
            ("options", compiler["options"]),
            *[(f"compiled/{name}", digest) for name, digest in compiler.get("files", {}).items()],
            ("firmware revision", record["firmware"]["revision"]),
            ("minimum firmware", record["firmware"]["minimum_revision"]),
        ])),
        ("Gates", table(
            [("verdict", record["gates"].get("verdict")), ("validation set", record["gates"].get("validation_set_digest"))]
            + [
                (gate["metric"], f"{gate['observed']} {'<=' if gate['bound'] == 'max' else '>='} {gate['threshold']}: {'pass' if gate['passed'] else 'FAIL'}")
                for gate in record["gates"].get("gates", [])
            ]
        )),
        ("Build", table([
            ("builder", record["build"].get("builder")),
            ("invocation", record["build"]["metadata"].get("invocationId")),
            ("started", record["build"]["metadata"].get("startedOn")),
            ("finished", record["build"]["metadata"].get("finishedOn")),
            ("environment", record.get("environment")),
        ])),
    ]
    promotions = record.get("promotions")
    if promotions is not None:
        rows = "".join(
            "<tr>" + "".join(
                f"<td>{e(str(item[key]))}</td>"
                for key in ("when", "action", "alias", "from_version", "to_version", "user", "actor", "reason", "outcome", "verification", "record_digest")
            ) + "</tr>"
            for item in promotions["records"]
        )
        header = "".join(f"<th>{name}</th>" for name in ("when", "action", "alias", "from", "to", "user", "actor", "reason", "outcome", "verification", "record digest"))
        broken = "".join(f"<p class=bad>Audit log broken: {e(problem)}</p>" for problem in promotions["problems"])
        sections.append(("Promotion history", broken + (f"<table class=history><tr>{header}</tr>{rows}</table>" if rows else "<p>No promotions recorded.</p>")))
    approvals = record.get("approvals")
    if approvals:
        rows = "".join(
            f"<tr><td>{e(item['when'])}</td><td>{e(item['alias'])}</td><td>{e(item['approver'])}</td>"
            f"<td>{e(item['reason'])}</td><td>{e('counts' if item['counts'] else 'DOES NOT COUNT: ' + item['refused'])}</td>"
            f"<td>{e('' if item['promotion'] is None else '#' + str(item['promotion']))}</td><td>{e(item['digest'])}</td></tr>"
            for item in approvals
        )
        header = "".join(f"<th>{name}</th>" for name in ("when", "alias", "approver", "reason", "verdict today", "counted by promotion", "approval digest"))
        sections.append(("Approvals", f"<table class=history><tr>{header}</tr>{rows}</table>"))
    body = "".join(f"<h2>{e(name)}</h2>{content}" for name, content in sections)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>tapeout trace: {e(title)}</title><style>"
        "body{font:14px/1.4 system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:.25em .5em;"
        "text-align:left;vertical-align:top;word-break:break-all}th{width:14em;background:#f4f4f4}"
        ".history th{width:auto}.ok{color:#075;font-weight:bold}.bad{color:#b00;font-weight:bold}"
        + chain_view.CSS +
        "</style></head><body>"
        f"<h1>tapeout trace: {e(title)}</h1>{verdict}{body}"
        "</body></html>\n"
    )


def _yaml(document: object) -> str:
    """The resolved config as the YAML a pipeline file is written in (keys in the order
    provenance.json keeps them)."""
    import yaml

    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _json(path: Path) -> dict:
    return read_json_object(path)
