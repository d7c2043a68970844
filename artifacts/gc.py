"""`tapeout gc`: clean up after killed builds, and what no registered version points to.

- **staging folders** (`<home>/bundles/.staging/*`) that no running build holds (each build
  holds its folder's lock while it writes; a killed one holds nothing);
- **RUNNING MLflow runs of dead processes**: every run records its owner (host, pid and the
  pid's start time, artifacts.owner); a RUNNING run whose owner on this host is gone is
  marked KILLED. Runs of other hosts, and runs that name no owner, are left alone and listed;
- **bundles** under `<home>/bundles/` whose digest no registered version carries;
- **stored calibration sets** (artifacts.set_store) whose digest no registered version
  carries: the run is deleted and, for a local artifact store, its files;
- **the stage cache** (`<home>/cache/<stage>/<key>`) beyond `--cache-limit`, least recently
  used first (a stage folder's use is the newer of its own time and its `.finished` marker,
  which a build touches each time it reuses the folder);
- **the stage store** (artifacts.stage_store, shared by workers) beyond `--stage-store-limit`,
  least recently used first (an entry's use: its latest fetch, or when it was uploaded), and
  its runs that never became entries (a failed or killed upload). A worker downloading an
  entry meanwhile still gets it (a deleted run's files stay readable, except in a local
  store, which gc empties at once); one that looks it up afterwards builds the stage.

The last four only run while no build holds the home (builds hold `<home>/.in-use.lock`
shared; gc takes it exclusively or leaves them alone), and only for what is older than
`--keep-recent` (default 24 h): a build elsewhere, sharing the registry, may be about to
register it. `--dry-run` says what would go and changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tapeout.artifacts.bundle import STAGING
from tapeout.artifacts.owner import OWNER_TAG, owner_alive
from tapeout.artifacts.content_store import SIZE_TAG
from tapeout.artifacts.registry import Registry, RegistryUnavailable, RunRecord
from tapeout.artifacts.set_store import DIGEST_TAG, STORE_EXPERIMENT
from tapeout.artifacts.stage_store import KEY_TAG, STAGE_EXPERIMENT, last_used

IN_USE_LOCK = ".in-use.lock"
DEFAULT_CACHE_LIMIT = 5 * 1024**3
DEFAULT_STAGE_STORE_LIMIT = 20 * 1024**3
DEFAULT_KEEP_RECENT_HOURS = 24.0


@dataclass
class Collected:
    """What gc removed or marked (or, with --dry-run, would have)."""

    staging: list[str] = field(default_factory=list)
    killed_runs: list[str] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    calibration_sets: list[str] = field(default_factory=list)
    cache_entries: list[str] = field(default_factory=list)
    cache_bytes: tuple[int, int] = (0, 0)  # before, after
    stage_store_entries: list[str] = field(default_factory=list)
    stage_store_bytes: tuple[int, int] = (0, 0)  # before, after
    left_alone: list[str] = field(default_factory=list)


@contextmanager
def home_in_use(home: Path) -> Iterator[None]:
    """Held (shared) by a build for as long as it runs: gc then leaves the home's bundles,
    stored sets and cache alone."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / IN_USE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


def collect(
    home: Path,
    registry: Registry,
    *,
    dry_run: bool = False,
    cache_limit: int = DEFAULT_CACHE_LIMIT,
    stage_store_limit: int = DEFAULT_STAGE_STORE_LIMIT,
    keep_recent_hours: float = DEFAULT_KEEP_RECENT_HOURS,
) -> Collected:
    """Clean up `home` and the runs of `registry` (see the module docstring).

    Raises:
        RegistryUnavailable: the registry cannot be read or written.
    """
    collected = Collected()
    _staging(home / "bundles" / STAGING, collected, dry_run)
    _dead_runs(registry, collected, dry_run)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / IN_USE_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            collected.left_alone.append("bundles, stored calibration sets and the cache: a build is running in this home")
            return collected
        cutoff = time.time() - keep_recent_hours * 3600
        bundle_digests, set_digests = _referenced(registry)
        _bundles(home / "bundles", bundle_digests, cutoff, collected, dry_run)
        _calibration_sets(registry, set_digests, cutoff, collected, dry_run)
        _cache(home / "cache", cache_limit, collected, dry_run)
        _stage_store(registry, stage_store_limit, cutoff, collected, dry_run)
    return collected


# -- killed builds ---------------------------------------------------------------------------------


def _staging(root: Path, collected: Collected, dry_run: bool) -> None:
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a running build holds it
        else:
            collected.staging.append(str(path))
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(descriptor)


def _dead_runs(registry: Registry, collected: Collected, dry_run: bool) -> None:
    try:
        for run in registry.search_runs(None, "attributes.status = 'RUNNING'"):
            owner = run.tags.get(OWNER_TAG)
            alive = owner_alive(owner) if owner else None
            what = f"run {run.run_id} ({run.name}, started by {owner or 'an unrecorded process'})"
            if alive is None:
                collected.left_alone.append(f"RUNNING {what}: its owner cannot be checked from this host")
            elif not alive:
                collected.killed_runs.append(what)
                if not dry_run:
                    registry.log(run.run_id, tags={"tapeout.gc": "its process was gone: marked KILLED by tapeout gc"})
                    registry.end_run(run.run_id, "KILLED")
    except RegistryUnavailable:
        raise
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot read or end the runs ({type(error).__name__}: {error})"
        ) from error


# -- what no version points to -------------------------------------------------------------------------


def _referenced(registry: Registry) -> tuple[set[str], set[str]]:
    """The bundle digests and calibration-set digests registered versions carry."""
    try:
        versions = registry.search_versions()
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot list the registered versions ({type(error).__name__}: {error})"
        ) from error
    bundles = {v.tags.get("bundle_digest") for v in versions if v.tags.get("bundle_digest")}
    sets = {v.tags.get("calibration_set_digest") for v in versions if v.tags.get("calibration_set_digest")}
    return bundles, sets


def _bundles(root: Path, digests: set[str], cutoff: float, collected: Collected, dry_run: bool) -> None:
    prefixes = {digest[:16] for digest in digests}
    for model in sorted(root.iterdir()) if root.is_dir() else []:
        if model.name == STAGING or not model.is_dir():
            continue
        for bundle in sorted(model.iterdir()):
            if bundle.name in prefixes or not bundle.is_dir() or bundle.stat().st_mtime > cutoff:
                continue
            collected.bundles.append(str(bundle))
            if not dry_run:
                shutil.rmtree(bundle, ignore_errors=True)


def _calibration_sets(registry: Registry, digests: set[str], cutoff: float, collected: Collected, dry_run: bool) -> None:
    try:
        for run in registry.search_runs(STORE_EXPERIMENT):
            digest = run.tags.get(DIGEST_TAG, "")
            if digest in digests or run.status == "RUNNING" or run.start_time / 1000 > cutoff:
                continue
            collected.calibration_sets.append(f"sha256:{digest[:16]} (run {run.run_id})")
            if not dry_run:
                _delete(registry, run)
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot collect stored calibration sets ({type(error).__name__}: {error})"
        ) from error


def _stage_store(registry: Registry, limit: int, cutoff: float, collected: Collected, dry_run: bool) -> None:
    try:
        runs = registry.search_runs(STAGE_EXPERIMENT)
        entries = [run for run in runs if run.status == "FINISHED"]
        sizes = {run.run_id: int(run.tags.get(SIZE_TAG, "0") or 0) for run in entries}
        total = sum(sizes.values())
        after = total
        for run in runs:  # uploads that failed or were killed: never read by anyone
            if run.status in ("FAILED", "KILLED") and run.start_time / 1000 < cutoff:
                collected.stage_store_entries.append(f"{run.tags.get(KEY_TAG, '?')} (run {run.run_id}, {run.status})")
                if not dry_run:
                    _delete(registry, run)
        for run in sorted(entries, key=last_used):
            if after <= limit or last_used(run) > cutoff:
                break
            collected.stage_store_entries.append(f"{run.tags.get(KEY_TAG, '?')} (run {run.run_id})")
            after -= sizes[run.run_id]
            if not dry_run:
                _delete(registry, run)
        collected.stage_store_bytes = (total, after)
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot collect the stage store ({type(error).__name__}: {error})"
        ) from error


def _delete(registry: Registry, run: RunRecord) -> None:
    """Delete a run of a store; in a local artifact store, its files too (free the space now)."""
    from urllib.parse import unquote, urlparse

    registry.delete_run(run.run_id)
    location = urlparse(run.artifact_uri)
    if location.scheme == "file":
        files = Path(unquote(location.path))
        shutil.rmtree(files, ignore_errors=True)
        with contextlib.suppress(OSError):
            files.parent.rmdir()  # the run's own folder, once empty


def _cache(root: Path, limit: int, collected: Collected, dry_run: bool) -> None:
    entries = []
    for stage in sorted(root.iterdir()) if root.is_dir() else []:
        for entry in sorted(stage.iterdir()) if stage.is_dir() else []:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            marker = stage / f".{entry.name}.finished"
            used = max(entry.stat().st_mtime, marker.stat().st_mtime if marker.exists() else 0.0)
            entries.append((used, _size(entry), entry, marker))
    total = sum(size for _, size, _, _ in entries)
    after = total
    for used, size, entry, marker in sorted(entries, key=lambda item: item[0]):
        if after <= limit:
            break
        collected.cache_entries.append(str(entry))
        after -= size
        if not dry_run:
            marker.unlink(missing_ok=True)  # first: a half-removed folder is never "finished"
            shutil.rmtree(entry, ignore_errors=True)
            (entry.parent / f".{entry.name}.lock").unlink(missing_ok=True)
    collected.cache_bytes = (total, after)


def _size(folder: Path) -> int:
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total
