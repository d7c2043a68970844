"""ONNX Runtime's own output code for every input code of a single-input QDQ node.

An int8 tensor holds one of 256 codes, so a node with one activation input whose output
channel depends only on the same input channel (BatchNormalization) is a table per channel:
256 input codes in, the codes ONNX Runtime writes out. Running the node itself, between its
own DequantizeLinear and QuantizeLinear, on a tensor holding every code in every channel reads
that table off ONNX Runtime (its default session, as a user runs the QDQ model), float
arithmetic, rounding and all. The converter then picks integer parameters that reproduce it
(compilers/tflite/affine_fit.py).
"""

from __future__ import annotations

import numpy as np

from tapeout.compilers.tflite.qdq import QdqGraph

CODES = 256


def channel_codes(qdq: QdqGraph, node, channels: int) -> np.ndarray:
    """[channels, 256] int8: row c, column i is the code ONNX Runtime writes in channel c for
    input code i - 128 (uint8 models: codes shifted by -128 on both sides, as the converter
    reads them). `node` reads an NCHW activation at input 0 and writes one QuantizeLinear."""
    import onnx
    import onnxruntime

    graph = qdq.model.graph
    dequantize = qdq.producer[node.input[0]]
    (quantize,) = qdq.consumers[node.output[0]]
    kept = [dequantize, node, quantize] + [
        qdq.producer[name] for name in node.input[1:] if name and name in qdq.producer
    ]
    needed = {name for kept_node in kept for name in kept_node.input}
    initializers = [init for init in graph.initializer if init.name in needed]
    source = dequantize.input[0]
    element_type = _written_type(qdq, source)
    shape = [1, channels, 1, CODES]
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            kept, "codes",
            [onnx.helper.make_tensor_value_info(source, element_type, shape)],
            [onnx.helper.make_tensor_value_info(quantize.output[0], element_type, shape)],
            initializers,
        ),
        opset_imports=qdq.model.opset_import,
    )
    unsigned = element_type == onnx.TensorProto.UINT8
    codes = np.arange(CODES, dtype=np.int16) - (0 if unsigned else 128)
    feed = np.broadcast_to(codes, shape).astype(np.uint8 if unsigned else np.int8)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (written,) = session.run(None, {source: feed})
    written = written.reshape(channels, CODES).astype(np.int16)
    return (written - 128 if unsigned else written).astype(np.int8)


def _written_type(qdq: QdqGraph, name: str) -> int:
    """The element type of activation `name`: its QuantizeLinear's zero point's."""
    from onnx import helper

    producer = qdq.producer[name]
    zero_point = qdq.initializers[producer.input[2]]
    return helper.np_dtype_to_tensor_dtype(zero_point.dtype)
