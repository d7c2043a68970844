"""Trace: from a deployed artifact back to everything it was built from (DESIGN §3, §6).

The record is read from the bundle itself (provenance, reports, manifests), checked afresh
against its signature, and joined with what the registry knows about the version.
"""

from __future__ import annotations

import json
from pathlib import Path

from tapeout.artifacts.digest import bundle_digest
from tapeout.artifacts.registry import RegisteredVersion
from tapeout.artifacts.signing import VerificationFailed, verify_bundle
from tapeout.compilers.errors import InvalidInput


def trace_bundle(bundle: Path, version: RegisteredVersion | None, public_key: Path) -> dict:
    """The auditor's record for one bundle.

    Raises:
        InvalidInput: a file the record needs is missing or not JSON (the signature check
            reports tampering; this is for folders that are not bundles at all).
    """
    try:
        verification = verify_bundle(bundle, public_key)
        verified = {"verified": True, "signer": verification.signer, "files": verification.files, "reasons": []}
    except VerificationFailed as failure:
        verified = {"verified": False, "signer": None, "files": None, "reasons": failure.reasons}
    provenance = _json(bundle / "provenance.json")
    compiler = _json(bundle / "compiled" / "compiler.json")
    gates = _json(bundle / "reports" / "gates.json")
    calibration = _json(bundle / "calibration" / "manifest.json")
    table = _json(bundle / "calibration" / "table.json")
    definition = provenance["predicate"]["buildDefinition"]
    source = definition["resolvedDependencies"][0]
    record = {
        "bundle": {"path": str(bundle), "digest": bundle_digest(bundle)},
        "source": {
            "uri": source["uri"],
            "commit": source["digest"]["gitCommit"],
            "dirty": source.get("annotations", {}).get("dirty"),
        },
        "config": {
            "file": "config/pipeline.yaml",
            "digest": next(
                (m["digest"]["sha256"] for m in definition["resolvedDependencies"] if m.get("name") == "config/pipeline.yaml"),
                None,
            ),
        },
        "calibration_set": {
            "digest": calibration.get("digest"),
            "count": calibration.get("count"),
            "source": calibration.get("file"),
        },
        "quantization": {"method": table.get("method"), "options": table.get("options")},
        "compiler": {
            "name": compiler.get("compiler"),
            "version": compiler.get("compiler_version"),
            "artifact_id": compiler.get("artifact_id"),
            "options": compiler.get("options"),
        },
        "firmware": {
            "revision": compiler.get("firmware_revision"),
            "minimum_revision": compiler.get("minimum_firmware_revision"),
        },
        "gates": gates,
        "build": provenance["predicate"]["runDetails"],
        "environment": definition.get("internalParameters", {}).get("environment"),
        "verification": verified,
    }
    if version is not None:
        record["registry"] = {
            "name": version.name,
            "version": version.version,
            "run_id": version.run_id,
            "aliases": list(version.aliases),
            "tags": dict(version.tags),
            "bundle_digest_matches_tag": version.tags.get("bundle_digest") == record["bundle"]["digest"],
        }
    return record


def render_text(record: dict) -> str:
    lines = []
    registry = record.get("registry")
    if registry:
        aliases = f" (aliases: {', '.join(registry['aliases'])})" if registry["aliases"] else ""
        lines.append(f"{registry['name']} version {registry['version']}{aliases}, MLflow run {registry['run_id']}")
    lines += [
        f"bundle          {record['bundle']['digest']}  {record['bundle']['path']}",
        f"source          {record['source']['uri']}" + (" (dirty work tree)" if record["source"]["dirty"] else ""),
        f"config          config/pipeline.yaml sha256 {record['config']['digest']}",
        f"calibration set {record['calibration_set']['digest']} ({record['calibration_set']['count']} samples, {record['calibration_set']['source']})",
        f"quantization    {record['quantization']['method']}",
        f"compiler        {record['compiler']['name']} {record['compiler']['version']} ({record['compiler']['artifact_id']}) options {record['compiler']['options']}",
        f"firmware        {record['firmware']['revision']} (artifact needs >= {record['firmware']['minimum_revision']})",
        f"gates           {record['gates'].get('verdict')} on validation set {record['gates'].get('validation_set_digest')}",
    ]
    for gate in record["gates"].get("gates", []):
        relation = "<=" if gate["bound"] == "max" else ">="
        lines.append(f"                  {gate['metric']}: {gate['observed']} {relation} {gate['threshold']}: {'pass' if gate['passed'] else 'FAIL'}")
    verification = record["verification"]
    if verification["verified"]:
        lines.append(f"signature       verified now: {verification['files']} files, signed by {verification['signer']}")
    else:
        lines.append("signature       FAILED: " + "; ".join(verification["reasons"]))
    if registry and not registry["bundle_digest_matches_tag"]:
        lines.append("registry        bundle digest differs from the version's tag")
    metadata = record["build"]["metadata"]
    lines.append(f"built           {metadata['startedOn']} .. {metadata['finishedOn']} (invocation {metadata['invocationId']})")
    return "\n".join(lines)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise InvalidInput(f"{path}: missing from the bundle ({error.strerror})") from error
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{path}: not JSON ({error})") from error
