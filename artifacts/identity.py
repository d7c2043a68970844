"""Is a signed bundle the version it is served as?

A valid signature proves who made a bundle, not which registered version it belongs to: a
writer of the MLflow store can copy one version's validly signed bundle into another
version's artifact folder and retag it. The bundle's signed claims — the registered name
(model and target), the source commit, the per-target config digest, the compiler, firmware
and calibration set — are therefore compared with what the registry says about the version
it is served as, on every read (`verify`, `trace`, `promote`, `rollback`, `pull`). The tags
every tapeout version carries (`commit`, `config_digest`, `bundle_digest`) must be present;
the others are compared when present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tapeout.artifacts.compiled import file_digests
from tapeout.artifacts.digest import bundle_digest
from tapeout.artifacts.documents import read_json_object
from tapeout.artifacts.registry import RegisteredVersion
from tapeout.compilers.errors import InvalidInput

REQUIRED_TAGS = ("commit", "config_digest", "bundle_digest")
_COMPILER_TAGS = (
    "compiler", "compiler_version", "artifact_id", "firmware_revision", "minimum_firmware_revision",
)


@dataclass(frozen=True)
class Mismatch:
    """One field where the signed bundle and the registry disagree."""

    field: str
    signed: str
    registry: str

    def describe(self) -> str:
        return f"{self.field}: the signed bundle says {self.signed!r}, the registry says {self.registry!r}"


def signed_claims(bundle: Path) -> dict[str, str]:
    """What the bundle's signed files say it is, keyed as the registry names it.

    Raises:
        InvalidInput: provenance.json, compiled/compiler.json or calibration/manifest.json is
            missing or malformed, or compiler.json names a file outside the bundle.
    """
    provenance = read_json_object(bundle / "provenance.json")
    record = read_json_object(bundle / "compiled" / "compiler.json")
    manifest = read_json_object(bundle / "calibration" / "manifest.json")
    try:
        definition = provenance["predicate"]["buildDefinition"]
        parameters = definition["externalParameters"]
        name = f"{parameters['pipeline']['model']['name']}-{parameters['target']}"
        commit = definition["resolvedDependencies"][0]["digest"]["gitCommit"]
    except (KeyError, IndexError, TypeError) as error:
        raise InvalidInput(
            f"{bundle / 'provenance.json'}: not a tapeout provenance statement (no {error})"
        ) from None
    claims = {
        "registered name": name,
        "commit": str(commit),
        "config_digest": str(parameters.get("config_digest", "(not recorded)")),
        "bundle_digest": bundle_digest(bundle),
        "calibration_set_digest": str(manifest.get("digest")),
        "artifact_sha256": ",".join(file_digests(bundle / "compiled", record.get("files", [])).values()),
    }
    claims.update({tag: str(record.get(tag)) for tag in _COMPILER_TAGS})
    return claims


def mismatches(bundle: Path, version: RegisteredVersion) -> list[Mismatch]:
    """Every field where `bundle` is not what `version` says it is (empty: it is).

    Raises:
        InvalidInput: the bundle's signed documents are unreadable (see `signed_claims`).
    """
    claims = signed_claims(bundle)
    found = []
    if claims["registered name"] != version.name:
        found.append(Mismatch("registered name", claims["registered name"], version.name))
    for tag, signed in claims.items():
        if tag == "registered name":
            continue
        served = version.tags.get(tag)
        if served is None:
            if tag in REQUIRED_TAGS:
                found.append(Mismatch(tag, signed, "(no tag)"))
        elif served != signed:
            found.append(Mismatch(tag, signed, served))
    return found


def describe(version: RegisteredVersion, found: list[Mismatch]) -> str:
    return (
        f"{version.name} version {version.version} is served with a bundle signed for something else — "
        + "; ".join(item.describe() for item in found)
    )
