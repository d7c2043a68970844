"""Tiny models every compiler plugin must handle, built with onnx.helper (no torch), and
quantized as docs/plugins.md's contract says: QDQ, per channel, int8 weights (symmetric) and int8
activations (asymmetric)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from tapeout.compilers.interface import QuantizedModel, TensorSpec

OPSET = 17
INPUT = TensorSpec("x", (1, 1, 8, 8), "float32")
OUTPUT = TensorSpec("y", (1, 10), "float32")
UNSUPPORTED_NODE = "mystery_node"


def float_model(custom_op: bool = False):
    """x[1,1,8,8] -> Conv 3x3 (4 channels) -> Relu -> Flatten -> Gemm -> y[1,10].

    With `custom_op`, the Gemm's result passes through `com.example.Mystery` (a node named
    `mystery_node`) that no compiler implements."""
    from onnx import TensorProto, helper, numpy_helper

    generator = np.random.default_rng(7)
    initializers = [
        numpy_helper.from_array(generator.normal(0, 0.4, (4, 1, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(generator.normal(0, 0.1, (4,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(generator.normal(0, 0.1, (10, 256)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(generator.normal(0, 0.1, (10,)).astype(np.float32), "fc_b"),
    ]
    gemm_out = "gemm" if custom_op else "y"
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Flatten", ["relu"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [gemm_out], name="fc", transB=1),
    ]
    opsets = [helper.make_opsetid("", OPSET)]
    if custom_op:
        nodes.append(helper.make_node("Mystery", ["gemm"], ["y"], name=UNSUPPORTED_NODE, domain="com.example"))
        opsets.append(helper.make_opsetid("com.example", 1))
    graph = helper.make_graph(
        nodes, "contract",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(INPUT.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(OUTPUT.shape))],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def sample_inputs(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    generator = np.random.default_rng(seed)
    return [{"x": generator.random(INPUT.shape, dtype=np.float32)} for _ in range(count)]


class _Reader:
    def __init__(self, feeds) -> None:
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def quantize_tiny(folder: Path) -> QuantizedModel:
    """The tiny model and its QDQ form in `folder`, as a QuantizedModel."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    folder.mkdir(parents=True, exist_ok=True)
    fp32, qdq = folder / "tiny.onnx", folder / "tiny.qdq.onnx"
    onnx.save(float_model(), str(fp32))
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(fp32), str(qdq), _Reader(sample_inputs(16, seed=1)),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    finally:
        root.setLevel(previous)
    return QuantizedModel(qdq, hashlib.sha256(qdq.read_bytes()).hexdigest(), fp32, (INPUT,), (OUTPUT,))


def with_unsupported_op(folder: Path) -> QuantizedModel:
    """The tiny model with a custom-domain node after its Gemm, float and QDQ alike: the
    quantizer leaves the unknown node in float, between a DequantizeLinear and the output."""
    import onnx
    from onnx import helper

    quantized = quantize_tiny(folder / "base")
    qdq = onnx.load(str(quantized.path))
    for node in qdq.graph.node:
        for index, name in enumerate(node.output):
            if name == "y":
                node.output[index] = "gemm"
    qdq.graph.node.append(helper.make_node("Mystery", ["gemm"], ["y"], name=UNSUPPORTED_NODE, domain="com.example"))
    qdq.opset_import.append(helper.make_opsetid("com.example", 1))
    fp32, qdq_path = folder / "mystery.onnx", folder / "mystery.qdq.onnx"
    onnx.save(float_model(custom_op=True), str(fp32))
    onnx.save(qdq, str(qdq_path))
    return QuantizedModel(
        qdq_path, hashlib.sha256(qdq_path.read_bytes()).hexdigest(), fp32, (INPUT,), (OUTPUT,)
    )


def float_reference(model: QuantizedModel, feeds) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model.float_path), providers=["CPUExecutionProvider"])
    return [session.run(["y"], feed)[0] for feed in feeds]
