"""One compiler stage by hand through the command line: compile, infer, bench, compilers, compat."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tapeout.flows.cli import main


@pytest.fixture
def compiled(quantized_model, tmp_path, capsys):
    output = tmp_path / "artifact"
    code = main(["compile", str(quantized_model.path), "--compiler", "int8-ref", "--option", "requant=ort",
                 "-o", str(output), "--home", str(tmp_path / "home")])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return output


def test_compile_then_infer_matches_onnxruntime_bit_for_bit(compiled, quantized_model, tmp_path, capsys):
    import onnxruntime

    images = np.random.default_rng(3).random((1, 1, 16, 16), dtype=np.float32)
    np.savez(tmp_path / "in.npz", image=images)
    code = main(["infer", str(compiled), "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz")])
    assert code == 0
    session = onnxruntime.InferenceSession(str(quantized_model.path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": images})[0]
    with np.load(tmp_path / "out.npz") as produced:
        np.testing.assert_array_equal(produced["logits"], expected)
    record = json.loads((compiled / "compiler.json").read_text())
    assert record["compiler"] == "int8-ref" and record["options"]["requant"] == "ort"


def test_infer_names_a_wrong_input(compiled, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", pixels=np.zeros((1, 1, 16, 16), np.float32))
    code = main(["infer", str(compiled), "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "o.npz")])
    assert code == 2
    assert "expected arrays ['image'], found ['pixels']" in capsys.readouterr().err


def test_bench_reports_percentiles_and_checks_the_static_batch(compiled, capsys):
    assert main(["bench", str(compiled), "--iterations", "50", "--batch", "1", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch"] == 1 and report["iterations"] == 50
    assert 0 < report["latency_p50_ms"] <= report["latency_p95_ms"] <= report["latency_p99_ms"]
    assert report["throughput_per_s"] > 0
    assert main(["bench", str(compiled), "--batch", "64"]) == 2
    assert "static batch of 1" in capsys.readouterr().err


def test_compilers_lists_every_plugin_and_compat_prints_the_matrix(quantized_model, capsys):
    main(["compilers", "--json"])
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"onnxruntime", "int8-ref", "ethos-u"} <= set(listed)
    assert listed["int8-ref"]["status"] == "ok"
    assert main(["compat", str(quantized_model.path), "--json"]) == 0
    matrix = json.loads(capsys.readouterr().out)
    assert "QuantizeLinear" in matrix["operators"]
    assert all(matrix["support"]["onnxruntime"].values())
