"""The bundle's chain of attestations: written, signed, when the bundle is assembled; checked
offline, link by link, by `tapeout verify --chain` (docs/trust.md, "The chain of
attestations").

In the bundle (format 2, recorded in `bundle.json`):

    bundle.json                          {"format": 2, "chain": [stage, file]..., "sbom": ...}
    attestations/<stage>.sigstore.json   a Sigstore bundle: DSSE envelope over the stage's
                                         in-toto statement, signed by the build's signer
    attestations/imported-model.sig      the imported model's own signature, when it had one

They are bundle files like the others, so `model.sig` covers them too. A bundle without
`bundle.json` is format 1, made before the chain: it verifies as before and has no chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tapeout.artifacts.digest import file_digest
from tapeout.artifacts.documents import read_json_object
from tapeout.artifacts.policy import TrustPolicy
from tapeout.artifacts.provenance import SourceRevision
from tapeout.artifacts.signature import (
    Signer,
    SignedStatement,
    VerificationFailed,
    statement_payload,
)
from tapeout.artifacts.statements import (
    SLSA_PROVENANCE,
    STAGES,
    TEST_RESULT,
    VALIDATION_SET,
    ChainInputs,
    build_type,
    chain_statements,
    test_name,
)
from tapeout.compilers.errors import InvalidInput

FORMAT_FILE = "bundle.json"
BUNDLE_FORMAT = 2  # 1: no bundle.json (before the chain); 2: the chain and the bill of materials
ATTESTATIONS = "attestations"
IMPORTED_SIGNATURE = f"{ATTESTATIONS}/imported-model.sig"
SBOM_FILE = "sbom.cdx.json"


class ChainBroken(VerificationFailed):
    """A bundle's chain of attestations is missing, broken or not signed by a trusted signer:
    each problem names the stage and what differs."""


def write_chain(
    root: Path, chain: ChainInputs, source: SourceRevision, target: str, signer: Signer
) -> dict[str, object]:
    """Sign every stage's statement into `root/attestations/`, copy the imported model's own
    signature beside them, and write `bundle.json`; returns its document."""
    folder = root / ATTESTATIONS
    folder.mkdir()
    entries = []
    for stage, statement in chain_statements(root, chain, source, target):
        name = f"{ATTESTATIONS}/{stage}.sigstore.json"
        signer.sign_statement(statement, root / name)
        entries.append({"stage": stage, "file": name})
    imported = chain.export.imported
    if imported is not None and imported.signature_content is not None:
        (root / IMPORTED_SIGNATURE).write_bytes(imported.signature_content)
    return {
        "format": BUNDLE_FORMAT,
        "chain": entries,
        "imported_signature": IMPORTED_SIGNATURE if (root / IMPORTED_SIGNATURE).is_file() else None,
        "sbom": SBOM_FILE,
    }


def bundle_format(bundle: Path) -> int:
    """The bundle's format: 1 without `bundle.json` (made before the chain), else its `format`.

    Raises:
        InvalidInput: `bundle.json` is not a document tapeout writes, or names a format newer
            than this tapeout reads (its chain would be checked by rules it does not know).
    """
    if not (bundle / FORMAT_FILE).exists():
        return 1
    document = read_json_object(bundle / FORMAT_FILE)
    found = document.get("format")
    if not isinstance(found, int) or isinstance(found, bool) or found < 2:
        raise InvalidInput(f"{bundle / FORMAT_FILE}: format: expected an integer >= 2, found {found!r}")
    if found > BUNDLE_FORMAT:
        raise InvalidInput(
            f"{bundle / FORMAT_FILE}: format {found} is newer than this tapeout reads (formats 1 to "
            f"{BUNDLE_FORMAT}): check its chain with the tapeout release that wrote it"
        )
    return found


@dataclass(frozen=True)
class Link:
    """One verified (or refused) link: the stage, its signed statement, its subjects and
    materials (name or uri → digest), who signed it, and what is wrong with it."""

    stage: str
    file: str
    subjects: Mapping[str, str]
    materials: Mapping[str, str]
    signer: str | None
    problems: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class ChainReport:
    """Every link of a bundle's chain checked; `problems` lists each, stage first."""

    format: int
    links: tuple[Link, ...] = ()
    imported: Mapping[str, object] | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.format >= 2 and not self.problems


def check_chain(bundle: Path, policy: TrustPolicy, model: str) -> ChainReport:
    """Check the chain of `bundle`, registered (or to be) as `model` (`<model>-<target>`),
    offline: every statement's signature against `policy`, every digest against the file of
    the bundle it names, each stage's subject among the next stage's materials, the first
    material against the imported model's own signature, and the last statement's results
    against `reports/gates.json`.

    Raises:
        InvalidInput: `bundle.json` is not a document tapeout writes.
    """
    version = bundle_format(bundle)
    if version < 2:
        return ChainReport(version, problems=(
            f"no chain of attestations: the bundle is format {version}, made before tapeout recorded "
            "one (its signature still covers every file; `tapeout verify` checks it)",
        ))
    index = read_json_object(bundle / FORMAT_FILE)
    files = _chain_files(index)
    links = []
    problems: list[str] = []
    statements: dict[str, dict] = {}
    for stage in STAGES:
        if stage not in files:
            problems.append(f"{stage}: no statement in {FORMAT_FILE}'s chain")
            continue
        link, statement = _check_statement(bundle, stage, files[stage], policy, model)
        links.append(link)
        if statement is not None:
            statements[stage] = statement
    by_stage = {link.stage: link for link in links}
    for earlier, later in zip(STAGES, STAGES[1:]):
        if earlier in by_stage and later in by_stage:
            _follows(by_stage, earlier, later)
    if "compile" in by_stage:
        _attests_compiled(bundle, by_stage, statements.get("compile"))
    if "export" in statements:
        _same_commit(bundle, by_stage, statements["export"])
    if "evaluate" in statements:
        _same_results(bundle, by_stage, statements["evaluate"])
    imported = None
    if "export" in statements:
        imported = _check_import(bundle, index, by_stage, statements["export"], policy, model)
    final = tuple(by_stage[stage] for stage in STAGES if stage in by_stage)
    problems += [f"{link.stage}: {problem}" for link in final for problem in link.problems]
    return ChainReport(version, final, imported, tuple(problems))


def require_chain(bundle: Path, policy: TrustPolicy, model: str) -> ChainReport:
    """`check_chain`, refusing a bundle whose chain does not check.

    Raises:
        ChainBroken: no chain, or a link is missing, broken, tampered with or signed by a
            signer outside the policy (each named with its stage).
    """
    report = check_chain(bundle, policy, model)
    if not report.ok:
        prefix = "chain of attestations: " if report.format >= 2 else ""  # format 1 says it has none
        raise ChainBroken(bundle, [prefix + problem for problem in report.problems])
    return report


def _chain_files(index: Mapping[str, object]) -> dict[str, str]:
    entries = index.get("chain")
    found: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("stage"), str) and isinstance(entry.get("file"), str):
            found[entry["stage"]] = entry["file"]
    return found


def _check_statement(
    bundle: Path, stage: str, name: str, policy: TrustPolicy, model: str
) -> tuple[Link, dict | None]:
    path = _inside(bundle, name)
    if path is None or not path.is_file():
        return Link(stage, name, {}, {}, None, (f"its statement {name} is not in the bundle",)), None
    problems: list[str] = []
    signer = None
    try:
        signer = policy.verify(SignedStatement(path), model).signer
    except VerificationFailed as failure:
        problems.append(f"{name}: " + "; ".join(failure.reasons))
    try:
        statement = statement_payload(path)
    except VerificationFailed as failure:
        return Link(stage, name, {}, {}, signer, (*problems, "; ".join(failure.reasons))), None
    expected_type = TEST_RESULT if stage == "evaluate" else SLSA_PROVENANCE
    if statement.get("_type") != "https://in-toto.io/Statement/v1" or statement.get("predicateType") != expected_type:
        problems.append(
            f"expected an in-toto Statement v1 with predicate {expected_type}, found "
            f"{statement.get('_type')!r} with {statement.get('predicateType')!r}"
        )
        return Link(stage, name, {}, {}, signer, tuple(problems)), statement
    predicate = statement.get("predicate") if isinstance(statement.get("predicate"), dict) else {}
    if stage != "evaluate":
        definition = predicate.get("buildDefinition") or {}
        if definition.get("buildType") != build_type(stage):
            problems.append(f"expected build type {build_type(stage)}, found {definition.get('buildType')!r}")
        inputs = definition.get("resolvedDependencies")
        materials = _descriptors(inputs)
    else:
        # What was tested is tested with what it was configured with: both are its inputs.
        inputs = predicate.get("configuration")
        materials = {**_descriptors(statement.get("subject")), **_descriptors(inputs)}
    subjects = _descriptors(statement.get("subject"))
    if not subjects:
        problems.append("its statement names no subject")
    for item in [*_listed(statement.get("subject")), *_listed(inputs)]:
        problem = _against_file(bundle, item)
        if problem:
            problems.append(problem)
    return Link(stage, name, subjects, materials, signer, tuple(problems)), statement


def _descriptors(items: object) -> dict[str, str]:
    """name or uri → the digest that identifies it (sha256, else gitCommit; empty for a
    thing named by its uri alone), for every resource descriptor in `items`."""
    found = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        digests = item.get("digest") if isinstance(item.get("digest"), dict) else {}
        # A file by its name; what has no digest (a compiler, a firmware) by its uri, which
        # names its version.
        key = (item.get("name") or item.get("uri")) if digests else (item.get("uri") or item.get("name"))
        found[str(key)] = str(digests.get("sha256") or digests.get("gitCommit") or "")
    return found


def _listed(items: object) -> list[dict]:
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _against_file(bundle: Path, item: dict) -> str | None:
    """A descriptor naming a file of the bundle must carry that file's sha256. A bundle file
    is named by its path in the bundle alone; a file of the repository has a `git+` uri too
    (its path may well be `model/model.onnx`)."""
    name = item.get("name")
    if item.get("uri") or not isinstance(name, str) or not _names_bundle_file(name):
        return None
    digests = item.get("digest") if isinstance(item.get("digest"), dict) else {}
    digest = digests.get("sha256")
    path = _inside(bundle, name)
    if path is None or not path.is_file():
        return f"{name} is not in the bundle"
    actual = file_digest(path)
    if actual != digest:
        return f"{name}: the statement says sha256 {digest}, the bundle's file is {actual}"
    return None


def _names_bundle_file(name: str) -> bool:
    return name.split("/", 1)[0] in ("model", "calibration", "compiled", "reports", "config")


def _inside(bundle: Path, name: str) -> Path | None:
    path = (bundle / name).resolve()
    return path if bundle.resolve() in path.parents else None


def _follows(links: dict[str, Link], earlier: str, later: str) -> None:
    """Every subject of `earlier` is a material of `later`, with the same digest."""
    first, second = links[earlier], links[later]
    missing = []
    for name, digest in first.subjects.items():
        found = second.materials.get(name)
        if found is None:
            missing.append(f"{earlier}'s subject {name} is not among its materials")
        elif found != digest:
            missing.append(f"material {name} has sha256 {found}, but {earlier}'s subject has {digest}")
    if missing:
        links[later] = _with(second, missing)


def _attests_compiled(bundle: Path, links: dict[str, Link], statement: dict | None) -> None:
    """The compile statement's subjects are exactly the compiled files compiler.json lists,
    and its compiler and firmware are compiler.json's."""
    try:
        record = read_json_object(bundle / "compiled" / "compiler.json")
        listed = {f"compiled/{name}" for name in record.get("files", [])}
    except InvalidInput as error:
        links["compile"] = _with(links["compile"], [str(error)])
        return
    attested = set(links["compile"].subjects)
    problems = []
    if listed - attested:
        problems.append(f"compiled files no statement attests: {sorted(listed - attested)}")
    if attested - listed:
        problems.append(f"subjects compiler.json does not list: {sorted(attested - listed)}")
    if statement is not None:
        definition = statement["predicate"].get("buildDefinition", {})
        uris = {item.get("uri") for item in definition.get("resolvedDependencies", []) if isinstance(item, dict)}
        compiler = f"urn:tapeout:compiler:{record.get('compiler')}@{record.get('compiler_version')}"
        target = definition.get("externalParameters", {}).get("target")
        firmware = f"urn:tapeout:firmware:{target}@{record.get('firmware_revision')}"
        for expected, what in ((compiler, "compiler"), (firmware, "firmware")):
            if expected not in uris:
                stated = sorted(str(uri) for uri in uris if str(uri).startswith(f"urn:tapeout:{what}:"))
                problems.append(f"compiled/compiler.json says {expected}, the statement {stated}")
    if problems:
        links["compile"] = _with(links["compile"], problems)


def _same_commit(bundle: Path, links: dict[str, Link], statement: dict) -> None:
    """The export's commit is the one the bundle's provenance names."""
    try:
        provenance = read_json_object(bundle / "provenance.json")
        commit = provenance["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"]
    except (InvalidInput, KeyError, IndexError, TypeError):
        links["export"] = _with(links["export"], ["the bundle's provenance.json names no commit"])
        return
    commits = [
        item.get("digest", {}).get("gitCommit")
        for item in statement["predicate"]["buildDefinition"].get("resolvedDependencies", [])
        if isinstance(item, dict) and isinstance(item.get("digest"), dict) and "gitCommit" in item["digest"]
    ]
    if commits != [commit]:
        links["export"] = _with(links["export"], [f"the statement's commit {commits} is not provenance.json's {commit}"])


def _same_results(bundle: Path, links: dict[str, Link], statement: dict) -> None:
    """The test result says what reports/gates.json says: verdict, each gate, validation set."""
    try:
        gates = read_json_object(bundle / "reports" / "gates.json")
    except InvalidInput as error:
        links["evaluate"] = _with(links["evaluate"], [str(error)])
        return
    predicate = statement["predicate"]
    problems = []
    result = "PASSED" if gates.get("verdict") == "pass" else "FAILED"
    if predicate.get("result") != result:
        problems.append(f"result {predicate.get('result')!r}, but reports/gates.json's verdict is {gates.get('verdict')!r}")
    try:
        passed = sorted(test_name(gate) for gate in gates.get("gates", []) if gate["passed"])
        failed = sorted(test_name(gate) for gate in gates.get("gates", []) if not gate["passed"])
    except (KeyError, TypeError, ValueError) as error:
        passed, failed = [], []
        problems.append(f"reports/gates.json: a gate lacks {error}")
    if sorted(predicate.get("passedTests") or []) != passed:
        problems.append(f"passed tests {predicate.get('passedTests')}, reports/gates.json {passed}")
    if sorted(predicate.get("failedTests") or []) != failed:
        problems.append(f"failed tests {predicate.get('failedTests')}, reports/gates.json {failed}")
    validation = links["evaluate"].materials.get(VALIDATION_SET)
    if validation != gates.get("validation_set_digest"):
        problems.append(
            f"validation set {validation}, but reports/gates.json says {gates.get('validation_set_digest')}"
        )
    if problems:
        links["evaluate"] = _with(links["evaluate"], problems)


def _check_import(
    bundle: Path,
    index: Mapping[str, object],
    links: dict[str, Link],
    statement: dict,
    policy: TrustPolicy,
    model: str,
) -> dict[str, object] | None:
    """The imported model's own signature: the chain's first material, kept in the bundle,
    signed by a maker the policy's `imports` admit, and naming the file the export read with
    the digest the export statement records."""
    from tapeout.artifacts.imports import signed_resources

    imported = statement["predicate"]["buildDefinition"].get("externalParameters", {}).get("import")
    if not isinstance(imported, dict):
        return None
    if not imported.get("signed"):
        return {"file": imported.get("file"), "signed": False}
    name = str(imported.get("signature"))
    path = bundle / IMPORTED_SIGNATURE
    problems = []
    record: dict[str, object] = {"file": imported.get("file"), "signed": True, "signature": name, "verified": False}
    first = next(iter(links["export"].materials.items()), (None, None))
    if first[0] != name:
        problems.append(f"the imported model's signature {name} is not the chain's first material")
    if index.get("imported_signature") != IMPORTED_SIGNATURE or not path.is_file():
        problems.append(f"the imported model's signature is not in the bundle ({IMPORTED_SIGNATURE})")
    else:
        if file_digest(path) != first[1]:
            problems.append(f"{IMPORTED_SIGNATURE}: sha256 {file_digest(path)}, the chain's first material says {first[1]}")
        try:
            record["signer"] = policy.verify_import(SignedStatement(path), _pipeline_model(bundle) or model).signer
        except VerificationFailed as failure:
            problems.append(f"{IMPORTED_SIGNATURE}: " + "; ".join(failure.reasons))
        read = links["export"].materials.get(str(imported.get("file")))
        signed = set(signed_resources(path).values())
        if read is None or read not in signed:
            problems.append(
                f"the imported model's signature does not sign {imported.get('file')} as the export read it (sha256 {read})"
            )
    if problems:
        links["export"] = _with(links["export"], problems)
    record["verified"] = not problems
    return record


def _pipeline_model(bundle: Path) -> str | None:
    try:
        provenance = read_json_object(bundle / "provenance.json")
        return str(provenance["predicate"]["buildDefinition"]["externalParameters"]["pipeline"]["model"]["name"])
    except (InvalidInput, KeyError, TypeError):
        return None


def _with(link: Link, problems: list[str]) -> Link:
    from dataclasses import replace

    return replace(link, problems=(*link.problems, *problems))
