"""Build on every model commit: a scheduled watcher, a git hook that emits an event, and the
deployments that react to both (docs/architecture.md, "Orchestration"; docs/scale-out.md).

- `watch_flow` lists the commits of a branch that touched the model or the pipeline and are
  not built yet, and builds each, oldest first. A deployment runs it on a cron schedule.
- The git hook emits a Prefect event `model.committed` (resource: the model; payload: repo,
  branch, sha, pipeline); a `DeploymentEventTrigger` starts `build_commit_flow` for that sha.
  Events need a running Prefect server: the ephemeral one dies with its process.
- Each commit is built from its own files (a temporary git worktree, tapeout.flows.source), so
  the work tree of the repository is never touched, and the bundle's provenance names the
  repository (its remote URL where it has one) and that commit.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from tapeout.artifacts.registry import Registry, registered_name
from tapeout.compilers.errors import InvalidInput
from tapeout.flows.config import Pipeline, load_pipeline
from tapeout.flows.environment import default_tracking_uri, tapeout_home
from tapeout.flows.source import current_branch, git, repository_root

EVENT_NAME = "model.committed"
HOOK_MARKER = "# installed by tapeout hook install"


def resource_id(model_name: str) -> str:
    return f"tapeout.model.{model_name}"


def watched_paths(pipeline: Pipeline, repo_root: Path) -> list[str]:
    """The files a build reads, relative to the repository (`Pipeline.input_files`): the
    pipeline file, the model source and the two sample sets. A commit that touches none of
    them changes no build."""
    root = repo_root.resolve()
    files = [path.resolve() for path in pipeline.input_files().values()]
    return sorted({path.relative_to(root).as_posix() for path in files if path.is_relative_to(root)})


def branch_to_watch(repo: Path, branch: str | None) -> str:
    """`branch`, or the repository's current branch; checked to exist.

    Raises:
        InvalidInput: no such branch (the message lists the repository's branches), or no
            branch given and HEAD is detached.
    """
    root = repository_root(repo)
    name = branch or current_branch(root)
    try:
        git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}")
    except InvalidInput:
        branches = git(root, "for-each-ref", "--format=%(refname:short)", "refs/heads").split()
        raise InvalidInput(
            f"{root}: --branch {name}: expected a branch of the repository, found none by that name; "
            f"its branches: {', '.join(branches) or 'none'}"
        ) from None
    return name


def commits_to_build(repo: Path, pipeline_file: str, branch: str, registry: Registry) -> list[str]:
    """Commits on `branch` that touched a watched path and are not registered for every
    target yet, oldest first."""
    root = repository_root(repo)
    pipeline = load_pipeline(root / pipeline_file)
    paths = watched_paths(pipeline, root)
    listed = git(root, "rev-list", "--reverse", "--end-of-options", branch, "--", *paths)
    pending = []
    for sha in listed.split():
        built = all(
            registry.find_version(
                registered_name(pipeline.config.model.name, target.name), {"commit": sha, "source_dirty": "false"}
            )
            is not None
            for target in pipeline.config.targets
        )
        if not built:
            pending.append(sha)
    return pending


def _registry_for(pipeline: Pipeline, home: Path) -> Registry:
    uri = pipeline.config.registry.tracking_uri or default_tracking_uri(home)
    return Registry(uri, home / "artifacts")


def _home(home: str | None) -> Path:
    """`home`, or the home of the process running the flow: a Prefect worker's
    `$TAPEOUT_HOME` (each worker of a pool keeps its own: docs/scale-out.md)."""
    return Path(home).resolve() if home else tapeout_home()


@flow(name="tapeout-build-commit", log_prints=False)
def build_commit_flow(repo: str, pipeline: str, sha: str, home: str | None = None) -> list[dict]:
    """Build one commit from its own files (a temporary worktree of `repo`, which the
    provenance does not name: it names the repository). `pipeline` is relative to the
    repository root; `home` defaults to `$TAPEOUT_HOME` (else ./.tapeout). Returns each
    target's outcome as a dict."""
    from dataclasses import asdict

    from tapeout.flows.build import build

    root = repository_root(Path(repo))
    result = build(root / pipeline, sha, _home(home), root=root)
    return [asdict(outcome) for outcome in result.outcomes]


@flow(name="tapeout-watch", log_prints=False)
def watch_flow(repo: str, pipeline: str, branch: str | None = None, home: str | None = None) -> list[str]:
    """Build every commit of `branch` (default: the repository's current branch) that changed
    the model or the pipeline and is not built yet, oldest first. Returns the commits built."""
    logger = get_run_logger()
    root = repository_root(Path(repo))
    branch = branch_to_watch(root, branch)
    registry = _registry_for(load_pipeline(root / pipeline), _home(home))
    pending = commits_to_build(root, pipeline, branch, registry)
    logger.info("%d commit(s) to build on %s: %s", len(pending), branch, ", ".join(s[:12] for s in pending))
    for sha in pending:
        build_commit_flow(str(root), pipeline, sha, str(_home(home)))
    return pending


def deployments(repo: Path, pipeline: str, branch: str, cron: str, home: Path) -> list:
    """The two deployments of one watched pipeline: a cron schedule and an event trigger."""
    from prefect.events import DeploymentEventTrigger

    root = repository_root(repo)
    model = load_pipeline(root / pipeline).config.model.name
    watch = watch_flow.to_deployment(
        name=f"watch-{model}",
        cron=cron,
        parameters={"repo": str(root), "pipeline": pipeline, "branch": branch, "home": str(home)},
    )
    on_commit = build_commit_flow.to_deployment(
        name=f"on-commit-{model}",
        parameters={"repo": str(root), "pipeline": pipeline, "home": str(home)},
        triggers=[
            DeploymentEventTrigger(
                name=f"{model} committed",
                expect={EVENT_NAME},
                match={"prefect.resource.id": resource_id(model)},
                parameters={
                    "repo": "{{ event.payload.repo }}",
                    "pipeline": "{{ event.payload.pipeline }}",
                    "sha": "{{ event.payload.sha }}",
                    "home": str(home),
                },
            )
        ],
    )
    return [watch, on_commit]


def emit_committed(repo: Path, pipeline: str, sha: str, branch: str) -> None:
    """Emit `model.committed` for one commit and wait until the event is sent.

    Raises:
        InvalidInput: no Prefect server is configured (PREFECT_API_URL).
    """
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise InvalidInput(
            "model.committed needs a running Prefect server: set PREFECT_API_URL "
            "(the ephemeral server dies with its process)"
        )
    root = repository_root(repo)
    model = load_pipeline(root / pipeline).config.model.name
    emit_event(
        event=EVENT_NAME,
        resource={"prefect.resource.id": resource_id(model), "prefect.resource.name": model},
        payload={"repo": str(root), "branch": branch, "sha": sha, "pipeline": pipeline},
    )
    EventsWorker.drain_all()


def install_hook(repo: Path, pipeline: str, api_url: str | None) -> list[Path]:
    """Write post-commit (work trees) and post-receive (servers) hooks that emit the event.

    The hooks never block a commit or a push: a failure to reach Prefect is printed and
    ignored. An existing hook that tapeout did not write is refused, not overwritten.
    """
    if _is_bare(repo):
        root = repo.resolve()  # a server-side repository: the pipeline is read per commit
    else:
        root = repository_root(repo)
        load_pipeline(root / pipeline)  # refuse a hook for a pipeline that does not load
    hooks = Path(git(repo, "rev-parse", "--git-path", "hooks"))
    if not hooks.is_absolute():
        hooks = (repo / hooks).resolve()
    hooks.mkdir(parents=True, exist_ok=True)
    environment = f"PREFECT_API_URL={api_url} " if api_url else ""
    command = f'{environment}"{sys.executable}" -m tapeout.flows.triggers emit --repo "{root}" --pipeline "{pipeline}"'
    scripts = {
        "post-commit": f"""#!/bin/sh
{HOOK_MARKER}
{command} --sha "$(git rev-parse HEAD)" --branch "$(git rev-parse --abbrev-ref HEAD)" \\
  || echo "tapeout: could not emit {EVENT_NAME} (is the Prefect server up?)" >&2
""",
        "post-receive": f"""#!/bin/sh
{HOOK_MARKER}
while read old new ref; do
  case "$ref" in refs/heads/*) ;; *) continue ;; esac
  [ "$new" = "0000000000000000000000000000000000000000" ] && continue
  {command} --sha "$new" --branch "${{ref#refs/heads/}}" \\
    || echo "tapeout: could not emit {EVENT_NAME} (is the Prefect server up?)" >&2
done
""",
    }
    written = []
    for name, script in scripts.items():
        path = hooks / name
        if path.exists() and HOOK_MARKER not in path.read_text(errors="replace"):
            raise InvalidInput(f"{path}: a hook tapeout did not install is there; merge it by hand")
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        written.append(path)
    return written


def _is_bare(repo: Path) -> bool:
    return git(repo, "rev-parse", "--is-bare-repository") == "true"


def main(argv: list[str] | None = None) -> int:
    """`python -m tapeout.flows.triggers emit ...`: what the installed hooks run."""
    import argparse

    from tapeout.compilers.errors import TapeoutError
    from tapeout.flows import environment

    parser = argparse.ArgumentParser(prog="tapeout-hook")
    commands = parser.add_subparsers(dest="command", required=True)
    emit = commands.add_parser("emit")
    emit.add_argument("--repo", type=Path, required=True)
    emit.add_argument("--pipeline", required=True)
    emit.add_argument("--sha", required=True)
    emit.add_argument("--branch", required=True)
    args = parser.parse_args(argv)
    for name, value in environment.QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    try:
        emit_committed(args.repo, args.pipeline, args.sha, args.branch)
    except TapeoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
