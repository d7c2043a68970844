"""Triggers: which commits the watcher builds, building them from worktrees, and the hooks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tapeout.artifacts.registry import Registry
from tapeout.compilers.errors import InvalidInput
from tapeout.flows.cli import main
from tapeout.flows.triggers import HOOK_MARKER, build_commit_flow, commits_to_build, install_hook
from conftest import git, make_project


@pytest.fixture
def repository(tmp_path):
    """The example in a git repo with three commits: the model, an unrelated README, and a
    pipeline change."""
    pipeline = make_project(tmp_path)
    project = pipeline.parent
    first = git(project, "rev-parse", "HEAD")
    (project / "NOTES.md").write_text("unrelated\n")
    git(project, "add", "NOTES.md")
    git(project, "commit", "-qm", "notes only")
    unrelated = git(project, "rev-parse", "HEAD")
    pipeline.write_text(pipeline.read_text().replace("latency_p95_ms: {max: 50}", "latency_p95_ms: {max: 40}"))
    git(project, "commit", "-qam", "tighter latency gate")
    third = git(project, "rev-parse", "HEAD")
    return {"project": project, "commits": (first, unrelated, third), "home": tmp_path / "home"}


def registry_of(home):
    return Registry(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")


def test_watcher_skips_commits_that_touch_neither_model_nor_pipeline(repository):
    first, _, third = repository["commits"]
    pending = commits_to_build(repository["project"], "pipeline.yaml", "main", registry_of(repository["home"]))
    assert pending == [first, third]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_watch_once_builds_pending_commits_oldest_first_and_then_nothing(repository, capsys):
    first, _, third = repository["commits"]
    home = repository["home"]
    arguments = ["watch", str(repository["project"]), "--pipeline", "pipeline.yaml", "--once", "--home", str(home)]
    assert main(arguments) == 0
    assert f"built 2 commit(s): {first[:12]} {third[:12]}" in capsys.readouterr().out
    registry = registry_of(home)
    assert registry.find_version("digits-cnn-cpu", {"commit": first}).version == "1"
    assert registry.find_version("digits-cnn-cpu", {"commit": third}).version == "2"
    assert main(arguments) == 0
    assert "none pending" in capsys.readouterr().out
    # the same commit triggered again (a second event) reports the existing version
    outcomes = build_commit_flow(str(repository["project"]), "pipeline.yaml", third, str(home))
    assert outcomes[0]["version"] == "2" and outcomes[0]["reused"]
    assert list((home / "worktrees").iterdir()) == []
    assert git(repository["project"], "worktree", "list").count("\n") == 0


def test_hooks_are_installed_executable_and_never_overwrite_a_foreign_hook(repository):
    project = repository["project"]
    written = install_hook(project, "pipeline.yaml", "http://127.0.0.1:4200/api")
    assert {path.name for path in written} == {"post-commit", "post-receive"}
    for path in written:
        assert path.stat().st_mode & stat.S_IXUSR
        assert HOOK_MARKER in path.read_text()
        assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in path.read_text()
    install_hook(project, "pipeline.yaml", None)  # reinstalling our own hook is fine
    foreign = project / ".git" / "hooks" / "post-commit"
    foreign.write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(InvalidInput, match="a hook tapeout did not install"):
        install_hook(project, "pipeline.yaml", None)


def test_emitting_without_a_server_fails_clearly(repository):
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    completed = subprocess.run(
        [sys.executable, "-m", "tapeout.flows.triggers", "emit", "--repo", str(repository["project"]),
         "--pipeline", "pipeline.yaml", "--sha", repository["commits"][0], "--branch", "main"],
        capture_output=True, text=True, env=environment,
    )
    assert completed.returncode == 2
    assert "needs a running Prefect server: set PREFECT_API_URL" in completed.stderr


def test_watch_names_a_branch_that_does_not_exist_in_one_line(tmp_path):
    """git's own default branch is `master`: watching `main` there is one error line listing
    the branches, before Prefect starts (a real process: Prefect's console output included)."""
    pipeline = make_project(tmp_path)
    git(pipeline.parent, "branch", "-m", "main", "master")
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    completed = subprocess.run(
        [sys.executable, "-m", "tapeout.flows.cli", "watch", str(pipeline.parent), "--pipeline", "pipeline.yaml",
         "--branch", "main", "--once", "--home", str(tmp_path / "home")],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        f"error: {pipeline.parent}: --branch main: expected a branch of the repository, found none by that name; "
        "its branches: master"
    ]


def test_watch_defaults_to_the_current_branch(repository):
    from tapeout.flows.triggers import branch_to_watch

    project = repository["project"]
    git(project, "branch", "-m", "main", "trunk")
    assert branch_to_watch(project, None) == "trunk"
    git(project, "checkout", "-q", "--detach")
    with pytest.raises(InvalidInput, match="HEAD is detached, on no branch; pass --branch NAME"):
        branch_to_watch(project, None)
