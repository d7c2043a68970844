"""Tiny one-op ONNX graphs, quantized the way tapeout's quantizer does it, and an LSB-level
comparison of the converted TFLite model (LiteRT) against the QDQ model (ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 18  # the opset tapeout's PyTorch front end exports at


def tensor(name: str, shape) -> object:
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def weight(name: str, shape, seed: int) -> object:
    from onnx import numpy_helper

    values = np.random.default_rng(seed).normal(0, 0.5, size=shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def make_model(nodes, inputs, outputs, initializers=(), opset: int = OPSET) -> object:
    from onnx import helper

    graph = helper.make_graph(list(nodes), "op_test", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def conv_node(x="x", y="c", channels=(3, 4), **attributes):
    """A 3x3 Conv reading `x` and writing `y` (pads 1 unless given), with its initializers."""
    from onnx import helper

    w = weight(f"{y}_w", [channels[1], channels[0], 3, 3], 1)
    b = weight(f"{y}_b", [channels[1]], 2)
    attributes.setdefault("pads", [1, 1, 1, 1])
    return helper.make_node("Conv", [x, w.name, b.name], [y], **attributes), [w, b]


def with_conv(op_nodes, output_shape, input_shape=(1, 3, 8, 8), extra_outputs=(), initializers=()):
    """A model: x -> Conv -> c -> `op_nodes` -> y."""
    conv, weights = conv_node()
    return make_model(
        [conv, *op_nodes], [tensor("x", input_shape)],
        [tensor("y", output_shape), *extra_outputs], [*weights, *initializers],
    )


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def random_feeds(model, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for value in model.graph.input:
            shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
            feed[value.name] = rng.uniform(-2.0, 3.0, size=shape).astype(np.float32)
        feeds.append(feed)
    return feeds


def quantize_model(model, directory: Path, seed: int = 0, activations: str = "int8") -> Path:
    """QDQ as tapeout's quantizer: per-channel symmetric int8 weights, asymmetric activations
    (int8, or uint8: ONNX Runtime's default)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    float_path = directory / "float.onnx"
    qdq_path = directory / f"model.{activations}.qdq.onnx"
    onnx.save(model, str(float_path))
    quantize_static(
        str(float_path), str(qdq_path), _Reader(random_feeds(model, 16, seed)),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type={"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activations],
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return qdq_path


def lsb_differences(
    qdq_path: Path, tflite_dir: Path, kernels: str = "xnnpack", samples: int = 8, seed: int = 1,
    float_ops: frozenset[str] = frozenset(),
):
    """Convert (with `float_ops` in float32), run both models on random inputs, return
    (max |LSB diff|, share of outputs off) and the conversion."""
    import onnx
    import onnxruntime

    from tapeout.compilers.tflite import convert
    from tapeout.compilers.tflite.runner import TfliteRunner, quantize

    conversion = convert(qdq_path, tflite_dir / "model.tflite", float_ops)
    runner = TfliteRunner(conversion.path, conversion.inputs, conversion.outputs, kernels)
    session = onnxruntime.InferenceSession(str(qdq_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    worst, off, total = 0, 0, 0
    for feed in random_feeds(onnx.load(str(qdq_path)), samples, seed):
        expected = dict(zip(names, session.run(names, feed)))
        found = runner.run(feed)
        for edge in conversion.outputs:
            a = quantize(expected[edge.onnx_name], edge.scale, edge.zero_point).astype(np.int32)
            b = quantize(found[edge.onnx_name], edge.scale, edge.zero_point).astype(np.int32)
            assert a.shape == b.shape
            difference = np.abs(a - b)
            worst = max(worst, int(difference.max()))
            off += int((difference > 0).sum())
            total += difference.size
    return worst, off / total, conversion
