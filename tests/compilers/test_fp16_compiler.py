"""The `fp16` plugin: onnxconverter-common's float16 conversion run by ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import QuantizedModel, TargetProfile
from tapeout.compilers.registry import load_compiler


def target(**options) -> TargetProfile:
    return TargetProfile("cpu-fp16", "fp16", "1.32.0", options=options)


def float_session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fp16_artifact_tracks_the_fp32_model_with_float32_io_by_default(quantized_model, tmp_path):
    compiler = load_compiler("fp16")
    artifact = compiler.compile(quantized_model, target(), tmp_path)
    assert artifact.files == ("model.fp16.onnx", "session.json")
    assert artifact.inputs[0].dtype == "float32" and artifact.outputs[0].dtype == "float32"
    assert artifact.options["keep_io_types"] == "true"
    assert artifact.report["source_model"] == "float"
    assert artifact.compiler_version.startswith("1.16.0+ort.")
    runner = compiler.load(artifact)
    reference = float_session(quantized_model.float_path)
    generator = np.random.default_rng(2)
    for _ in range(5):
        image = generator.random((1, 1, 16, 16), dtype=np.float32)
        expected = reference.run(None, {"image": image})[0]
        got = runner.run({"image": image})["logits"]
        assert got.dtype == np.float32
        # float16 keeps ~3 significant digits; the logits stay within a few ulp of fp16.
        np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2)
        assert got.argmax() == expected.argmax()


def test_float16_io_when_the_target_does_not_keep_io_types(quantized_model, tmp_path):
    compiler = load_compiler("fp16")
    artifact = compiler.compile(quantized_model, target(keep_io_types="false"), tmp_path)
    assert artifact.inputs[0].dtype == "float16" and artifact.outputs[0].dtype == "float16"
    image = np.random.default_rng(3).random((1, 1, 16, 16), dtype=np.float32)
    # float32 buffers are cast at the boundary; float16 ones pass as they are.
    first = compiler.load(artifact).run({"image": image})["logits"]
    second = compiler.load(artifact).run({"image": image.astype(np.float16)})["logits"]
    assert first.dtype == np.float16
    np.testing.assert_array_equal(first, second)


def test_a_quantized_float_path_is_refused_by_name(quantized_model, tmp_path):
    qdq_only = QuantizedModel(
        quantized_model.path, quantized_model.digest, quantized_model.path,
        quantized_model.inputs, quantized_model.outputs,
    )
    with pytest.raises(InvalidInput, match="expected a float model .* found quantization node"):
        load_compiler("fp16").compile(qdq_only, target(), tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fast": "yes"}, r"unknown option\(s\) \['fast'\]"),
        ({"keep_io_types": "maybe"}, "keep_io_types: expected true or false, found 'maybe'"),
        ({"threads": "0"}, "threads: expected a positive integer"),
        ({"max_finite_val": "1e6"}, "max_finite_val: expected at most 65504"),
    ],
)
def test_bad_options_are_named(quantized_model, tmp_path, options, message):
    with pytest.raises(InvalidInput, match=message):
        load_compiler("fp16").compile(quantized_model, target(**options), tmp_path)


def test_old_onnxruntime_firmware_is_refused(quantized_model, tmp_path):
    old = TargetProfile("cpu-fp16", "fp16", "1.10.0")
    with pytest.raises(InvalidInput, match="firmware_revision 1.10.0 cannot run opset"):
        load_compiler("fp16").compile(quantized_model, old, tmp_path)
