"""The out-of-tree plugin in examples/vendor-plugin (`acme-npu`), installed into the test
environment (`make test` runs `pip install -e examples/vendor-plugin`) and found only
through its `tapeout.compilers` entry point: compiled by hand, through the command line and
through the whole pipeline, with its toolchain's log in the bundle, its timeout and its
diagnostics."""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from importlib.metadata import entry_points

import numpy as np
import pytest
import yaml

from plugin_models import UNSUPPORTED_NODE, with_unsupported_op
from tapeout.compilers.errors import CompilationFailed, InvalidInput, UnsupportedOperator
from tapeout.compilers.interface import TargetProfile
from tapeout.compilers.registry import load_compiler
from tapeout.flows.cli import main
from conftest import git, make_project

ENTRY = next((e for e in entry_points(group="tapeout.compilers") if e.name == "acme-npu"), None)


def target(**options) -> TargetProfile:
    return TargetProfile("acme", "acme-npu", "3.1", options=options)


def test_the_plugin_is_installed_as_its_own_distribution_through_the_entry_point():
    assert ENTRY is not None, (
        "acme-npu is not registered: install the example with `pip install -e examples/vendor-plugin` "
        "(make test does)"
    )
    assert ENTRY.value == "acme_npu.plugin:AcmeNpuCompiler"
    assert ENTRY.dist is not None and ENTRY.dist.name == "acme-npu-tapeout"
    compiler = load_compiler("acme-npu")
    assert compiler.version == "2.1.0"


def test_tapeout_compilers_lists_the_vendor_plugin_with_its_source(tmp_path, capsys):
    assert main(["compilers", "--json", "--home", str(tmp_path / "home")]) in (0, 1)
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["acme-npu"]["status"] == "ok"
    assert rows["acme-npu"]["source"] == "acme_npu.plugin:AcmeNpuCompiler"
    assert rows["acme-npu"]["version"] == "2.1.0"


def test_compiled_artifact_keeps_the_toolchain_log_and_command_and_runs(quantized_model, tmp_path):
    import onnxruntime

    compiler = load_compiler("acme-npu")
    artifact = compiler.compile(quantized_model, target(), tmp_path)
    assert artifact.files == ("model.acme", "toolchain.json", "toolchain.log")
    log = (tmp_path / "toolchain.log").read_text()
    assert log.startswith("acme-npuc 2.1.0\n") and "[done]" in log and "-> NPU" in log
    command = json.loads((tmp_path / "toolchain.json").read_text())
    assert command["exit_code"] == 0 and command["toolchain_version"] == "2.1.0"
    assert command["command"][0] == "acme-npuc"
    assert artifact.report["peak_memory_bytes"] > 0
    runner = compiler.load(artifact)
    reference = onnxruntime.InferenceSession(str(quantized_model.path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(4).random((1, 1, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(runner.run({"image": image})["logits"], reference.run(None, {"image": image})[0])


def test_unsupported_input_carries_the_toolchain_diagnostic(tmp_path):
    model = with_unsupported_op(tmp_path / "model")
    with pytest.raises(UnsupportedOperator) as raised:
        load_compiler("acme-npu").compile(model, target(), tmp_path / "out")
    assert raised.value.node == UNSUPPORTED_NODE and raised.value.op_type == "com.example.Mystery"
    assert "ACME-E104" in str(raised.value)
    assert "ACME-E104" in (tmp_path / "out" / "toolchain.log").read_text()
    assert json.loads((tmp_path / "out" / "toolchain.json").read_text())["exit_code"] == 3


def test_a_model_too_big_for_the_npu_fails_with_the_diagnostic(quantized_model, tmp_path):
    with pytest.raises(CompilationFailed, match=r"acme-npuc 2\.1\.0 exited 4: error: ACME-E201: model needs \d+ B"):
        load_compiler("acme-npu").compile(quantized_model, target(sram_kib="1"), tmp_path)


def fake_toolchain(folder, body: str):
    script = folder / "acme-npuc"
    script.write_text(
        f"#!{sys.executable}\nimport sys, time\n"
        "if '--version' in sys.argv:\n    print('acme-npuc 2.1.0'); sys.exit(0)\n" + textwrap.dedent(body)
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_a_hanging_toolchain_is_killed_at_the_timeout_and_named(quantized_model, tmp_path):
    script = fake_toolchain(tmp_path, "print('[parse] thinking', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(CompilationFailed) as raised:
        load_compiler("acme-npu").compile(
            quantized_model, target(toolchain=str(script), timeout_seconds="1"), tmp_path / "out"
        )
    message = str(raised.value)
    assert "acme-npuc 2.1.0 did not finish within 1 s (option timeout_seconds)" in message
    assert "[parse] thinking" in message
    assert json.loads((tmp_path / "out" / "toolchain.json").read_text())["exit_code"] is None


def test_a_crashing_toolchain_reports_its_last_line(quantized_model, tmp_path):
    script = fake_toolchain(tmp_path, "print('Segmentation fault (core dumped)', file=sys.stderr)\nsys.exit(139)\n")
    with pytest.raises(CompilationFailed, match="exited 139: Segmentation fault"):
        load_compiler("acme-npu").compile(quantized_model, target(toolchain=str(script)), tmp_path / "out")


def test_another_toolchain_version_or_a_bad_option_is_refused(quantized_model, tmp_path):
    script = tmp_path / "old-acme-npuc"
    script.write_text("#!/bin/sh\necho 'acme-npuc 1.9.3'\n")
    script.chmod(0o755)
    compiler = load_compiler("acme-npu")
    with pytest.raises(InvalidInput, match="expected acme-npuc 2.1.0, found '1.9.3'"):
        compiler.compile(quantized_model, target(toolchain=str(script)), tmp_path / "a")
    with pytest.raises(InvalidInput, match="timeout_seconds: expected a positive number, found 'soon'"):
        compiler.compile(quantized_model, target(timeout_seconds="soon"), tmp_path / "b")


def test_compile_and_infer_by_hand_through_the_command_line(quantized_model, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compile", str(quantized_model.path), "--compiler", "acme-npu", "--firmware", "3.1",
                 "-o", str(out), "--home", str(tmp_path / "home")])
    assert code == 0, capsys.readouterr().err
    assert "toolchain.log" in capsys.readouterr().out
    np.savez(tmp_path / "in.npz", image=np.zeros((1, 1, 16, 16), np.float32))
    assert main(["infer", str(out), "--inputs", str(tmp_path / "in.npz"), "--outputs",
                 str(tmp_path / "o.npz"), "--home", str(tmp_path / "home")]) == 0
    assert np.load(tmp_path / "o.npz")["logits"].shape == (1, 10)


@pytest.mark.slow
def test_the_vendor_plugin_runs_through_the_whole_pipeline(tmp_path, prefect_harness, capsys):
    pipeline = make_project(tmp_path)
    document = yaml.safe_load(pipeline.read_text())
    document["targets"] = [{
        "name": "acme", "compiler": "acme-npu", "firmware_revision": "3.1",
        "options": {"timeout_seconds": 120},
    }]
    pipeline.write_text(yaml.safe_dump(document, sort_keys=False))
    git(pipeline.parent, "commit", "-qam", "acme target")
    home = tmp_path / "home"
    code = main(["run", str(pipeline), "--home", str(home), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    outcome = result["targets"][0]
    assert outcome["gate_verdict"] == "pass" and outcome["registered_model"] == "digits-cnn-acme"
    bundle = home / "bundles" / "digits-cnn-acme"
    bundle = next(bundle.iterdir())
    log = (bundle / "compiled" / "toolchain.log").read_text()
    assert "acme-npuc 2.1.0" in log and "[done]" in log
    record = json.loads((bundle / "compiled" / "compiler.json").read_text())
    assert record["compiler"] == "acme-npu" and record["compiler_version"] == "2.1.0"
    assert main(["verify", str(bundle), "--home", str(home)]) == 0
