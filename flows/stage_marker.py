"""The `.<key>.finished` marker beside a finished stage folder, and what it records: the sha256
of every file the folder held when the stage finished.

A finished folder is reused by later builds and signed into their bundles, so a reuse first
checks that the folder still holds exactly those files: a file changed, added or removed since
(a stray edit, a half-restored backup, a disk error) makes the stage run again instead of
passing the change on. This is an integrity check, not a defence: whoever can write the folder
can write its marker too, and `tapeout reproduce` (docs/trust.md) is the check that does not
trust the cache. A marker written by a tapeout that recorded nothing (an empty file) is
completed on its first use.
"""

from __future__ import annotations

import json
from pathlib import Path

from tapeout.artifacts.content_store import entry_files


def marker_path(workdir: Path) -> Path:
    return workdir.parent / f".{workdir.name}.finished"


def seal(workdir: Path) -> None:
    """Mark `workdir` finished, recording its files (written whole, then renamed: a reader
    never sees half a list)."""
    marker = marker_path(workdir)
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps(entry_files(workdir), indent=1, sort_keys=True) + "\n")
    partial.replace(marker)


def changed_files(workdir: Path) -> str | None:
    """None when `workdir` holds the files its marker records (a marker with no record gets
    one now); otherwise what differs, for a message."""
    marker = marker_path(workdir)
    text = marker.read_text()
    if not text.strip():
        seal(workdir)
        return None
    try:
        recorded = json.loads(text)
        if not isinstance(recorded, dict):
            raise ValueError("not an object")
    except ValueError as error:
        return f"{marker}: unreadable file list ({error})"
    found = entry_files(workdir) if workdir.is_dir() else {}
    for path in sorted(set(recorded) | set(found)):
        if path not in found:
            return f"{path}: missing (expected sha256 {recorded[path]})"
        if path not in recorded:
            return f"{path}: not there when the stage finished"
        if found[path] != recorded[path]:
            return f"{path}: expected sha256 {recorded[path]}, found {found[path]}"
    return None
