"""The contract every registered compiler plugin must keep (docs/plugins.md), one parametrised suite
over `plugin_statuses()`: built-in, optional and third-party plugins alike.

For each plugin: capabilities are readable without compiling; a tiny QDQ model compiles,
loads and runs; compiling twice gives the same artifact; an op it cannot build is refused
with a TapeoutError naming the node; its version is recorded in the artifact and survives
`compiler.json`. A plugin whose optional toolchain is not installed is skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from plugin_models import UNSUPPORTED_NODE, float_reference, quantize_tiny, sample_inputs, with_unsupported_op
from tapeout.artifacts.compiled import read_record, write_record
from tapeout.compilers.errors import TapeoutError, UnsupportedOperator
from tapeout.compilers.interface import Capabilities, CompiledArtifact, Runner, TargetProfile
from tapeout.compilers.registry import PluginStatus, plugin_statuses
from tapeout.compilers.versions import parse_version

# The module each optional toolchain brings; a plugin whose module is missing is skipped.
OPTIONAL_TOOLCHAINS = {"ethos-u": "ethosu.vela", "openvino": "openvino"}
# Per plugin: the firmware revision and options the tiny model is built for (default: the
# oldest firmware the plugin supports, no options).
TARGETS = {
    "onnxruntime": ("1.32.0", {}),
    "fp16": ("1.32.0", {}),
    "ethos-u": ("25.08", {}),
}
FORMATS = {"qdq", "qoperator", "float"}

STATUSES = plugin_statuses()


def _params():
    for status in STATUSES:
        marks = []
        module = OPTIONAL_TOOLCHAINS.get(status.name)
        if module and importlib.util.find_spec(module.split(".")[0]) is None:
            marks.append(pytest.mark.skip(reason=f"{status.name}: optional toolchain {module} not installed"))
        yield pytest.param(status, id=status.name, marks=marks)


@pytest.fixture(params=list(_params()))
def plugin(request) -> PluginStatus:
    status: PluginStatus = request.param
    assert status.compiler is not None, f"plugin {status.name!r} ({status.source}) is broken: {status.problem}"
    return status


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return quantize_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def mystery(tmp_path_factory):
    return with_unsupported_op(tmp_path_factory.mktemp("mystery"))


def target_for(status: PluginStatus) -> TargetProfile:
    firmware, options = TARGETS.get(status.name, (status.compiler.capabilities().firmware_range[0], {}))
    return TargetProfile(f"contract-{status.name}", status.name, firmware, options)


def test_capabilities_are_data_readable_without_compiling(plugin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    capabilities = plugin.compiler.capabilities()
    assert time.perf_counter() - start < 5.0
    assert isinstance(capabilities, Capabilities)
    assert capabilities.operators and all(isinstance(op, str) for op in capabilities.operators)
    assert capabilities.input_formats and capabilities.input_formats <= FORMATS
    oldest, newest = capabilities.firmware_range
    parse_version(oldest)
    if newest is not None:
        assert parse_version(newest) >= parse_version(oldest)
    assert all(isinstance(values, tuple) for values in capabilities.options.values())
    assert list(tmp_path.iterdir()) == [], "capabilities() must not write files"
    assert capabilities == plugin.compiler.capabilities()


def _compile(plugin: PluginStatus, model, folder: Path) -> CompiledArtifact:
    return plugin.compiler.compile(model, target_for(plugin), folder)


def test_compiles_loads_and_runs_the_tiny_model(plugin, tiny, tmp_path):
    artifact = _compile(plugin, tiny, tmp_path / "out")
    assert isinstance(artifact, CompiledArtifact)
    assert artifact.compiler == plugin.name
    assert artifact.files == tuple(sorted(artifact.files)) and artifact.files
    for name in artifact.files:
        assert (artifact.directory / name).is_file(), f"listed file {name} missing"
    assert [spec.name for spec in artifact.inputs] == ["x"]
    assert [spec.name for spec in artifact.outputs] == ["y"]
    runner = plugin.compiler.load(artifact)
    assert isinstance(runner, Runner)
    feeds = sample_inputs(8, seed=5)
    expected = float_reference(tiny, feeds)
    agreement = []
    for feed, reference in zip(feeds, expected):
        outputs = runner.run(feed)
        assert set(outputs) == {"y"}
        got = np.asarray(outputs["y"], dtype=np.float32)
        assert got.shape == (1, 10)
        assert np.all(np.isfinite(got))
        # int8 keeps the logits within a few quantization steps of fp32 on this model.
        scale = float(np.abs(reference).max())
        assert float(np.abs(got - reference).max()) <= 0.25 * scale + 1e-3
        agreement.append(int(got.argmax() == reference.argmax()))
    assert sum(agreement) >= 6


def test_compiling_twice_gives_the_same_artifact(plugin, tiny, tmp_path):
    first = _compile(plugin, tiny, tmp_path / "a")
    second = _compile(plugin, tiny, tmp_path / "b")
    assert first.artifact_id == second.artifact_id
    assert first.files == second.files
    for name in first.files:
        assert (first.directory / name).read_bytes() == (second.directory / name).read_bytes(), (
            f"{plugin.name}: {name} differs between two compiles of the same model"
        )
    feed = sample_inputs(1, seed=9)[0]
    one = plugin.compiler.load(first).run(feed)["y"]
    two = plugin.compiler.load(second).run(feed)["y"]
    np.testing.assert_array_equal(one, two)


def test_an_unsupported_op_is_refused_naming_the_node(plugin, mystery, tmp_path):
    with pytest.raises(TapeoutError) as raised:
        _compile(plugin, mystery, tmp_path / "out")
    assert UNSUPPORTED_NODE in str(raised.value), f"{plugin.name}: the error does not name the node"
    assert "Mystery" in str(raised.value), f"{plugin.name}: the error does not name the op"
    if isinstance(raised.value, UnsupportedOperator):
        assert raised.value.node == UNSUPPORTED_NODE
        assert raised.value.compiler == plugin.name


def test_version_is_recorded_in_the_artifact_and_its_record(plugin, tiny, tmp_path):
    artifact = _compile(plugin, tiny, tmp_path / "out")
    assert artifact.compiler_version == plugin.compiler.version
    assert plugin.compiler.version in artifact.artifact_id
    parse_version(artifact.minimum_firmware_revision)
    write_record(artifact, target_for(plugin).firmware_revision)
    reread, record = read_record(artifact.directory)
    assert record["compiler_version"] == plugin.compiler.version
    assert reread.files == artifact.files
    # A reloaded record runs like the artifact it describes.
    feed = sample_inputs(1, seed=3)[0]
    np.testing.assert_array_equal(
        plugin.compiler.load(reread).run(feed)["y"], plugin.compiler.load(artifact).run(feed)["y"]
    )


def test_tapeout_compilers_names_a_broken_plugin_and_still_lists_the_others(tmp_path, monkeypatch, capsys):
    from tapeout.flows.cli import main

    site = tmp_path / "site"
    site.mkdir()
    (site / "noisy_vendor.py").write_text("raise RuntimeError('licence server unreachable')\n")
    dist = site / "noisy_vendor-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: noisy-vendor\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tapeout.compilers]\nnoisy = noisy_vendor:Compiler\n")
    monkeypatch.syspath_prepend(str(site))
    assert main(["compilers", "--home", str(tmp_path / "home")]) == 1
    lines = capsys.readouterr().out.splitlines()
    broken = [line for line in lines if line.startswith("noisy")]
    assert broken and "BROKEN" in broken[0]
    assert "RuntimeError: licence server unreachable" in broken[0]
    listed = {line.split()[0] for line in lines}
    assert {status.name for status in STATUSES} <= listed
