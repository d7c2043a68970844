"""calibrate() on real models: streaming through the augmented model, batch rewriting, the table,
and the quantizer using exactly the table's ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tapeout.calibration.calibrate import calibrate
from tapeout.calibration.dataset import load_sample_set
from tapeout.calibration.observers import EntropyOptions, PercentileOptions
from tapeout.calibration.stream import build_activation_model, open_stream
from tapeout.calibration.table import CalibrationTable
from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.interface import TensorSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"
EXAMPLE_SET = EXAMPLE / "data" / "calibration.npz"


@pytest.fixture(scope="module")
def example_samples(exported_model):
    return load_sample_set(EXAMPLE_SET, exported_model.inputs)


def _ort_minmax(model_path: Path, samples, workdir: Path) -> dict[str, tuple[float, float]]:
    """ONNX Runtime's own MinMax calibrator, one sample at a time: an independent reference."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(
        model_path, augmented_model_path=str(workdir / "ort.onnx"),
        calibrate_method=CalibrationMethod.MinMax, providers=["CPUExecutionProvider"],
    )

    class Reader:
        batches = samples.batches(1)

        def get_next(self):
            return next(self.batches, None)

    calibrator.collect_data(Reader())
    return {
        name: (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
        for name, data in calibrator.compute_data().items()
    }


def test_minmax_matches_onnxruntime_on_the_example(exported_model, example_samples, tmp_path):
    table = calibrate(exported_model.path, example_samples, method="minmax", batch_size=1, workdir=tmp_path)
    reference = _ort_minmax(exported_model.path, example_samples, tmp_path)
    assert set(table.ranges) == set(reference)
    for name, (low, high) in reference.items():
        assert table.ranges[name].low == pytest.approx(low, rel=1e-5, abs=1e-6), name
        assert table.ranges[name].high == pytest.approx(high, rel=1e-5, abs=1e-6), name
    assert table.sample_count == 300 and table.set_digest == example_samples.digest
    assert table.options["dynamic_batch"] is True  # the example's fixed batch was rewritten


def test_dynamic_batch_gives_the_fixed_batch_activations(exported_model, example_samples, tmp_path):
    fixed = open_stream(exported_model.path, tmp_path / "a", example_samples, dynamic_batch=False)
    dynamic = open_stream(exported_model.path, tmp_path / "b", example_samples)
    assert not fixed.dynamic and dynamic.dynamic and dynamic.model.batch_size is None
    collected: dict[str, list] = {"fixed": [], "dynamic": []}
    fixed.run(example_samples, 1, lambda acts: collected["fixed"].append(dict(acts)))
    dynamic.run(example_samples, 64, lambda acts: collected["dynamic"].append(dict(acts)))
    assert len(collected["fixed"]) == 300 and len(collected["dynamic"]) == 5
    for name in fixed.model.tensors():
        one = np.concatenate([acts[name] for acts in collected["fixed"]])
        many = np.concatenate([acts[name] for acts in collected["dynamic"]])
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6, err_msg=name)
    assert all(path.parent in (tmp_path / "a", tmp_path / "b") for path in (fixed.model.path, dynamic.model.path))


def test_augmented_model_maps_names_to_outputs_explicitly(exported_model, tmp_path):
    model = build_activation_model(exported_model.path, tmp_path, dynamic_batch=True)
    graph = onnx.load(str(model.path)).graph
    for name, index in model.outputs.items():
        assert graph.output[index].name == name
    assert model.from_inputs == ("image",)
    assert "logits" in model.outputs and "relu_2" in model.outputs


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_histogram_methods_stay_inside_minmax(exported_model, example_samples, tmp_path, method):
    minmax = calibrate(exported_model.path, example_samples, method="minmax", batch_size=1, workdir=tmp_path)
    table = calibrate(exported_model.path, example_samples, method=method, batch_size=1, workdir=tmp_path)
    assert table.options["observer"] == f"tapeout.{method}.v1" and table.options["bins"] == 2048
    for name, value in table.ranges.items():
        assert minmax.ranges[name].low <= value.low <= value.high <= minmax.ranges[name].high


def test_results_do_not_depend_on_chunk_size(exported_model, example_samples, tmp_path):
    tables = [
        calibrate(exported_model.path, example_samples, method="entropy", batch_size=1,
                  workdir=tmp_path, chunk_size=chunk)
        for chunk in (7, 300)
    ]
    for name in tables[0].ranges:
        assert tables[0].ranges[name].low == pytest.approx(tables[1].ranges[name].low, rel=1e-4, abs=1e-5)
        assert tables[0].ranges[name].high == pytest.approx(tables[1].ranges[name].high, rel=1e-4, abs=1e-5)


def test_options_and_symmetric_are_recorded(exported_model, example_samples, tmp_path):
    table = calibrate(
        exported_model.path, example_samples, method="percentile", batch_size=1, workdir=tmp_path,
        options=PercentileOptions(percentile=99.9), symmetric=True,
    )
    assert table.options["percentile"] == 99.9 and table.options["symmetric"] is True
    assert all(value.low == -value.high for value in table.ranges.values())
    written = table.write(tmp_path / "table.json")
    again = CalibrationTable.read(written)
    assert again.ranges == table.ranges and again.options["percentile"] == 99.9


def test_bad_method_or_options(exported_model, example_samples, tmp_path):
    with pytest.raises(InvalidInput, match="method"):
        calibrate(exported_model.path, example_samples, method="kl", batch_size=1, workdir=tmp_path)
    with pytest.raises(InvalidInput, match="takes PercentileOptions, found EntropyOptions"):
        calibrate(exported_model.path, example_samples, method="percentile", batch_size=1,
                  workdir=tmp_path, options=EntropyOptions())
    with pytest.raises(InvalidInput, match="at least one batch of 500"):
        calibrate(exported_model.path, example_samples, method="minmax", batch_size=500, workdir=tmp_path)


def test_quantizer_uses_exactly_the_table_ranges(exported_model, example_samples, tmp_path):
    from tapeout.calibration.quantizer import quantize

    table = calibrate(exported_model.path, example_samples, method="entropy", batch_size=1, workdir=tmp_path)
    quantized = quantize(
        exported_model.path, table, inputs=exported_model.inputs, outputs=exported_model.outputs,
        output_path=tmp_path / "model.qdq.onnx",
    )
    graph = onnx.load(str(quantized.path)).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}

    def scale(name: str) -> np.float32:
        # ONNX Runtime's compute_scale_zp for int8 asymmetric: the range widened to hold zero,
        # scale = (rmax - rmin) / 255.
        value = table.ranges[name]
        low, high = np.float32(min(value.low, 0.0)), np.float32(max(value.high, 0.0))
        return np.float32((high - low) / np.float32(255))

    table_scales = [scale(name) for name in table.ranges]
    own = shared = 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in table.ranges:
            continue
        found = float(constants[node.input[1]])
        if found == pytest.approx(float(scale(node.input[0])), rel=1e-6):
            own += 1
        else:
            # ONNX Runtime gives MaxPool's and Reshape's output their input's parameters (the op
            # only moves values): still a table range, never a re-calibrated one.
            assert any(found == pytest.approx(float(s), rel=1e-6) for s in table_scales), node.input[0]
            shared += 1
    assert own >= 4 and own + shared >= 7


# ---- a model whose batch cannot be freed: the check falls back to the fixed batch --------


def _batch_mixing_model(path: Path, batch: int) -> Path:
    """y = x + mean(x over the batch axis): running 2 * batch samples at once changes y."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
            helper.make_node("Add", ["x", "m"], ["y"]),
        ],
        "mix",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(np.array([0], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_batch_mixing_model_falls_back_and_drops_a_short_tail(tmp_path):
    model = _batch_mixing_model(tmp_path / "mix.onnx", batch=2)
    x = np.random.default_rng(0).normal(size=(9, 3)).astype(np.float32)
    np.savez(tmp_path / "set.npz", x=x)
    samples = load_sample_set(tmp_path / "set.npz", (TensorSpec("x", (2, 3), "float32"),))
    table = calibrate(model, samples, method="minmax", batch_size=2, workdir=tmp_path / "w")
    assert table.options["dynamic_batch"] is False and table.sample_count == 8
    pairs = x[:8].reshape(4, 2, 3)
    y = pairs + pairs.mean(axis=1, keepdims=True)
    assert table.ranges["y"].low == pytest.approx(float(y.min()), rel=1e-6)
    assert table.ranges["y"].high == pytest.approx(float(y.max()), rel=1e-6)
    assert table.ranges["x"].high == float(x[:8].max())


def test_table_json_holds_method_options_and_digest(exported_model, example_samples, tmp_path):
    table = calibrate(exported_model.path, example_samples, method="mse", batch_size=1, workdir=tmp_path)
    document = json.loads(table.to_json())
    assert document["method"] == "mse" and document["options"]["levels"] == 256
    assert document["calibration_set"] == {"digest": example_samples.digest, "count": 300}
    assert set(document["ranges"]) == set(table.ranges)


def test_symmetric_table_and_quantizer_give_zero_points_of_zero(exported_model, example_samples, tmp_path):
    from tapeout.calibration.quantizer import quantize

    table = calibrate(exported_model.path, example_samples, method="mse", batch_size=1,
                      workdir=tmp_path, symmetric=True)
    quantized = quantize(
        exported_model.path, table, inputs=exported_model.inputs, outputs=exported_model.outputs,
        output_path=tmp_path / "model.qdq.onnx", symmetric_activations=True,
    )
    graph = onnx.load(str(quantized.path)).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    points = [constants[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in table.ranges]
    assert points and all(int(point) == 0 for point in points)


def test_an_activation_that_overflows_is_named(tmp_path):
    """A model that makes inf from finite input: the error names the tensor."""
    graph = helper.make_graph(
        [helper.make_node("Exp", ["x"], ["y"])], "exp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "exp.onnx"))
    np.savez(tmp_path / "set.npz", x=np.array([[1.0, 2.0], [100.0, 1.0]], np.float32))
    samples = load_sample_set(tmp_path / "set.npz", (TensorSpec("x", (1, 2), "float32"),))
    with pytest.raises(InvalidInput, match="tensor 'y': observed tensor holds NaN or infinite"):
        calibrate(tmp_path / "exp.onnx", samples, method="minmax", batch_size=1, workdir=tmp_path / "w")
