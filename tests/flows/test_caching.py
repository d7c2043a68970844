"""Stage caching by input digest: a new commit that changes one target's options rebuilds only
that target; an unchanged stage's cached result is reused across processes."""

from __future__ import annotations

import json

import pytest

from tapeout.flows.cli import main
from conftest import git, make_project

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

TWO_TARGETS = """
  - name: cpu-fast
    compiler: onnxruntime
    firmware_revision: "1.32.0"
    options:
      graph_optimization_level: extended
      threads: 1
"""


def compile_folders(home):
    return {path.name: path.stat().st_mtime_ns for path in (home / "cache" / "compile").iterdir() if path.is_dir()}


def test_changing_one_targets_options_recompiles_only_that_target(tmp_path, capsys):
    pipeline = make_project(tmp_path)
    project = pipeline.parent
    text = pipeline.read_text()
    text = text.replace("\ngates:", TWO_TARGETS + "\ngates:")
    pipeline.write_text(text)
    git(project, "commit", "-qam", "two targets")
    home = tmp_path / "home"
    assert main(["run", str(pipeline), "--home", str(home), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    before = compile_folders(home)
    assert len(before) == len(first["targets"])

    pipeline.write_text(text.replace("graph_optimization_level: extended", "graph_optimization_level: disabled"))
    git(project, "commit", "-qam", "change cpu-fast only")
    assert main(["run", str(pipeline), "--home", str(home), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    after = compile_folders(home)
    assert len(after) == len(before) + 1, "exactly one new compile"
    assert {name: after[name] for name in before} == before, "earlier compiles untouched"
    versions = {t["target"]: t["version"] for t in second["targets"]}
    assert versions["cpu"] == versions["cpu-fast"] == "2"  # a new commit registers every target
    assert not any(t["reused"] for t in first["targets"])
    for stage in ("export", "calibrate", "quantize"):
        assert len([p for p in (home / "cache" / stage).iterdir() if p.is_dir()]) == 1, stage
