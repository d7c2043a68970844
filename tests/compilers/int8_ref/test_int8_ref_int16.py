"""int16 activations ("wider requantization"): the quantizer's override, every int16 op against
ONNX Runtime, an example-like CNN with one layer in int16, an outlier that int16 recovers, the
cost report, the image format, and the errors.

ONNX Runtime runs every node that touches an int16 tensor as DequantizeLinear -> float op ->
QuantizeLinear, so the bar is one LSB (of the output's own type) per op, not bit-exactness.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import int8_ref_models as M
from tapeout.calibration.table import CalibrationTable, TensorRange
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TensorSpec
from tapeout.compilers.int8_ref import IncompatibleModel, compatibility_report
from tapeout.compilers.int8_ref.artifact_format import FORMAT_VERSION, HEADER, image_digest, read_image
from tapeout.compilers.int8_ref.exceptions import ArtifactRejected
from tapeout.compilers.int8_ref.kernel_abi import MAX_REDUCTION
from test_int8_ref_artifact import FUZZ

MODES = ("ort", "fixed-point")


# -- helpers ---------------------------------------------------------------------------------
def quantize16(model: onnx.ModelProto, workdir: Path, names, **extra) -> Path:
    """ORT's quantize_static with `names` overridden to int16 (what tapeout's quantizer asks)."""
    from onnxruntime.quantization import QuantType

    overrides = {n: [{"quant_type": QuantType.QInt16}] for n in names}
    return M.quantize_qdq(model, workdir, "m", TensorQuantOverrides=overrides, **extra)


def int16_tensors(path: Path) -> set[str]:
    """Names of the tensors a QDQ model quantizes to int16 (by their QuantizeLinear input)."""
    m = onnx.load(str(path))
    types = {i.name: i.data_type for i in m.graph.initializer}
    return {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"
            and len(n.input) > 2 and types.get(n.input[2]) == TensorProto.INT16}


def minmax_table(model: onnx.ModelProto, path: Path, n: int = 16,
                 seed: int = 1) -> CalibrationTable:
    """A calibration table of every activation's min/max over `n` random inputs (ORT run with
    every intermediate tensor as an output), as tapeout's minmax calibration would give."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    outs = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for o in node.output:
            names.append(o)
            if o not in outs:
                m.graph.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
    onnx.save(m, str(path))
    sess = M.ort_session(path)
    lo = {k: np.inf for k in names}
    hi = {k: -np.inf for k in names}
    for i in range(n):
        feed = M.random_inputs(model, seed * 1000 + i)
        values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        values.update(feed)
        for k in names:
            lo[k] = min(lo[k], float(values[k].min()))
            hi[k] = max(hi[k], float(values[k].max()))
    return CalibrationTable({k: TensorRange(lo[k], hi[k]) for k in names}, "minmax", "test", n)


def tapeout_quantize(model, workdir: Path, int16=(), table=None):
    """tapeout's quantizer on `model` (saved under workdir) with a min/max table."""
    from tapeout.calibration.quantizer import quantize

    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = workdir / "model.fp32.onnx"
    onnx.save(model, str(fp32))
    table = table or minmax_table(model, workdir / "probe.onnx")
    specs = M.input_specs(model)
    return quantize(fp32, table, inputs=specs, outputs=(), output_path=workdir / "model.qdq.onnx",
                    int16_activations=tuple(int16))


# -- the quantizer ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_table(tmp_path_factory):
    model = M.cnn()
    return model, minmax_table(model, tmp_path_factory.mktemp("probe") / "probe.onnx")


def test_quantizer_makes_the_named_tensor_int16(cnn_table, tmp_path):
    model, table = cnn_table
    q = tapeout_quantize(model, tmp_path, ("relu4_out0",), table)
    m = onnx.load(str(q.path))
    types = {i.name: i.data_type for i in m.graph.initializer}
    qdq = {(n.op_type, n.input[0]): types[n.input[2]] for n in m.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    assert qdq["QuantizeLinear", "relu4_out0"] == TensorProto.INT16
    assert qdq["DequantizeLinear", "relu4_out0_QuantizeLinear_Output"] == TensorProto.INT16
    # ORT propagates the parameters through MaxPool; everything else stays int8
    assert int16_tensors(q.path) == {"relu4_out0", "maxpool5_out0"}
    assert qdq["QuantizeLinear", "relu9_out0"] == TensorProto.INT8
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 21


def test_quantizer_default_is_unchanged_byte_for_byte(cnn_table, tmp_path):
    """No int16 names: exactly the call the quantizer made before the option existed (the
    stage cache keys on these bytes)."""
    import json
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model, table = cnn_table
    default = tapeout_quantize(model, tmp_path / "a", (), table).path.read_bytes()
    cache = tmp_path / "ranges.json"
    cache.write_text(json.dumps({
        "calibration_method": {"CLS": "CalibrationMethod", "value": "CalibrationMethod.MinMax"},
        "data": {k: {"lowest": v.low, "highest": v.high, "CLS": "TensorData"}
                 for k, v in table.ranges.items()}}))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(onnx.load(str(tmp_path / "a" / "model.fp32.onnx")),
                        str(tmp_path / "old.onnx"), calibration_data_reader=None,
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=cache,
                        nodes_to_exclude=[], extra_options={"ActivationSymmetric": False,
                                                            "WeightSymmetric": True})
    finally:
        root.setLevel(level)
    assert default == (tmp_path / "old.onnx").read_bytes()
    assert not int16_tensors(tmp_path / "old.onnx")


def test_quantizer_refuses_unknown_and_unquantized_names(cnn_table, tmp_path):
    model, table = cnn_table
    with pytest.raises(InvalidInput, match="'nope' is not an activation") as exc:
        tapeout_quantize(model, tmp_path / "a", ("nope",), table)
    assert "relu4_out0" in str(exc.value)  # lists names that exist
    # a Conv output the quantizer fuses with its Relu: ORT would silently ignore the override
    with pytest.raises(InvalidInput, match="'conv3_out0' is not quantized on its own") as exc:
        tapeout_quantize(model, tmp_path / "b", ("conv3_out0",), table)
    assert "relu4_out0" in str(exc.value)  # lists names that are valid
    assert not (tmp_path / "b" / "model.qdq.onnx").exists()
    # a graph output is valid (the quantizer renames its producer; the name still counts)
    q = tapeout_quantize(model, tmp_path / "c", ("gemm18_out0",), table)
    assert any("gemm18_out0" in t for t in int16_tensors(q.path))


# -- each int16 op against ONNX Runtime ------------------------------------------------------
def _clip_after_maxpool():
    b = M._Builder(0)
    x = b.op("MaxPool", [b.conv("input", 3, 3, k=1, pad=0)], kernel_shape=[2, 2], strides=[2, 2])
    return b.model((1, 3, 8, 8), b.op("Clip", [x, b.const(np.array(-0.3, np.float32), "lo"),
                                               b.const(np.array(0.5, np.float32), "hi")]))


def _matmul_two_activations():
    b = M._Builder(0)
    w = b.const(b.rng.normal(0, 0.3, (8, 8)).astype(np.float32), "w")
    k = b.op("Transpose", [b.op("MatMul", ["input", w])], perm=[0, 2, 1])
    return b.model((2, 6, 8), b.op("MatMul", ["input", k]))


# name: (fp32 model, the activations made int16, ORT's optimisation level to compare with)
OPS = {
    "conv_in16": (M.conv_only, ["input"], "default"),
    "conv_out16": (M.conv_only, ["conv3_out0"], "default"),
    "conv_in16_out16": (M.conv_only, ["input", "conv3_out0"], "default"),
    "conv_stride2_in16_out16": (lambda: M.conv_only(stride=2, pad=0, hw=10),
                                ["input", "conv3_out0"], "default"),
    "conv_depthwise_in16_out16": (lambda: M.conv_only(cin=6, cout=6, group=6),
                                  ["input", "conv3_out0"], "default"),
    "conv_relu_out16": (lambda: M.conv_only(relu=True), ["relu4_out0"], "default"),
    "gemm_in16_out16": (M.gemm_only, ["input", "gemm3_out0"], "default"),
    # ORT's default level rewrites DQ(weight) -> MatMul with a float/int16 activation into
    # MatMulNBits (accuracy_level 4 quantizes the activation to 8 bits inside): compare with
    # the basic level, which runs the QDQ model as written.
    "matmul_const_in16_out16": (M.matmul_const, ["input", "matmul2_out0"], "basic"),
    "matmul_activations_in16": (_matmul_two_activations, ["input"], "default"),
    "maxpool_16": (lambda: M.after_conv("MaxPool", (1, 3, 8, 8), kernel_shape=[3, 3],
                                        strides=[2, 2], pads=[1, 1, 1, 1]),
                   ["conv3_out0"], "default"),
    "averagepool_16": (lambda: M.after_conv("AveragePool", (1, 3, 8, 8), kernel_shape=[3, 3],
                                            strides=[2, 2], pads=[1, 1, 1, 1]),
                       ["conv3_out0", "averagepool4_out0"], "default"),
    "globalaveragepool_16": (lambda: M.single_op("GlobalAveragePool", [(1, 5, 7, 7)]),
                             ["input", "globalaveragepool1_out0"], "default"),
    "add_mixed": (lambda: M.single_op("Add", [(1, 4, 5, 5), (1, 4, 5, 5)]), ["input"], "default"),
    "add_16": (lambda: M.single_op("Add", [(1, 4, 5, 5), (1, 4, 1, 1)]),
               ["input", "input1", "add1_out0"], "default"),
    "mul_mixed": (lambda: M.single_op("Mul", [(1, 4, 5, 5), (1, 4, 5, 5)]), ["input1"], "default"),
    "concat_mixed": (lambda: M.single_op("Concat", [(1, 2, 4, 4), (1, 3, 4, 4)], axis=1),
                     ["input1"], "default"),
    "concat_out16": (lambda: M.single_op("Concat", [(1, 2, 4, 4), (1, 3, 4, 4)], axis=1),
                     ["concat1_out0"], "default"),
    "transpose_16": (lambda: M.after_conv("Transpose", (1, 3, 4, 5), perm=[0, 2, 3, 1]),
                     ["conv3_out0"], "default"),
    "reshape_16": (lambda: M.after_conv("Reshape", (1, 3, 4, 4),
                                        consts=(np.array([1, 12, -1], np.int64),)),
                   ["conv3_out0"], "default"),
    "flatten_16": (lambda: M.after_conv("Flatten", (1, 3, 4, 4), axis=1), ["conv3_out0"],
                   "default"),
    "resize_16": (lambda: M.after_conv("Resize", (1, 2, 3, 4),
                                       consts=("", np.array([1, 1, 2, 3], np.float32)),
                                       mode="nearest"), ["conv3_out0"], "default"),
    "clip_16": (_clip_after_maxpool, ["conv3_out0", "clip7_out0"], "default"),
}


def qdq_chain(path: Path, steps, op=None, consts=(), **attrs) -> onnx.ModelProto:
    """input -> Q -> DQ [-> op] -> Q -> DQ ... -> output, written by hand: `steps` lists
    (scale, zero point, numpy type) per QuantizeLinear; `op` sits after the first DQ."""
    nodes, inits, x = [], [], "input"
    for i, (scale, zp, dtype) in enumerate(steps):
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"s{i}"),
                  numpy_helper.from_array(np.array(zp, dtype), f"z{i}")]
        nodes += [helper.make_node("QuantizeLinear", [x, f"s{i}", f"z{i}"], [f"q{i}"],
                                   name=f"q{i}"),
                  helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}", f"z{i}"], [f"f{i}"],
                                   name=f"dq{i}")]
        x = f"f{i}"
        if i == 0 and op:
            names = []
            for j, c in enumerate(consts):
                inits.append(numpy_helper.from_array(np.asarray(c, np.float32), f"c{j}"))
                names.append(f"c{j}")
            nodes.append(helper.make_node(op, [x, *names], ["y"], name="op", **attrs))
            x = "y"
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4, 64])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.save(m, str(path))
    return m


I8, I16 = np.int8, np.int16
CHAINS = {
    # the conversions (a DQ of one type feeding a Q of the other): REQUANT
    "int8_to_int16": ([(0.02, 3, I8), (0.0001, -700, I16)], None, ()),
    "int16_to_int8": ([(0.0001, 1200, I16), (0.025, -5, I8)], None, ()),
    "int16_to_int16": ([(0.0001, 0, I16), (0.00013, -32768, I16)], None, ()),
    "int16_to_uint8": ([(0.0001, 0, I16), (0.02, 128, np.uint8)], None, ()),
    # standalone Relu / Clip (CLAMP, then REQUANT to the output's parameters)
    "relu": ([(0.0001, 0, I16), (0.00005, -32768, I16)], "Relu", ()),
    "clip": ([(0.0001, 100, I16), (0.000041, 0, I16)], "Clip", (-0.5, 1.2)),
    "relu_to_int8": ([(0.0001, 0, I16), (0.01, -128, I8)], "Relu", ()),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_int16_conversions_and_clamps_against_onnxruntime(name, mode, tmp_path):
    """Hand-written QDQ chains, so the op's input is exactly ORT's (QuantizeLinear is exact):
    `ort` mode reproduces ORT's DQ -> float op -> Q bit for bit, `fixed-point` within one LSB.
    ORT runs the graph as written ("none"): at its default level DoubleQDQPairsRemover merges
    a Q -> DQ -> Q -> DQ chain of one type (int16 -> int16 here) into one pair with other
    parameters, which is ORT's rewrite, not the model's arithmetic."""
    steps, op, consts = CHAINS[name]
    model = qdq_chain(tmp_path / "m.onnx", steps, op, consts)
    compiler, art = M.compile_path(tmp_path / "m.onnx", M.input_specs(model), tmp_path / "o", mode)
    assert art.report["format_version"] == FORMAT_VERSION
    worst, ndiff, total = M.lsb_diffs(model, tmp_path / "m.onnx", art, compiler.load(art), n=10,
                                    level="none")
    assert worst <= (0 if mode == "ort" else 1), f"{ndiff}/{total} elements differ, max {worst} LSB"


@pytest.fixture(scope="module")
def quantized_ops(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            build, names, _ = OPS[name]
            model = build()
            qdq = quantize16(model, tmp_path_factory.mktemp(name), names)
            cache[name] = (model, qdq)
        return cache[name]

    return get


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(OPS))
def test_int16_op_within_one_lsb_of_onnxruntime(name, mode, quantized_ops, tmp_path):
    model, qdq = quantized_ops(name)
    assert int16_tensors(qdq), "the override did not make anything int16"
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path, mode)
    assert art.report["format_version"] == FORMAT_VERSION
    img = read_image((art.directory / "model.i8r").read_bytes())
    assert "int16" in {t.dtype for t in img.tensors}
    worst, ndiff, total = M.lsb_diffs(model, qdq, art, compiler.load(art), level=OPS[name][2])
    assert worst <= 1, f"{ndiff}/{total} elements differ, max {worst} LSB"


def test_onnxruntime_default_level_is_the_less_exact_one_for_an_int16_matmul(quantized_ops,
                                                                             tmp_path):
    """Why the MatMul case compares with the basic level: against the QDQ model's own
    arithmetic (float64 here), int8-ref is within one LSB and ORT's MatMulNBits is not."""
    model, qdq = quantized_ops("matmul_const_in16_out16")
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path, "ort")
    m = onnx.load(str(qdq))
    c = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    xs = M.random_inputs(model, 5)
    s, z = float(c["input_scale"]), int(c["input_zero_point"])
    x = (np.clip(np.rint(xs["input"] / np.float32(s)) + z, -32768, 32767) - z) * s
    y = x @ (c["w1_quantized"].astype(np.float64) * c["w1_scale"].astype(np.float64))
    ys, yz = float(c["matmul2_out0_scale"]), int(c["matmul2_out0_zero_point"])
    exact = (np.clip(np.rint(y / ys) + yz, -32768, 32767) - yz) * ys
    ours = compiler.load(art).run(xs)["matmul2_out0"]
    default = M.ort_session(qdq).run(None, xs)[0]
    assert np.abs(ours - exact).max() <= ys * 1.01
    assert np.abs(default - exact).max() > 2 * ys


# -- an example-like CNN with one layer in int16 ------------------------------------------------
@pytest.mark.parametrize("layer", ["input", "relu4_out0", "relu9_out0", "relu15_out0"])
def test_cnn_with_one_layer_int16_end_to_end(layer, cnn_table, tmp_path):
    """The example's architecture (conv/relu/maxpool x2, flatten, gemm/relu, gemm), quantized
    by tapeout's quantizer with one activation in int16, compiled and loaded through the
    plugin: `ort` mode matches ONNX Runtime exactly here (int8 output LSBs), `fixed-point`
    within one LSB, as the all-int8 network does."""
    model, table = cnn_table
    q = tapeout_quantize(model, tmp_path / "q", (layer,), table)
    for mode, bound in (("ort", 0), ("fixed-point", 1)):
        compiler, art = M.compile_path(q.path, q.inputs, tmp_path / mode, mode)
        worst, ndiff, total = M.lsb_diffs(model, q.path, art, compiler.load(art), n=20)
        assert worst <= bound, (mode, worst, ndiff, total)


# -- an outlier that int8 cannot hold ------------------------------------------------------------
def _outlier_model():
    """conv(3->8) -> relu -> depthwise conv -> relu -> GAP -> gemm. Channel 0 of the first
    conv is scaled up 2000x and its depthwise filter down 2000x (the network computes the
    same function): the first relu's range is 2000x wider than what its other channels use,
    so int8 rounds those channels to zero or one step. The depthwise filter keeps the weights'
    per-channel scales apart, so only the activation loses precision."""
    b = M._Builder(3)
    w1 = b.rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    w1[0] *= 2000
    w2 = b.rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    w2[0] /= 2000
    x = b.op("Conv", ["input", b.const(w1, "w"), b.const(np.full(8, 0.1, np.float32), "b")],
             kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    outlier = x = b.op("Relu", [x])
    x = b.op("Conv", [x, b.const(w2, "w"), b.const(np.zeros(8, np.float32), "b")],
             kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8)
    x = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [x])])])
    return b.model((1, 3, 8, 8), b.gemm(x, 8, 4)), outlier


def test_int16_on_the_outlier_tensor_recovers_accuracy(tmp_path):
    model, outlier = _outlier_model()
    table = minmax_table(model, tmp_path / "probe.onnx", n=32)
    sess = M.ort_session(tmp_path / "probe.onnx")
    errors = {}
    for label, names in (("int8", ()), ("int16", (outlier,))):
        q = tapeout_quantize(model, tmp_path / label, names, table)
        compiler, art = M.compile_path(q.path, q.inputs, tmp_path / label / "a", "fixed-point")
        runner = compiler.load(art)
        err = []
        for i in range(16):
            xs = M.random_inputs(model, 500 + i)
            want = sess.run([model.graph.output[0].name], xs)[0]
            got = runner.run(xs)[model.graph.output[0].name]
            err.append(np.abs(got - want).mean() / np.abs(want).mean())
        errors[label] = float(np.mean(err))
    # measured (fixed-point): int8 ~117% mean relative error, int16 ~1%, the output's own
    # int8 step
    assert errors["int8"] > 0.3, errors
    assert errors["int16"] < 0.03, errors


# -- the cost report -----------------------------------------------------------------------------
def _shapes(model):
    m = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        out[vi.name] = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
    return out


def test_cost_report_counts_macs_and_int16_bytes(cnn_table, tmp_path):
    model = M.cnn(batch=2)
    _, table = cnn_table
    shapes = _shapes(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    macs = weights = 0  # independently, from the fp32 graph's shapes
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = inits[n.input[1]]
            macs += int(np.prod(shapes[n.output[0]])) * int(np.prod(w.shape[1:]))
            weights += w.size + 4 * inits[n.input[2]].size
        elif n.op_type == "Gemm":
            w = inits[n.input[1]]
            macs += int(np.prod(shapes[n.output[0]])) * w.shape[1]
            weights += w.size + 4 * inits[n.input[2]].size
    costs = {}
    for label, names in (("int8", ()), ("int16", ("relu4_out0",))):
        q = tapeout_quantize(model, tmp_path / label, names, table)
        _, art = M.compile_path(q.path, q.inputs, tmp_path / label / "a")
        costs[label] = dict(art.report["cost"])
        assert "lowered kernel program" in costs[label].pop("source")
        assert set(costs[label]) == {"macs", "bytes_read", "bytes_written", "weight_bytes", "batch"}
        assert all(isinstance(v, int) for v in costs[label].values())
        assert costs[label]["macs"] == macs
        assert costs[label]["weight_bytes"] == weights
        assert costs[label]["batch"] == 2
    # relu4 and the MaxPool after it are int16: each written once and read once, one more
    # byte per element than in int8 (the program's ops are otherwise the same)
    extra = int(np.prod(shapes["relu4_out0"])) + int(np.prod(shapes["maxpool5_out0"]))
    assert costs["int16"]["bytes_written"] - costs["int8"]["bytes_written"] == extra
    assert costs["int16"]["bytes_read"] - costs["int8"]["bytes_read"] == extra
    # and the static memory plan sizes them at two bytes
    img = read_image((tmp_path / "int16" / "a" / "model.i8r").read_bytes())
    relu4 = next(t for t in img.tensors if t.dtype == "int16" and t.shape == shapes["relu4_out0"])
    assert relu4.nbytes == 2 * int(np.prod(shapes["relu4_out0"]))


# -- the image ---------------------------------------------------------------------------------
def test_every_image_is_format_3_and_older_formats_are_refused_by_name(cnn_table, tmp_path):
    """8-bit and int16 programs alike are written as format 3 (packed Conv/Gemm weights);
    a format 1 or 2 header (the unpacked layouts of firmware 1.x) is refused saying what it
    is, even with a valid digest, and an unknown version as unsupported."""
    model, table = cnn_table
    q8 = tapeout_quantize(model, tmp_path / "8", (), table)
    q16 = tapeout_quantize(model, tmp_path / "16", ("relu9_out0",), table)
    _, a8 = M.compile_path(q8.path, q8.inputs, tmp_path / "a8")
    _, a16 = M.compile_path(q16.path, q16.inputs, tmp_path / "a16")
    raw8, raw16 = ((a.directory / "model.i8r").read_bytes() for a in (a8, a16))
    for raw, art in ((raw8, a8), (raw16, a16)):
        assert struct.unpack_from("<H", raw, 8)[0] == 3 and art.report["format_version"] == 3
    forged = bytearray(raw16[:HEADER.size])
    for version, says in ((1, r"format version 1 \(unpacked .* firmware 1\.0\.0\) is no longer read"),
                          (2, r"format version 2 \(unpacked .* firmware 1\.1\.0\) is no longer read"),
                          (4, r"format version 4 is not supported")):
        forged[8:10] = struct.pack("<H", version)
        forged[32:64] = image_digest(bytes(forged), raw16[HEADER.size:])
        with pytest.raises(ArtifactRejected, match=says):
            read_image(bytes(forged) + raw16[HEADER.size:])


def test_artifacts_need_the_firmware_that_reads_them(cnn_table, tmp_path):
    from tapeout.compilers.errors import CompilationFailed

    model, table = cnn_table
    q8 = tapeout_quantize(model, tmp_path / "8", (), table)
    q16 = tapeout_quantize(model, tmp_path / "16", ("relu9_out0",), table)
    _, a8 = M.compile_path(q8.path, q8.inputs, tmp_path / "a8", firmware="2.0.0")
    _, a16 = M.compile_path(q16.path, q16.inputs, tmp_path / "a16")
    assert a8.minimum_firmware_revision == a16.minimum_firmware_revision == "2.0.0"
    # A device on 1.1.0 reads formats 1 and 2 only: the compile says so instead of shipping it.
    for q in (q8, q16):
        with pytest.raises(CompilationFailed, match=r"firmware 1\.1\.0; int8-ref artifacts need at least 2\.0\.0"):
            M.compile_path(q.path, q.inputs, tmp_path / "old", firmware="1.1.0")


def test_mbqm64_is_single_rounding_with_the_full_mantissa():
    """i8r_mbqm64 (int64 accumulators of int16 inputs) against Python's exact integers:
    floor((x * m + 2^(t-1)) / 2^t), t = 31 - shift."""
    from tapeout.compilers.int8_ref._kernels import mbqm64

    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.integers(-(1 << 47), 1 << 47, 4000),
                         rng.integers(-70000, 70000, 2000), [0, 1, -1, 3, -3, -(1 << 47)]])
    for i, x in enumerate(int(v) for v in xs):
        m = int(rng.integers(1 << 30, 1 << 31))
        shift = int(rng.integers(-31, 31))
        t = 31 - shift
        assert mbqm64(x, m, shift) == max(-(1 << 62), min(1 << 62, (x * m + (1 << (t - 1))) >> t))
    assert [mbqm64(x, 1 << 30, 0) for x in (-3, -1, 1, 3)] == [-1, 0, 1, 2]  # ties up


STRUCT_FUZZ = '''
import struct, sys
import numpy as np
from tapeout.compilers.int8_ref.artifact_format import HEADER, image_digest, read_image
from tapeout.compilers.int8_ref.exceptions import ArtifactRejected
from tapeout.compilers.int8_ref.opset import PARAMS, Kind
from tapeout.compilers.int8_ref.runtime import Int8Runner
raw = open(sys.argv[1], "rb").read()
pay = raw[HEADER.size:]
# locate every tensor dtype byte and every op integer in the payload (the documented layout)
pos, dtype_at, ints_at = 0, [], []
def take(fmt):
    global pos
    v = struct.unpack_from(fmt, pay, pos); pos += struct.calcsize(fmt); return v
(n,) = take("<I")
for _ in range(n):
    dtype_at.append(pos)
    code, ndim, nlen, off, nb = take("<BBHQQ"); pos += 4 * ndim + nlen
for _ in range(2):
    (n,) = take("<I"); pos += 4 * n
(n,) = take("<I")
for _ in range(n):
    code, ndim, z, off, nb = take("<BBHQQ"); pos += 4 * ndim
(n,) = take("<I")
for _ in range(n):
    kind, nin, ncon, nint, nflt, nlen, tlen, z, scr = take("<HBBBBHHHI")
    pos += 4 * (nin + 1 + ncon)
    ints_at += [pos + 8 * j for j in range(nint)]
    pos += 8 * nint + 4 * nflt + nlen + tlen
cases = [(p, "<B", v) for p in dtype_at for v in (1, 2, 3, 4, 5)]
cases += [(p, "<q", v) for p in ints_at for v in (0, 1, 2, 3, -1, 15, 16, 21, 40000, 1 << 20)]
counts = {"rejected": 0, "accepted": 0}
feed = None
for p, fmt, v in cases:
    buf = bytearray(pay)
    struct.pack_into(fmt, buf, p, v)
    head = bytearray(raw[:HEADER.size])
    head[32:64] = image_digest(bytes(head), bytes(buf))
    try:
        img = read_image(bytes(head) + bytes(buf), "fuzz")
    except ArtifactRejected:
        counts["rejected"] += 1
        continue
    r = Int8Runner(img)
    r.run({img.tensors[t].name: np.ones(img.tensors[t].shape, img.tensors[t].dtype)
           for t in img.inputs})
    counts["accepted"] += 1
print(counts)
'''


@pytest.mark.parametrize("script,args", [(FUZZ, ("1500", "11", "1")), (FUZZ, ("500", "5", "0")),
                                         (STRUCT_FUZZ, ())],
                         ids=["bytes-digest-recomputed", "bytes-raw", "every-param-and-dtype"])
def test_loader_fuzz_on_an_int16_image(script, args, cnn_table, tmp_path):
    """The loader on a version-2 image (int16 Conv, MaxPool, Gemm, Add...): random byte
    mutations, and every op parameter and tensor dtype set to values around the int16
    codes and limits, digest recomputed. ArtifactRejected or a clean run, in a subprocess."""
    b = M._Builder(0)
    x = b.op("Relu", [b.conv("input", 2, 4)])
    y = b.op("Add", [x, b.conv(x, 4, 4, k=1, pad=0)])
    y = b.op("Flatten", [b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])])
    model = b.model((1, 2, 6, 6), b.gemm(y, 36, 3))
    qdq = quantize16(model, tmp_path / "q", ["relu4_out0", "add7_out0"])
    _, art = M.compile_path(qdq, M.input_specs(model), tmp_path / "a", "fixed-point")
    assert art.report["format_version"] == FORMAT_VERSION
    counts = M.run_loader_fuzz(script, art.directory / "model.i8r", args, tmp_path, 300)
    assert counts["rejected"] > 0


# -- what is not supported is named -------------------------------------------------------------
@pytest.mark.parametrize("op,build", [
    ("Sigmoid", lambda: M.single_op("Sigmoid", [(2, 50)])),
    ("Softmax", lambda: M.single_op("Softmax", [(3, 10)], axis=-1)),
    ("Pad", lambda: M.single_op("Pad", [(1, 2, 4, 4)],
                                consts=(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),))),
])
def test_unsupported_int16_op_names_node_and_op(op, build, tmp_path):
    model = build()
    qdq = quantize16(model, tmp_path, ["input"])
    node = next(n.name for n in model.graph.node if n.op_type == op)
    problems = compatibility_report(qdq)
    assert [(p.node, p.op_type) for p in problems] == [(node, op)]
    assert "int16" in problems[0].reason
    with pytest.raises(IncompatibleModel) as exc:
        M.compile_path(qdq, M.input_specs(model), tmp_path / "o")
    assert node in str(exc.value) and op in str(exc.value) and "int16" in str(exc.value)


def test_int16_limits_are_reported(tmp_path):
    """An int16 graph output, and an int16 average over more values than the int32 sum holds
    (|x - zp| <= 65535, so 2^15 of them)."""
    big = MAX_REDUCTION * 2
    side = int(np.sqrt(big))
    model = M.single_op("GlobalAveragePool", [(1, 1, side, side)])
    qdq = quantize16(model, tmp_path / "gap", ["input"])
    problems = compatibility_report(qdq)
    assert problems and problems[0].op_type == "GlobalAveragePool"
    assert "int32 sum" in problems[0].reason
    # a QuantizeLinear straight to an int16 graph output
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT16, [2, 3])],
        [numpy_helper.from_array(np.array(0.01, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.int16), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(m, str(tmp_path / "q.onnx"))
    problems = compatibility_report(tmp_path / "q.onnx", {"x": (2, 3)})
    assert problems[0].node == "q" and "int16 graph output" in problems[0].reason


def test_capabilities_declare_int16():
    from tapeout.compilers.int8_ref import Int8ReferenceCompiler

    assert "int16" in Int8ReferenceCompiler().capabilities().tensor_dtypes


def test_int16_graph_input_is_refused(tmp_path):
    """int16 is for activations inside the graph: an int16 graph input is refused by name."""
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], name="dq")], "g",
        [helper.make_tensor_value_info("x", TensorProto.INT16, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(0.01, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.int16), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(m, str(tmp_path / "dq.onnx"))
    problems = compatibility_report(tmp_path / "dq.onnx")
    assert problems[0].op_type == "graph input"
    with pytest.raises(IncompatibleModel):
        M.compile_path(tmp_path / "dq.onnx", [TensorSpec("x", (2, 3), "int16")], tmp_path / "o")
