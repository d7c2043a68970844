"""Assemble one bundle per (model commit, target): the directory of docs/architecture.md, "The
bundle", signed as a whole.

A bundle is built in a staging folder, every file fsynced, signed, then moved into place with
one rename: a reader finds a complete signed bundle or none, never a half-written one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tapeout.artifacts.chain import FORMAT_FILE, SBOM_FILE, write_chain
from tapeout.artifacts.compiled import write_record
from tapeout.artifacts.digest import bundle_digest, file_digest
from tapeout.artifacts.provenance import SourceRevision, provenance_statement
from tapeout.artifacts.sbom import write_sbom
from tapeout.artifacts.signing import KeySigner, Signer, sign_bundle
from tapeout.artifacts.statements import ChainInputs
from tapeout.compilers.interface import CompiledArtifact

STAGING = ".staging"


@dataclass(frozen=True)
class BundleContents:
    """Everything that goes into one bundle, as files already written and values."""

    model_name: str
    target: str
    firmware_revision: str
    float_model: Path
    quantized_model: Path
    calibration_data: Path
    calibration_manifest: Mapping[str, object]
    calibration_table: Path
    artifact: CompiledArtifact
    gates: Mapping[str, object]
    benchmark: Mapping[str, object]
    config_text: str
    resolved_config: Mapping[str, object]
    config_digest: str  # the per-target digest the version is tagged with
    source: SourceRevision
    invocation_id: str
    started_on: str
    finished_on: str
    # What the chain of attestations and the bill of materials need beyond the files above.
    chain: ChainInputs
    # More files for reports/ (gates.md, plots, sensitivity.json, fallback.json): name → file.
    extra_reports: Mapping[str, Path] = field(default_factory=dict)
    # A set kept in the artifact store (tapeout.artifacts.set_store): the bundle holds this
    # pointer as calibration/pointer.json instead of the data files.
    calibration_pointer: Mapping[str, object] | None = None


@dataclass(frozen=True)
class Bundle:
    path: Path
    digest: str


def build_bundle(contents: BundleContents, bundles_root: Path, private_key: Path | Signer) -> Bundle:
    """Write, sign and publish the bundle under `bundles_root/<model>-<target>/<digest>`;
    `private_key` is a key path (the `key` method) or any signer of artifacts.signing."""
    signer = KeySigner(private_key) if isinstance(private_key, Path) else private_key
    with staging_folder(bundles_root) as staging:
        try:
            _write_contents(contents, staging)
            _write_evidence(contents, staging, signer)
            _fsync_tree(staging)
            sign_bundle(staging, signer)
            _fsync_tree(staging)
            digest = bundle_digest(staging)
            final = bundles_root / f"{contents.model_name}-{contents.target}" / digest[:16]
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                # The same bytes were built before (a rerun): keep the published copy.
                shutil.rmtree(staging)
            else:
                os.rename(staging, final)
                _fsync_directory(final.parent)
            return Bundle(final, digest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


@contextmanager
def staging_folder(bundles_root: Path) -> Iterator[Path]:
    """A new folder under `bundles_root/.staging/`, locked (flock on the folder) for as long
    as the context lasts: `tapeout gc` removes only staging folders nobody holds — those of a
    process that was killed — since the kernel drops a dead process's locks."""
    root = bundles_root / STAGING
    root.mkdir(parents=True, exist_ok=True)
    while True:
        path = root / uuid.uuid4().hex
        path.mkdir()
        descriptor = os.open(path, os.O_RDONLY)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)  # collected between mkdir and flock: take another
    try:
        yield path
    finally:
        os.close(descriptor)


def _write_contents(contents: BundleContents, root: Path) -> None:
    (root / "model").mkdir()
    shutil.copyfile(contents.float_model, root / "model" / "model.onnx")
    shutil.copyfile(contents.quantized_model, root / "model" / "model.qdq.onnx")

    calibration = root / "calibration"
    calibration.mkdir()
    source = contents.calibration_data
    if contents.calibration_pointer is not None:
        _write_json(calibration / "pointer.json", contents.calibration_pointer)
    elif source.is_dir():
        shutil.copytree(source, calibration / source.name, symlinks=False)
    else:
        shutil.copyfile(source, calibration / source.name)
    _write_json(calibration / "manifest.json", contents.calibration_manifest)
    shutil.copyfile(contents.calibration_table, calibration / "table.json")

    compiled = root / "compiled"
    compiled.mkdir()
    for name in contents.artifact.files:
        destination = compiled / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(contents.artifact.directory / name, destination)
    write_record(_moved(contents.artifact, compiled), contents.firmware_revision)

    reports = root / "reports"
    reports.mkdir()
    _write_json(reports / "gates.json", contents.gates)
    _write_json(reports / "benchmark.json", contents.benchmark)
    for name, path in sorted(contents.extra_reports.items()):
        if name in ("gates.json", "benchmark.json") or Path(name).name != name:
            raise ValueError(f"extra report {name!r}: expected a plain new file name under reports/")
        shutil.copyfile(path, reports / name)

    (root / "config").mkdir()
    (root / "config" / "pipeline.yaml").write_text(contents.config_text)

    subjects = {
        f"compiled/{name}": file_digest(compiled / name) for name in contents.artifact.files
    }
    subjects["model/model.qdq.onnx"] = file_digest(root / "model" / "model.qdq.onnx")
    materials = [
        {"name": "model/model.onnx", "digest": {"sha256": file_digest(root / "model" / "model.onnx")}},
        {
            "name": "calibration-set",
            "digest": {"sha256": str(contents.calibration_manifest["digest"])},
            "annotations": {
                "count": contents.calibration_manifest["count"],
                "digest_scheme": contents.calibration_manifest.get("digest_scheme"),
                **({"stored_at": contents.calibration_pointer["uri"]} if contents.calibration_pointer else {}),
            },
        },
        {"name": "calibration/table.json", "digest": {"sha256": file_digest(calibration / "table.json")}},
        {
            # in-toto ResourceDescriptor needs a uri or a digest: name the exact toolchain.
            "uri": f"urn:tapeout:compiler:{contents.artifact.compiler}@{contents.artifact.compiler_version}",
            "name": f"compiler:{contents.artifact.compiler}",
            "annotations": {
                "version": contents.artifact.compiler_version,
                "artifact_id": contents.artifact.artifact_id,
                "options": dict(contents.artifact.options),
            },
        },
        {
            "uri": f"urn:tapeout:firmware:{contents.target}@{contents.firmware_revision}",
            "name": f"firmware:{contents.target}",
            "annotations": {
                "revision": contents.firmware_revision,
                "minimum_revision": contents.artifact.minimum_firmware_revision,
            },
        },
        {"name": "config/pipeline.yaml", "digest": {"sha256": file_digest(root / "config" / "pipeline.yaml")}},
    ]
    statement = provenance_statement(
        subjects=subjects,
        materials=materials,
        source=contents.source,
        resolved_config=contents.resolved_config,
        target=contents.target,
        config_digest=contents.config_digest,
        invocation_id=contents.invocation_id,
        started_on=contents.started_on,
        finished_on=contents.finished_on,
    )
    _write_json(root / "provenance.json", statement)


def _write_evidence(contents: BundleContents, root: Path, signer: Signer) -> None:
    """The chain of attestations, the bill of materials and `bundle.json`, which records the
    bundle's format (tapeout.artifacts.chain): files like the others, which model.sig covers."""
    from tapeout.artifacts.documents import read_json_object

    index = write_chain(root, contents.chain, contents.source, contents.target, signer)
    write_sbom(
        root / SBOM_FILE, root,
        model_name=contents.model_name, target=contents.target, commit=contents.source.commit,
        config=contents.resolved_config, calibration=contents.calibration_manifest,
        validation=contents.chain.validation, compiler=read_json_object(root / "compiled" / "compiler.json"),
        gates=contents.gates, finished_on=contents.finished_on, invocation_id=contents.invocation_id,
    )
    _write_json(root / FORMAT_FILE, index)


def _moved(artifact: CompiledArtifact, directory: Path) -> CompiledArtifact:
    from dataclasses import replace

    return replace(artifact, directory=directory)


def _write_json(path: Path, document: Mapping[str, object]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
        elif path.is_dir():
            _fsync_directory(path)
    _fsync_directory(root)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
