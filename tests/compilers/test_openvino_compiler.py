"""The `openvino` plugin: the QDQ model compiled by OpenVINO's CPU plugin, exported as a blob
with the properties it needs on import."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the openvino extra is not installed")

from tapeout.compilers.errors import CompilationFailed, InvalidInput  # noqa: E402
from tapeout.compilers.interface import TargetProfile  # noqa: E402
from tapeout.compilers.openvino.compiler import openvino_version  # noqa: E402
from tapeout.compilers.registry import load_compiler  # noqa: E402

RELEASE = openvino_version()


def target(**options) -> TargetProfile:
    return TargetProfile("x86-openvino", "openvino", RELEASE, options=options)


@pytest.fixture(scope="module")
def artifact(quantized_model, tmp_path_factory):
    return load_compiler("openvino").compile(quantized_model, target(), tmp_path_factory.mktemp("openvino"))


def test_the_blob_is_kept_with_the_exact_properties_it_is_imported_with(artifact):
    assert artifact.files == ("compile_properties.json", "model.blob")
    document = json.loads((artifact.directory / "compile_properties.json").read_text())
    assert document["openvino"] == RELEASE == artifact.compiler_version == artifact.minimum_firmware_revision
    assert document["device"] == "CPU"
    properties = document["properties"]
    # Pinned so that fp32 parts never silently run in bf16 on CPUs that have it.
    assert properties["INFERENCE_PRECISION_HINT"] == "f32"
    assert properties["INFERENCE_NUM_THREADS"] == 1 and properties["NUM_STREAMS"] == 1
    assert artifact.report["effective_inference_precision"] == "f32"
    # The QDQ model runs on OpenVINO's int8 kernels.
    assert artifact.report["int8_layers"] > 0


def test_the_imported_blob_agrees_with_onnxruntime_on_the_qdq_model(artifact, quantized_model):
    import onnxruntime

    runner = load_compiler("openvino").load(artifact)
    reference = onnxruntime.InferenceSession(str(quantized_model.path), providers=["CPUExecutionProvider"])
    generator = np.random.default_rng(6)
    agree = 0
    for _ in range(20):
        image = generator.random((1, 1, 16, 16), dtype=np.float32)
        got = runner.run({"image": image})["logits"]
        expected = reference.run(None, {"image": image})[0]
        assert got.shape == expected.shape == (1, 10)
        agree += int(got.argmax() == expected.argmax())
        # Different int8 kernels, same quantization: within a few output steps.
        assert float(np.abs(got - expected).max()) < 0.25 * float(np.abs(expected).max()) + 1e-3
    assert agree >= 18


def test_a_blob_from_another_openvino_release_is_refused_clearly(artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact.directory, copy)
    path = copy / "compile_properties.json"
    document = json.loads(path.read_text())
    document["openvino"] = "2023.3.0"
    path.write_text(json.dumps(document))
    from dataclasses import replace

    with pytest.raises(InvalidInput, match="exported by OpenVINO 2023.3.0, this machine runs"):
        load_compiler("openvino").load(replace(artifact, directory=copy))


def test_firmware_options_and_timeout_are_checked(quantized_model, tmp_path):
    compiler = load_compiler("openvino")
    with pytest.raises(InvalidInput, match="imports only into the release that exported it"):
        compiler.compile(quantized_model, TargetProfile("ov", "openvino", "2024.6.0"), tmp_path / "a")
    with pytest.raises(InvalidInput, match=r"inference_precision: expected one of \['f32', 'bf16'\], found 'f16'"):
        compiler.compile(quantized_model, target(inference_precision="f16"), tmp_path / "b")
    with pytest.raises(CompilationFailed, match=r"did not finish compiling within 0.01 s \(option timeout_seconds\)"):
        compiler.compile(quantized_model, target(timeout_seconds="0.01"), tmp_path / "c")


def test_fp32_parts_stay_fp32_even_where_openvino_would_pick_bf16(exported_model, tmp_path):
    """On CPUs with bf16 (AVX512-BF16, AMX) OpenVINO's own default inference precision is
    bf16; the plugin pins f32, so a float model's outputs stay float32-exact."""
    import openvino as ov
    import onnxruntime

    from tapeout.compilers.interface import QuantizedModel

    core = ov.Core()
    default = core.compile_model(core.read_model(str(exported_model.path)), "CPU").get_property(
        "INFERENCE_PRECISION_HINT"
    )
    float_model = QuantizedModel(
        exported_model.path, exported_model.digest, exported_model.path, exported_model.inputs, exported_model.outputs
    )
    compiler = load_compiler("openvino")
    pinned = compiler.compile(float_model, target(), tmp_path / "f32")
    assert pinned.report["effective_inference_precision"] == "f32"
    reference = onnxruntime.InferenceSession(str(exported_model.path), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(8).random((10, 1, 1, 16, 16), dtype=np.float32)
    runner = compiler.load(pinned)
    f32_error = max(
        float(np.abs(runner.run({"image": image})["logits"] - reference.run(None, {"image": image})[0]).max())
        for image in images
    )
    assert f32_error < 1e-4
    if default.get_type_name() == "bf16":  # this CPU has bf16: show what the pin prevents
        loose = compiler.compile(float_model, target(inference_precision="bf16"), tmp_path / "bf16")
        assert loose.report["effective_inference_precision"] == "bf16"
        bf16_runner = compiler.load(loose)
        bf16_error = max(
            float(np.abs(bf16_runner.run({"image": image})["logits"] - reference.run(None, {"image": image})[0]).max())
            for image in images
        )
        assert bf16_error > 10 * f32_error
