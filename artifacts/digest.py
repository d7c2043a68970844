"""Content digests of files and of whole directories."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SIGNATURE_FILE = "model.sig"
BUNDLE_DIGEST_SCHEME = "sha256-bundle-manifest-v1"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_manifest(root: Path, *, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """Relative POSIX path → sha256 of every regular file under `root`, sorted by path."""
    manifest = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative in exclude or not path.is_file():
            continue
        manifest[relative] = file_digest(path)
    return manifest


def bundle_digest(root: Path) -> str:
    """The bundle's identity: sha256 of its file manifest (every file but the signature).

    `sha256-bundle-manifest-v1`: canonical JSON of {path: sha256}, keys sorted, no spaces.
    """
    manifest = directory_manifest(root, exclude=frozenset({SIGNATURE_FILE}))
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
