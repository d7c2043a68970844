"""`tapeout diff`: an artifact against a reference compiler, per output and per layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from plugin_models import quantize_tiny
from tapeout.artifacts.compiled import write_record
from tapeout.compilers.diff import compare_runners, output_lsb
from tapeout.flows.diff import run_diff
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TargetProfile, TensorSpec
from tapeout.compilers.registry import load_compiler
from tapeout.flows.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diff")
    model = quantize_tiny(folder / "model")
    samples = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    np.savez(folder / "set.npz", x=samples)
    return {"folder": folder, "model": model, "set": folder / "set.npz"}


def compiled(tiny, compiler: str, firmware: str, folder: Path):
    artifact = load_compiler(compiler).compile(tiny["model"], TargetProfile("t", compiler, firmware), folder)
    write_record(artifact, firmware)
    return artifact


def run_json(capsys, *arguments) -> tuple[int, dict]:
    code = main(["diff", *map(str, arguments), "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {"stderr": out.err})


def test_output_lsb_is_the_scale_of_the_final_dequantize(tiny):
    steps = output_lsb(tiny["model"].path)
    assert set(steps) == {"y"} and 0 < steps["y"] < 0.1


def test_a_tracing_vendor_plugin_is_compared_per_output_and_per_layer(tiny, tmp_path, capsys):
    out = tmp_path / "acme"
    compiled(tiny, "acme-npu", "3.1", out)
    code, report = run_json(
        capsys, out, "--model", tiny["model"].path, "--set", tiny["set"], "--home", tmp_path / "home"
    )
    assert code == 0, report
    assert report["reference"]["compiler"] == "int8-ref"
    assert report["samples"] == 40
    (output,) = report["outputs"]
    assert output["name"] == "y" and output["elements"] == 400
    assert sum(output["buckets"].values()) == 400
    assert output["top1_agreement"] >= 0.95
    assert output["lsb_source"] == "output DequantizeLinear scale"
    layers = [layer["name"] for layer in report["layers"]]
    assert layers == ["x_QuantizeLinear_Output", "relu_QuantizeLinear_Output",
                      "flat_QuantizeLinear_Output", "y_QuantizeLinear_Output"]
    assert report["first_divergent_layer"] is None  # within 1 LSB everywhere


def test_an_artifact_without_intermediates_is_compared_per_output_and_says_why(tiny, tmp_path, capsys):
    out = tmp_path / "ort"
    compiled(tiny, "onnxruntime", "1.32.0", out)
    code, report = run_json(capsys, out, "--model", tiny["model"].path, "--set", tiny["set"],
                            "--home", tmp_path / "home")
    assert code == 0, report
    assert report["layers"] == []
    assert "candidate runner exposes no intermediates" in report["layers_note"]
    # int8-ref stays within one LSB of ONNX Runtime's kernels in either requantization mode.
    assert report["outputs"][0]["buckets"][">2"] == 0


def test_a_miscompiled_layer_is_named_as_the_first_divergent_one():
    """A candidate whose second layer is 3 LSB off on some elements (what a wrong
    requantization shift looks like): the report names that layer, not the later ones."""

    class Reference:
        def trace(self, inputs):
            x = inputs["x"]
            a = np.clip(np.rint(x * 100), -128, 127).astype(np.int8)
            b = np.clip(a.astype(np.int32) // 2, -128, 127).astype(np.int8)
            c = np.clip(b.astype(np.int32) + 1, -128, 127).astype(np.int8)
            return {"a": a, "b": b, "c": c}

        def run(self, inputs):
            return {"y": self.trace(inputs)["c"].astype(np.float32) * 0.5}

    class Candidate(Reference):
        def trace(self, inputs):
            traced = super().trace(inputs)
            b = traced["b"].astype(np.int32)
            b[..., :2] += 3
            b = b.astype(np.int8)
            return {"a": traced["a"], "b": b, "c": (b.astype(np.int32) + 1).astype(np.int8)}

        def run(self, inputs):
            return {"y": self.trace(inputs)["c"].astype(np.float32) * 0.5}

    arrays = {"x": np.random.default_rng(1).random((6, 4), dtype=np.float32)}
    outputs, layers, note, first = compare_runners(
        Candidate(), Reference(), [arrays], (TensorSpec("x", (2, 4), "float32"),), 6, {"y": 0.5}
    )
    assert first == "b"
    by_name = {layer.name: layer for layer in layers}
    assert by_name["a"].buckets == {"exact": 24, "1": 0, "2": 0, ">2": 0}
    assert by_name["b"].buckets[">2"] == 12 and by_name["b"].max_lsb == 3
    assert outputs[0].buckets == {"exact": 12, "1": 0, "2": 0, ">2": 12}
    assert outputs[0].top1_agreement is not None


def make_bundle(tiny, bundle: Path) -> Path:
    """The parts of a bundle `diff` reads: model/, calibration/, compiled/."""
    (bundle / "model").mkdir(parents=True)
    (bundle / "calibration").mkdir()
    shutil.copyfile(tiny["model"].path, bundle / "model" / "model.qdq.onnx")
    shutil.copyfile(tiny["model"].float_path, bundle / "model" / "model.onnx")
    shutil.copyfile(tiny["set"], bundle / "calibration" / "calibration.npz")
    (bundle / "calibration" / "table.json").write_text("{}")
    compiled(tiny, "onnxruntime", "1.32.0", bundle / "compiled")
    return bundle


def test_a_bundle_is_diffed_on_its_own_calibration_set(tiny, tmp_path, capsys):
    bundle = make_bundle(tiny, tmp_path / "bundle")
    code, report = run_json(capsys, bundle, "--samples", 10, "--home", tmp_path / "home")
    assert code == 0, report
    assert report["samples"] == 10
    assert "the bundle's calibration set" in report["sample_set"]
    assert main(["diff", str(bundle), "--samples", "5", "--home", str(tmp_path / "home")]) == 0
    text = capsys.readouterr().out
    assert "1 LSB" in text and "per-layer comparison unavailable" in text


def test_fail_over_exits_1_naming_the_output(tiny, tmp_path, capsys):
    bundle = make_bundle(tiny, tmp_path / "bundle")
    # Against the float16 build, with a tiny LSB override, any float difference is many "LSB".
    home = ["--home", str(tmp_path / "home")]
    assert main(["diff", str(bundle), "--against", "fp16", *home]) == 2
    assert "pass --firmware" in capsys.readouterr().err
    code = main(["diff", str(bundle), "--against", "fp16", "--firmware", "1.32.0", "--lsb", "y=1e-9",
                 "--fail-over", "2", *home])
    assert code == 1
    assert "output 'y': expected at most 2 LSB from fp16" in capsys.readouterr().err


def test_an_artifact_folder_needs_its_model(tiny, tmp_path):
    out = tmp_path / "ort"
    compiled(tiny, "onnxruntime", "1.32.0", out)
    with pytest.raises(InvalidInput, match="holds no QDQ model; pass --model"):
        run_diff(out, "int8-ref", sample_set=tiny["set"], workdir=tmp_path / "w")
