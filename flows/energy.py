"""Energy per inference — an *estimate* from the target profile's cost model, never a measurement.

No silicon is measured here. The work is what the compiler counted in its lowered program
(`report["cost"]`, tapeout.compilers.cost): int8-ref from its kernels and memory plan, Ethos-U
from Vela's memory traffic, fp16 and onnxruntime from the graph they run. A compiler that
reports none (an opaque blob, e.g. OpenVINO) is counted from the QDQ model it was given, and
`energy_work_source` says so.
estimate (µJ) = (MACs · energy_per_mac_pj + bytes moved · energy_per_byte_pj) / 10⁶, per sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tapeout.compilers.cost import Cost, count_onnx

METRIC = "energy_per_inference_uj_estimate"
QDQ_SOURCE = "the QDQ model given to the compiler (the compiler reports no cost of its own)"


def work_for(report: Mapping[str, object], quantized_model: Path) -> Cost:
    """The compiler's own count when it reports one, else the QDQ model's."""
    return Cost.from_report(report) or count_onnx(quantized_model, QDQ_SOURCE)


def energy_metrics(work: Cost, energy_per_mac_pj: float, energy_per_byte_pj: float) -> dict[str, float]:
    """The estimate and its inputs, per sample, as gate metrics (`work.source` says what was
    counted)."""
    picojoules = work.macs * energy_per_mac_pj + work.bytes_moved * energy_per_byte_pj
    return {
        METRIC: picojoules / 1e6 / work.batch,
        "macs_per_inference": float(work.macs / work.batch),
        "bytes_moved_per_inference": float(work.bytes_moved / work.batch),
    }
