"""The `onnxruntime` plugin and the plugin registry, through their public functions."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from tapeout.compilers.errors import InvalidInput, PluginError
from tapeout.compilers.interface import Capabilities, TargetProfile
from tapeout.compilers.registry import load_compiler, plugin_statuses
from tapeout.flows.stages import compile_stage


def target(**options) -> TargetProfile:
    return TargetProfile("cpu", "onnxruntime", "1.32.0", options=options)


def test_artifact_runs_exactly_like_an_onnxruntime_session_on_the_qdq_model(quantized_model, tmp_path):
    import onnxruntime

    compiler = load_compiler("onnxruntime")
    artifact = compiler.compile(quantized_model, target(), tmp_path)
    assert artifact.files == ("model.ort.onnx", "session.json")
    assert artifact.artifact_id.startswith(f"onnxruntime-{compiler.version}-")
    assert artifact.options == {"graph_optimization_level": "basic", "threads": "1"}
    runner = compiler.load(artifact)
    reference = onnxruntime.InferenceSession(str(quantized_model.path), providers=["CPUExecutionProvider"])
    generator = np.random.default_rng(1)
    for _ in range(5):
        image = generator.random((1, 1, 16, 16), dtype=np.float32)
        expected = reference.run(None, {"image": image})[0]
        np.testing.assert_array_equal(runner.run({"image": image})["logits"], expected)


def test_same_model_and_options_give_the_same_artifact_id(quantized_model, tmp_path):
    compiler = load_compiler("onnxruntime")
    first = compiler.compile(quantized_model, target(), tmp_path / "a")
    second = compiler.compile(quantized_model, target(), tmp_path / "b")
    other = compiler.compile(quantized_model, target(threads="2"), tmp_path / "c")
    assert first.artifact_id == second.artifact_id != other.artifact_id


def test_unknown_option_and_bad_value_are_named(quantized_model, tmp_path):
    compiler = load_compiler("onnxruntime")
    with pytest.raises(InvalidInput, match=r"unknown option\(s\) \['fast'\]"):
        compiler.compile(quantized_model, target(fast="yes"), tmp_path)
    with pytest.raises(InvalidInput, match="graph_optimization_level: expected one of"):
        compiler.compile(quantized_model, target(graph_optimization_level="max"), tmp_path)


def test_firmware_older_than_the_opset_needs_is_refused(quantized_model, tmp_path):
    old = TargetProfile("cpu", "onnxruntime", "1.10.0")
    with pytest.raises(InvalidInput, match="firmware_revision 1.10.0 cannot run opset"):
        compile_stage(quantized_model, old, tmp_path)


def test_capabilities_are_readable_without_compiling():
    capabilities = load_compiler("onnxruntime").capabilities()
    assert isinstance(capabilities, Capabilities)
    assert {"Conv", "QuantizeLinear", "DequantizeLinear", "Gemm"} <= capabilities.operators


def test_unregistered_compiler_is_named():
    with pytest.raises(PluginError, match="'no-such-npu': not registered"):
        load_compiler("no-such-npu")


def test_a_broken_plugin_is_named_and_does_not_hide_the_others(tmp_path, monkeypatch):
    """Two third-party plugins installed through entry points: one fails to import, one
    lacks a method. Both are named with their problem; the built-in plugin still loads."""
    site = tmp_path / "site"
    (site / "broken_vendor").mkdir(parents=True)
    (site / "broken_vendor" / "__init__.py").write_text("import not_a_real_module\n")
    (site / "half_vendor.py").write_text(
        textwrap.dedent(
            """
            class Compiler:
                name = "half"
                version = "0.1"
                def capabilities(self): ...
            """
        )
    )
    dist = site / "vendor_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vendor-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[tapeout.compilers]\nbroken = broken_vendor:Compiler\nhalf = half_vendor:Compiler\n"
    )
    monkeypatch.syspath_prepend(str(site))
    statuses = {status.name: status for status in plugin_statuses()}
    assert "cannot import broken_vendor:Compiler" in statuses["broken"].problem
    assert "No module named 'not_a_real_module'" in statuses["broken"].problem
    assert "lacks method(s) ['compile', 'load']" in statuses["half"].problem
    assert statuses["onnxruntime"].compiler is not None
    with pytest.raises(PluginError, match="'broken'"):
        load_compiler("broken")
    sys.modules.pop("half_vendor", None)
