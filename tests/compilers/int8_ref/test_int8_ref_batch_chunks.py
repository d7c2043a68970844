"""A batch run a few images at a time (batch_chunks.py) gives the same bytes as the whole
batch at once: on torchvision's MobileNet v2 and ResNet-18 from the real-model suite, at a
batch large enough to be split, in both requantization modes; and a program that cannot be
split runs whole."""

from __future__ import annotations

import numpy as np
import pytest

from real_models import with_batch
from tapeout.compilers.frontends import check_model
from tapeout.compilers.int8_ref import FIRMWARE_REVISION, Int8ReferenceCompiler
from tapeout.compilers.int8_ref.batch_chunks import chunk_program
from tapeout.compilers.int8_ref.runtime import Int8Runner, load_image
from tapeout.compilers.interface import QuantizedModel, TargetProfile


def compiled(real_model, name, batch, mode, tmp_path):
    model = real_model(name, "uint8")
    qdq = with_batch(model.qdq_path, batch, tmp_path / "model.qdq.onnx")
    fp32 = with_batch(model.float_path, batch, tmp_path / "model.onnx")
    described = check_model(qdq)
    quantized = QuantizedModel(qdq, described.digest, fp32, described.inputs, described.outputs)
    target = TargetProfile("t", "int8-ref", FIRMWARE_REVISION, {"requant": mode})
    artifact = Int8ReferenceCompiler().compile(quantized, target, tmp_path / "art")
    return load_image(artifact.directory / "model.i8r"), model


@pytest.mark.real_models
@pytest.mark.slow
@pytest.mark.parametrize("name, mode", [("mobilenet_v2", "fixed-point"), ("mobilenet_v2", "ort"),
                                        ("resnet18", "fixed-point")])
def test_chunks_give_the_same_bytes_as_the_whole_batch(real_model, name, mode, tmp_path):
    batch = 16
    image, model = compiled(real_model, name, batch, mode, tmp_path)
    whole, chunked = Int8Runner(image, chunks=False), Int8Runner(image)
    assert whole.images_per_chunk is None
    assert chunked.images_per_chunk is not None and chunked.images_per_chunk < batch
    assert batch % chunked.images_per_chunk == 0
    rng = np.random.default_rng(5)
    (name_in,) = whole.input_names
    shape = image.tensors[image.inputs[0]].shape
    images = np.concatenate([model.feeds()[0][name_in]] * 2
                            + [rng.normal(0, 1, (batch - 2,) + shape[1:]).astype(np.float32)])
    want, got = whole.run({name_in: images}), chunked.run({name_in: images})
    assert want.keys() == got.keys()
    for out in want:
        assert want[out].tobytes() == got[out].tobytes(), out
        assert np.array_equal(want[out][0], want[out][1])  # the same image, the same result


@pytest.mark.real_models
def test_a_batch_of_one_runs_whole(real_model, tmp_path):
    image, _ = compiled(real_model, "mobilenet_v2", 1, "fixed-point", tmp_path)
    assert chunk_program(image, "test") is None
    assert Int8Runner(image).images_per_chunk is None
