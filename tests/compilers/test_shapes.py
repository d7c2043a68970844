"""Pinning symbolic input dimensions: `tapeout compile --shape` for every compiler, and the
errors for a dimension left symbolic or pinned to a size the model does not have. The model is
the example CNN exported by torch with a dynamic batch ([N, 1, 16, 16]) and quantized by ONNX
Runtime's `quantize_static`, which keeps the batch symbolic."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tapeout.flows.cli import main
from conftest import EXAMPLE

PIN = "image=1,1,16,16"


@pytest.fixture(scope="module")
def dynamic_qdq(dynamic_batch_model, tmp_path_factory):
    """QDQ with int8 activations (every integer compiler, Ethos-U included, takes them)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            with np.load(EXAMPLE / "data" / "calibration.npz") as archive:
                self.samples = iter(archive["image"][:32])

        def get_next(self):
            sample = next(self.samples, None)
            return None if sample is None else {"image": sample[None]}

    path = tmp_path_factory.mktemp("dynamic-qdq") / "digits-dynamic.qdq.onnx"
    quantize_static(
        str(dynamic_batch_model), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    )
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    return path


def compile_command(model, compiler: str, output, *extra: str) -> list[str]:
    firmware = {"onnxruntime": "1.32.0", "fp16": "1.32.0", "int8-ref": "2.0.0", "openvino": "2026.4.1",
                "ethos-u": "25.08"}[compiler]
    return ["compile", str(model), "--compiler", compiler, "--firmware", firmware, "-o", str(output), *extra]


@pytest.mark.slow  # Vela and OpenVINO compile in subprocesses
@pytest.mark.parametrize("compiler", ["onnxruntime", "int8-ref", "openvino", "fp16", "ethos-u"])
def test_every_compiler_refuses_an_unpinned_batch_then_builds_it_pinned(
    compiler, dynamic_qdq, dynamic_batch_model, tmp_path, capsys
):
    model = dynamic_batch_model if compiler == "fp16" else dynamic_qdq  # fp16 converts the fp32 model
    assert main(compile_command(model, compiler, tmp_path / "refused")) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"error: {model}: input 'image' dimension 0 is symbolic ('N'); pin it with --shape image=1,1,16,16"
    )
    assert not (tmp_path / "refused" / "compiler.json").exists()

    assert main(compile_command(model, compiler, tmp_path / "built", "--shape", PIN)) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "built" / "compiler.json").read_text())
    assert record["inputs"] == [{"name": "image", "shape": [1, 1, 16, 16], "dtype": "float32"}]
    images = np.load(EXAMPLE / "data" / "validation.npz")["image"][:1]
    np.savez(tmp_path / "in.npz", image=images)
    assert main(["infer", str(tmp_path / "built"), "--inputs", str(tmp_path / "in.npz"),
                 "--outputs", str(tmp_path / "out.npz")]) == 0
    import onnxruntime

    expected = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"image": images}
    )[0]
    with np.load(tmp_path / "out.npz") as produced:
        assert produced["logits"].shape == (1, 10)
        assert produced["logits"].argmax() == expected.argmax()


@pytest.mark.slow
def test_a_pinned_batch_larger_than_one_is_the_artifacts_static_batch(dynamic_qdq, tmp_path, capsys):
    assert main(compile_command(dynamic_qdq, "onnxruntime", tmp_path / "a", "--shape", "image=8,1,16,16")) == 0
    capsys.readouterr()
    assert main(["bench", str(tmp_path / "a"), "--iterations", "3", "--warmup", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch"] == 8


def test_a_static_model_compiles_as_given_without_a_shape(quantized_model, tmp_path):
    """No --shape and static inputs: the compiler gets the user's file itself, not a copy."""
    assert main(compile_command(quantized_model.path, "onnxruntime", tmp_path / "a")) == 0
    assert main(compile_command(quantized_model.path, "onnxruntime", tmp_path / "b", "--shape", PIN)) == 0
    assert (tmp_path / "a" / "model.ort.onnx").read_bytes() == (tmp_path / "b" / "model.ort.onnx").read_bytes()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("image=1,3,16,16", "input 'image' dimension 1: the model fixes it at 1, found 3 in [1, 3, 16, 16]"),
        ("image=1,16,16", "input 'image': expected 4 dimensions [?, 1, 16, 16], found 3 in [1, 16, 16]"),
        ("pixels=1,1,16,16", "no input named 'pixels' to pin; the model's inputs are ['image']"),
    ],
)
def test_a_shape_the_model_does_not_have_is_named(shape, message, dynamic_qdq, tmp_path, capsys):
    assert main(compile_command(dynamic_qdq, "int8-ref", tmp_path / "a", "--shape", shape)) == 2
    assert capsys.readouterr().err.strip() == f"error: {dynamic_qdq}: {message}"


@pytest.mark.parametrize("shape", ["image", "image=", "=1,1", "image=1,x,16,16", "image=0,1,16,16"])
def test_a_malformed_shape_flag_is_named(shape, dynamic_qdq, tmp_path, capsys):
    assert main(compile_command(dynamic_qdq, "onnxruntime", tmp_path / "a", "--shape", shape)) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --shape: expected NAME=D0,D1,... with sizes of at least 1, found {shape!r}"
    )


def test_the_onnx_front_end_pins_a_dynamic_batch_to_the_declared_shape(dynamic_batch_model, tmp_path):
    from tapeout.compilers.frontends import OnnxSource, export_model
    from tapeout.compilers.interface import TensorSpec

    exported = export_model(
        OnnxSource(dynamic_batch_model), (TensorSpec("image", (1, 1, 16, 16), "float32"),), ("logits",),
        tmp_path / "model.onnx",
    )
    assert [spec.shape for spec in exported.inputs] == [(1, 1, 16, 16)]
    assert [spec.shape for spec in exported.outputs] == [(1, 10)]
