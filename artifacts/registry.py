"""The MLflow side (docs/architecture.md, "The registry"): one run per (commit, target), one
registered model per (model, target), versions registered from `runs:/<run_id>/bundle`, the
`candidate` alias.

Registration is all-or-nothing: a version whose tags or alias could not be written is deleted
again, so no half-registered version is ever left behind.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from tapeout.compilers.errors import InvalidInput, TapeoutError

CANDIDATE_ALIAS = "candidate"
BUNDLE_ARTIFACT_PATH = "bundle"
_REFERENCE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]*)@(?P<selector>[A-Za-z0-9_-]+)$")


class RegistryUnavailable(TapeoutError):
    """The tracking server or database cannot be reached or written."""


class ReferenceNotFound(InvalidInput):
    """A MODEL-TARGET@VERSION or @ALIAS that names nothing registered."""


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    source: str
    tags: Mapping[str, str]
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model's own tags and where its aliases point (alias → version)."""

    name: str
    tags: Mapping[str, str]
    aliases: Mapping[str, str]


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as tapeout reads it. `start_time`, `end_time`: milliseconds since the
    epoch (`end_time` 0 while it runs)."""

    run_id: str
    name: str
    status: str
    start_time: int
    artifact_uri: str
    tags: Mapping[str, str]
    params: Mapping[str, str]
    end_time: int = 0


def _run_record(run) -> RunRecord:
    return RunRecord(
        run.info.run_id, run.info.run_name or "", run.info.status, int(run.info.start_time or 0),
        run.info.artifact_uri, dict(run.data.tags), dict(run.data.params), int(run.info.end_time or 0),
    )


def _version_record(found) -> RegisteredVersion:
    return RegisteredVersion(
        name=found.name,
        version=str(found.version),  # int from SQLite, str from a server: normalise
        run_id=found.run_id,
        source=found.source,
        tags=dict(found.tags),
        aliases=tuple(getattr(found, "aliases", ()) or ()),
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def registered_name(model: str, target: str) -> str:
    return f"{model}-{target}"


class Registry:
    """A thin, typed layer over MlflowClient for the calls tapeout makes: nothing outside this
    class talks to MLflow's client. Methods that say so raise `RegistryUnavailable`; the
    others raise what MLflow raises, for the caller to say what it was doing."""

    def __init__(self, tracking_uri: str, artifacts_root: Path) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.artifacts_root = artifacts_root
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- runs -----------------------------------------------------------------------------

    def start_run(self, experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
        """Create a run in the model's experiment (created with an explicit artifact root,
        never MLflow's default `./mlruns` in the working directory), tagged with the process
        that owns it, so that `tapeout gc` can end the runs of a process that was killed."""
        from tapeout.artifacts.owner import OWNER_TAG, current_owner

        tags = {**tags, OWNER_TAG: current_owner()}
        try:
            found = self._client.get_experiment_by_name(experiment)
            if found is None:
                # A local store gets an explicit folder under the home; a tracking server
                # chooses its own artifact store (proxied object storage).
                location = None
                if self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri:
                    location = (self.artifacts_root / experiment).resolve().as_uri()
                try:
                    experiment_id = self._client.create_experiment(experiment, artifact_location=location)
                except Exception:
                    # Another process (a second worker) created it since the first look.
                    found = self._client.get_experiment_by_name(experiment)
                    if found is None:
                        raise
                    experiment_id = found.experiment_id
            else:
                experiment_id = found.experiment_id
            run = self._client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        except Exception as error:
            raise RegistryUnavailable(
                f"MLflow at {self.tracking_uri}: cannot start a run ({type(error).__name__}: {error})"
            ) from error
        return run.info.run_id

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self._client.log_batch(
            run_id,
            metrics=[Metric(key, float(value), now, 0) for key, value in (metrics or {}).items()],
            params=[Param(key, str(value)[:6000]) for key, value in (params or {}).items()],
            tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
        )

    def log_directory(self, run_id: str, directory: Path, artifact_path: str) -> None:
        self._client.log_artifacts(run_id, str(directory), artifact_path)

    def log_file(self, run_id: str, path: Path, artifact_path: str | None) -> None:
        self._client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str) -> None:
        self._client.set_terminated(run_id, status=status)

    def delete_run(self, run_id: str) -> None:
        """Mark a run deleted (its artifacts stay where the store keeps them)."""
        self._client.delete_run(run_id)

    def search_runs(
        self, experiment: str | None, query: str = "", *, oldest_first: bool = False, limit: int | None = None
    ) -> list[RunRecord]:
        """The runs of `experiment` (None: of every experiment) that match the MLflow search
        `query`: every page of them, or the first `limit`; none when the experiment does not
        exist."""
        if experiment is None:
            experiments = [found.experiment_id for found in self._client.search_experiments()]
        else:
            found = self._client.get_experiment_by_name(experiment)
            experiments = [found.experiment_id] if found is not None else []
        runs, token = [], None
        while experiments:
            page = self._client.search_runs(
                experiments, query, order_by=["attributes.start_time ASC"] if oldest_first else None,
                max_results=min(limit or 1000, 1000), page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token or (limit is not None and len(runs) >= limit):
                break
        return [_run_record(run) for run in runs[:limit]]

    def download_run_file(self, run_id: str, path: str, destination: Path) -> Path:
        """The artifact file `path` of a run, downloaded into `destination`."""
        return Path(self._client.download_artifacts(run_id, path, str(destination)))

    def version_metrics(self, name: str, version: str) -> dict[str, float]:
        """The metrics logged by the run a version was registered from."""
        registered = self.get_version(name, version)
        try:
            return dict(self._client.get_run(registered.run_id).data.metrics)
        except Exception as error:
            raise RegistryUnavailable(
                f"MLflow at {self.tracking_uri}: cannot read run {registered.run_id} ({type(error).__name__}: {error})"
            ) from error

    # -- the model registry ------------------------------------------------------------------

    def find_version(self, name: str, tags: Mapping[str, str]) -> RegisteredVersion | None:
        """The oldest version of `name` whose tags include all of `tags` (the one concurrent
        registrations converge on), if any."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(name)
            versions = self._search(name, tags)
            if not versions:
                return None
            return self.get_version(name, min(versions, key=int))
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            # An unreachable server is not "nothing registered": a build that went on would
            # fail only at registration, minutes later.
            raise RegistryUnavailable(
                f"MLflow at {self.tracking_uri}: cannot look up {name} "
                f"({type(error).__name__}: {_first_line(error)})"
            ) from error

    def register(
        self,
        name: str,
        run_id: str,
        tags: Mapping[str, str],
        description: str = "",
        unique_by: Mapping[str, str] | None = None,
    ) -> RegisteredVersion:
        """Register `runs:/<run_id>/bundle` as a new version with `tags` and move `candidate`.

        With `unique_by` (tags such as commit and config digest), concurrent registrations of
        the same build converge on one version: after creating its version, each registrant
        looks for versions with the same tags, and the lowest version number wins; a loser
        deletes its own version before any alias points at it and returns the winner.

        Raises:
            RegistryUnavailable: MLflow refused; any version created is deleted again.
        """
        from mlflow.exceptions import MlflowException

        created = None
        try:
            try:
                self._client.get_registered_model(name)
            except MlflowException:
                try:
                    self._client.create_registered_model(name)
                except MlflowException as error:  # a concurrent registrant created it first
                    if "already exists" not in str(error).lower():
                        raise
            created = self._client.create_model_version(
                name,
                source=f"runs:/{run_id}/{BUNDLE_ARTIFACT_PATH}",
                run_id=run_id,
                tags=dict(tags),
                description=description,
            )
            version = str(created.version)  # int from SQLite, str from a server: normalise
            if unique_by:
                twins = self._search(name, unique_by)
                winner = min(twins, key=int) if twins else version
                if int(winner) < int(version):
                    self._client.delete_model_version(name, version)
                    created = None
                    return self.get_version(name, winner)
            self._client.set_registered_model_alias(name, CANDIDATE_ALIAS, version)
        except Exception as error:
            if created is not None:
                try:
                    self._client.delete_model_version(name, str(created.version))
                except Exception:  # the store is gone: nothing more can be undone from here
                    pass
            raise RegistryUnavailable(
                f"MLflow at {self.tracking_uri}: registering {name} failed "
                f"({type(error).__name__}: {error}); nothing was registered"
            ) from error
        return self.get_version(name, version)

    def complete(self, version: RegisteredVersion) -> RegisteredVersion:
        """Finish a registration that a killed process left half done, and return the version.

        A registration is complete when its run is FINISHED: `register_stage` ends the run
        only after the version, its tags and the `candidate` alias are written. A process
        killed between creating the version and ending its run leaves a version (its bundle
        was uploaded before it was created) without the alias; the next run of the same
        build moves `candidate` to it and ends the run, instead of reporting it as done.
        Harmless when the registrant is still alive: it writes the same alias itself.

        Raises:
            RegistryUnavailable: MLflow refused.
        """
        try:
            run = self._client.get_run(version.run_id)
            if run.info.status == "FINISHED":
                return version
            self._client.set_registered_model_alias(version.name, CANDIDATE_ALIAS, version.version)
            self._client.set_terminated(version.run_id, status="FINISHED")
            return self.get_version(version.name, version.version)
        except Exception as error:
            raise RegistryUnavailable(
                f"MLflow at {self.tracking_uri}: cannot finish the registration of {version.name} "
                f"version {version.version} ({type(error).__name__}: {_first_line(error)})"
            ) from error

    def _search(self, name: str, tags: Mapping[str, str]) -> list[str]:
        filters = [f"name = '{name}'"] + [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        return [str(found.version) for found in self._client.search_model_versions(" and ".join(filters))]

    def get_version(self, name: str, version: str) -> RegisteredVersion:
        return replace(_version_record(self._client.get_model_version(name, version)), name=name)

    def search_versions(self, query: str = "") -> list[RegisteredVersion]:
        """Every registered version (of every model) that matches the MLflow search `query`,
        every page of them. A search result may not list its aliases: `get_version` does."""
        versions, token = [], None
        while True:
            page = self._client.search_model_versions(query or None, max_results=1000, page_token=token)
            versions.extend(page)
            token = page.token
            if not token:
                return [_version_record(found) for found in versions]

    def registered_model(self, name: str) -> RegisteredModel | None:
        """The registered model `name` with its tags and aliases; None when there is none."""
        from mlflow.exceptions import MlflowException

        try:
            found = self._client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        aliases = {str(alias): str(version) for alias, version in (found.aliases or {}).items()}
        return RegisteredModel(name, dict(found.tags or {}), aliases)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._client.set_registered_model_tag(name, key, value)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self._client.delete_registered_model_alias(name, alias)

    def resolve(self, reference: str) -> RegisteredVersion:
        """MODEL-TARGET@VERSION or MODEL-TARGET@ALIAS → the registered version.

        Raises:
            InvalidInput: the reference is malformed.
            ReferenceNotFound: no such model, version or alias.
        """
        from mlflow.exceptions import MlflowException

        match = _REFERENCE.match(reference)
        if not match:
            raise InvalidInput(
                f"reference {reference!r}: expected MODEL-TARGET@VERSION or MODEL-TARGET@ALIAS"
            )
        name, selector = match["name"], match["selector"]
        try:
            if selector.isdigit():
                return self.get_version(name, selector)
            found = self._client.get_model_version_by_alias(name, selector)
            return self.get_version(name, str(found.version))
        except MlflowException as error:
            raise ReferenceNotFound(
                f"reference {reference!r}: not registered in {self.tracking_uri} ({error.message})"
            ) from error

    def download_bundle(self, version: RegisteredVersion, destination: Path) -> Path:
        """Download the version's bundle into a new folder under `destination`."""
        import mlflow.artifacts

        from mlflow.exceptions import MlflowException

        from tapeout.artifacts.signature import VerificationFailed

        destination.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(prefix=f"{version.name}-{version.version}-", dir=destination))
        try:
            mlflow.artifacts.download_artifacts(
                run_id=version.run_id,
                artifact_path=BUNDLE_ARTIFACT_PATH,
                dst_path=str(target),
                tracking_uri=self.tracking_uri,
            )
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryUnavailable(
                    f"MLflow at {self.tracking_uri}: cannot download the bundle of {version.name} "
                    f"version {version.version} ({_first_line(error)})"
                ) from error
            # The run's bundle is gone, or the store holds what MLflow will not copy (a link
            # out of the store, a path that escapes it): nothing to verify, so refuse.
            raise VerificationFailed(
                Path(f"{version.name}@{version.version}"),
                [f"the bundle cannot be downloaded from {self.tracking_uri} (run {version.run_id}): "
                 f"{_first_line(error)}"],
            ) from error
        return target / BUNDLE_ARTIFACT_PATH
