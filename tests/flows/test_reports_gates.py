"""gates.md and the PNG plots, from a known set of gates and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tapeout.flows.config import Threshold
from tapeout.flows.evaluate import Evaluation, output_fidelity
from tapeout.flows.gates import check_gates
from tapeout.flows.reports import fallback_note, write_reports
from tapeout.flows.stages import Gated

METRICS = {
    "accuracy": 0.91, "accuracy_fp32": 0.93, "accuracy_drop": 0.02, "top1_agreement": 0.965,
    "latency_p50_ms": 0.12, "latency_p95_ms": 0.2, "latency_p99_ms": 0.31, "warmup_ms": 4.5,
    "throughput_per_s": 8123.4, "output_sqnr_db": 21.5, "output_cosine": 0.996, "artifact_size_bytes": 12345.0,
}
FALLBACK = {
    "schema": "tapeout.fallback/v1", "mode": "fp32", "why_this_mode": "the compiler runs float ops",
    "budget": 4, "attempts_made": 1, "verdict": "pass", "chosen_attempt": 1, "best_attempt": 1,
    "kept_out": [{"node": "fc1", "representation": "fp32", "why": "Gemm fc1: adds 36 dB of loss"}],
    "attempts": [
        {"attempt": 0, "kept_out": [], "representation": "int8", "passed": False, "error": None,
         "metrics": {"accuracy": 0.5, "top1_agreement": 0.55, "accuracy_drop": 0.43}, "gates": [],
         "quantized_model_sha256": "a"},
        {"attempt": 1, "kept_out": ["fc1"], "representation": "fp32", "passed": True, "error": None,
         "metrics": dict(METRICS), "gates": [], "quantized_model_sha256": "b"},
    ],
}
SENSITIVITY = {
    "data": {"name": "validation", "set_digest": "f" * 64, "samples_used": 200, "samples_available": 300},
    "layers": [
        {"rank": 1, "node": "fc1", "op_type": "Gemm", "sqnr_db": 47.1, "channel_sqnr_db": 5.1,
         "sqnr_drop_db": 36.4, "cosine": 0.99999, "agreement_gain": 0.41},
        {"rank": 2, "node": "fc2", "op_type": "Gemm", "sqnr_db": 4.6, "channel_sqnr_db": 3.4,
         "sqnr_drop_db": 1.7, "cosine": 0.81, "agreement_gain": None},
    ],
}


def _gated(metrics=METRICS):
    thresholds = {
        "accuracy_drop": Threshold(max=0.02), "top1_agreement": Threshold(min=0.97),
        "latency_p99_ms": Threshold(max=1.0), "output_sqnr_db": Threshold(min=20),
    }
    latencies = tuple(np.random.default_rng(0).gamma(4.0, 0.03, 200))
    return Gated(Evaluation(metrics, "e" * 64, 300, latencies), check_gates(thresholds, metrics))


def test_gates_md_lists_threshold_observed_verdict_and_data(tmp_path):
    written = write_reports(tmp_path, title="outlier-cpu", gated=_gated(), sensitivity=SENSITIVITY, fallback=FALLBACK)
    assert set(written) == {"gates.md", "latency.png", "accuracy.png", "sensitivity.png", "sensitivity.json", "fallback.json"}
    text = (tmp_path / "gates.md").read_text()
    assert "**Verdict: FAIL**" in text  # top1_agreement 0.965 < 0.97
    assert "| top1_agreement | >= | 0.97 | 0.965 | **FAIL** | validation `eeeeeeeeeeee` |" in text
    assert "| accuracy_drop | <= | 0.02 | 0.02 | pass |" in text
    assert "| latency_p99_ms | 0.31 |" in text and "| throughput_per_s | 8123.4 |" in text
    assert f"sha256:{'e' * 64}" in text and "(300 samples)" in text
    assert "Energy per inference: not estimated" in text  # no cost_model: said, not invented
    assert "- `fc1` in fp32: Gemm fc1: adds 36 dB of loss" in text
    assert "| 0 | (none: all int8) | no | 0.55 |" in text
    assert "| 1 | `fc1` | Gemm | 47.10 | 5.10 | 36.40 |" in text
    assert "![latency](latency.png)" in text
    assert json.loads((tmp_path / "fallback.json").read_text()) == FALLBACK


def test_plots_are_pngs(tmp_path):
    from PIL import Image

    write_reports(tmp_path, title="t", gated=_gated(), sensitivity=SENSITIVITY, fallback=FALLBACK)
    for name in ("latency.png", "accuracy.png", "sensitivity.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] >= 300


def test_reports_without_fallback_or_sensitivity(tmp_path):
    written = write_reports(tmp_path, title="t", gated=_gated(dict(METRICS, top1_agreement=0.99)))
    assert set(written) == {"gates.md", "latency.png", "accuracy.png"}
    text = (tmp_path / "gates.md").read_text()
    assert "**Verdict: PASS**" in text and "Accuracy fallback" not in text


def test_fallback_note_says_what_happened():
    assert fallback_note(None) == ""
    assert fallback_note(FALLBACK) == " (accuracy fallback: kept fc1 in fp32, 1 attempt(s))"
    none = dict(FALLBACK, verdict="fail", attempts_made=0, kept_out=[], why_this_mode="integer-only")
    assert fallback_note(none) == "; accuracy fallback not possible: integer-only"
    failed = dict(FALLBACK, verdict="fail", attempts_made=2, best_attempt=2)
    assert "2 attempt(s), none passed; numbers are attempt 2's (fc1 in fp32)" in fallback_note(failed)


def test_output_fidelity_sqnr_and_cosine():
    reference = np.array([[3.0, 4.0], [1.0, 0.0]])
    assert output_fidelity(reference, reference) == {"output_sqnr_db": 200.0, "output_cosine": pytest.approx(1.0)}
    noisy = reference + np.array([[0.3, 0.4], [0.1, 0.0]])  # 10 % error in every sample
    result = output_fidelity(noisy, reference)
    assert result["output_sqnr_db"] == pytest.approx(20.0)
    assert result["output_cosine"] == pytest.approx(1.0)


def test_energy_estimate_is_labelled_and_says_what_was_counted(quantized_model, tmp_path):
    from tapeout.compilers.cost import Cost
    from tapeout.flows.energy import QDQ_SOURCE, energy_metrics, work_for

    work = work_for({}, quantized_model.path)  # no compiler cost: the QDQ model is counted
    # conv 8x16x16 outputs x 9 + conv 16x8x8 x 72 + linear 32x256 + linear 10x32
    assert work.macs == 2048 * 9 + 1024 * 72 + 32 * 256 + 10 * 32 and work.batch == 1
    assert work.source == QDQ_SOURCE
    estimate, source = energy_metrics(work, 0.5, 10.0), work.source
    expected = (work.macs * 0.5 + work.bytes_moved * 10.0) / 1e6
    assert estimate["energy_per_inference_uj_estimate"] == pytest.approx(expected) and source == QDQ_SOURCE
    reported = Cost(1000, 300, 200, 2, "the lowered program").to_report()
    own = work_for({"cost": reported}, quantized_model.path)  # the compiler's count wins
    assert (own.macs, own.bytes_moved, own.source) == (1000, 500, "the lowered program")
    assert energy_metrics(own, 0.5, 10.0)["energy_per_inference_uj_estimate"] == pytest.approx((500 + 5000) / 1e6 / 2)
    metrics = dict(METRICS, **estimate)
    gated = Gated(_gated(metrics).evaluation, _gated(metrics).gates, {"energy_work_source": source})
    write_reports(tmp_path, title="t", gated=gated)
    text = (tmp_path / "gates.md").read_text()
    assert "an ESTIMATE** from the target profile's cost model" in text and f"Work counted from: {QDQ_SOURCE}" in text
    assert "| energy_per_inference_uj_estimate |" in text and "not measured" in text


def test_latency_plot_shows_the_bulk_and_marks_a_slow_outlier():
    from tapeout.flows.reports import latency_figure

    bulk = np.random.default_rng(1).gamma(9.0, 0.004, 199)  # ~0.036 ms per call
    axes = latency_figure((*bulk, 43.0), "cpu: latency").axes[0]
    low, high = axes.get_xlim()
    assert high < 1.0  # the axis is the bulk's, not stretched to the 43 ms call
    filled = [patch for patch in axes.patches if patch.get_height() > 0]
    (note,) = [text.get_text() for text in axes.texts]
    outliers = int(note.split(" run(s) slower")[0])
    assert note.endswith("up to 43 ms") and 1 <= outliers <= 3  # the 43 ms call, and the gamma's far tail
    assert len(filled) >= 10 and sum(patch.get_height() for patch in filled) + outliers == 200
    labels = axes.get_legend_handles_labels()[1]
    assert any(label.startswith("p99") and "(off scale)" not in label for label in labels)


def test_accuracy_plot_zooms_to_the_gate_and_draws_its_threshold():
    from tapeout.flows.reports import accuracy_figure, accuracy_floor

    gated = _gated()  # accuracy_drop <= 0.02 from fp32 0.93
    floor = accuracy_floor(gated.gates, METRICS["accuracy_fp32"])
    assert floor == pytest.approx(0.91)
    axes = accuracy_figure([("int8 (this target)", 0.91)], 0.93, "t", [floor]).axes[0]
    low, high = axes.get_ylim()
    assert 0.85 < low < 0.91 and 0.93 < high < 0.96  # a 0.02 drop fills the plot, not 2% of it
    (threshold,) = [c for c in axes.collections if "gate" in str(c.get_label())]
    assert threshold.get_segments()[0][0][1] == pytest.approx(0.91)
    assert "gate: accuracy >= 0.91" in axes.get_legend_handles_labels()[1]


def test_a_float16_artifacts_bar_says_fp16_not_int8():
    from tapeout.compilers.registry import load_compiler
    from tapeout.flows.fallback import plain_representation
    from tapeout.flows.reports import accuracy_entries

    representations = {
        name: plain_representation(load_compiler(name).capabilities()) for name in ("fp16", "int8-ref", "onnxruntime")
    }
    assert representations == {"fp16": "fp16", "int8-ref": "int8", "onnxruntime": "int8"}
    assert accuracy_entries(METRICS, None, representations["fp16"]) == [("fp16 (this target)", 0.91)]


def test_build_summary_names_the_failed_gate_and_lists_every_gate(tmp_path):
    from tapeout.flows.summary import summary_markdown, write_summary

    thresholds = {"accuracy_drop": Threshold(max=0.02), "output_sqnr_db": Threshold(min=25)}
    rows = [
        {"target": "cpu", "verdict": "pass", "version": "3", "metrics": METRICS,
         "gates": check_gates({"accuracy_drop": Threshold(max=0.02)}, METRICS), "message": ""},
        {"target": "npu", "verdict": "fail", "version": None, "metrics": METRICS,
         "gates": check_gates(thresholds, METRICS), "message": "gate(s) failed"},
        {"target": "u55", "verdict": "error", "version": None, "metrics": {}, "gates": (),
         "message": "compiler 'ethos-u' cannot build node 'x' (op Foo)"},
    ]
    text = summary_markdown("digits-cnn", rows, 0.93)
    assert "| npu | fail | — | output_sqnr_db: 21.5 >= 25? FAIL, off by 3.5 |" in text
    assert "| u55 | error | — | compiler 'ethos-u' cannot build node 'x' (op Foo) |" in text
    assert "| npu | output_sqnr_db | >= | 25 | 21.5 | **FAIL** |" in text
    assert "| cpu | accuracy_drop | <= | 0.02 | 0.02 | pass |" in text
    first = write_summary(tmp_path / "build-1", "digits-cnn", rows)
    second = write_summary(tmp_path / "build-2", "digits-cnn", rows[:1])
    assert first["summary.md"].read_text() == text and second["summary.md"].read_text() != text
