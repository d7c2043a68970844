"""Per-layer sensitivity: the layer map, both metrics, keeping a layer out of int8, explain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from outlier_model import OUTLIER_LAYER, write_project
from tapeout.flows import stages
from tapeout.flows.config import load_pipeline
from tapeout.flows.sensitivity import Sensitivity, analyse, keep_out, layers_by_node, quantized_layers


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """The outlier model exported, calibrated, quantized, with its validation set."""
    root = tmp_path_factory.mktemp("outlier")
    pipeline = load_pipeline(write_project(root / "project"))
    model = stages.export_stage(pipeline, root / "export")
    calibrated = stages.calibrate_stage(pipeline, model, stages.calibration_set(pipeline, model), root / "calibrate")
    quantized = stages.quantize_stage(model, calibrated, root / "quantize")
    validation = stages.validation_set(pipeline, model)
    return {"root": root, "model": model, "calibrated": calibrated, "quantized": quantized, "validation": validation}


def test_layer_map_names_each_quantized_node_and_its_tensors(outlier):
    layers = layers_by_node(outlier["model"].path, outlier["quantized"].path)
    assert set(layers) == {"fc1", "fc2", "fc3"}
    assert layers["fc1"].float_tensor == "r1"  # the Relu fused into fc1's output quantization
    assert layers["fc2"].inputs == ("r1",)
    assert layers["fc3"].float_tensor == "logits"  # a graph output, renamed before its Q in the QDQ model
    qdq = onnx.load(str(outlier["quantized"].path))
    produced = {name for node in qdq.graph.node for name in node.output}
    assert all(layer.quantized_tensor in produced for layer in layers.values())


def test_outlier_layer_ranks_first_by_both_metrics(outlier):
    result = analyse(
        outlier["model"].path, outlier["quantized"], outlier["validation"], table=outlier["calibrated"].table,
        samples_limit=120, top_k=3, workdir=outlier["root"] / "sensitivity",
    )
    assert result.samples_used == 120 and result.samples_available == 300
    cheap = max(result.layers, key=lambda layer: layer.sqnr_drop_db)
    assert cheap.node == OUTLIER_LAYER  # median channel SQNR sees what the outlier hides
    first = result.ranked()[0]
    assert first.node == OUTLIER_LAYER
    assert first.sqnr_db > 30 and first.channel_sqnr_db < 15  # energy-weighted SQNR hides the loss
    assert first.fp32_alone_top1_agreement >= 0.97 and first.agreement_gain > 0.2
    assert result.baseline_top1_agreement < 0.8
    document = result.to_document()
    assert document["layers"][0]["rank"] == 1 and document["layers"][0]["node"] == OUTLIER_LAYER
    written = result.write(outlier["root"] / "report" / "sensitivity.json")
    assert Sensitivity.read(written).ranked()[0].node == OUTLIER_LAYER
    json.loads(written.read_text())  # plain JSON: no NaN or infinity


def test_keep_out_leaves_the_layer_and_its_output_in_fp32(outlier, tmp_path):
    layers = layers_by_node(outlier["model"].path, outlier["quantized"].path)
    kept = keep_out(
        outlier["model"].path, outlier["calibrated"].table, [layers[OUTLIER_LAYER]],
        inputs=outlier["quantized"].inputs, outputs=outlier["quantized"].outputs,
        output_path=tmp_path / "kept.qdq.onnx",
    )
    model = onnx.load(str(kept.path))
    onnx.checker.check_model(model)
    quantized_inputs = {node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    assert "r1" not in quantized_inputs and "x" not in quantized_inputs  # fc1 reads x, writes r1, in fp32
    fc2 = next(node for node in model.graph.node if node.name == "fc2")
    producer = {name: node for node in model.graph.node for name in node.output}
    assert producer[fc2.input[0]].op_type == "Identity"  # fc2 reads fc1's fp32 output
    remaining, _ = quantized_layers(onnx.load(str(outlier["model"].path)), model)
    assert {layer.node for layer in remaining} == {"fc2", "fc3"}
    used = {name for node in model.graph.node for name in node.input}
    assert all(tensor.name in used for tensor in model.graph.initializer)


def test_sqnr_and_cosine_on_the_example_model(exported_model, quantized_model, tmp_path):
    from conftest import EXAMPLE
    from tapeout.calibration.dataset import load_sample_set

    validation = load_sample_set(EXAMPLE / "data" / "validation.npz", exported_model.inputs, label_key="label")
    result = analyse(exported_model.path, quantized_model, validation, samples_limit=50, top_k=0, workdir=tmp_path)
    nodes = {layer.node for layer in result.layers}
    assert {"node_conv2d", "node_conv2d_1", "node_linear", "node_linear_1"} <= nodes
    for layer in result.layers:
        assert 10 < layer.sqnr_db <= 200 and 0.9 < layer.cosine <= 1.0 + 1e-9
        assert layer.agreement_gain is None  # top_k 0: no expensive metric
    assert result.baseline_top1_agreement > 0.9 and result.top_k == 0
    assert np.isfinite(result.input_sqnr_db["image"])


def test_explain_prints_the_ranked_table_of_a_bundle_folder(outlier, tmp_path, capsys):
    """A bundle without reports/sensitivity.json: explain computes it from the bundle itself."""
    import shutil

    from tapeout.flows.cli import main

    bundle = tmp_path / "bundle"
    (bundle / "model").mkdir(parents=True)
    (bundle / "calibration").mkdir()
    shutil.copyfile(outlier["model"].path, bundle / "model" / "model.onnx")
    shutil.copyfile(outlier["quantized"].path, bundle / "model" / "model.qdq.onnx")
    samples = outlier["calibrated"].samples
    shutil.copyfile(samples.path, bundle / "calibration" / samples.path.name)
    shutil.copyfile(outlier["calibrated"].table_path, bundle / "calibration" / "table.json")
    (bundle / "calibration" / "manifest.json").write_text(json.dumps(samples.manifest()))
    assert main(["explain", str(bundle), "--home", str(tmp_path / "home"), "--samples", "50"]) == 0
    text = capsys.readouterr().out
    assert "computed now from the bundle" in text and "calibration" in text
    rows = [line for line in text.splitlines() if "Gemm" in line]
    assert "fc1" in rows[0]
    assert main(["explain", str(bundle), "--home", str(tmp_path / "home"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["sensitivity"]["layers"][0]["node"] == OUTLIER_LAYER
    assert main(["explain", str(tmp_path / "missing"), "--home", str(tmp_path / "home")]) == 2


def test_explain_piped_prints_whole_layer_names(outlier, tmp_path, capsys):
    """Piped (not a terminal), the table is not fitted to 80 columns: a layer named as a
    torch export names it is printed whole, on its row."""
    from tapeout.flows.cli import main

    document = analyse(
        outlier["model"].path, outlier["quantized"], outlier["validation"], table=outlier["calibrated"].table,
        samples_limit=50, top_k=0, workdir=tmp_path / "work",
    ).to_document()
    names = {}
    for layer in document["layers"]:
        names[layer["node"]] = f"/model/backbone/stages.3/blocks.11/attention/{layer['node']}/output_projection/MatMul_quant"
        layer["node"] = names[layer["node"]]
    (tmp_path / "bundle" / "reports").mkdir(parents=True)
    (tmp_path / "bundle" / "reports" / "sensitivity.json").write_text(json.dumps(document))
    assert main(["explain", str(tmp_path / "bundle"), "--home", str(tmp_path / "home")]) == 0
    rows = capsys.readouterr().out.splitlines()
    for name in names.values():
        assert len(name) > 70 and sum(name in row for row in rows) == 1, (name, rows)
