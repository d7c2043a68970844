"""Structure ops and compile-time folding on real graphs, against ONNX Runtime.

- Shape subgraphs: torchvision's ShuffleNet v2 exported by torch's TorchScript exporter with a
  dynamic batch, pre-processed and quantized as ONNX Runtime recommends (quant_pre_process,
  quantize_static): its channel shuffle and split keep 29 Shape nodes with Gather /
  Unsqueeze / Concat / Div / Mul on the way to Reshape and Slice. int8-ref folds them with the
  batch pinned, and is bit-exact with ONNX Runtime in `ort` mode.
- Nodes cut from the real-model suite (tests/real_models): the ViT's first attention block
  (Gather of q/k/v, Transpose/Reshape, MatMul of two activations, Softmax, the class-token
  Concat), ShuffleNet's Split stages, and every LayerNorm of ConvNeXt, each fed ONNX
  Runtime's own values of its quantized inputs.

All `slow` (a torch export, or a suite model built on first use).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.utils import Extractor

import int8_ref_models as M
from tapeout.compilers.int8_ref import FIRMWARE_REVISION
from tapeout.compilers.int8_ref.fold import prepare
from tapeout.compilers.interface import TensorSpec

pytestmark = pytest.mark.slow

SHAPE = (1, 3, 224, 224)


def _torchvision():
    import torch

    # PyPI's torchvision registers meta kernels for two ops its CUDA library would define
    # (docs: the brief's torch note); the architectures are pure Python.
    if not hasattr(torch.ops.torchvision, "nms"):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return torch, torchvision


@pytest.fixture(scope="module")
def torchscript_shufflenet(tmp_path_factory):
    """(fp32 path, QDQ path) of ShuffleNet v2 x0.5 with a dynamic batch."""
    import warnings

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch, torchvision = _torchvision()
    folder = tmp_path_factory.mktemp("shufflenet")
    fp32, pre, qdq = folder / "fp32.onnx", folder / "pre.onnx", folder / "qdq.onnx"
    torch.manual_seed(0)
    net = torchvision.models.shufflenet_v2_x0_5().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*SHAPE),), str(fp32), dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, opset_version=17)
    quant_pre_process(str(fp32), str(pre))

    class Samples(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"input": rng.normal(0, 1, SHAPE).astype(np.float32)}
                            for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(qdq), Samples(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    return fp32, qdq


def test_prepare_folds_every_shape_subgraph_and_keeps_the_function(torchscript_shufflenet):
    import onnxruntime as ort

    fp32, _ = torchscript_shufflenet
    model = onnx.load(str(fp32))
    assert sum(n.op_type == "Shape" for n in model.graph.node) > 20
    folded = prepare(model, {"input": SHAPE})
    ops = {n.op_type for n in folded.graph.node}
    # what is left computes on the activation (Constant: the Slices' starts and axes)
    assert ops == {"Conv", "Relu", "MaxPool", "Concat", "Reshape", "Transpose", "Slice",
                   "ReduceMean", "Gemm", "Constant"}, ops
    x = np.random.default_rng(1).normal(0, 1, SHAPE).astype(np.float32)
    want = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    got = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]
                               ).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, want)


def _cut_and_compare(model: onnx.ModelProto, inputs: dict[str, list[np.ndarray]],
                     outputs: list[str], workdir, mode: str = "ort"):
    """The sub-graph of `model` between `inputs` (name -> one array per sample) and the
    DequantizeLinear outputs `outputs`, compiled by int8-ref and run by ORT on the same
    values; returns (max |difference| in LSB, elements differing, elements)."""
    import onnxruntime as ort

    sub = Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(
        list(inputs), outputs)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "cut.onnx"
    onnx.save(sub, str(path))
    specs = [TensorSpec(k, tuple(v[0].shape), str(v[0].dtype)) for k, v in inputs.items()]
    compiler, art = M.compile_path(path, specs, workdir / mode, mode, firmware=FIRMWARE_REVISION)
    runner = compiler.load(art)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inits = {i.name: numpy_helper.to_array(i) for i in sub.graph.initializer}
    producer = {o: n for n in sub.graph.node for o in n.output}
    worst = off = total = 0
    for k in range(len(next(iter(inputs.values())))):
        feed = {name: values[k] for name, values in inputs.items()}
        want = dict(zip(outputs, sess.run(outputs, feed)))
        got = runner.run(feed)
        for o in outputs:
            lsb = float(inits[producer[o].input[1]])
            d = np.rint(np.abs(want[o].astype(np.float64) - got[o]) / lsb)
            worst, off, total = max(worst, int(d.max())), off + int((d > 0).sum()), total + d.size
    return worst, off, total


def test_folded_torchscript_export_is_bit_exact_in_ort_mode(torchscript_shufflenet, tmp_path):
    _, qdq = torchscript_shufflenet
    model = onnx.load(str(qdq))
    assert sum(n.op_type == "Shape" for n in model.graph.node) > 20
    d = next(iter(model.graph.input[0].type.tensor_type.shape.dim))
    d.Clear()
    d.dim_value = 1  # ORT folds its own Shape nodes only with the batch pinned, as int8-ref
    # up to the global pooling (ReduceMean is the elementwise ops' side of the op set)
    pool = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    rng = np.random.default_rng(2)
    xs = [rng.normal(0, 1, SHAPE).astype(np.float32) for _ in range(3)]
    assert _cut_and_compare(model, {"input": xs}, [pool.input[0]], tmp_path)[:2] == (0, 0)


def _quantized_values(model_path, names: list[str], feeds) -> dict[str, list[np.ndarray]]:
    """ONNX Runtime's values of the tensors `names` of the QDQ model for each feed."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    for name in names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [sess.run(names, feed) for feed in feeds]
    return {name: [run[i] for run in runs] for i, name in enumerate(names)}


def test_vit_attention_block_is_bit_exact(real_model, tmp_path):
    """From the first LayerNorm's quantized output to the residual Add after attention:
    Gather of q/k/v, Reshape/Transpose, the scaled q.k MatMul, Softmax, MatMul with v."""
    model = real_model("vit_tiny_d4")
    inputs = _quantized_values(model.qdq_path, ["layer_norm_QuantizeLinear_Output",
                                                "add_QuantizeLinear_Output"], model.feeds())
    graph = onnx.load(str(model.qdq_path))
    result = _cut_and_compare(graph, inputs, ["add_1_DequantizeLinear_Output"], tmp_path)
    assert result[:2] == (0, 0), result


def test_vit_class_token_concat_is_bit_exact(real_model, tmp_path):
    """Patch embedding, class-token Concat (a constant with its own scale), position Add."""
    model = real_model("vit_tiny_d4")
    xs = [feed["input"] for feed in model.feeds()]
    graph = onnx.load(str(model.qdq_path))
    result = _cut_and_compare(graph, {"input": xs}, ["add_DequantizeLinear_Output"], tmp_path)
    assert result[:2] == (0, 0), result


def test_shufflenet_splits_are_bit_exact(real_model, tmp_path):
    model = real_model("shufflenet_v2_x0_5")
    graph = onnx.load(str(model.qdq_path))
    pool = next(n for n in graph.graph.node if n.op_type == "ReduceMean")
    xs = [feed["input"] for feed in model.feeds()]
    result = _cut_and_compare(graph, {"input": xs}, [pool.input[0]], tmp_path)
    assert result[:2] == (0, 0), result


def test_convnext_layernorms_within_one_lsb(real_model, tmp_path):
    """Every LayerNorm of ConvNeXt-tiny alone: ORT computes it in float32, int8-ref in
    integers; at most one LSB, on few outputs (docs/int8-ref.md, "LayerNormalization")."""
    model = real_model("convnext_tiny")
    graph = onnx.load(str(model.qdq_path))
    producer = {o: n for n in graph.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    cuts = []
    for ln in (n for n in graph.graph.node if n.op_type == "LayerNormalization"):
        q_out = consumers[ln.output[0]][0].output[0]
        cuts.append((producer[ln.input[0]].input[0], consumers[q_out][0].output[0]))
    values = _quantized_values(model.qdq_path, [c[0] for c in cuts], model.feeds())
    worst = off = total = 0
    for k, (q_in, dq_out) in enumerate(cuts):
        w, o, t = _cut_and_compare(graph, {q_in: values[q_in]}, [dq_out], tmp_path / str(k))
        worst, off, total = max(worst, w), off + o, total + t
    assert len(cuts) == 23
    assert worst <= 1 and off <= total // 10000, (worst, off, total)
