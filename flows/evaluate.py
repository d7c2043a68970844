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

WARMUP_RUNS = 10
TIMED_RUNS = 200


@dataclass(frozen=True)
class Predictions:
    """Top-1 class per validation sample, for one model."""

    top1: np.ndarray


@dataclass(frozen=True)
class Evaluation:
    """Every measured number for one target, and the data it was measured on."""

    metrics: Mapping[str, float]
    validation_digest: str
    validation_count: int


def predict(runner: Runner, samples: SampleSet, inputs: tuple[TensorSpec, ...]) -> Predictions:
    """Run `runner` over every validation sample in batches of the model's fixed batch size.

    The last batch is padded with copies of its final sample and the padding dropped again.
    """
    batch_size = inputs[0].shape[0]
    arrays = samples.arrays()
    top1 = []
    for start in range(0, samples.count, batch_size):
        feed = {}
        for spec in inputs:
            chunk = arrays[spec.name][start : start + batch_size]
            real = chunk.shape[0]
            if real < batch_size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
            feed[spec.name] = np.ascontiguousarray(chunk)
        output = next(iter(runner.run(feed).values()))
        top1.append(np.asarray(output).reshape(batch_size, -1).argmax(axis=1)[:real])
    return Predictions(np.concatenate(top1))


def measure_latency(
    runner: Runner, samples: SampleSet, inputs: tuple[TensorSpec, ...], runs: int = TIMED_RUNS
) -> dict[str, float]:
    """p50/p95 latency in milliseconds of one batch, after warm-up (as trtexec reports)."""
    batch_size = inputs[0].shape[0]
    arrays = samples.arrays()
    feed = {spec.name: np.ascontiguousarray(arrays[spec.name][:batch_size]) for spec in inputs}
    for _ in range(WARMUP_RUNS):
        runner.run(feed)
    timings = np.empty(runs)
    for index in range(runs):
        start = time.perf_counter()
        runner.run(feed)
        timings[index] = time.perf_counter() - start
    return {
        "latency_p50_ms": float(np.percentile(timings, 50) * 1e3),
        "latency_p95_ms": float(np.percentile(timings, 95) * 1e3),
    }


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
    predictions = predict(runner, samples, inputs)
    metrics: dict[str, float] = {
        "top1_agreement": float(np.mean(predictions.top1 == reference.top1)),
        "artifact_size_bytes": float(sum(path.stat().st_size for path in artifact_files)),
    }
    if labels is not None:
        metrics["accuracy_fp32"] = float(np.mean(reference.top1 == labels))
        metrics["accuracy"] = float(np.mean(predictions.top1 == labels))
        metrics["accuracy_drop"] = metrics["accuracy_fp32"] - metrics["accuracy"]
    metrics.update(measure_latency(runner, samples, inputs))
    return Evaluation(metrics, samples.digest, samples.count)
