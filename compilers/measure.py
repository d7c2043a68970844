"""How a compiled model is measured, in one place: the batches it runs on, SQNR and cosine
similarity against a reference, differences in LSB, top-1 agreement, and latency
(docs/architecture.md, "Measurements"). The evaluation (tapeout.flows.evaluate), the
per-layer sensitivity (tapeout.flows.sensitivity), `tapeout diff` (tapeout.compilers.diff),
`tapeout bench` and int8-ref's comparison with ONNX Runtime (tapeout.compilers.int8_ref.diff)
all count with these.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from tapeout.compilers.interface import Runner, TensorSpec

# An exact match has infinite SQNR, and JSON has no infinity: SQNR is reported within ±200 dB.
SQNR_CAP_DB = 200.0


def padded_batches(
    chunks: Iterable[Mapping[str, np.ndarray]], inputs: tuple[TensorSpec, ...], count: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """The first `count` samples of `chunks` (arrays keyed by input name, samples first, read
    one chunk after the other: a whole set is `[arrays]`) in batches of the model's fixed batch
    size (the first input's first dimension), each input as its spec's dtype. The last batch is
    padded with copies of its final sample: yields (feed, how many of its samples are real),
    and a caller keeps only the first `real` rows of each output. No chunk is read once
    `count` samples are."""
    batch = inputs[0].shape[0]
    names = [spec.name for spec in inputs]
    held: dict[str, list[np.ndarray]] = {name: [] for name in names}  # < batch samples
    waiting = taken = 0
    for chunk in chunks:
        rows = min(chunk[names[0]].shape[0], count - taken)
        taken += rows
        start = 0
        if waiting:  # complete the batch the chunk before began
            start = min(batch - waiting, rows)
            for name in names:
                held[name].append(chunk[name][:start])
            waiting += start
            if waiting == batch:
                yield _feed({name: np.concatenate(held[name]) for name in names}, inputs), batch
                held, waiting = {name: [] for name in names}, 0
        if not waiting:
            whole = start + (rows - start) // batch * batch
            for first in range(start, whole, batch):
                yield _feed({name: chunk[name][first : first + batch] for name in names}, inputs), batch
            if whole < rows:
                for name in names:  # copies, not views: the chunk can go
                    held[name].append(chunk[name][whole:rows].copy())
                waiting = rows - whole
        if taken >= count:
            break
    if waiting:  # the last batch, padded
        tail = {name: np.concatenate(held[name]) for name in names}
        padded = {name: np.concatenate([a, np.repeat(a[-1:], batch - waiting, axis=0)]) for name, a in tail.items()}
        yield _feed(padded, inputs), waiting


def _feed(arrays: Mapping[str, np.ndarray], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    return {spec.name: np.ascontiguousarray(arrays[spec.name], dtype=spec.dtype) for spec in inputs}


def sqnr_db(signal: float, noise: float) -> float:
    """SQNR = 10·log10(Σx² / Σ(x − x̂)²) from the two sums, within ±SQNR_CAP_DB: an exact match
    (no noise) is +SQNR_CAP_DB, noise without signal −SQNR_CAP_DB."""
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return float(max(min(10.0 * math.log10(signal / noise), SQNR_CAP_DB), -SQNR_CAP_DB))


def cosines(exact: np.ndarray, approximate: np.ndarray) -> np.ndarray:
    """The cosine similarity of each row of `approximate` with the same row of `exact` (both
    [samples, values]). A zero row has no direction: two equal rows (both zero) agree exactly
    (1), a zero row against a nonzero one not at all (0)."""
    exact = np.asarray(exact, dtype=np.float64)
    approximate = np.asarray(approximate, dtype=np.float64)
    norms = np.linalg.norm(exact, axis=1) * np.linalg.norm(approximate, axis=1)
    dots = np.sum(exact * approximate, axis=1)
    same = np.all(exact == approximate, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))


def lsb_units(reference: np.ndarray, candidate: np.ndarray, lsb: float | None) -> tuple[np.ndarray, float]:
    """|candidate − reference| per element in units of `lsb` (the output's quantization step),
    rounded to whole steps — half an LSB of float noise (a value dequantized two ways) is still
    the same code — and the largest absolute difference. Without a (positive) `lsb` an element
    is 0 (equal) or 1 (different)."""
    difference = np.abs(np.asarray(candidate).astype(np.float64) - np.asarray(reference).astype(np.float64))
    biggest = float(difference.max()) if difference.size else 0.0
    if not lsb or lsb <= 0:
        return (difference > 0).astype(np.int64), biggest
    return np.rint(difference / lsb).astype(np.int64), biggest


def top1_matches(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, int] | None:
    """(rows whose argmax agrees, rows) over the last axis, for class scores: an output with
    a batch axis and more than one class; None for anything else."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.ndim < 2 or reference.shape[-1] < 2:
        return None
    want = reference.reshape(-1, reference.shape[-1]).argmax(axis=1)
    got = candidate.reshape(-1, reference.shape[-1]).astype(np.float64).argmax(axis=1)
    return int((want == got).sum()), int(want.size)


@dataclass
class LsbHistogram:
    """|difference| in LSB of one tensor, counted over batches: the histogram (LSB → elements,
    0 included), the largest absolute difference, and the rows whose top-1 agrees."""

    elements: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    top1_equal: int = 0
    top1_rows: int = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray, lsb: float | None) -> None:
        """Count one batch of an output: its LSB differences and, for class scores, top-1."""
        units, biggest = lsb_units(reference, candidate, lsb)
        self.add_units(units, biggest)
        matches = top1_matches(reference, candidate)
        if matches is not None:
            self.top1_equal += matches[0]
            self.top1_rows += matches[1]

    def add_units(self, units: np.ndarray, biggest: float | None = None) -> None:
        """Count differences already in LSB (integer codes: one code is one LSB)."""
        self.elements += int(units.size)
        values, counts = np.unique(units, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            self.histogram[int(value)] = self.histogram.get(int(value), 0) + int(count)
        largest = float(units.max(initial=0)) if biggest is None else biggest
        self.max_abs_diff = max(self.max_abs_diff, largest)

    @property
    def differing(self) -> int:
        return self.elements - self.histogram.get(0, 0)

    @property
    def top1_agreement(self) -> float | None:
        return self.top1_equal / self.top1_rows if self.top1_rows else None


def time_runs(runner: Runner, feed: Mapping[str, np.ndarray], runs: int, warmup: int) -> np.ndarray:
    """Seconds each of `runs` runs of one batch took, in-process, after `warmup` untimed ones."""
    for _ in range(warmup):
        runner.run(feed)
    timings = np.empty(runs)
    for index in range(runs):
        start = time.perf_counter()
        runner.run(feed)
        timings[index] = time.perf_counter() - start
    return timings


def latency_summary(timings: np.ndarray, batch: int) -> dict[str, float]:
    """p50/p95/p99 latency in milliseconds and throughput in samples per second (as trtexec
    reports them) of runs of `batch` samples that took `timings` seconds each."""
    return {
        "latency_p50_ms": float(np.percentile(timings, 50) * 1e3),
        "latency_p95_ms": float(np.percentile(timings, 95) * 1e3),
        "latency_p99_ms": float(np.percentile(timings, 99) * 1e3),
        **({"throughput_per_s": float(batch * len(timings) / timings.sum())} if timings.sum() > 0 else {}),
    }
