"""The example CNN (Conv, Relu folded into the zero point, MaxPool, Flatten, Gemm) converted to
int8 TFLite matches the QDQ model under ONNX Runtime on the whole validation set."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ethosu.vela")
pytest.importorskip("flatbuffers")
pytest.importorskip("ai_edge_litert")

from conftest import EXAMPLE  # noqa: E402

from tapeout.compilers.tflite import convert  # noqa: E402
from tapeout.compilers.tflite.runner import TfliteRunner, quantize  # noqa: E402


@pytest.mark.parametrize(("kernels", "max_lsb"), [("xnnpack", 0), ("reference", 1)])
def test_example_matches_onnxruntime(quantized_model, tmp_path, kernels, max_lsb):
    import onnxruntime

    conversion = convert(quantized_model.path, tmp_path / "model.tflite")
    assert conversion.operators == (
        "CONV_2D", "MAX_POOL_2D", "CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED",
        "FULLY_CONNECTED",
    )
    assert conversion.inputs[0].tflite_shape == (1, 16, 16, 1)
    runner = TfliteRunner(conversion.path, conversion.inputs, conversion.outputs, kernels)
    session = onnxruntime.InferenceSession(str(quantized_model.path), providers=["CPUExecutionProvider"])
    images = np.load(EXAMPLE / "data" / "validation.npz")["image"].astype(np.float32)
    edge = conversion.outputs[0]
    worst, agree = 0, 0
    for image in images[:200]:
        feed = {"image": image.reshape(1, 1, 16, 16)}
        expected = session.run(None, feed)[0]
        found = runner.run(feed)["logits"]
        difference = np.abs(
            quantize(expected, edge.scale, edge.zero_point).astype(int)
            - quantize(found, edge.scale, edge.zero_point).astype(int)
        )
        worst = max(worst, int(difference.max()))
        agree += int(expected.argmax() == found.argmax())
    assert worst <= max_lsb
    assert agree >= 198
