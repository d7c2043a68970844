"""Rebuild a bundle from what its signed provenance records, and compare (docs/trust.md,
"`tapeout reproduce REF`").

The provenance names the source (repository and commit, and whether the build read files that
differed from it), the target, the per-target config digest, the compiler with its version
and the versions of the Python environment. The rebuild checks the commit out into a clean
worktree, finds the pipeline file of that commit whose config has the recorded digest, and
builds the recorded target in a scratch home — with that home's own key and store, so it
needs nothing of the builder's and writes nothing to their registry. Every file of `model/`,
`calibration/` and `compiled/` is then compared with the bundle's, whose digests the caller has
verified against the signature. A recorded input the rebuild could not use as recorded (a
different onnxruntime installed, a compiler missing) is named beside the comparison.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from tapeout.artifacts.digest import directory_manifest
from tapeout.artifacts.documents import read_json_object
from tapeout.artifacts.policy import POLICY_FILE
from tapeout.artifacts.provenance import environment_versions
from tapeout.artifacts.set_store import POINTER_FILE
from tapeout.compilers.errors import InvalidInput, TapeoutError
from tapeout.flows.settings import Progress
from tapeout.flows.source import git, repository_root, resolve_commit

COMPARED = ("model", "calibration", "compiled")
# A set pointer's fields that name the store the set is in (tapeout.artifacts.set_store):
# a rebuild stores the set in its own scratch store.
_STORE_PLACE = frozenset({"run_id", "uri", "artifact_uri"})
# The rebuild's pipeline file, beside the commit's (its relative paths mean the same there).
REBUILD_PIPELINE = ".tapeout-reproduce.yaml"
_COMPILER_URN = "urn:tapeout:compiler:"


class NotReproducible(TapeoutError):
    """The recorded build cannot be rebuilt here: a recorded input is not to be had (named)."""

    exit_code = 1


@dataclass(frozen=True)
class RecordedBuild:
    """What a bundle's signed provenance says its build read."""

    repository: str  # a URL, or file:// and a folder
    commit: str
    dirty_files: tuple[str, ...]
    target: str
    config_digest: str
    compiler: str
    compiler_version: str
    environment: Mapping[str, str]


@dataclass(frozen=True)
class FileComparison:
    """One file of the compared folders: its sha256 in the bundle and in the rebuild (None
    where that side has no such file)."""

    path: str
    recorded: str | None
    rebuilt: str | None
    compared_as: str = ""  # how, when not by the file's bytes

    @property
    def identical(self) -> bool:
        return self.recorded is not None and self.recorded == self.rebuilt

    def describe(self) -> str:
        if self.identical:
            return f"identical  {self.path}" + (f" ({self.compared_as})" if self.compared_as else "")
        if self.rebuilt is None:
            return f"different  {self.path}: the rebuild has no such file (bundle {self.recorded})"
        if self.recorded is None:
            return f"different  {self.path}: only the rebuild has it ({self.rebuilt})"
        return f"different  {self.path}: bundle {self.recorded}, rebuild {self.rebuilt}"


@dataclass(frozen=True)
class Reproduction:
    """The comparison, file by file, and the recorded inputs the rebuild could not use as
    recorded (`not_obtained`, each in words)."""

    recorded: RecordedBuild
    pipeline_file: str  # the commit's pipeline file, relative to the repository
    files: tuple[FileComparison, ...]
    not_obtained: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return bool(self.files) and all(item.identical for item in self.files)


def recorded_build(bundle: Path) -> RecordedBuild:
    """The inputs `bundle`'s provenance.json records.

    Raises:
        InvalidInput: provenance.json is missing or lacks a field (named).
    """
    path = bundle / "provenance.json"
    statement = read_json_object(path)
    try:
        definition = statement["predicate"]["buildDefinition"]
        source = definition["resolvedDependencies"][0]
        parameters = definition["externalParameters"]
        compiler = next(
            item["uri"][len(_COMPILER_URN):] for item in definition["resolvedDependencies"]
            if str(item.get("uri", "")).startswith(_COMPILER_URN)
        )
        name, _, version = compiler.partition("@")
        uri = str(source["uri"]).removeprefix("git+")
        annotations = source.get("annotations", {})
        return RecordedBuild(
            repository=uri.rsplit("@", 1)[0],
            commit=str(source["digest"]["gitCommit"]),
            dirty_files=tuple(annotations.get("dirtyFiles", ())) or (("(files it does not name)",) if annotations.get("dirty") else ()),
            target=str(parameters["target"]),
            config_digest=str(parameters["config_digest"]),
            compiler=name,
            compiler_version=version,
            environment=dict(definition["internalParameters"]["environment"]),
        )
    except (KeyError, IndexError, TypeError, AttributeError, StopIteration) as error:
        raise InvalidInput(
            f"{path}: expected a tapeout build's provenance (source commit, target, config digest, "
            f"compiler, environment); {type(error).__name__}: {error}"
        ) from None


def reproduce(bundle: Path, scratch: Path, repository: Path | None = None, progress: Progress = lambda m: None) -> Reproduction:
    """Rebuild `bundle` (verified by the caller) in the empty folder `scratch`, from the commit
    its provenance names in `repository` (default: the folder the provenance names), and
    compare the files of `model/`, `calibration/` and `compiled/`.

    Raises:
        NotReproducible: the build read files that differ from its commit; the commit, or a
            pipeline file with the recorded config, is not in the repository; the rebuild
            of the target failed (each with the reason).
        InvalidInput: the provenance is unreadable; the repository is not a local git
            repository (a remote one must be cloned and named with `repository`), or the
            folder named is not in one.
    """
    recorded = recorded_build(bundle)
    if recorded.dirty_files:
        raise NotReproducible(
            f"the build read files that differ from commit {recorded.commit[:12]}: "
            f"{', '.join(recorded.dirty_files)}; what it read is in no commit, so it cannot be rebuilt"
        )
    root = repository_root(_repository(recorded, repository))
    try:
        resolve_commit(root, recorded.commit)
    except InvalidInput:
        raise NotReproducible(
            f"{root}: commit {recorded.commit} (recorded as the source) is not in this repository; "
            "fetch it, or name a clone that has it with --repository"
        ) from None
    not_obtained = _environment_differences(recorded)
    for line in not_obtained:
        progress(f"not as recorded: {line}")
    with _worktree(root, recorded.commit, scratch / "source") as checkout:
        pipeline_file = _pipeline_with_digest(checkout, recorded)
        relative = pipeline_file.relative_to(checkout).as_posix()
        progress(f"rebuilding {recorded.target} of commit {recorded.commit[:12]} from {relative}")
        rebuilt = _rebuild(pipeline_file, recorded.target, scratch / "home", progress)
        files = compare(bundle, rebuilt)
    return Reproduction(recorded, relative, files, tuple(not_obtained))


def compare(bundle: Path, rebuilt: Path) -> tuple[FileComparison, ...]:
    """Every file of the compared folders of `bundle` and `rebuilt`, by path. A calibration set
    stored outside the bundles is compared by what its pointer says the set is (digest, count,
    size, each file's sha256), not by where the pointer says it is stored."""
    comparisons = []
    for folder in COMPARED:
        ours = _manifest(bundle / folder, folder)
        theirs = _manifest(rebuilt / folder, folder)
        comparisons += [
            FileComparison(path, ours.get(path), theirs.get(path)) for path in sorted(ours.keys() | theirs.keys())
        ]
    pointer = f"calibration/{POINTER_FILE}"
    if (bundle / pointer).is_file() and (rebuilt / pointer).is_file():
        by_content = FileComparison(
            pointer, _pointed_set(bundle / pointer), _pointed_set(rebuilt / pointer),
            "the stored set it points to; where it is stored is not compared",
        )
        comparisons = [by_content if item.path == pointer else item for item in comparisons]
    return tuple(comparisons)


def _pointed_set(path: Path) -> str:
    """sha256 of a set pointer without the fields that say where the set is stored."""
    document = read_json_object(path)
    content = {key: value for key, value in document.items() if key not in _STORE_PLACE}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _manifest(folder: Path, prefix: str) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {f"{prefix}/{path}": digest for path, digest in directory_manifest(folder).items()}


def _repository(recorded: RecordedBuild, repository: Path | None) -> Path:
    if repository is not None:
        root = Path(repository)
    elif recorded.repository.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        root = Path(unquote(urlsplit(recorded.repository).path))
    else:
        raise InvalidInput(
            f"the source is {recorded.repository}: clone it and name the clone with --repository DIR"
        )
    if not root.is_dir():
        raise NotReproducible(f"{root}: the source repository is not there; name a clone with --repository DIR")
    return root


def _environment_differences(recorded: RecordedBuild) -> list[str]:
    """The recorded versions this environment does not have, in words."""
    from tapeout.compilers.registry import load_compiler

    differences = []
    installed = environment_versions()
    for name, version in sorted(recorded.environment.items()):
        if installed.get(name) != version:
            differences.append(f"{name}: the build had {version}, here {installed.get(name, 'none is installed')}")
    try:
        compiler_version = load_compiler(recorded.compiler).version
    except TapeoutError as error:
        differences.append(f"compiler {recorded.compiler} {recorded.compiler_version}: not available here ({error})")
    else:
        if compiler_version != recorded.compiler_version:
            differences.append(
                f"compiler {recorded.compiler}: the build had {recorded.compiler_version}, here {compiler_version}"
            )
    return differences


@contextmanager
def _worktree(root: Path, commit: str, folder: Path) -> Iterator[Path]:
    """`commit`'s own files in a new worktree at `folder`, removed afterwards."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    git(root, "worktree", "add", "--detach", "--quiet", str(folder), commit)
    try:
        yield folder
    finally:
        try:
            git(root, "worktree", "remove", "--force", str(folder))
        except InvalidInput:
            git(root, "worktree", "prune")


def _pipeline_with_digest(checkout: Path, recorded: RecordedBuild) -> Path:
    """The commit's pipeline file whose config for the recorded target has the recorded
    digest (the bundle holds the resolved config, not the file it was read from).

    Raises:
        NotReproducible: no YAML file of the commit has that config.
    """
    from tapeout.flows.config import load_pipeline

    listed = git(checkout, "ls-files", "-z", strip=False).split("\0")
    for name in sorted(name for name in listed if name.endswith((".yaml", ".yml"))):
        try:
            pipeline = load_pipeline(checkout / name)
        except TapeoutError:
            continue  # another YAML file of the repository
        for target in pipeline.config.targets:
            if target.name == recorded.target and pipeline.digest(target) == recorded.config_digest:
                return checkout / name
    raise NotReproducible(
        f"commit {recorded.commit[:12]} has no pipeline file whose config for target {recorded.target} "
        f"has the recorded digest {recorded.config_digest}"
    )


def _rebuild(pipeline_file: Path, target: str, home: Path, progress: Progress) -> Path:
    """Build `target` of `pipeline_file` in `home`; returns the rebuilt bundle.

    The pipeline is the commit's with only that target, and without its `signing` and
    `registry` sections: the scratch home's own key signs and its own store registers. Neither
    section changes what is exported, calibrated, quantized or compiled. The commit's
    `signing.policy` still says who may sign an imported model: it becomes the scratch home's
    trust policy (a link, so the paths it names resolve from the commit's folder as before).

    Raises:
        NotReproducible: the rebuild of the target did not pass (its message).
    """
    from tapeout.flows.build import build

    document = yaml.safe_load(pipeline_file.read_text())
    document["targets"] = [item for item in document["targets"] if item.get("name") == target]
    policy = (document.pop("signing", None) or {}).get("policy")
    document.pop("registry", None)
    if policy:
        home.mkdir(parents=True, exist_ok=True)
        (home / POLICY_FILE).symlink_to((pipeline_file.parent / policy).resolve())
    derived = pipeline_file.parent / REBUILD_PIPELINE
    derived.write_text(yaml.safe_dump(document, sort_keys=False))
    result = build(derived, None, home, progress)
    (outcome,) = result.outcomes
    if outcome.verdict != "pass" or outcome.bundle_path is None:
        raise NotReproducible(f"the rebuild of {target} did not pass: {outcome.verdict}: {outcome.message}")
    return Path(outcome.bundle_path)
