"""Evaluate a compiled artifact on the validation set against the fp32 model.

Accuracy is task accuracy (top-1 against the labels); agreement is how often the artifact's
top-1 equals the fp32 model's; output SQNR and cosine compare its first output with fp32's;
latency is measured in-process, single batch, after warm-up.

The set is read a chunk at a time (`SampleSet.chunks`), and what is kept does not grow with
it but for the few values per sample the metrics need: the top-1 of each model, the labels
and the output cosine (8 bytes each). The fp32 model's outputs, which every target is
compared with, are written once to a file (`Predictions.outputs`) and read back a batch at a
time, in order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tapeout.calibration.dataset import SampleSet
from tapeout.compilers.interface import Runner, TensorSpec
from tapeout.compilers.measure import cosines, latency_summary, padded_batches, sqnr_db, time_runs

WARMUP_RUNS = 10
TIMED_RUNS = 200
TOP1_FILE = "top1.npy"
OUTPUTS_FILE = "outputs.npy"
OUTPUT_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class Predictions:
    """Top-1 class per validation sample, for one model, and the file that holds its first
    output flattened per sample (a [samples, values] float32 .npy, for output SQNR and cosine
    against fp32), or None when the outputs were not kept."""

    top1: np.ndarray
    outputs: Path | None = None


@dataclass(frozen=True)
class Evaluation:
    """Every measured number for one target, and the data it was measured on."""

    metrics: Mapping[str, float]
    validation_digest: str
    validation_count: int
    latencies_ms: tuple[float, ...] = ()  # every timed run, for the latency plot


def validation_batches(
    samples: SampleSet, inputs: tuple[TensorSpec, ...], count: int | None = None
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """The first `count` samples of `samples` (all by default) in the model's batches, the last
    one padded (tapeout.compilers.measure.padded_batches), read from the set a chunk at a time."""
    chunks = samples.chunks(inputs[0].shape[0])
    return padded_batches(chunks, inputs, samples.count if count is None else count)


def _first_outputs(
    runner: Runner, samples: SampleSet, inputs: tuple[TensorSpec, ...]
) -> Iterator[np.ndarray]:
    """The runner's first output on every sample, [real samples, values] per batch."""
    batch_size = inputs[0].shape[0]
    for feed, real in validation_batches(samples, inputs):
        output = np.asarray(next(iter(runner.run(feed).values()))).reshape(batch_size, -1)
        yield output[:real]


def predict(runner: Runner, samples: SampleSet, inputs: tuple[TensorSpec, ...], workdir: Path) -> Predictions:
    """Run `runner` over every validation sample in batches of the model's fixed batch size
    (the last one padded, the padding dropped again); the top-1 goes to `workdir/top1.npy`
    and the first output, as float32, to `workdir/outputs.npy`, a batch at a time."""
    workdir.mkdir(parents=True, exist_ok=True)
    top1 = []
    with _RowWriter(workdir / OUTPUTS_FILE, samples.count) as outputs:
        for output in _first_outputs(runner, samples, inputs):
            top1.append(output.argmax(axis=1))
            outputs.write(output)
    predictions = Predictions(np.concatenate(top1), workdir / OUTPUTS_FILE)
    np.save(workdir / TOP1_FILE, predictions.top1, allow_pickle=False)
    return predictions


def load_predictions(workdir: Path) -> Predictions:
    """What `predict` wrote into `workdir`."""
    return Predictions(np.load(workdir / TOP1_FILE, allow_pickle=False), workdir / OUTPUTS_FILE)


def measure_latency(
    runner: Runner, feed: Mapping[str, np.ndarray], runs: int = TIMED_RUNS, timings_ms: list[float] | None = None
) -> dict[str, float]:
    """p50/p95/p99 latency in milliseconds of one batch (`feed`) after warm-up, and throughput
    in samples per second (as trtexec reports). Every timing is appended to `timings_ms` if
    given."""
    batch_size = next(iter(feed.values())).shape[0]
    timings = time_runs(runner, feed, runs, WARMUP_RUNS)
    result = latency_summary(timings, batch_size)
    if timings_ms is not None:
        timings_ms.extend(float(value * 1e3) for value in timings)
    return result


@dataclass
class OutputFidelity:
    """An artifact's first output x̂ against the fp32 model's x, counted batch by batch: Σx²,
    Σ(x − x̂)² and each sample's cosine (tapeout.compilers.measure)."""

    signal: float = 0.0
    noise: float = 0.0
    cosines: list[np.ndarray] = field(default_factory=list)

    def add(self, exact: np.ndarray, approximate: np.ndarray) -> None:
        """One batch, [samples, values] each."""
        exact = exact.astype(np.float64)
        approximate = approximate.astype(np.float64)
        self.signal += float(np.sum(exact**2))
        self.noise += float(np.sum((exact - approximate) ** 2))
        self.cosines.append(cosines(exact, approximate))

    def metrics(self) -> dict[str, float]:
        """SQNR (dB) = 10·log10(Σx² / Σ(x − x̂)²) and the mean per-sample cosine."""
        return {
            "output_sqnr_db": sqnr_db(self.signal, self.noise),
            "output_cosine": float(np.mean(np.concatenate(self.cosines))),
        }


def output_fidelity(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """SQNR and mean per-sample cosine of `outputs` against `reference`, both in memory."""
    fidelity = OutputFidelity()
    fidelity.add(reference, outputs)
    return fidelity.metrics()


def evaluate(
    runner: Runner,
    samples: SampleSet,
    inputs: tuple[TensorSpec, ...],
    reference: Predictions,
    artifact_files: list[Path],
) -> Evaluation:
    """All gate metrics for one compiled artifact, reading the set and the fp32 outputs a
    batch at a time."""
    labels = samples.labels()
    first, _ = next(validation_batches(samples, inputs))
    start = time.perf_counter()
    runner.run(first)  # warm-up: the first inference of a freshly loaded artifact
    warmup_ms = (time.perf_counter() - start) * 1e3
    top1 = []
    with ExitStack() as stack:
        exact = stack.enter_context(_RowReader(reference.outputs)) if reference.outputs is not None else None
        fidelity = OutputFidelity() if exact is not None else None
        for output in _first_outputs(runner, samples, inputs):
            top1.append(output.argmax(axis=1))
            if fidelity is not None and output.shape[1] == exact.width:  # type: ignore[union-attr]
                fidelity.add(exact.read(output.shape[0]), output.astype(np.float32))
            else:  # the outputs differ in shape: no fidelity to speak of
                fidelity = None
    predicted = np.concatenate(top1)
    metrics: dict[str, float] = {
        "top1_agreement": float(np.mean(predicted == reference.top1)),
        "artifact_size_bytes": float(sum(path.stat().st_size for path in artifact_files)),
    }
    if labels is not None:
        metrics["accuracy_fp32"] = float(np.mean(reference.top1 == labels))
        metrics["accuracy"] = float(np.mean(predicted == labels))
        metrics["accuracy_drop"] = metrics["accuracy_fp32"] - metrics["accuracy"]
        if metrics["accuracy_fp32"] > 0:
            metrics["accuracy_drop_relative"] = metrics["accuracy_drop"] / metrics["accuracy_fp32"]
    if fidelity is not None:
        metrics.update(fidelity.metrics())
    metrics["warmup_ms"] = warmup_ms
    timings: list[float] = []
    metrics.update(measure_latency(runner, first, timings_ms=timings))
    return Evaluation(metrics, samples.digest, samples.count, tuple(timings))


# -- the fp32 outputs on disk -----------------------------------------------------------------
# Plain reads and writes, no memory map: pages of a mapped file that were read stay in the
# process's resident set until it is unmapped, and the point is that nothing does.


class _RowWriter:
    """Writes a [rows, values] float32 .npy file a block of rows at a time; the header is
    written with the first block, which says how many values a row has."""

    def __init__(self, path: Path, rows: int) -> None:
        self.path, self.rows, self.written = path, rows, 0
        self.file = None

    def __enter__(self) -> "_RowWriter":
        self.file = open(self.path, "wb")
        return self

    def write(self, block: np.ndarray) -> None:
        if self.written == 0:
            header = {"descr": OUTPUT_DTYPE.str, "fortran_order": False, "shape": (self.rows, block.shape[1])}
            np.lib.format.write_array_header_1_0(self.file, header)
        self.file.write(np.ascontiguousarray(block, dtype=OUTPUT_DTYPE).tobytes())
        self.written += block.shape[0]

    def __exit__(self, kind, error, trace) -> None:
        self.file.close()
        if error is None and self.written != self.rows:
            raise ValueError(f"{self.path}: wrote {self.written} rows, expected {self.rows}")


class _RowReader:
    """Reads a [rows, values] .npy file written by `_RowWriter` a block of rows at a time, in order."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb")
        version = np.lib.format.read_magic(self.file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, self.dtype = read_header(self.file)
        self.width = int(shape[1])
        self.path = path

    def __enter__(self) -> "_RowReader":
        return self

    def read(self, rows: int) -> np.ndarray:
        size = rows * self.width * self.dtype.itemsize
        data = self.file.read(size)
        if len(data) != size:
            raise ValueError(f"{self.path}: ends before the {rows} rows asked for")
        return np.frombuffer(data, dtype=self.dtype).reshape(rows, self.width)

    def __exit__(self, kind, error, trace) -> None:
        self.file.close()
