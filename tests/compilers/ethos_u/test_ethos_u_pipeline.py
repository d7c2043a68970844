"""The example pipeline with an `ethos-u55` target, end to end through the command line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ethosu.vela")
pytest.importorskip("flatbuffers")
pytest.importorskip("ai_edge_litert")

from conftest import make_project  # noqa: E402

from tapeout.flows.cli import main  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

# The block docs/ethos-u.md shows and examples/digits/pipeline.yaml gains.
ETHOS_U55_TARGET = """\
  - name: ethos-u55
    compiler: ethos-u
    firmware_revision: "25.08"
    options:
      accelerator_config: ethos-u55-128
      system_config: Ethos_U55_High_End_Embedded
      memory_mode: Shared_Sram
      sram_budget_bytes: 65536
      flash_budget_bytes: 1048576
      allowed_cpu_ops: ""
"""


# Gates of the ethos-u55 target alone: the pipeline's accuracy gate and the NPU's share of MACs.
TARGET_GATES = """\
    gates:
      accuracy_drop: {max: 0.05}
      npu_mac_share: {min: 1.0}
"""


def test_example_pipeline_builds_the_ethos_u55_target(tmp_path, capsys):
    pipeline = make_project(tmp_path)
    text = pipeline.read_text()
    if "compiler: ethos-u" not in text:
        text = text.replace("\ngates:", "\n" + ETHOS_U55_TARGET + "\ngates:", 1)
    target = text.index("  - name: ethos-u55\n")
    end = text.index("  - name:", target + 1)
    pipeline.write_text(text[:end] + TARGET_GATES + text[end:])
    code = main(["run", str(pipeline), "--home", str(tmp_path / "home"), "--json"])
    assert code == 0
    capsys.readouterr()
    bundles = sorted((tmp_path / "home" / "bundles" / "digits-cnn-ethos-u55").iterdir())
    compiled = bundles[-1] / "compiled"
    assert (compiled / "model_vela.tflite").is_file() and (compiled / "vela.ini").is_file()
    benchmark = json.loads((bundles[-1] / "reports" / "benchmark.json").read_text())
    estimate = benchmark["compiler_report"]["vela_estimate"]
    assert estimate["label"] == "Vela estimate" and estimate["cpu_operators"] == []
    gates = {gate["metric"]: gate for gate in json.loads((bundles[-1] / "reports" / "gates.json").read_text())["gates"]}
    assert gates["npu_mac_share"]["observed"] == 1.0 and gates["npu_mac_share"]["passed"]
    assert "accuracy_drop" in gates
