"""Whole graphs in the style of ResNet, SqueezeNet, ShuffleNet, Inception (random weights),
plus the benchmark CNN, an attention block and a torch.onnx.export'ed module, against ORT.

`ort` mode: bit-exact wherever ORT fuses every node into QLinear kernels; where ORT itself
keeps a node in float (ort_float_nodes), at most one LSB on under 1% of the outputs.
`fixed-point`: a few LSB end to end, top-1 agreement reported by diff_outputs.
"""

import pytest

import int8_ref_models as M
from tapeout.compilers.int8_ref import diff_outputs, ort_float_nodes

ARCHS = ["cnn", "resnet", "squeezenet", "shufflenet", "inception", "attention", "upsample"]


@pytest.fixture(scope="module")
def qdq_models(tmp_path_factory):
    out = {}
    for name in ARCHS:
        model = getattr(M, name)()
        out[name] = (model, M.quantize_qdq(model, tmp_path_factory.mktemp(name), name))
    return out


@pytest.mark.parametrize("name", ARCHS)
def test_ort_mode_matches_onnxruntime(name, qdq_models, tmp_path):
    model, qdq = qdq_models[name]
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path, "ort")
    worst, ndiff, total = M.lsb_diffs(model, qdq, art, compiler.load(art), n=8)
    floats = ort_float_nodes(qdq)
    assert art.report["ort_float_nodes"] == floats
    if not floats:
        assert (worst, ndiff) == (0, 0), f"{ndiff}/{total} differ, max {worst} LSB"
    else:  # ORT ran these nodes in float32: ties may round differently
        assert worst <= 1 and ndiff <= 0.01 * total, (floats, worst, ndiff, total)


@pytest.mark.parametrize("name", ARCHS)
def test_fixed_point_close_to_onnxruntime(name, qdq_models, tmp_path):
    model, qdq = qdq_models[name]
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path, "fixed-point")
    runner = compiler.load(art)
    worst, ndiff, total = M.lsb_diffs(model, qdq, art, runner, n=8)
    assert worst <= 4, f"{ndiff}/{total} differ, max {worst} LSB"
    sess = M.ort_session(qdq)
    xs = M.random_inputs(model, 7)
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, xs)))
    report = diff_outputs(ref, runner.run(xs), art.report["output_scales"])
    for entry in report.values():
        assert entry["differing"] <= entry["elements"]
        assert max(entry["histogram"], default=0) <= 4


def test_batched_cnn(tmp_path):
    """A static batch of 8 through the same network."""
    model = M.cnn(batch=8)
    qdq = M.quantize_qdq(model, tmp_path, "cnn8")
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path / "o", "ort")
    worst, ndiff, _ = M.lsb_diffs(model, qdq, art, compiler.load(art), n=3)
    assert (worst, ndiff) == (0, 0)


def test_torch_exported_module(tmp_path):
    """A torch module exported with torch.onnx.export (dynamo), quantized, compiled."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import onnx

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.fc1 = torch.nn.Linear(256, 32)
            self.fc2 = torch.nn.Linear(32, 10)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            x = torch.nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
            x = torch.relu(self.fc1(torch.flatten(x, 1)))
            return self.fc2(x)

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 1, 16, 16),), str(path),
                      input_names=["image"], output_names=["logits"])
    model = onnx.load(str(path), load_external_data=True)
    qdq = M.quantize_qdq(model, tmp_path, "torchnet")
    for mode, bound in (("ort", 0), ("fixed-point", 3)):
        compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path / mode, mode)
        worst, ndiff, total = M.lsb_diffs(model, qdq, art, compiler.load(art), n=4)
        assert worst <= bound, (mode, worst, ndiff, total)


@pytest.mark.parametrize("name", ["cnn", "resnet", "squeezenet", "shufflenet", "inception",
                                  "attention", "mobilenet"])
@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_qoperator_models(name, activation, tmp_path):
    """quantize_static(quant_format=QOperator): QLinearConv, QGemm, QLinearAdd, QLinearMul,
    QLinearConcat, QLinearAveragePool, QLinearGlobalAveragePool, QLinearMatMul,
    QLinearSigmoid, QLinearSoftmax, constant quantized operands..."""
    import onnx

    model = getattr(M, name)()
    path = M.quantize_qdq(model, tmp_path, name, activation=activation, fmt="qoperator")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops & {"QLinearConv", "QLinearMatMul"} and not ops & {"Conv", "MatMul"}
    for mode, bound in (("ort", 0), ("fixed-point", 3)):
        compiler, art = M.compile_path(path, M.input_specs(model), tmp_path / mode, mode)
        worst, ndiff, total = M.lsb_diffs(model, path, art, compiler.load(art), n=4)
        assert worst <= bound, (mode, worst, ndiff, total)


def test_float_fallback_add_is_emulated(tmp_path):
    """ORT runs this residual Add in float (DQ -> Add -> Q); `ort` mode emulates it in
    float32 (femu) and matches bit for bit."""
    from tapeout.compilers.int8_ref.artifact_format import read_image
    from tapeout.compilers.int8_ref.opset import PARAMS, Kind

    model = M.residual()
    qdq = M.quantize_qdq(model, tmp_path, "residual")
    assert "add12" in ort_float_nodes(qdq)
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path / "o", "ort")
    img = read_image((art.directory / "model.i8r").read_bytes())
    adds = [op for op in img.ops if op.kind == Kind.ADD]
    assert [dict(zip(PARAMS[Kind.ADD], op.ints))["femu"] for op in adds] == [1]
    worst, ndiff, total = M.lsb_diffs(model, qdq, art, compiler.load(art), n=30)
    assert (worst, ndiff) == (0, 0), (ndiff, total)


def test_mobilenet_style(tmp_path):
    """Depthwise-separable blocks with Clip(0, 6) and residual Adds at 64x64."""
    model = M.mobilenet()
    qdq = M.quantize_qdq(model, tmp_path, "mobilenet")
    for mode in ("ort", "fixed-point"):
        compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path / mode, mode)
        worst, ndiff, total = M.lsb_diffs(model, qdq, art, compiler.load(art), n=4)
        if mode == "ort":
            floats = art.report["ort_float_nodes"]
            assert worst <= (1 if floats else 0), (floats, worst, ndiff, total)
        else:
            assert worst <= 4, (worst, ndiff, total)


def test_relu_between_conv_and_quantize_is_fused(tmp_path):
    """DQ -> Conv -> Relu -> Q (a QDQ graph the quantizer did not simplify): the Relu becomes
    the output clamp of the integer conv."""
    import onnx
    from onnx import helper

    model = M.conv_only()
    qdq = M.quantize_qdq(model, tmp_path, "conv")
    m = onnx.load(str(qdq))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and
             n.input[0] == conv.output[0])
    conv.output[0] = "conv_pre_relu"
    m.graph.node.insert(list(m.graph.node).index(q),
                        helper.make_node("Relu", ["conv_pre_relu"], [q.input[0]], name="relu"))
    path = tmp_path / "conv_relu.qdq.onnx"
    onnx.save(m, str(path))
    for mode, bound in (("ort", 1), ("fixed-point", 1)):
        compiler, art = M.compile_path(path, M.input_specs(model), tmp_path / mode, mode)
        assert art.report["ops"].get("CLAMP") is None  # fused, not a separate op
        worst, ndiff, total = M.lsb_diffs(model, path, art, compiler.load(art), n=6)
        assert worst <= bound, (mode, worst, ndiff, total)
        runner = compiler.load(art)
        out = runner.run(M.random_inputs(model, 3))
        assert min(float(v.min()) for v in out.values()) >= 0.0  # Relu held
