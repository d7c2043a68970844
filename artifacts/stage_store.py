"""The stage cache's second level: stage outputs in the artifact store, shared by workers whose
disks are their own.

A pure stage writes its output into `<home>/cache/<stage>/<key>`, the key being the digest of
its inputs (flows/cache_keys.py); that folder is the first level. This module keeps the same
folders in the artifact store behind the MLflow server, one entry of the content store
(artifacts.content_store: checked on download, concurrent uploads converge) per
`<stage>/<key>` in the experiment `tapeout-stage-cache`. A build looks a stage up in its home,
then here, and uploads what it built; a worker with an empty home thus builds nothing another
worker built before.

Two workers that need the same stage at the same moment do not both build it: the first to
look takes a *claim*, the entry's own run started before the stage runs, which it keeps alive
with a heartbeat tag while it builds; the others wait for the entry and download it. A claim
whose heartbeat stops (its worker died; on the same host, a dead owner process shows at once)
is passed over, and two claims made at the same moment are ordered by start time and run id,
the later one withdrawn. Should both still build (clocks of two hosts apart by more than a
request), their uploads converge.

The interface, for anything that moves stage outputs between machines:

- `StageStore(registry)`: the store of the registry's MLflow server;
- `find(stage, key)`: the entry, or None;
- `fetch(stage, key, folder)`: the entry downloaded and checked into `folder` (replaced), or
  None when there is none;
- `publish(stage, key, folder)`: upload a stage's output folder unless stored; the entry every
  reader takes;
- `fetch_or_claim(stage, key, folder)`: `fetch`, waiting while another worker builds it;
  else a `Claim` to build it and `publish` (or `abandon`) through;
- `uses()`: per entry, which worker built it and which fetched it.

Entries are removed by `tapeout gc` (artifacts.gc), least recently used first, down to a size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tapeout.artifacts.content_store import ContentStore, StoredEntry
from tapeout.artifacts.owner import OWNER_TAG, current_worker, owner_alive
from tapeout.artifacts.registry import Registry, RegistryUnavailable, RunRecord
from tapeout.compilers.errors import InvalidInput

STAGE_EXPERIMENT = "tapeout-stage-cache"
KEY_TAG = "stage_key"
ARTIFACT_PATH = "stage"
BUILT_BY_TAG = "tapeout.built_by"
USED_BY_TAG = "tapeout.used_by."  # + the fetching worker's name (artifacts.owner.Worker.name)
HEARTBEAT_TAG = "tapeout.heartbeat"  # seconds since the epoch, by the claiming worker's clock
LAST_USED_TAG = "tapeout.last_used"  # seconds since the epoch of the latest fetch (`tapeout gc`)


@dataclass(frozen=True)
class StoredStage:
    """A stage output in the store: its files (path relative to the stage folder's parent →
    sha256) and the worker that built it (artifacts.owner.Worker.name)."""

    stage: str
    key: str
    run_id: str
    files: Mapping[str, str]
    size_bytes: int
    built_by: str


@dataclass(frozen=True)
class StageUses:
    """Who built one entry and which workers fetched it since."""

    stage: str
    key: str
    built_by: str
    used_by: tuple[str, ...]

    @property
    def used_elsewhere(self) -> int:
        """Workers other than its builder that fetched it: builds it saved."""
        return len(set(self.used_by) - {self.built_by})


class Claim:
    """A stage this worker builds while other workers wait for it: the entry's run, kept
    alive by a heartbeat until `publish` or `abandon` ends it."""

    def __init__(self, store: StageStore, stage: str, key: str, run_id: str) -> None:
        self.store, self.stage, self.key, self.run_id = store, stage, key, run_id
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"tapeout-claim-{stage}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.store.heartbeat_seconds):
            try:
                self.store.registry.log(self.run_id, tags={HEARTBEAT_TAG: f"{time.time():.3f}"})
            except Exception:  # noqa: BLE001 — a missed beat; too many and others take over
                pass

    def publish(self, folder: Path) -> StoredStage:
        """Upload the stage's output `folder`; returns the entry every reader takes.

        Raises:
            RegistryUnavailable: the upload failed (the claim is given up).
        """
        try:
            entry = self.store._content.complete(self.run_id, _entry_key(self.stage, self.key), folder)
        finally:
            self._stop.set()
        return _stored(self.stage, self.key, entry)

    def abandon(self) -> None:
        """Give the claim up without an entry (the stage failed): the run ends FAILED."""
        self._stop.set()
        self.store._content.abandon(self.run_id)


@dataclass(frozen=True)
class StageStore:
    """The stage outputs in `registry`'s artifact store. The timings are for claims: how
    often a builder beats, after how long without a beat its claim is passed over, and how
    often a waiting worker looks again."""

    registry: Registry
    heartbeat_seconds: float = 10.0
    stale_seconds: float = 60.0
    poll_seconds: float = 1.0

    @property
    def _content(self) -> ContentStore:
        return ContentStore(self.registry, STAGE_EXPERIMENT, KEY_TAG, ARTIFACT_PATH, "stage output")

    def find(self, stage: str, key: str) -> StoredStage | None:
        """Raises: RegistryUnavailable; InvalidInput (a damaged entry)."""
        entry = self._content.find(_entry_key(stage, key))
        return _stored(stage, key, entry) if entry is not None else None

    def fetch(self, stage: str, key: str, folder: Path) -> StoredStage | None:
        """The entry of `stage`/`key`, downloaded into `folder` (what is there is replaced)
        once every file checks; None when the store has none. The fetch is recorded on the
        entry (`uses`).

        Raises:
            InvalidInput: a file differs from the entry's list, or the list from its digest.
            RegistryUnavailable: the store cannot be reached.
        """
        stored = self.find(stage, key)
        if stored is None:
            return None
        self._content.fetch(_entry_key(stage, key), stored.run_id, stored.files, folder)
        worker = current_worker()
        try:
            self.registry.log(
                stored.run_id, tags={USED_BY_TAG + worker.name(): worker.describe(), LAST_USED_TAG: f"{time.time():.0f}"}
            )
        except Exception:  # noqa: BLE001 — a use not counted; the entry is fine
            pass
        return stored

    def publish(self, stage: str, key: str, folder: Path) -> StoredStage:
        """Upload the output folder of `stage`/`key` unless the store has it; returns the
        entry every reader takes.

        Raises:
            InvalidInput: `folder` is not a folder.
            RegistryUnavailable: the store cannot be reached or written.
        """
        if not folder.is_dir():
            raise InvalidInput(f"{folder}: a stage output: expected a folder, found none")
        found = self.find(stage, key)
        if found is not None:
            return found
        run_id = self._begin(stage, key)
        return Claim(self, stage, key, run_id).publish(folder)

    def fetch_or_claim(
        self, stage: str, key: str, folder: Path, say: Callable[[str], None] = lambda message: None
    ) -> StoredStage | Claim:
        """The entry of `stage`/`key` fetched into `folder`, after waiting for a live claim
        of another worker (`say` is told once whom it waits for); or, when nobody has built
        or is building it, a claim on it for this worker.

        Raises:
            InvalidInput: the entry is damaged (see `fetch`).
            RegistryUnavailable: the store cannot be reached.
        """
        waiting_for = None
        while True:
            stored = self.fetch(stage, key, folder)
            if stored is not None:
                return stored
            live = self._live_claims(stage, key)
            if not live:
                run_id = self._begin(stage, key)
                live = self._live_claims(stage, key)
                first = min(live, key=lambda run: (run.start_time, run.run_id), default=None)
                # A claim of the same moment that is earlier wins; so does an entry that was
                # finished between the first look and this claim.
                if (first is None or first.run_id == run_id) and self.find(stage, key) is None:
                    return Claim(self, stage, key, run_id)
                self._content.withdraw(run_id)
                continue
            builder = min(live, key=lambda run: (run.start_time, run.run_id)).tags.get(BUILT_BY_TAG, "?")
            if builder != waiting_for:
                say(f"waiting for worker {builder}, which is building it")
                waiting_for = builder
            time.sleep(self.poll_seconds)

    def uses(self) -> list[StageUses]:
        """Every entry with the worker that built it and those that fetched it.

        Raises:
            RegistryUnavailable: the store cannot be searched.
        """
        try:
            runs = self.registry.search_runs(STAGE_EXPERIMENT, "attributes.status = 'FINISHED'")
        except Exception as error:
            raise RegistryUnavailable(
                f"MLflow at {self.registry.tracking_uri}: cannot search the stage store ({type(error).__name__}: {error})"
            ) from error
        found = []
        for run in runs:
            stage, _, key = run.tags.get(KEY_TAG, "").partition("/")
            used = tuple(sorted(name.removeprefix(USED_BY_TAG) for name in run.tags if name.startswith(USED_BY_TAG)))
            found.append(StageUses(stage, key, run.tags.get(BUILT_BY_TAG, ""), used))
        return found

    def _begin(self, stage: str, key: str) -> str:
        return self._content.begin(
            _entry_key(stage, key), f"{stage}-{key[:12]}",
            {"stage": stage, BUILT_BY_TAG: current_worker().name(), HEARTBEAT_TAG: f"{time.time():.3f}"},
        )

    def _live_claims(self, stage: str, key: str) -> list[RunRecord]:
        now = time.time()
        return [run for run in self._content.running(_entry_key(stage, key)) if self._alive(run, now)]

    def _alive(self, run: RunRecord, now: float) -> bool:
        try:
            beat = float(run.tags.get(HEARTBEAT_TAG, "0"))
        except ValueError:
            return False
        owner = run.tags.get(OWNER_TAG)
        return now - beat < self.stale_seconds and (owner is None or owner_alive(owner) is not False)


def last_used(run: RunRecord) -> float:
    """When an entry's run was last of use, in seconds since the epoch: its latest fetch, or
    when it finished."""
    try:
        fetched = float(run.tags.get(LAST_USED_TAG, "0"))
    except ValueError:
        fetched = 0.0
    return max(fetched, run.end_time / 1000)


def _entry_key(stage: str, key: str) -> str:
    return f"{stage}/{key}"


def _stored(stage: str, key: str, entry: StoredEntry) -> StoredStage:
    return StoredStage(stage, key, entry.run_id, entry.files, entry.size_bytes, entry.tags.get(BUILT_BY_TAG, ""))
