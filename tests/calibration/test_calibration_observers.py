"""Observers against slow, obviously-correct numpy references on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tapeout.calibration.observers import (
    EntropyObserver,
    EntropyOptions,
    MinMaxObserver,
    MinMaxOptions,
    MseObserver,
    MseOptions,
    PercentileObserver,
    PercentileOptions,
    PerChannelObserver,
    StreamingHistogram,
    candidate_windows,
    make_observer,
    options_for,
)
from tapeout.compilers.errors import InvalidInput

DISTRIBUTIONS = ["normal", "relu", "laplace_shifted", "uniform_positive"]


def _data(kind: str, seed: int = 0, n: int = 60_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.normal(0.0, 1.0, n).astype(np.float32)
    if kind == "relu":
        return np.maximum(rng.normal(0.2, 1.5, n), 0).astype(np.float32)
    if kind == "laplace_shifted":
        return rng.laplace(0.5, 0.3, n).astype(np.float32)
    return rng.uniform(0.25, 3.0, n).astype(np.float32)


def _batches(values: np.ndarray, seed: int = 1) -> list[np.ndarray]:
    """Uneven batches, the first one narrow (a small slice of the sorted data), last one short."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([np.argsort(values)[len(values) // 2 : len(values) // 2 + 7],
                            rng.permutation(len(values))])
    order = order[np.sort(np.unique(order, return_index=True)[1])]
    cuts = np.sort(rng.choice(np.arange(1, len(values)), size=40, replace=False))
    cuts = np.concatenate([[7], cuts[cuts > 7]])
    return np.split(values[order], cuts)


def _feed(observer, values: np.ndarray, seed: int = 1):
    for batch in _batches(values, seed):
        observer.observe(batch.reshape(-1, 1))
    return observer


# ---- the reference ----------------------------------------------------------------------


def _reference_grid(low: float, high: float, bins: int) -> tuple[float, int]:
    """Smallest power-of-two width at which [low, high] fits in `bins` bins, by trying all."""
    for exponent in range(-80, 80):
        width = 2.0**exponent
        if math.floor(high / width) - math.floor(low / width) + 1 <= bins:
            return width, math.floor(low / width)
    raise AssertionError("no grid")


def _reference_histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    data = values.astype(np.float64)
    width, origin = _reference_grid(float(data.min()), float(data.max()), bins)
    edges = (origin + np.arange(bins + 1)) * width
    counts = np.zeros(bins, dtype=np.int64)
    for index in np.searchsorted(edges, data, side="right") - 1:
        counts[min(index, bins - 1)] += 1
    return counts, edges


def _reference_kl(counts, levels, zero, used, size, eps=1e-4):
    """KL(P||Q) of one window, with plain loops: the definition in EntropyObserver's docstring."""
    start = zero - int(np.rint(size * (zero / used)))
    stop = start + size
    p = [float(c) for c in counts[start:stop]]
    p[0] += float(sum(counts[:start]))
    p[-1] += float(sum(counts[stop:used]))
    totals, nonzeros = [0.0] * levels, [0] * levels
    for j in range(size):
        g = j * levels // size
        totals[g] += float(counts[start + j])
        nonzeros[g] += p[j] != 0
    q = []
    for j in range(size):
        g = j * levels // size
        if p[j] == 0:
            q.append(0.0)
        else:
            q.append(totals[g] / nonzeros[g] if totals[g] > 0 else eps)
    sp, sq = sum(p), sum(q)
    if sq == 0:
        return math.inf, (start, stop)
    kl = sum((a / sp) * math.log((a / sp) / (b / sq)) for a, b in zip(p, q) if a > 0)
    return kl, (start, stop)


def _reference_entropy(counts, edges, levels, zero, used, max_windows=512):
    """Every window scored (sizes from `levels` to all used bins, in steps that keep at most
    about `max_windows` of them); the first of the least wins."""
    best, best_kl = None, math.inf
    step = max(1, (used - min(levels, used)) // max_windows)
    sizes = list(range(min(levels, used), used + 1, step))
    if sizes[-1] != used:
        sizes.append(used)
    for size in sizes:
        kl, (start, stop) = _reference_kl(counts, levels, zero, used, size)
        if kl < best_kl - 1e-12:
            best, best_kl = (edges[start], edges[stop]), kl
    return best[0], best[1]


def _true_mse(values: np.ndarray, low: float, high: float, levels: int = 256) -> float:
    """Quantize-dequantize as ONNX Runtime's quantizer does (range widened to hold zero)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / (levels - 1)
    zero_point = np.rint(-low / scale)
    q = np.clip(np.rint(values / scale) + zero_point, 0, levels - 1)
    return float(np.mean(((q - zero_point) * scale - values) ** 2))


# ---- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_minmax_equals_numpy(kind):
    values = _data(kind)
    got = _feed(MinMaxObserver(), values).range()
    assert (got.low, got.high) == (float(values.min()), float(values.max()))
    sym = _feed(MinMaxObserver(MinMaxOptions(symmetric=True)), values).range()
    bound = float(np.abs(values).max())
    assert (sym.low, sym.high) == (-bound, bound)


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
@pytest.mark.parametrize("bins", [64, 2048])
def test_streaming_histogram_equals_one_shot_histogram(kind, bins):
    values = _data(kind)
    histogram = StreamingHistogram(bins)
    for batch in _batches(values):
        histogram.add(batch)
    counts, edges = _reference_histogram(values, bins)
    np.testing.assert_array_equal(histogram.edges(), edges)
    np.testing.assert_array_equal(histogram.counts, counts)
    assert histogram.count == values.size == counts.sum()


def test_histogram_does_not_depend_on_order_or_batching():
    values = _data("normal", n=20_000)
    first, second = StreamingHistogram(256), StreamingHistogram(256)
    first.add(values)
    for batch in _batches(values[::-1].copy(), seed=5):
        second.add(batch)
    np.testing.assert_array_equal(first.counts, second.counts)
    assert first.exponent == second.exponent and first.origin == second.origin


def test_histogram_handles_constant_then_growing_data():
    histogram = StreamingHistogram(16)
    histogram.add(np.zeros(5, np.float32))
    histogram.add(np.zeros(3, np.float32))
    assert histogram.exponent is None and histogram.count == 8
    histogram.add(np.array([1.0, -3.0], np.float32))
    counts, edges = _reference_histogram(np.array([0] * 8 + [1.0, -3.0]), 16)
    np.testing.assert_array_equal(histogram.counts, counts)


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
@pytest.mark.parametrize("percentile", [99.0, 99.99, 100.0])
def test_percentile_within_one_bin_of_numpy(kind, percentile):
    values = _data(kind)
    observer = _feed(PercentileObserver(PercentileOptions(percentile=percentile)), values)
    got, width = observer.range(), observer.histogram.width
    cut = (100.0 - percentile) / 2.0
    low = np.percentile(values, cut, method="inverted_cdf")
    high = np.percentile(values, 100.0 - cut, method="inverted_cdf")
    assert abs(got.high - high) <= width and got.high >= high
    assert abs(got.low - low) <= width and got.low <= low
    assert values.min() <= got.low <= got.high <= values.max()


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_symmetric_percentile_within_one_bin_of_numpy(kind):
    values = _data(kind)
    observer = _feed(PercentileObserver(PercentileOptions(percentile=99.9, symmetric=True)), values)
    got, width = observer.range(), observer.histogram.width
    expected = np.percentile(np.abs(values), 99.9, method="inverted_cdf")
    assert got.low == -got.high and abs(got.high - expected) <= width


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
@pytest.mark.parametrize("symmetric, bins", [(False, 512), (True, 512), (False, 2048)])
def test_entropy_equals_reference(kind, symmetric, bins):
    values = _data(kind, n=20_000)
    # min_bin_count=0: the plain search over every bin (merging is tested on its own below).
    options = EntropyOptions(bins=bins, levels=64, symmetric=symmetric, min_bin_count=0)
    got = _feed(EntropyObserver(options), values).range()
    observed = np.abs(values) if symmetric else values
    counts, edges = _reference_histogram(observed, options.bins)
    width, origin = _reference_grid(float(observed.min()), float(observed.max()), options.bins)
    # Exact zeros cost nothing in any range, so the search leaves them out.
    counts[np.searchsorted(edges, 0.0, side="right") - 1] -= int(np.sum(observed == 0))
    used = math.floor(float(observed.max()) / width) - origin + 1
    zero = min(max(-origin, 0), used)
    levels = options.levels // 2 if symmetric else options.levels
    low, high = _reference_entropy(counts, edges, levels, zero, used)
    low, high = max(low, float(observed.min())), min(high, float(observed.max()))
    if symmetric:
        assert (got.low, got.high) == (-high, high)
    else:
        assert (got.low, got.high) == (low, high)


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_sparse_entropy_merges_bins_then_equals_reference(kind):
    values = _data(kind, n=3_000)  # about 1.5 values per bin of 2048
    options = EntropyOptions(bins=2048, levels=64)
    observer = _feed(EntropyObserver(options), values)
    nonzero = int(np.count_nonzero(values))
    merged = observer.merged(observer.histogram)
    width, _ = _reference_grid(float(values.min()), float(values.max()), options.bins)
    steps = round(math.log2(merged.width / width))
    assert steps >= 1 and merged.counts.sum() == values.size
    # The fewest merges that reach 16 values per used bin, or 64 bins (one per level) at most.
    assert nonzero >= 16 * merged.used() or merged.used() <= 64
    assert nonzero < 16 * observer.histogram.coarsened(steps - 1).used()
    # On the merged grid, the search is the plain one.
    wide = width * 2**steps
    origin = math.floor(float(values.min()) / wide)
    edges = (origin + np.arange(options.bins + 1)) * wide
    counts = np.bincount(np.searchsorted(edges, values.astype(np.float64), side="right") - 1, minlength=options.bins)
    counts[np.searchsorted(edges, 0.0, side="right") - 1] -= values.size - nonzero
    used = math.floor(float(values.max()) / wide) - origin + 1
    low, high = _reference_entropy(counts, edges, 64, min(max(-origin, 0), used), used)
    got = observer.range()
    assert (got.low, got.high) == (max(low, float(values.min())), min(high, float(values.max())))


def test_entropy_and_mse_keep_relu_ranges_despite_the_zero_spike():
    rng = np.random.default_rng(4)
    relu = np.maximum(rng.normal(0.0, 1.0, 200_000), 0).astype(np.float32)  # half exact zeros
    top = float(np.percentile(relu, 99.99))
    for observer in (EntropyObserver(), MseObserver()):
        got = _feed(observer, relu).range()
        assert got.low == 0.0 and got.high > 0.6 * top, type(observer).__name__


def test_entropy_clips_long_tails_but_keeps_bulk():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 100_000), [40.0, -35.0]]).astype(np.float32)
    got = _feed(EntropyObserver(), values).range()
    assert 2.0 < got.high < 20.0 and -20.0 < got.low < -2.0


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_mse_choice_is_near_the_best_true_mse(kind):
    values = _data(kind, n=30_000)
    observer = _feed(MseObserver(MseOptions(bins=512)), values)
    got = observer.range()
    histogram = observer.histogram
    _, starts, stops = candidate_windows(histogram, 256)
    edges = histogram.edges()
    best = min(
        _true_mse(values, max(edges[a], values.min()), min(edges[b], values.max()))
        for a, b in zip(starts, stops)
    )
    assert _true_mse(values, got.low, got.high) <= best * 1.10
    assert _true_mse(values, got.low, got.high) <= 1.02 * _true_mse(values, values.min(), values.max())


@pytest.mark.parametrize(
    "options",
    [MinMaxOptions(), PercentileOptions(), EntropyOptions(), MseOptions()],
    ids=lambda o: type(o).__name__,
)
def test_any_batching_gives_the_same_range(options):
    values = _data("relu", n=20_000)
    one = make_observer(options)
    one.observe(values)
    many = _feed(make_observer(options), values[::-1].copy(), seed=9)
    assert one.range() == many.range()


def test_per_channel_ranges_equal_numpy():
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32) * np.arange(1, 9)[:, None, None, None]
    observer = PerChannelObserver(lambda: MinMaxObserver(MinMaxOptions(symmetric=True)), axis=0)
    observer.observe(weights)
    bounds = np.abs(weights).reshape(8, -1).max(axis=1)
    assert [(r.low, r.high) for r in observer.ranges()] == [(-b, b) for b in bounds.tolist()]
    with pytest.raises(InvalidInput, match="channels"):
        observer.observe(weights[:4])


def test_empty_observer_and_bad_options_are_errors():
    with pytest.raises(InvalidInput, match="no values"):
        MinMaxObserver().range()
    with pytest.raises(InvalidInput, match="no values"):
        EntropyObserver().range()
    with pytest.raises(InvalidInput, match="percentile"):
        options_for("percentile", percentile=101)
    with pytest.raises(InvalidInput, match="unknown"):
        options_for("entropy", bogus=1)
    with pytest.raises(InvalidInput, match="method"):
        options_for("kl")
    with pytest.raises(InvalidInput, match="NaN"):
        EntropyObserver().observe(np.array([1.0, np.nan], np.float32))


def test_constant_tensor_gives_its_value():
    for options in (PercentileOptions(), EntropyOptions(), MseOptions()):
        observer = make_observer(options)
        observer.observe(np.full(100, 2.5, np.float32))
        assert (observer.range().low, observer.range().high) == (2.5, 2.5)


def test_histogram_far_from_zero_uses_the_exact_wide_path():
    values = (np.float32(1e8) + np.random.default_rng(2).integers(0, 9, 5000).astype(np.float32) * 8)
    histogram = StreamingHistogram(2048)
    for batch in _batches(values):
        histogram.add(batch)
    counts, edges = _reference_histogram(values, 2048)
    assert abs(histogram.origin) > 1 << 24
    np.testing.assert_array_equal(histogram.counts, counts)
    np.testing.assert_array_equal(histogram.edges(), edges)


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_entropy_divergences_equal_the_loop_definition(kind):
    values = _data(kind, n=5_000)
    observer = _feed(EntropyObserver(EntropyOptions(bins=256, levels=32)), values)
    histogram = observer.histogram
    used, starts, stops = candidate_windows(histogram, 32)
    counts = observer.counts_without_zeros()[:used]
    got = observer.divergences(counts.astype(np.float64), starts, stops)
    zero = min(max(-histogram.origin, 0), used)
    for k in range(0, starts.size, 7):
        expected, window = _reference_kl(counts, 32, zero, used, int(stops[k] - starts[k]))
        assert window == (starts[k], stops[k])
        assert got[k] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_minmax_refuses_nan_and_inf():
    for bad in (np.nan, np.inf):
        with pytest.raises(InvalidInput, match="NaN or infinite"):
            MinMaxObserver().observe(np.array([0.0, bad], np.float32))
