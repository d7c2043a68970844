"""A pipeline whose `source: onnx:` model has a dynamic batch builds: the config's static
`model.inputs` shape pins it before calibration, quantization and every compiler."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import yaml

from tapeout.flows.cli import main
from conftest import git, make_project

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_a_dynamic_batch_onnx_model_builds_pinned_by_the_config(dynamic_batch_model, tmp_path, capsys):
    pipeline = make_project(tmp_path)
    shutil.copyfile(dynamic_batch_model, pipeline.parent / "digits-dynamic.onnx")
    config = yaml.safe_load(pipeline.read_text())
    config["model"]["source"] = {"onnx": "digits-dynamic.onnx"}
    assert config["model"]["inputs"][0]["shape"] == [1, 1, 16, 16]
    config["targets"] = [target for target in config["targets"] if target["name"] in ("cpu", "npu-int8")]
    pipeline.write_text(yaml.safe_dump(config, sort_keys=False))
    git(pipeline.parent, "add", "-A")
    git(pipeline.parent, "commit", "-qm", "dynamic batch")

    code = main(["run", str(pipeline), "--home", str(tmp_path / "home"), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0, document
    assert [target["gate_verdict"] for target in document["targets"]] == ["pass", "pass"]
    for target in document["targets"]:
        exported = onnx.load(f"{target['bundle_path']}/model/model.onnx")
        dims = [dim.dim_value for dim in exported.graph.input[0].type.tensor_type.shape.dim]
        assert dims == [1, 1, 16, 16]
