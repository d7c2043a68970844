"""Which commit a build reads, and whether the files it reads are that commit's.

A build names its source in every bundle's provenance: the repository (its remote URL where it
has one, else its folder) and a commit. Without `--commit` the build reads the work tree at
`HEAD`, and it is *dirty* when a file it reads — the pipeline file, the model source and
weights, the factory module, the two sample sets (`Pipeline.input_files`) — differs from that
commit (modified, untracked, ignored, or outside the repository); other files in the folder do
not matter. With `--commit SHA` (and for every commit a watcher builds) the build reads that
commit's own files from a temporary worktree, so it is never dirty.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tapeout.artifacts.provenance import SourceRevision
from tapeout.compilers.errors import InvalidInput
from tapeout.flows.config import Pipeline


def git(folder: Path, *arguments: str, strip: bool = True) -> str:
    """Run git in `folder` and return its output (stripped of surrounding whitespace).

    Raises:
        InvalidInput: git is missing or the command fails (its message is kept).
    """
    try:
        completed = subprocess.run(
            ["git", "--literal-pathspecs", "-C", str(folder), *arguments],
            capture_output=True, text=True, check=True,
        )
    except subprocess.CalledProcessError as error:
        problem = error.stderr.strip().splitlines()[-1:] or [f"exit {error.returncode}"]
        raise InvalidInput(f"{folder}: git {' '.join(arguments)} failed: {problem[0]}") from None
    except OSError as error:
        raise InvalidInput(f"git is not available ({error})") from error
    return completed.stdout.strip() if strip else completed.stdout


def repository_root(folder: Path) -> Path:
    """The top of the git repository holding `folder` (the git directory of a bare one).

    Raises:
        InvalidInput: `folder` is not inside a git repository.
    """
    try:
        if git(folder, "rev-parse", "--is-bare-repository") == "true":
            return Path(git(folder, "rev-parse", "--absolute-git-dir"))
        return Path(git(folder, "rev-parse", "--show-toplevel"))
    except InvalidInput:
        raise InvalidInput(
            f"{folder}: not inside a git repository; tapeout builds commits "
            "(git init && git add -A && git commit)"
        ) from None


def resolve_commit(root: Path, commit: str) -> str:
    """The full sha of `commit` in the repository at `root`.

    Raises:
        InvalidInput: `commit` does not name a commit of that repository.
    """
    try:
        return git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}^{{commit}}")
    except InvalidInput:
        what = "HEAD: the repository has no commit yet" if commit == "HEAD" else (
            f"--commit {commit}: expected a commit of the repository, found none by that name"
        )
        raise InvalidInput(f"{root}: {what}") from None


def current_branch(root: Path) -> str:
    """The branch checked out at `root` (a bare repository's HEAD names its default branch).

    Raises:
        InvalidInput: HEAD is detached.
    """
    try:
        return git(root, "symbolic-ref", "--quiet", "--short", "HEAD")
    except InvalidInput:
        raise InvalidInput(f"{root}: HEAD is detached, on no branch; pass --branch NAME") from None


def repository_identity(root: Path) -> str:
    """A URL naming the repository in provenance: the `origin` remote's URL (else the first
    remote's) without credentials, or `file://<root>` for a repository without remotes."""
    remotes = git(root, "remote").split()
    if not remotes:
        return root.as_uri()
    name = "origin" if "origin" in remotes else remotes[0]
    return _public_url(git(root, "remote", "get-url", name), root)


def _public_url(url: str, root: Path) -> str:
    if "://" in url:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        if parts.scheme == "ssh" and parts.username:
            host = f"{parts.username}@{host}"  # ssh's user names an account, not a secret
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    head, colon, path = url.partition(":")
    if colon and "/" not in head and len(head) > 1:  # scp-like: git@host:team/model.git
        return f"ssh://{head}/{path.lstrip('/')}"
    return (root / url).resolve().as_uri()  # a remote that is another folder


@dataclass(frozen=True)
class Checkout:
    """Where a build reads its files: the pipeline file to load, the repository it belongs
    to, and the commit. `worktree` is the temporary checkout of `--commit` (None: the work
    tree itself, whose files may differ from `commit`)."""

    pipeline_file: Path
    root: Path
    repository: str
    commit: str
    worktree: Path | None = None

    def source(self, pipeline: Pipeline) -> SourceRevision:
        """The source revision of a build of `pipeline`, with what makes it dirty (in a
        checkout of the commit, only a file the config names outside the repository can)."""
        changed = changed_inputs(self.worktree or self.root, pipeline)
        return SourceRevision(self.repository, self.commit, dirty=bool(changed), dirty_files=changed)

    def public(self, text: str) -> str:
        """`text` with the temporary checkout's folder named as the commit it holds: the
        checkout is gone when the build ends, the commit is not."""
        if self.worktree is None:
            return text
        return text.replace(str(self.worktree), f"{self.root}@{self.commit[:12]}")


@contextmanager
def checkout(pipeline_file: Path, commit: str | None, home: Path, root: Path | None = None) -> Iterator[Checkout]:
    """The files a build reads: the work tree (no `commit`), or `commit`'s own files in a
    temporary worktree under `<home>/worktrees/`, removed afterwards. `root` is the
    repository (default: the one holding the pipeline file).

    Raises:
        InvalidInput: the pipeline file is not in a git repository, `commit` is not one of its
            commits, or the pipeline file is not in that commit.
    """
    pipeline_file = Path(pipeline_file).absolute()
    if commit is None and not pipeline_file.is_file():
        raise InvalidInput(f"{pipeline_file}: cannot read the pipeline file (no such file)")
    root = root or repository_root(pipeline_file.parent)
    identity = repository_identity(root)
    if commit is None:
        yield Checkout(pipeline_file, root, identity, resolve_commit(root, "HEAD"))
        return
    sha = resolve_commit(root, commit)
    relative = _inside(pipeline_file, root)
    # One worktree per build: two builds of the same commit may run at the same time.
    worktree = Path(home).resolve() / "worktrees" / f"{sha}-{uuid.uuid4().hex[:8]}"
    worktree.parent.mkdir(parents=True, exist_ok=True)
    git(root, "worktree", "add", "--detach", "--quiet", str(worktree), sha)
    try:
        if not (worktree / relative).is_file():
            raise InvalidInput(f"{pipeline_file}: not in commit {sha[:12]} (git show {sha[:12]}:{relative})")
        yield Checkout(worktree / relative, root, identity, sha, worktree)
    finally:
        try:
            git(root, "worktree", "remove", "--force", str(worktree))
        except InvalidInput:  # already gone or never registered: drop what is left
            shutil.rmtree(worktree, ignore_errors=True)
            git(root, "worktree", "prune")


def _inside(path: Path, root: Path) -> Path:
    for candidate, top in ((path.resolve(), root.resolve()), (path, root)):
        try:
            return candidate.relative_to(top)
        except ValueError:
            continue
    raise InvalidInput(f"{path}: not inside the repository {root}")


_STATES = {"??": "untracked", "!!": "ignored by git"}


def changed_inputs(root: Path, pipeline: Pipeline) -> tuple[str, ...]:
    """The files `pipeline`'s build reads that differ from the commit checked out at `root`,
    each as "path (how)": modified, deleted, added, untracked, ignored by git, or outside the
    repository. Empty when the build reads exactly the commit's files."""
    inside, found = [], []
    for path in sorted(set(pipeline.input_files().values())):
        try:
            inside.append(path.relative_to(root).as_posix())
        except ValueError:
            found.append(f"{path} (outside the repository)")
    if inside:
        status = git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=matching", "--", *inside, strip=False)
        entries = iter(status.split("\0"))
        for entry in entries:
            if len(entry) < 4:
                continue
            code, path = entry[:2], entry[3:]
            if code[0] in "RC":
                next(entries, None)  # a rename's second field is its old path
            state = _STATES.get(code) or ("deleted" if "D" in code else "added" if code[0] == "A" else "modified")
            found.append(f"{path} ({state})")
    return tuple(found)
