"""The stage store in a build: a second home, empty, builds a new commit from the stages the
first home built (fetched from the artifact store, checked) and runs none of them again."""

from __future__ import annotations

import json

import pytest
import yaml

from tapeout.flows.cli import main
from conftest import git, make_project

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

CACHED_STAGES = ("export", "calibrate", "quantize", "reference", "compile", "evaluate")
# The progress line of each (flows/pipeline.py): the label, then "(cached)", "(from the stage
# store, built by worker ...)" or nothing when the stage runs.
STAGE_LABELS = ("· export ", "· calibrate (", "· quantize", "· fp32 reference ", "· [cpu] compile ", "· [cpu] evaluate ")


def one_target_project(root, registry: dict) -> tuple:
    pipeline = make_project(root)
    document = yaml.safe_load(pipeline.read_text())
    document["targets"] = [target for target in document["targets"] if target["name"] == "cpu"]
    document["registry"] = registry
    pipeline.write_text(yaml.safe_dump(document, sort_keys=False))
    git(pipeline.parent, "commit", "-qam", "cpu only, a shared registry")
    return pipeline, pipeline.parent


def new_commit(pipeline, project, bound: int) -> None:
    pipeline.write_text(pipeline.read_text().replace("max: 50", f"max: {bound}"))
    git(project, "commit", "-qam", f"latency gate {bound}")


def stage_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("· ")]


def test_an_empty_home_takes_every_stage_from_the_store(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    pipeline, project = one_target_project(
        tmp_path, {"tracking_uri": f"sqlite:///{shared / 'mlflow.db'}", "stage_store": True}
    )
    assert main(["run", str(pipeline), "--home", str(tmp_path / "home-a"), "--json"]) == 0
    first = capsys.readouterr()
    assert not [line for line in stage_lines(first.err) if "from the stage store" in line]

    new_commit(pipeline, project, 49)
    assert main(["run", str(pipeline), "--home", str(tmp_path / "home-b"), "--json"]) == 0
    second = capsys.readouterr()
    stages = [line for line in stage_lines(second.err) if line.startswith(STAGE_LABELS)]
    assert len(stages) == len(CACHED_STAGES) and all("from the stage store" in line for line in stages), second.err
    for stage in CACHED_STAGES:
        assert any((tmp_path / "home-b" / "cache" / stage).iterdir()), stage
    (target,) = json.loads(second.out)["targets"]
    assert target["gate_verdict"] == "pass" and target["version"] == "2"
