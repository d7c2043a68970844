"""The ops ONNX Runtime runs in float between DequantizeLinear and QuantizeLinear, which
int8-ref runs in integers: ReduceMean, BatchNormalization, Sub, Div, Sum, LRN and the float
islands (HardSwish, Gelu, x * sigmoid(x), Div by a per-channel constant ...), on ONNX's own
node test cases quantized by ONNX Runtime, compared with ONNX Runtime on the same QDQ model.

Bounds (docs/int8-ref.md, "Ops ONNX Runtime runs in float"): a float island is a table ORT
computed, so it is exact in both modes; so are `ort` BatchNormalization, Sub and Div (ORT's
float32 steps repeated); ReduceMean, Sum of three, LRN and every `fixed-point` form are within
one LSB. The fast tier runs one case per op with uint8 activations; the slow tier runs every
case with both activation types.
"""

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import int8_ref_models as M
from tapeout.compilers.int8_ref._kernels import FIRMWARE_REVISION
import onnx_node_cases as N
from tapeout.compilers.int8_ref import compatibility_report
from tapeout.compilers.interface import TensorSpec

FIRMWARE = FIRMWARE_REVISION  # the op kinds of 1.2.0, built for the current firmware
EDGES = "edges"
@dataclass(frozen=True)
class Case:
    """ONNX node test `test` from onnx.backend.test.case.node.`module`, its inputs `data`
    fed at run time (times `gain`), quantized by ORT with `quantize` as op_types_to_quantize
    or at the edges (EDGES); int8-ref within `ort` / `fixed` LSB of ORT."""

    test: str
    module: str
    data: tuple[str, ...]
    quantize: object
    ort: int = 0
    fixed: int = 0
    gain: float = 1


RM = ("reducemean", ("data",), ["ReduceMean"], 1, 1)
BN = ("batch_normalization", ("x",), ["BatchNormalization"], 0, 1)
CASES = {
    "reduce_mean_keepdims": Case("test_reduce_mean_keepdims_random", *RM),
    "reduce_mean_no_keepdims": Case("test_reduce_mean_do_not_keepdims_random", *RM),
    "reduce_mean_default_axes": Case("test_reduce_mean_default_axes_keepdims_random", *RM),
    "reduce_mean_negative_axes": Case("test_reduce_mean_negative_axes_keepdims_random", *RM),
    "batchnorm": Case("test_batchnorm_example", *BN),
    "batchnorm_epsilon": Case("test_batchnorm_epsilon", *BN),
    "sub": Case("test_sub", "sub", ("x", "y"), ["Sub"], 0, 1),
    "sub_broadcast": Case("test_sub_bcast", "sub", ("x", "y"), ["Sub"], 0, 1),
    "div": Case("test_div", "div", ("x", "y"), ["Div"], 0, 1),
    "div_broadcast": Case("test_div_bcast", "div", ("x", "y"), ["Div"], 0, 1),
    "sum_two": Case("test_sum_two_inputs", "sum", ("data_0", "data_1"), ["Sum"], 0, 1),
    "sum_three": Case("test_sum_example", "sum", ("data_0", "data_1", "data_2"), ["Sum"], 1, 1),
    "lrn": Case("test_lrn", "lrn", ("x",), ["LRN"], 1, 1),
    "lrn_strong": Case("test_lrn", "lrn", ("x",), ["LRN"], 1, 1, gain=300),
    "lrn_default": Case("test_lrn_default", "lrn", ("x",), ["LRN"], 1, 1, gain=30),
    "hardsigmoid": Case("test_hardsigmoid", "hardsigmoid", ("x",), ["HardSigmoid"]),
    "hardswish": Case("test_hardswish", "hardswish", ("x",), ["HardSwish"]),
    "hardswish_as_mul": Case("test_hardswish_expanded", "hardswish", ("x",), EDGES),
    "hardsigmoid_expanded": Case("test_hardsigmoid_expanded_ver18", "hardsigmoid", ("x",), EDGES),
    "erf": Case("test_erf", "erf", ("x",), EDGES),
    "gelu": Case("test_gelu_default_2", "gelu", ("x",), EDGES),
    "gelu_expanded": Case("test_gelu_default_2_expanded", "gelu", ("x",), EDGES),
    "gelu_tanh_expanded": Case("test_gelu_tanh_2_expanded", "gelu", ("x",), EDGES),
    "swish_as_mul": Case("test_swish_expanded", "swish", ("x",), EDGES),
    "mish_expanded": Case("test_mish_expanded", "mish", ("X",), EDGES),
    "elu_expanded": Case("test_elu_expanded_ver18", "elu", ("x",), EDGES),
    "selu": Case("test_selu", "selu", ("x",), EDGES),
    "softplus": Case("test_softplus", "softplus", ("x",), EDGES),
    "softsign_expanded": Case("test_softsign_expanded_ver18", "softsign", ("x",), EDGES),
    "sqrt": Case("test_sqrt", "sqrt", ("x",), EDGES),
    "tanh": Case("test_tanh", "tanh", ("x",), EDGES),
    "sigmoid": Case("test_sigmoid", "sigmoid", ("x",), ["Sigmoid"]),
    "pow_by_constant": Case("test_pow_bcast_scalar", "pow", ("x",), EDGES),
    "div_by_channel_constant": Case("test_div_bcast", "div", ("x",), EDGES),
    "mul_by_channel_constant": Case("test_mul_bcast", "mul", ("x",), EDGES),
    "prelu_channel_slope": Case("test_prelu_broadcast", "prelu", ("x",), EDGES),
}
FAST = ("reduce_mean_no_keepdims", "batchnorm", "sub_broadcast", "div", "sum_three",
        "lrn_strong", "hardswish_as_mul", "gelu_expanded", "div_by_channel_constant")


PARAMS = [pytest.param(case, activation, id=f"{case}-{activation}",
                        marks=() if case in FAST and activation == "uint8" else pytest.mark.slow)
          for case in CASES for activation in ("uint8", "int8")]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    made = {}

    def get(case, activation):
        if (case, activation) not in made:
            c = CASES[case]
            model, feed = N.node_model(c.test, c.module, set(c.data), c.gain)
            calibration = N.draws(feed, 16, seed=0)
            work = tmp_path_factory.mktemp(f"{case}-{activation}")
            qdq = (N.quantize_at_edges(model, calibration, activation, work)
                   if c.quantize == EDGES
                   else N.quantize_with_ort(model, calibration, activation, c.quantize, work))
            specs = [TensorSpec(k, tuple(v.shape), "float32") for k, v in feed.items()]
            made[case, activation] = qdq, specs, N.draws(feed, 16, seed=1)
        return made[case, activation]

    return get


@pytest.mark.parametrize(("case", "activation"), PARAMS)
def test_int8_ref_matches_onnxruntime_where_it_runs_in_float(case, activation, quantized,
                                                              tmp_path):
    qdq, specs, feeds = quantized(case, activation)
    for mode, bound in (("ort", CASES[case].ort), ("fixed-point", CASES[case].fixed)):
        compiler, art = M.compile_path(qdq, specs, tmp_path / mode, mode, firmware=FIRMWARE)
        worst, differing, total = N.compare(qdq, feeds, art, compiler.load(art))
        assert worst <= bound, f"{mode}: {differing}/{total} elements differ, max {worst} LSB"


# -- a network of them: every new kind in one image, and the loader fuzzed on it -------------
def float_ops_network():
    """Conv -> BatchNormalization -> LRN; HardSwish of that into a ReduceMean over H, W; the
    LRN output divided by the sigmoid of that mean, plus a MaxPool of the BatchNormalization
    output's HardSigmoid; times a per-channel float constant into the float graph output.
    Quantized by ORT with HardSigmoid, HardSwish, ReduceMean, MaxPool and Mul left out, so
    float island values reach a ReduceMean (int32 table entries) and a MaxPool (int16) in
    float, and the Mul by a constant ends the graph in float (float32 entries)."""
    b = M._Builder(3)
    c = b.conv("input", 3, 8)
    bn = b.op("BatchNormalization", [c] + [b.const(v.astype(np.float32)) for v in (
        b.rng.uniform(0.5, 1.5, 8), b.rng.normal(0, 0.2, 8), b.rng.normal(0, 0.3, 8),
        b.rng.uniform(0.5, 2.0, 8))])
    lrn = b.op("LRN", [bn], size=3, alpha=0.01, beta=0.75, bias=1.0)
    mean = b.op("ReduceMean", [b.op("HardSwish", [lrn]), b.const(np.array([2, 3], np.int64))])
    y = b.op("Div", [lrn, b.op("Sigmoid", [mean])])
    pooled = b.op("MaxPool", [b.op("HardSigmoid", [bn])], kernel_shape=[3, 3], pads=[1] * 4)
    y = b.op("Add", [y, pooled])
    y = b.op("Mul", [y, b.const(b.rng.uniform(0.5, 1.0, (1, 8, 1, 1)).astype(np.float32))])
    return b.model((1, 3, 8, 8), y, opset=18)


QUANTIZED_OPS = ["Conv", "BatchNormalization", "LRN", "Div", "Sigmoid", "Add"]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    model = float_ops_network()
    work = tmp_path_factory.mktemp("float-ops")
    calibration = [M.random_inputs(model, seed) for seed in range(16)]
    return model, N.quantize_with_ort(model, calibration, "uint8", QUANTIZED_OPS, work)


@pytest.mark.parametrize("mode", ["ort", "fixed-point"])
def test_a_network_of_float_ops_matches_onnxruntime(network, mode, tmp_path):
    model, qdq = network
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path, mode, firmware=FIRMWARE)
    assert {"AFFINE", "LRN", "REDUCE_MEAN", "DIV", "LUT_CHANNELS", "MAXPOOL"} <= set(
        art.report["ops"])
    assert art.minimum_firmware_revision == FIRMWARE
    feeds = [M.random_inputs(model, 100 + i) for i in range(8)]
    worst, differing, total = N.compare(qdq, feeds, art, compiler.load(art))
    # ort: the int16 HardSigmoid values into the MaxPool are within half an int16 step of
    # ORT's floats, one LSB where that crosses a rounding boundary of the next quantization
    # (~1% of them); fixed-point: Div, Add and that requantization round their own way
    assert worst <= (1 if mode == "ort" else 3), f"{differing}/{total} differ, max {worst}"


@pytest.mark.parametrize(("mode", "script"), [
    ("fixed-point", "params"),
    pytest.param("ort", "params", marks=pytest.mark.slow),
    pytest.param("fixed-point", "bytes", marks=pytest.mark.slow),
    pytest.param("ort", "bytes", marks=pytest.mark.slow),
])
def test_loader_fuzz_on_the_new_kinds(network, mode, script, tmp_path):
    """Every op parameter and tensor dtype set around its limits ("params"), and random byte
    mutations with the digest recomputed ("bytes"), on an image with REDUCE_MEAN,
    LUT_CHANNELS (2- and 4-byte entries), AFFINE, DIV and LRN: ArtifactRejected or a clean
    run, in a subprocess so that a crash shows."""
    from test_int8_ref_artifact import FUZZ
    from test_int8_ref_int16 import STRUCT_FUZZ

    model, qdq = network
    _, art = M.compile_path(qdq, M.input_specs(model), tmp_path / "a", mode, firmware=FIRMWARE)
    text, args = (STRUCT_FUZZ, ()) if script == "params" else (FUZZ, ("600", "3", "1"))
    counts = M.run_loader_fuzz(text, art.directory / "model.i8r", args, tmp_path)
    assert counts["rejected"] > 0


# -- what is refused is named ---------------------------------------------------------------
def _qdq_graph(tmp_path, nodes, inputs, inits, opset=17):
    """A hand-written QDQ graph for a refusal: float inputs quantized at the edge (uint8,
    scale 0.05, zero point 128) and the output quantized the same way."""
    params = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
              numpy_helper.from_array(np.array(128, np.uint8), "z")]
    head = []
    for name in inputs:
        head += [helper.make_node("QuantizeLinear", [name, "s", "z"], [name + "_q"]),
                 helper.make_node("DequantizeLinear", [name + "_q", "s", "z"], [name + "_dq"])]
    tail = [helper.make_node("QuantizeLinear", ["y_float", "s", "z"], ["y_q"]),
            helper.make_node("DequantizeLinear", ["y_q", "s", "z"], ["y"])]
    graph = helper.make_graph(head + nodes + tail, "refused",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                               for n, s in inputs.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              params + [numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = tmp_path / "refused.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


@pytest.mark.parametrize("nodes,inputs,inits,op,reason", [
    ([helper.make_node("Pow", ["a_dq", "b_dq"], ["y_float"], name="pow")],
     {"a": [4], "b": [4]}, {}, "Pow", "exactly one quantized activation"),
    ([helper.make_node("Add", ["a_dq", "c"], ["y_float"], name="add")],
     {"a": [4]}, {"c": np.ones((3, 4), np.float32)}, "Add", "broadcasts the activation"),
    ([helper.make_node("Less", ["a_dq", "zero"], ["less"], name="less"),
      helper.make_node("Where", ["less", "a_dq", "b_dq"], ["y_float"], name="where")],
     {"a": [4], "b": [4]}, {"zero": np.zeros(1, np.float32)}, "Less", "of type bool"),
    ([helper.make_node("ReduceMean", ["a_dq", "axes"], ["y_float"], name="mean")],
     {"a": [2, 3]}, {"axes": np.array([2], np.int64)}, "ReduceMean", "out of range"),
    ([helper.make_node("LRN", ["a_dq"], ["y_float"], name="lrn", size=3)],
     {"a": [4, 4]}, {}, "LRN", "N x C x D1"),
], ids=["two-activations", "broadcast-to-larger", "bool-leaves-island", "axes", "lrn-rank"])
def test_refusals_name_the_node_and_the_reason(nodes, inputs, inits, op, reason, tmp_path):
    path = _qdq_graph(tmp_path, nodes, inputs, inits)
    problems = compatibility_report(path)
    assert [p.op_type for p in problems] == [op], problems
    assert reason in problems[0].reason, problems[0].reason


def test_batchnorm_training_mode_is_refused(tmp_path):
    bn = helper.make_node("BatchNormalization", ["a_dq", "g", "b", "m", "v"], ["y_float"],
                          name="bn", training_mode=1)
    ones = np.ones(2, np.float32)
    path = _qdq_graph(tmp_path, [bn], {"a": [1, 2, 3]},
                      {"g": ones, "b": ones * 0, "m": ones * 0, "v": ones})
    problems = compatibility_report(path)
    assert [(p.op_type, p.attribute) for p in problems] == [("BatchNormalization",
                                                             "training_mode")]
