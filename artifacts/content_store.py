"""Content-addressed entries in the MLflow artifact store: one file or folder per key, uploaded
once, fetched back checked.

The artifact store behind the MLflow server (proxied artifacts: a folder for the loopback
servers of infra/local, S3 or similar in production) holds what more than one machine needs.
Each kind of entry has an experiment of its own: calibration sets (artifacts.set_store) and
stage outputs (artifacts.stage_store).

An entry is one MLflow run of that experiment:
- tags: the key, `size_bytes`, `files_digest` (the sha256 of the file list below), and who
  uploaded it (`tapeout.owner`, as every run; `tapeout.worker`, artifacts.owner);
- artifacts: the file or folder under `<artifact path>/`, its name kept, and `files.json`,
  every stored file's path (relative to the entry's parent) → sha256.
A run is an entry once it is FINISHED, which it is only after every file is uploaded; a run
that failed, or was killed, mid-upload is never read.

Fetching checks `files.json` against the `files_digest` tag (the tag lives in the tracking
database, the files in the artifact store: a change to one of them alone shows), then every
downloaded file against the list, nothing more or less, and only then moves the entry into
place with one rename.

Concurrent uploads of one key converge. Entries of a key are ordered by when they finished,
then by run id, and every reader takes the first. An uploader reads again once its own entry
is finished and, when it is not the first, tags it `superseded_by` and deletes it (a deleted
run's files stay readable for anyone downloading them meanwhile). So two uploads of one key at
the same time end with one entry, the one every reader picks. Only uploads that finish within
one request of each other can both stay, when the earlier one's own check ran before the
later one was visible; every reader still picks the same first one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tapeout.artifacts.digest import file_digest
from tapeout.artifacts.owner import WORKER_TAG, current_worker
from tapeout.artifacts.registry import Registry, RegistryUnavailable, RunRecord
from tapeout.compilers.errors import InvalidInput

FILES_ARTIFACT = "files.json"
FILES_DIGEST_TAG = "files_digest"
SIZE_TAG = "size_bytes"
SUPERSEDED_TAG = "superseded_by"


@dataclass(frozen=True)
class StoredEntry:
    """One entry: its key, the run holding it, where its file or folder is (`artifact_uri`),
    every file's sha256 by path relative to the entry's parent, its size and the run's tags."""

    key: str
    run_id: str
    artifact_uri: str
    files: Mapping[str, str]
    size_bytes: int
    tags: Mapping[str, str]


def entry_files(path: Path) -> dict[str, str]:
    """Every file of an entry (a file, or a folder of files) → its sha256, by path relative
    to the entry's parent, so the entry's own name is kept."""
    if path.is_dir():
        return {
            file.relative_to(path.parent).as_posix(): file_digest(file)
            for file in sorted(path.rglob("*")) if file.is_file()
        }
    return {path.name: file_digest(path)}


def entry_size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def files_digest(files: Mapping[str, str]) -> str:
    """The sha256 of the canonical JSON of a file list (the `files_digest` tag)."""
    return hashlib.sha256(json.dumps(dict(files), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ContentStore:
    """The entries of one kind: runs of `experiment` keyed by the tag `key_tag`, their files
    under `artifact_path`; `what` names an entry in messages ("calibration set")."""

    registry: Registry
    experiment: str
    key_tag: str
    artifact_path: str
    what: str

    def find(self, key: str) -> StoredEntry | None:
        """The entry every reader takes for `key` (see the module docstring), or None.

        Raises:
            RegistryUnavailable: the store cannot be searched or read.
            InvalidInput: the entry's file list does not match its `files_digest` tag.
        """
        runs = self._runs(key, "FINISHED")
        if not runs:
            return None
        run = min(runs, key=lambda found: (found.end_time, found.run_id))
        with tempfile.TemporaryDirectory() as scratch:
            try:
                listing = self.registry.download_run_file(run.run_id, FILES_ARTIFACT, Path(scratch))
                files = json.loads(listing.read_text())
            except Exception as error:
                raise RegistryUnavailable(
                    f"MLflow at {self.registry.tracking_uri}: {self.what} {key}: cannot read the file list of "
                    f"run {run.run_id} ({type(error).__name__}: {error})"
                ) from error
        recorded = run.tags.get(FILES_DIGEST_TAG)
        if recorded is not None and files_digest(files) != recorded:
            raise InvalidInput(
                f"{self.what} {key}: run {run.run_id}: {FILES_ARTIFACT}: expected sha256 {recorded} "
                f"(its {FILES_DIGEST_TAG} tag), found {files_digest(files)}"
            )
        return StoredEntry(
            key, run.run_id, f"{run.artifact_uri}/{self.artifact_path}", files,
            int(run.tags.get(SIZE_TAG, 0)), dict(run.tags),
        )

    def running(self, key: str) -> list[RunRecord]:
        """The runs of `key` still uploading (or claimed and building: artifacts.stage_store)."""
        return self._runs(key, "RUNNING")

    def begin(self, key: str, name: str, tags: Mapping[str, str] | None = None) -> str:
        """Start the run of a new entry of `key` (RUNNING, no files yet); returns its id."""
        return self.registry.start_run(
            self.experiment, name, {**(tags or {}), self.key_tag: key, WORKER_TAG: current_worker().describe()}
        )

    def complete(self, run_id: str, key: str, path: Path) -> StoredEntry:
        """Upload the file or folder at `path` into the run `begin` started, finish it, and
        return the entry every reader takes (this one, or one that finished first, in which
        case this one is deleted). On any error the run is marked FAILED, never finished.

        Raises:
            RegistryUnavailable: the upload or the store's search failed.
        """
        files = entry_files(path)
        try:
            if path.is_dir():
                self.registry.log_directory(run_id, path, f"{self.artifact_path}/{path.name}")
            else:
                self.registry.log_file(run_id, path, self.artifact_path)
            with tempfile.TemporaryDirectory() as scratch:
                listing = Path(scratch) / FILES_ARTIFACT
                listing.write_text(json.dumps(files, indent=1, sort_keys=True))
                self.registry.log_file(run_id, listing, None)
            self.registry.log(run_id, tags={SIZE_TAG: str(entry_size(path)), FILES_DIGEST_TAG: files_digest(files)})
        except BaseException as error:
            self.abandon(run_id)
            if isinstance(error, Exception):
                raise RegistryUnavailable(
                    f"MLflow at {self.registry.tracking_uri}: cannot upload {self.what} {key} "
                    f"({type(error).__name__}: {error})"
                ) from error
            raise
        try:
            self.registry.end_run(run_id, "FINISHED")
        except Exception as error:
            self.abandon(run_id)
            raise RegistryUnavailable(
                f"MLflow at {self.registry.tracking_uri}: cannot finish the upload of {self.what} {key} "
                f"({type(error).__name__}: {error})"
            ) from error
        winner = self.find(key)
        if winner is None:  # deleted between the two calls: nothing else can be said of it
            raise RegistryUnavailable(f"MLflow at {self.registry.tracking_uri}: {self.what} {key}: run {run_id} vanished")
        if winner.run_id != run_id:
            self.withdraw(run_id, winner.run_id)
        return winner

    def put(self, key: str, path: Path, name: str) -> StoredEntry:
        """Upload `path` as the entry of `key` unless the store has one; returns the entry
        every reader takes. `name`: the run's name."""
        found = self.find(key)
        if found is not None:
            return found
        return self.complete(self.begin(key, name), key, path)

    def abandon(self, run_id: str) -> None:
        """Mark a run that will never hold a whole entry FAILED (best effort: a store that
        cannot be reached leaves it RUNNING, which readers skip and `tapeout gc` ends)."""
        try:
            self.registry.end_run(run_id, "FAILED")
        except Exception:  # noqa: BLE001 — nothing more can be done from here
            pass

    def withdraw(self, run_id: str, winner: str | None = None) -> None:
        """Remove a run from the entries of its key: tagged with the run used instead (if
        any), ended and deleted. Best effort: a run left behind is one more entry that no
        reader takes, since every reader takes the first."""
        try:
            if winner is not None:
                self.registry.log(run_id, tags={SUPERSEDED_TAG: winner})
            self.registry.end_run(run_id, "KILLED" if winner is None else "FINISHED")
            self.registry.delete_run(run_id)
        except Exception:  # noqa: BLE001 — see above
            pass

    def fetch(self, key: str, run_id: str, files: Mapping[str, str], target: Path) -> Path:
        """Download the entry of `key` held by run `run_id` and put its one file or folder at
        `target` (replacing what is there), after checking every file against `files`
        (path relative to the entry's parent → sha256), nothing more or less.

        Raises:
            InvalidInput: a file is missing, extra or differs (each named); `files` is not
                one file or one folder.
            RegistryUnavailable: the store cannot be reached or no longer holds the entry.
        """
        top = {name.split("/", 1)[0] for name in files}
        if len(top) != 1:
            raise InvalidInput(f"{self.what} {key}: files: expected one file or folder, found {sorted(top)}")
        (name,) = top
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
        try:
            try:
                self.registry.download_run_file(run_id, self.artifact_path, scratch)
            except Exception as error:
                raise RegistryUnavailable(
                    f"MLflow at {self.registry.tracking_uri}: cannot download {self.what} {key} "
                    f"(run {run_id}): {type(error).__name__}: {error}"
                ) from error
            root = scratch / self.artifact_path
            found = entry_files(root) if root.is_dir() else {}
            # entry_files keys paths by the folder's parent: strip the artifact path.
            found = {file.split("/", 1)[1]: sha for file, sha in found.items()}
            problems = [
                f"{file}: expected sha256 {sha}, found {found.get(file, 'no file')}"
                for file, sha in sorted(files.items()) if found.get(file) != sha
            ] + [f"{file}: not in its file list" for file in sorted(set(found) - set(files))]
            if problems:
                raise InvalidInput(
                    f"{self.what} {key} from the store (run {run_id}) does not match its file list: " + "; ".join(problems)
                )
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (root / name).rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target

    def _runs(self, key: str, status: str) -> list[RunRecord]:
        try:
            return self.registry.search_runs(
                self.experiment, f"tags.{self.key_tag} = '{key}' and attributes.status = '{status}'"
            )
        except Exception as error:
            raise RegistryUnavailable(
                f"MLflow at {self.registry.tracking_uri}: cannot search the store of {self.what}s "
                f"({type(error).__name__}: {error})"
            ) from error
