"""Every instruction-set path of the runtime gives the same bytes, and so does every thread
count: on every op's output of real networks (the real-model suite's MLPerf Tiny models,
ResNet-18 and MobileNet v2: depthwise, pointwise, strided and fully connected layers as
people ship them), and on the
values where a saturating dot product would go wrong, there also against ONNX Runtime."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import int8_ref_models as M
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.int8_ref import FIRMWARE_REVISION, Int8ReferenceCompiler, _kernels
from tapeout.compilers.int8_ref.runtime import Int8Runner
from tapeout.compilers.interface import QuantizedModel, TargetProfile, TensorSpec

ISAS = _kernels.supported_isas()


def test_the_paths_this_machine_runs():
    assert ISAS[0] == "portable" and set(ISAS) <= set(_kernels.ISA_NAMES)
    assert _kernels.default_isa() == ISAS[-1]  # the best, unless TAPEOUT_INT8REF_ISA caps it


def traces(artifact, feed, **runner):
    """Every op's output of one run, by tensor name."""
    from tapeout.compilers.int8_ref.runtime import load_image

    r = Int8Runner(load_image(artifact.directory / "model.i8r"), **runner)
    return r, r.trace(feed)


def assert_same_bytes(want: dict, got: dict, what: str):
    assert want.keys() == got.keys()
    for name in want:
        assert want[name].tobytes() == got[name].tobytes(), f"{what}: tensor {name!r} differs"


@pytest.mark.real_models
@pytest.mark.parametrize("name", ["kws_ds_cnn", "vww_mobilenet_v1", "ic_resnet8", "resnet18",
                                  "mobilenet_v2"])
@pytest.mark.parametrize("mode", ["fixed-point", "ort"])
def test_every_path_and_thread_count_gives_the_same_bytes_on_real_networks(
        real_model, name, mode, tmp_path):
    model = real_model(name, "int8" if name == "kws_ds_cnn" else "uint8")
    target = TargetProfile("t", "int8-ref", FIRMWARE_REVISION, {"requant": mode})
    artifact = Int8ReferenceCompiler().compile(model.quantized, target, tmp_path)
    feed = model.feeds()[0]
    runner, want = traces(artifact, feed, isa="portable")
    assert runner.isa == "portable"
    for isa in ISAS[1:]:
        runner, got = traces(artifact, feed, isa=isa)
        assert runner.isa == isa
        assert_same_bytes(want, got, isa)
    _, got = traces(artifact, feed, threads=2)
    assert_same_bytes(want, got, "2 threads")


def extreme_model(path, C: int, M: int, signed_x: bool):
    """A QLinearConv over 3x3xC and a QLinearMatMul over 9C terms whose every input is the
    type's largest value and whose weights are +127 or -128: every pair and quad of
    products is past int16, and the sums are the largest the reduction bound allows."""
    rng = np.random.default_rng(C)
    xt = TensorProto.INT8 if signed_x else TensorProto.UINT8
    npx = np.int8 if signed_x else np.uint8
    lo = int(np.iinfo(npx).min)
    w = np.where(rng.random((M, C, 3, 3)) < 0.5, 127, -128).astype(np.int8)
    w[0], w[1] = 127, -128
    K = 9 * C
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
        numpy_helper.from_array(np.array(lo, npx), "xz"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full(M, 1.0, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(M, np.int8), "wz"),
        # an output scale that keeps the extreme sums inside the 8-bit range
        numpy_helper.from_array(np.array(255.0 * 128 * K / 100, np.float32), "ys"),
        numpy_helper.from_array(np.array(0 if not signed_x else 0, npx), "yz"),
        numpy_helper.from_array(w.reshape(M, K).T.copy(), "b"),
        numpy_helper.from_array(np.array(1.0, np.float32), "bs"),
        numpy_helper.from_array(np.array(0, np.int8), "bz"),
    ]
    conv = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                            ["conv"], kernel_shape=[3, 3], name="conv")
    flat = helper.make_node("Reshape", ["x", "shape"], ["rows"], name="flat")
    inits.append(numpy_helper.from_array(np.array([1, K], np.int64), "shape"))
    mm = helper.make_node("QLinearMatMul", ["rows", "xs", "xz", "b", "bs", "bz", "ys", "yz"],
                          ["gemm"], name="gemm")
    graph = helper.make_graph(
        [conv, flat, mm], "extreme", [helper.make_tensor_value_info("x", xt, [1, C, 3, 3])],
        [helper.make_tensor_value_info("conv", xt, [1, M, 1, 1]),
         helper.make_tensor_value_info("gemm", xt, [1, M])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return npx


@pytest.mark.parametrize("signed_x", [False, True], ids=["uint8", "int8"])
def test_saturation_prone_values_match_onnxruntime_on_every_path(signed_x, tmp_path):
    path = tmp_path / "extreme.onnx"
    npx = extreme_model(path, 512, 24, signed_x)
    x = np.full((1, 512, 3, 3), np.iinfo(npx).max, npx)
    want = dict(zip(("conv", "gemm"), M.ort_session(path).run(None, {"x": x})))
    qm = QuantizedModel(path, hashlib.sha256(path.read_bytes()).hexdigest(), path,
                        (TensorSpec("x", (1, 512, 3, 3), np.dtype(npx).name),), ())
    artifact = Int8ReferenceCompiler().compile(
        qm, TargetProfile("t", "int8-ref", FIRMWARE_REVISION, {"requant": "ort"}), tmp_path / "a")
    # the sums run from -255*128*K to 255*127*K; the outputs span the range, not one value
    assert len(np.unique(want["conv"])) > 2
    for isa in ISAS:
        _, got = traces(artifact, {"x": x}, isa=isa)
        for name in ("conv", "gemm"):
            assert np.array_equal(got[name].reshape(want[name].shape), want[name]), (isa, name)


def test_threads_is_a_target_option(tmp_path):
    model = M.cnn()
    qdq = M.quantize_qdq(model, tmp_path, "cnn")
    qm = QuantizedModel(qdq, hashlib.sha256(qdq.read_bytes()).hexdigest(), qdq,
                        M.input_specs(model), ())
    compiler = Int8ReferenceCompiler()
    assert compiler.capabilities().options["threads"] == ()
    one = compiler.compile(qm, TargetProfile("t", "int8-ref", FIRMWARE_REVISION), tmp_path / "1")
    two = compiler.compile(qm, TargetProfile("t", "int8-ref", FIRMWARE_REVISION,
                                             {"threads": "2"}), tmp_path / "2")
    assert two.options == {"requant": "fixed-point", "threads": "2"}
    # the image is the same; only the loaded runtime differs
    assert (one.directory / "model.i8r").read_bytes() == (two.directory / "model.i8r").read_bytes()
    feed = M.random_inputs(model, 0)
    a, b = compiler.load(one).run(feed), compiler.load(two).run(feed)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    for bad in ("0", "two", "-1", "1.5"):
        with pytest.raises(InvalidInput, match=rf"threads={bad!r}, expected a positive integer"):
            compiler.compile(qm, TargetProfile("t", "int8-ref", FIRMWARE_REVISION,
                                               {"threads": bad}), tmp_path / bad)


def test_an_instruction_set_this_cpu_lacks_is_refused_by_name(tmp_path):
    model = M.cnn()
    qdq = M.quantize_qdq(model, tmp_path, "cnn")
    _, art = M.compile_path(qdq, M.input_specs(model), tmp_path / "a")
    from tapeout.compilers.int8_ref.runtime import load_image

    image = load_image(art.directory / "model.i8r")
    with pytest.raises(ValueError, match=r"instruction set 'neon' is not available here"):
        Int8Runner(image, isa="neon")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        Int8Runner(image, threads=0)
