"""Calibration sets in the artifact store: stored once per content digest, pointed to from bundles.

A set no larger than the config's `calibration.embed_max_bytes` is copied into every bundle:
the bundle then verifies and replays offline, on its own. A larger one is uploaded once to
the MLflow artifact store — one run per set digest in the experiment `tapeout-calibration-sets`,
its files under `set/` — and each bundle holds `calibration/pointer.json` instead: the set's
digest, the run and artifact URI, and every file's sha256. The pointer is signed with the
bundle, so a fetched set is checked against digests the signer vouched for (`fetch_set`).

Stored once, as an entry of the content store (artifacts.content_store): before uploading,
the store is searched for the set's digest; two builds that upload the same new set at the
same moment converge on one entry, which every pointer written afterwards names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tapeout.artifacts.content_store import ContentStore, StoredEntry, entry_files, entry_size
from tapeout.artifacts.documents import read_json_object
from tapeout.artifacts.registry import Registry
from tapeout.compilers.errors import InvalidInput

STORE_EXPERIMENT = "tapeout-calibration-sets"
POINTER_FILE = "pointer.json"
POINTER_SCHEMA = "tapeout.calibration-set-pointer/v1"
DIGEST_TAG = "set_digest"
ARTIFACT_PATH = "set"

# A set's files, as the content store lists them: by path relative to the set's parent.
set_files = entry_files
set_size = entry_size


@dataclass(frozen=True)
class StoredSet:
    """Where a set lives in the store. `files`: path relative to the set → sha256."""

    digest: str
    run_id: str
    artifact_uri: str
    files: Mapping[str, str]
    size_bytes: int


def _store(registry: Registry) -> ContentStore:
    return ContentStore(registry, STORE_EXPERIMENT, DIGEST_TAG, ARTIFACT_PATH, "calibration set")


def _stored_set(entry: StoredEntry) -> StoredSet:
    return StoredSet(entry.key, entry.run_id, entry.artifact_uri, entry.files, entry.size_bytes)


def find_stored(registry: Registry, digest: str) -> StoredSet | None:
    """The stored copy of the set with `digest` every reader takes, or None.

    Raises:
        RegistryUnavailable: the store cannot be searched or read.
    """
    entry = _store(registry).find(digest)
    return _stored_set(entry) if entry is not None else None


def store_set(registry: Registry, path: Path, digest: str) -> StoredSet:
    """Upload the set at `path` (content digest `digest`) unless the store already has it.
    Sets with one digest may differ in files (the digest is over samples, whatever their
    files), so the stored copy's own files are what a pointer lists."""
    return _stored_set(_store(registry).put(digest, path, f"sha256:{digest[:16]}"))


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
    expected: Mapping[str, str] = pointer["files"]  # type: ignore[assignment]
    name = next(iter(expected), "").split("/", 1)[0]
    return _store(registry).fetch(str(pointer["digest"]), str(pointer["run_id"]), expected, destination / name)


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
