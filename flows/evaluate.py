"""Evaluate a compiled artifact on the validation set against the fp32 model.

Accuracy is task accuracy (top-1 against the labels); agreement is how often the artifact's
top-1 equals the fp32 model's; latency is measured in-process, single batch, after warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tapeout.calibration.dataset import SampleSet
from tapeout.compilers.interface import Runner, TensorSpec
from tapeout.compilers.measure import cosines, latency_summary, padded_batches, sqnr_db, time_runs

WARMUP_RUNS = 10
TIMED_RUNS = 200


@dataclass(frozen=True)
class Predictions:
    """Top-1 class per validation sample, for one model, and its first output, flattened per
    sample (for output SQNR and cosine against fp32)."""

    top1: np.ndarray
    outputs: np.ndarray | None = None


@dataclass(frozen=True)
class Evaluation:
    """Every measured number for one target, and the data it was measured on."""

    metrics: Mapping[str, float]
    validation_digest: str
    validation_count: int
    latencies_ms: tuple[float, ...] = ()  # every timed run, for the latency plot


def predict(
    runner: Runner,
    samples: SampleSet,
    inputs: tuple[TensorSpec, ...],
    arrays: Mapping[str, np.ndarray] | None = None,
) -> Predictions:
    """Run `runner` over every validation sample in batches of the model's fixed batch size.

    The last batch is padded with copies of its final sample and the padding dropped again.
    `arrays` is the set already in memory (`samples.arrays()`), read here when not given.
    """
    batch_size = inputs[0].shape[0]
    arrays = samples.arrays() if arrays is None else arrays
    top1, outputs = [], []
    for feed, real in padded_batches(arrays, inputs, samples.count):
        output = np.asarray(next(iter(runner.run(feed).values()))).reshape(batch_size, -1)
        top1.append(output.argmax(axis=1)[:real])
        outputs.append(output[:real].astype(np.float32))
    return Predictions(np.concatenate(top1), np.concatenate(outputs))


def measure_latency(
    runner: Runner,
    samples: SampleSet,
    inputs: tuple[TensorSpec, ...],
    runs: int = TIMED_RUNS,
    timings_ms: list[float] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """p50/p95/p99 latency in milliseconds of one batch after warm-up, and throughput in
    samples per second (as trtexec reports). Every timing is appended to `timings_ms` if given."""
    batch_size = inputs[0].shape[0]
    arrays = samples.arrays() if arrays is None else arrays
    feed = {spec.name: np.ascontiguousarray(arrays[spec.name][:batch_size]) for spec in inputs}
    timings = time_runs(runner, feed, runs, WARMUP_RUNS)
    result = latency_summary(timings, batch_size)
    if timings_ms is not None:
        timings_ms.extend(float(value * 1e3) for value in timings)
    return result


def output_fidelity(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """SQNR (dB) = 10·log10(Σx² / Σ(x − x̂)²) and mean per-sample cosine of the artifact's first
    output x̂ against the fp32 model's x, over the validation set (tapeout.compilers.measure)."""
    exact = reference.astype(np.float64)
    approximate = outputs.astype(np.float64)
    sqnr = sqnr_db(float(np.sum(exact**2)), float(np.sum((exact - approximate) ** 2)))
    return {"output_sqnr_db": sqnr, "output_cosine": float(np.mean(cosines(exact, approximate)))}


def evaluate(
    runner: Runner,
    samples: SampleSet,
    inputs: tuple[TensorSpec, ...],
    reference: Predictions,
    artifact_files: list[Path],
) -> Evaluation:
    """All gate metrics for one compiled artifact."""
    arrays = samples.arrays()
    labels = arrays[samples.label_key] if samples.label_key else None
    batch_size = inputs[0].shape[0]
    first = {spec.name: np.ascontiguousarray(arrays[spec.name][:batch_size]) for spec in inputs}
    start = time.perf_counter()
    runner.run(first)  # warm-up: the first inference of a freshly loaded artifact
    warmup_ms = (time.perf_counter() - start) * 1e3
    predictions = predict(runner, samples, inputs, arrays)
    metrics: dict[str, float] = {
        "top1_agreement": float(np.mean(predictions.top1 == reference.top1)),
        "artifact_size_bytes": float(sum(path.stat().st_size for path in artifact_files)),
    }
    if labels is not None:
        metrics["accuracy_fp32"] = float(np.mean(reference.top1 == labels))
        metrics["accuracy"] = float(np.mean(predictions.top1 == labels))
        metrics["accuracy_drop"] = metrics["accuracy_fp32"] - metrics["accuracy"]
        if metrics["accuracy_fp32"] > 0:
            metrics["accuracy_drop_relative"] = metrics["accuracy_drop"] / metrics["accuracy_fp32"]
    if reference.outputs is not None and predictions.outputs is not None:
        if reference.outputs.shape == predictions.outputs.shape:
            metrics.update(output_fidelity(predictions.outputs, reference.outputs))
    metrics["warmup_ms"] = warmup_ms
    timings: list[float] = []
    metrics.update(measure_latency(runner, samples, inputs, timings_ms=timings, arrays=arrays))
    return Evaluation(metrics, samples.digest, samples.count, tuple(timings))
