"""Structure, normalization and quantization-axis ops against ONNX Runtime, on ONNX's own node
test graphs (onnx.backend.test.case.node) quantized by ONNX Runtime's quantize_static.

Every input but the first becomes an initializer (indices, starts, split sizes, the
LayerNorm scale and bias), as a compiler needs them; the float graph is quantized to QDQ with
int8 and uint8 activations and compiled; int8-ref and an ORT session on the same QDQ model
run the same random inputs. Data movement (Slice, Split, Gather, Expand) and Softmax are
bit-exact in `ort` mode; LayerNormalization is an integer algorithm where ORT computes in
float32, so it may differ by one LSB on a rounding boundary (ops/layernorm.py).
"""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases

import int8_ref_models as M
from tapeout.compilers.int8_ref._kernels import FIRMWARE_REVISION

FIRMWARE = FIRMWARE_REVISION  # the op kinds of 1.2.0, built for the current firmware
EXACT = ("Slice", "Split", "Gather", "Softmax")
# cases whose output is empty (int8-ref refuses empty tensors by name: test below)
EMPTY = {"test_slice_start_out_of_bounds", "test_split_zero_size_splits_opset13",
         "test_split_zero_size_splits_opset18"}


def _cases():
    found = {}
    for case in collect_testcases(None):
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in EXACT + ("Expand", "LayerNormalization") \
                and "expanded" not in case.name:
            found[case.name] = case
    return found


CASES = _cases()


def constify(case) -> onnx.ModelProto:
    """The case's graph with every input but the first as an initializer, and only the
    first output (LayerNormalization's Mean and InvStdDev are training outputs, refused by
    name: test below)."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    if model.graph.node[0].op_type == "LayerNormalization":
        del model.graph.node[0].output[1:]
        del model.graph.output[1:]
    inputs, _ = case.data_sets[0]
    keep = model.graph.input[0]
    for vi, value in list(zip(model.graph.input, inputs))[1:]:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), vi.name))
    del model.graph.input[1:]
    model.graph.input[0].CopyFrom(keep)
    return model


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    cache = {}

    def get(name, activation):
        if (name, activation) not in cache:
            model = constify(CASES[name])
            # Slice and Gather are quantized by ORT only after a quantized producer unless
            # forced (a single-node graph has none). The only weights are LayerNorm's scale
            # and bias, per tensor (ORT's per-channel path fails on a multi-axis scale).
            qdq = M.quantize_qdq(model, tmp_path_factory.mktemp(name), name,
                                 activation=activation, per_channel=False,
                                 ForceQuantizeNoInputCheck=True)
            cache[name, activation] = (model, qdq)
        return cache[name, activation]

    return get


@pytest.mark.parametrize(("mode", "activation"),
                         [("ort", "uint8"), ("ort", "int8"),
                          pytest.param("fixed-point", "uint8", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(n for n in CASES if n not in EMPTY and "expand" not in n))
def test_node_case_against_onnxruntime(name, mode, activation, quantized, tmp_path):
    model, qdq = quantized(name, activation)
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path, mode, firmware=FIRMWARE)
    worst, ndiff, total = M.lsb_diffs(model, qdq, art, compiler.load(art))
    op = model.graph.node[0].op_type
    exact = op in EXACT and (mode == "ort" or op != "Softmax")
    assert worst <= (0 if exact else 1), f"{ndiff}/{total} elements differ, max {worst} LSB"


def _qdq_around(model: onnx.ModelProto, scale: float, zero_point: int) -> onnx.ModelProto:
    """The single-node float graph with QuantizeLinear/DequantizeLinear pairs on its data
    input and its output, as a quantizer writes them (ORT's quantize_static does not
    quantize Expand)."""
    from onnx import helper

    graph = model.graph
    node = graph.node[0]
    x, y = graph.input[0].name, graph.output[0].name
    s = numpy_helper.from_array(np.array(scale, np.float32), "s")
    z = numpy_helper.from_array(np.array(zero_point, np.uint8), "z")
    nodes = [helper.make_node("QuantizeLinear", [x, "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node(node.op_type, ["xd"] + list(node.input[1:]), ["yf"]),
             helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], [y])]
    out = helper.make_graph(nodes, "qdq", [graph.input[0]], [graph.output[0]],
                            list(graph.initializer) + [s, z])
    return helper.make_model(out, opset_imports=model.opset_import)


@pytest.mark.parametrize("name", ["test_expand_dim_changed", "test_expand_dim_unchanged"])
@pytest.mark.parametrize("mode", ["ort", "fixed-point"])
def test_expand_against_onnxruntime(name, mode, tmp_path):
    model = constify(CASES[name])
    path = tmp_path / "expand.onnx"
    onnx.save(_qdq_around(model, 0.02, 128), path)
    compiler, art = M.compile_path(path, M.input_specs(model), tmp_path / "art", mode,
                                   firmware=FIRMWARE)
    worst, ndiff, total = M.lsb_diffs(model, path, art, compiler.load(art))
    assert (worst, ndiff) == (0, 0), f"{ndiff}/{total} elements differ, max {worst} LSB"


@pytest.mark.parametrize(("name", "op", "reason"), [
    ("test_slice_start_out_of_bounds", "Slice", "empty"),
    ("test_layer_normalization_2d_axis1", "LayerNormalization", "Mean and InvStdDev"),
])
def test_refusals_are_named(name, op, reason, tmp_path):
    from tapeout.compilers.int8_ref.compat import report_for_model

    case = CASES[name]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, _ = case.data_sets[0]
    for vi, value in list(zip(model.graph.input, inputs))[1:]:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), vi.name))
    del model.graph.input[1:]
    qdq = _qdq_around(model, 0.02, 128) if op == "Slice" else model
    problems = report_for_model(qdq, {})
    assert problems and problems[0].op_type == op and reason in problems[0].reason, problems
