"""Build on every model commit: a scheduled watcher, a git hook that emits an event, and the
deployments that react to both (DESIGN §8).

- `watch_flow` lists the commits of a branch that touched the model or the pipeline and are
  not built yet, and builds each, oldest first. A deployment runs it on a cron schedule.
- The git hook emits a Prefect event `model.committed` (resource: the model; payload: repo,
  branch, sha, pipeline); a `DeploymentEventTrigger` starts `build_commit_flow` for that sha.
  Events need a running Prefect server: the ephemeral one dies with its process.
- Each commit is built from its own git worktree, so the work tree of the repository is never
  touched and the bundle records exactly that commit's files.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

from prefect import flow, get_run_logger

from tapeout.artifacts.registry import Registry, registered_name
from tapeout.compilers.errors import InvalidInput
from tapeout.flows.config import Pipeline, load_pipeline
from tapeout.flows.environment import default_tracking_uri

EVENT_NAME = "model.committed"
HOOK_MARKER = "# installed by tapeout hook install"


def _git(repo: Path, *arguments: str) -> str:
    try:
        completed = subprocess.run(
            ["git", "-C", str(repo), *arguments], capture_output=True, text=True, check=True
        )
    except subprocess.CalledProcessError as error:
        raise InvalidInput(f"{repo}: git {' '.join(arguments)} failed: {error.stderr.strip()}") from error
    except OSError as error:
        raise InvalidInput(f"git is not available ({error})") from error
    return completed.stdout.strip()


def resource_id(model_name: str) -> str:
    return f"tapeout.model.{model_name}"


def watched_paths(pipeline: Pipeline, repo_root: Path) -> list[str]:
    """The files a build depends on, relative to the repository: the pipeline file, the model
    source and the two sample sets. A commit that touches none of them changes no build."""
    source = pipeline.config.model.source
    files = [pipeline.path]
    if source.onnx is not None:
        files.append(pipeline.resolve(source.onnx))
    else:
        assert source.pytorch is not None
        files.append(pipeline.resolve(source.pytorch.factory.rsplit(":", 1)[0]))
        files.append(pipeline.resolve(source.pytorch.weights))
    files.append(pipeline.resolve(pipeline.config.calibration.set))
    files.append(pipeline.resolve(pipeline.config.validation.set))
    root = repo_root.resolve()
    return sorted({path.resolve().relative_to(root).as_posix() for path in files if path.resolve().is_relative_to(root)})


def commits_to_build(repo: Path, pipeline_file: str, branch: str, registry: Registry) -> list[str]:
    """Commits on `branch` that touched a watched path and are not registered for every
    target yet, oldest first."""
    root = Path(_git(repo, "rev-parse", "--show-toplevel"))
    pipeline = load_pipeline(root / pipeline_file)
    paths = watched_paths(pipeline, root)
    listed = _git(root, "rev-list", "--reverse", branch, "--", *paths)
    pending = []
    for sha in listed.split():
        built = all(
            registry.find_version(
                registered_name(pipeline.config.model.name, target.name), {"commit": sha}
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


@flow(name="tapeout-build-commit", log_prints=False)
def build_commit_flow(repo: str, pipeline: str, sha: str, home: str = ".tapeout") -> list[dict]:
    """Build one commit from a detached worktree of `repo`. `pipeline` is relative to the
    repository root. Returns each target's outcome as a dict."""
    from dataclasses import asdict

    from tapeout.flows.pipeline import build_flow

    repo_path = Path(_git(Path(repo), "rev-parse", "--show-toplevel"))
    full_sha = _git(repo_path, "rev-parse", "--verify", f"{sha}^{{commit}}")
    # One worktree per run: two triggers of the same commit may build at the same time.
    worktree = Path(home).resolve() / "worktrees" / f"{full_sha}-{uuid.uuid4().hex[:8]}"
    worktree.parent.mkdir(parents=True, exist_ok=True)
    _git(repo_path, "worktree", "add", "--detach", str(worktree), full_sha)
    try:
        outcomes = build_flow(str(worktree / pipeline), full_sha, home)
    finally:
        _git(repo_path, "worktree", "remove", "--force", str(worktree))
    return [asdict(outcome) for outcome in outcomes]


@flow(name="tapeout-watch", log_prints=False)
def watch_flow(repo: str, pipeline: str, branch: str = "main", home: str = ".tapeout") -> list[str]:
    """Build every commit of `branch` that changed the model or the pipeline and is not built
    yet, oldest first. Returns the commits built."""
    logger = get_run_logger()
    root = Path(_git(Path(repo), "rev-parse", "--show-toplevel"))
    registry = _registry_for(load_pipeline(root / pipeline), Path(home).resolve())
    pending = commits_to_build(root, pipeline, branch, registry)
    logger.info("%d commit(s) to build on %s: %s", len(pending), branch, ", ".join(s[:12] for s in pending))
    for sha in pending:
        build_commit_flow(str(root), pipeline, sha, home)
    return pending


def deployments(repo: Path, pipeline: str, branch: str, cron: str, home: Path) -> list:
    """The two deployments of one watched pipeline: a cron schedule and an event trigger."""
    from prefect.events import DeploymentEventTrigger

    root = Path(_git(repo, "rev-parse", "--show-toplevel"))
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
    root = Path(_git(repo, "rev-parse", "--show-toplevel"))
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
        root = Path(_git(repo, "rev-parse", "--show-toplevel"))
        load_pipeline(root / pipeline)  # refuse a hook for a pipeline that does not load
    hooks = Path(_git(repo, "rev-parse", "--git-path", "hooks"))
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
    return _git(repo, "rev-parse", "--is-bare-repository") == "true"


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
