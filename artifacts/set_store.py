"""Calibration sets in the artifact store: stored once per content digest, pointed to from bundles.

A set no larger than the config's `calibration.embed_max_bytes` is copied into every bundle:
the bundle then verifies and replays offline, on its own. A larger one is uploaded once to
the MLflow artifact store — one run per set digest in the experiment `tapeout-calibration-sets`,
its files under `set/` — and each bundle holds `calibration/pointer.json` instead: the set's
digest, the run and artifact URI, and every file's sha256. The pointer is signed with the
bundle, so a fetched set is checked against digests the signer vouched for (`fetch_set`).

Stored once: before uploading, the store is searched for a finished run with the digest. Two
builds that upload the same new set at the same moment both upload; every reader then picks
the oldest finished run, so all pointers written afterwards name one copy.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tapeout.artifacts.digest import file_digest
from tapeout.artifacts.documents import read_json_object
from tapeout.artifacts.registry import Registry, RegistryUnavailable
from tapeout.compilers.errors import InvalidInput

STORE_EXPERIMENT = "tapeout-calibration-sets"
POINTER_FILE = "pointer.json"
POINTER_SCHEMA = "tapeout.calibration-set-pointer/v1"
DIGEST_TAG = "set_digest"
ARTIFACT_PATH = "set"
FILES_ARTIFACT = "files.json"


@dataclass(frozen=True)
class StoredSet:
    """Where a set lives in the store. `files`: path relative to the set → sha256."""

    digest: str
    run_id: str
    artifact_uri: str
    files: Mapping[str, str]
    size_bytes: int


def set_files(path: Path) -> dict[str, str]:
    """Every file of a set (a file, or a folder of files) → its sha256, by path relative to
    the set's parent, so the set's own name is kept."""
    if path.is_dir():
        return {
            file.relative_to(path.parent).as_posix(): file_digest(file)
            for file in sorted(path.rglob("*")) if file.is_file()
        }
    return {path.name: file_digest(path)}


def set_size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def find_stored(registry: Registry, digest: str) -> StoredSet | None:
    """The oldest finished upload of the set with `digest`, or None."""
    try:
        runs = registry.search_runs(
            STORE_EXPERIMENT, f"tags.{DIGEST_TAG} = '{digest}' and attributes.status = 'FINISHED'",
            oldest_first=True, limit=1,
        )
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot search the calibration-set store ({type(error).__name__}: {error})"
        ) from error
    if not runs:
        return None
    run = runs[0]
    with tempfile.TemporaryDirectory() as scratch:
        try:
            files = json.loads(registry.download_run_file(run.run_id, FILES_ARTIFACT, Path(scratch)).read_text())
        except Exception as error:
            raise RegistryUnavailable(
                f"MLflow at {registry.tracking_uri}: calibration set {digest}: cannot read the file list of "
                f"run {run.run_id} ({type(error).__name__}: {error})"
            ) from error
    return StoredSet(digest, run.run_id, f"{run.artifact_uri}/{ARTIFACT_PATH}", files, int(run.tags["size_bytes"]))


def store_set(registry: Registry, path: Path, digest: str) -> StoredSet:
    """Upload the set at `path` (content digest `digest`) unless the store already has it."""
    found = find_stored(registry, digest)
    if found is not None:
        return found
    files = set_files(path)
    run_id = registry.start_run(
        STORE_EXPERIMENT, f"sha256:{digest[:16]}", {DIGEST_TAG: digest, "size_bytes": str(set_size(path))}
    )
    try:
        if path.is_dir():
            registry.log_directory(run_id, path, f"{ARTIFACT_PATH}/{path.name}")
        else:
            registry.log_file(run_id, path, ARTIFACT_PATH)
        # The stored files, listed: sets with one digest may differ in files (the digest is
        # over samples, whatever their files), so a pointer lists the stored copy's.
        with tempfile.TemporaryDirectory() as scratch:
            listing = Path(scratch) / FILES_ARTIFACT
            listing.write_text(json.dumps(files, indent=1, sort_keys=True))
            registry.log_file(run_id, listing, None)
    except BaseException:
        registry.end_run(run_id, "FAILED")  # never a finished run without its files
        raise
    registry.end_run(run_id, "FINISHED")
    stored = find_stored(registry, digest)  # a concurrent upload may be older: use that one
    assert stored is not None
    return stored


def pointer_document(stored: StoredSet, manifest: Mapping[str, object]) -> dict[str, object]:
    """What calibration/pointer.json holds (signed with the bundle)."""
    return {
        "schema": POINTER_SCHEMA,
        "digest": stored.digest,
        "digest_scheme": manifest.get("digest_scheme"),
        "count": manifest.get("count"),
        "run_id": stored.run_id,
        "uri": f"runs:/{stored.run_id}/{ARTIFACT_PATH}",
        "artifact_uri": stored.artifact_uri,
        "size_bytes": stored.size_bytes,
        "files": dict(stored.files),
    }


def read_pointer(bundle: Path) -> dict[str, object] | None:
    """The bundle's pointer, or None when the set is in the bundle itself.

    Raises:
        InvalidInput: the pointer is not a tapeout pointer document.
    """
    path = bundle / "calibration" / POINTER_FILE
    if not path.is_file():
        return None
    document = read_json_object(path)
    if document.get("schema") != POINTER_SCHEMA:
        raise InvalidInput(f"{path}: schema: expected {POINTER_SCHEMA!r}, found {document.get('schema')!r}")
    for field in ("digest", "run_id", "files"):
        if field not in document:
            raise InvalidInput(f"{path}: {field}: expected a value, found none")
    return document


def fetch_set(registry: Registry, pointer: Mapping[str, object], destination: Path) -> Path:
    """Download the pointed-to set into `destination` and check every file against the
    pointer's sha256 (and nothing more or less); returns the set's path.

    Raises:
        InvalidInput: a file is missing, extra or differs from the pointer.
        RegistryUnavailable: the store cannot be reached or no longer holds the set.
    """
    import mlflow.artifacts

    expected: Mapping[str, str] = pointer["files"]  # type: ignore[assignment]
    top = {name.split("/", 1)[0] for name in expected}
    if len(top) != 1:  # a set is one file or one folder
        raise InvalidInput(f"calibration set pointer: files: expected one file or folder, found {sorted(top)}")
    (name,) = top
    destination.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=destination))
    try:
        try:
            mlflow.artifacts.download_artifacts(
                run_id=str(pointer["run_id"]), artifact_path=ARTIFACT_PATH, dst_path=str(scratch),
                tracking_uri=registry.tracking_uri,
            )
        except Exception as error:
            raise RegistryUnavailable(
                f"MLflow at {registry.tracking_uri}: cannot download calibration set {pointer['digest']} "
                f"(run {pointer['run_id']}): {type(error).__name__}: {error}"
            ) from error
        root = scratch / ARTIFACT_PATH
        found = set_files(root) if root.is_dir() else {}
        # set_files keys paths by the folder's parent: strip the "set/" the download adds.
        found = {file.split("/", 1)[1]: sha for file, sha in found.items()}
        problems = [
            f"{file}: expected sha256 {sha}, found {found.get(file, 'no file')}"
            for file, sha in sorted(expected.items()) if found.get(file) != sha
        ] + [f"{file}: not in the pointer" for file in sorted(set(found) - set(expected))]
        if problems:
            raise InvalidInput(f"calibration set {pointer['digest']} from the store does not match its pointer: " + "; ".join(problems))
        target = destination / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        (root / name).rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target



def fetch_bundle_set(
    open_registry: Callable[[], Registry], bundle: Path, destination: Path
) -> "SampleSet":  # noqa: F821
    """Download the set `bundle` points to into `destination` from the store `open_registry`
    opens (only once the bundle is known to point to one), and check it: every file
    against the (signed) pointer, and the set's content digest against the bundle's
    calibration manifest. Returns the set, opened.

    Raises:
        InvalidInput: the bundle holds its set itself (nothing to fetch), or a file or the
            digest does not match.
        RegistryUnavailable: the store cannot be reached or no longer holds the set.
    """
    from tapeout.calibration.dataset import load_sample_set
    from tapeout.compilers.interface import TensorSpec

    pointer = read_pointer(bundle)
    if pointer is None:
        raise InvalidInput(
            f"{bundle}: expected calibration/pointer.json, found none: the set is in the bundle "
            f"(calibration/), nothing to fetch"
        )
    manifest_path = bundle / "calibration" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    path = fetch_set(open_registry(), pointer, destination)
    inputs = tuple(
        TensorSpec(spec["name"], (1, *spec["shape"]), spec["dtype"]) for spec in manifest["inputs"]
    )
    samples = load_sample_set(path, inputs, label_key=manifest.get("labels"))
    if samples.digest != manifest["digest"] or samples.digest != pointer["digest"]:
        raise InvalidInput(
            f"{path}: set digest: expected {manifest['digest']} ({manifest_path}), found {samples.digest}"
        )
    return samples
