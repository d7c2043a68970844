"""The pipeline config: valid files load; each wrong field is named with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tapeout.flows.cli import main
from tapeout.flows.config import ConfigError, load_pipeline
from conftest import EXAMPLE, git

VALID = (EXAMPLE / "pipeline.yaml").read_text()


def cpu_target_block() -> str:
    start = VALID.index("  - name: cpu\n")
    return VALID[start : VALID.index("  - name:", start + 1)]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_example_pipeline_loads_with_paths_relative_to_the_file():
    pipeline = load_pipeline(EXAMPLE / "pipeline.yaml")
    assert pipeline.config.model.name == "digits-cnn"
    assert pipeline.inputs[0].shape == (1, 1, 16, 16)
    assert pipeline.resolve(pipeline.config.calibration.set) == EXAMPLE / "data" / "calibration.npz"
    assert [t.name for t in pipeline.config.targets][0] == "cpu"


def test_unknown_field_is_named_with_its_line(tmp_path):
    text = VALID.replace("  samples: 300\n", "  samples: 300\n  bins: 2048\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, text))
    line = text.splitlines().index("  bins: 2048") + 1
    assert caught.value.line == line
    assert caught.value.field == "calibration.bins"
    assert "unknown field" in str(caught.value)


def test_missing_field_is_named(tmp_path):
    text = VALID.replace("    compiler: onnxruntime\n", "")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, text))
    assert caught.value.field == "targets[0].compiler"
    assert "required field is missing" in str(caught.value)


def test_wrong_value_says_expected_and_found(tmp_path):
    text = VALID.replace("  method: entropy ", "  method: kl ")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, text))
    message = str(caught.value)
    assert caught.value.field == "calibration.method"
    assert "'minmax'" in message and "'kl'" in message
    assert caught.value.line == next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("  method: kl"))


def test_firmware_revision_must_be_a_version(tmp_path):
    text = VALID.replace('firmware_revision: "1.32.0"', "firmware_revision: latest")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, text))
    assert caught.value.field == "targets[0].firmware_revision"
    assert "'latest'" in str(caught.value)


def test_gate_needs_exactly_one_bound_and_a_known_metric(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, VALID.replace("{max: 0.02}", "{max: 0.02, min: 0}")))
    assert caught.value.field == "gates.accuracy_drop"
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, VALID.replace("top1_agreement:", "agreement:")))
    assert caught.value.field.startswith("gates.agreement")


def test_model_source_needs_exactly_one_kind(tmp_path):
    text = VALID.replace("  source:\n", "  source:\n    onnx: model.onnx\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, text))
    assert caught.value.field == "model.source"
    assert "exactly one of 'pytorch' or 'onnx'" in str(caught.value)


def test_malformed_yaml_names_the_line(tmp_path):
    text = VALID.replace("  samples: 300\n", "  samples: [300\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, text))
    assert "not valid YAML" in str(caught.value)
    assert caught.value.line is not None


def test_duplicate_target_names_are_refused(tmp_path):
    target = cpu_target_block()
    text = VALID.replace(target, target + target)
    with pytest.raises(ConfigError, match="unique"):
        load_pipeline(write(tmp_path, text))


def test_per_target_digest_ignores_other_targets(tmp_path):
    target = cpu_target_block()
    one = load_pipeline(write(tmp_path, VALID))
    two_text = VALID.replace(target, target + target.replace("name: cpu", "name: cpu2").replace("threads: 1", "threads: 2"))
    two = load_pipeline(write(tmp_path, two_text))
    assert one.digest(one.config.targets[0]) == two.digest(two.config.targets[0])
    assert two.digest(two.config.targets[0]) != two.digest(two.config.targets[1])


def test_where_the_targets_run_is_not_part_of_what_they_build(tmp_path):
    threads = load_pipeline(write(tmp_path, VALID))
    dask = load_pipeline(write(tmp_path, VALID + "runner:\n  dask_scheduler: tcp://10.0.0.5:8786\n"))
    assert dask.config.runner.dask_scheduler == "tcp://10.0.0.5:8786"
    assert threads.config.runner.dask_scheduler is None
    assert dask.digest() == threads.digest()
    assert dask.digest(dask.config.targets[0]) == threads.digest(threads.config.targets[0])
    assert "runner" not in dask.resolved()


def test_command_line_exits_2_with_one_line_naming_the_field(tmp_path, capsys):
    path = write(tmp_path, VALID.replace("  samples: 300\n", "  samples: 300\n  bins: 2048\n"))
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "a pipeline")
    code = main(["run", str(path), "--home", str(tmp_path / "home")])
    error = capsys.readouterr().err
    assert code == 2
    assert f"{path}:" in error and "calibration.bins: unknown field" in error
    assert "Traceback" not in error


def test_missing_pipeline_file_exits_2(tmp_path, capsys):
    code = main(["run", str(tmp_path / "absent.yaml"), "--home", str(tmp_path / "home")])
    assert code == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_memory_budget_becomes_a_peak_memory_gate_unless_the_target_sets_one(tmp_path):
    from tapeout.flows.gates import check_gates

    pipeline = load_pipeline(EXAMPLE / "pipeline.yaml")
    npu = next(target for target in pipeline.config.targets if target.name == "npu-int8")
    cpu = next(target for target in pipeline.config.targets if target.name == "cpu")
    gates = pipeline.gates_for(npu)
    assert gates["peak_memory_bytes"].max == npu.memory_budget_bytes == 65536
    assert "peak_memory_bytes" not in pipeline.gates_for(cpu)  # no budget, no gate
    over, unmeasured = (
        check_gates(gates, {"peak_memory_bytes": 65537.0}), check_gates(gates, {})
    )
    assert not next(g for g in over if g.metric == "peak_memory_bytes").passed
    assert not next(g for g in unmeasured if g.metric == "peak_memory_bytes").passed
    # A target's own peak_memory_bytes gate wins over the budget.
    text = VALID.replace(
        "    memory_budget_bytes: 65536         # the arena the static memory plan must fit (gated)\n",
        "    memory_budget_bytes: 65536\n    gates:\n      peak_memory_bytes: {max: 4096}\n",
    )
    own = load_pipeline(write(tmp_path, text))
    target = next(target for target in own.config.targets if target.name == "npu-int8")
    assert own.gates_for(target)["peak_memory_bytes"].max == 4096
