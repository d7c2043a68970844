"""Range observers: streaming statistics of one tensor, memory independent of the sample count.

Every observer takes batches of any size (`observe`), in any order, and answers with one range
(`range`). MinMax keeps two numbers; the others keep one fixed-size `StreamingHistogram` and
choose a range from it at the end:

- `PercentileObserver` — the range that clips `100 - percentile` percent of the values.
- `EntropyObserver` — the range whose quantized distribution is closest in KL divergence to
  the observed one (TensorRT's calibrator, as described in Migacz, "8-bit inference with
  TensorRT", GTC 2017; ONNX Runtime's `HistogramCollector.get_entropy_threshold`).
- `MseObserver` — the range with the least expected squared error, clipping plus rounding.

Each has a frozen options dataclass. `symmetric=True` observes |x| and answers [-t, t], as a
target with symmetric int8 activations (zero point 0) needs; the default answers [low, high]
for asymmetric int8 with a zero point. `PerChannelObserver` runs one observer per slice
along an axis, as weights are quantized.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from tapeout.calibration.table import TensorRange
from tapeout.compilers.errors import InvalidInput


class Observer(Protocol):
    """Streaming statistics of one tensor: feed batches, then read one range."""

    def observe(self, values: np.ndarray) -> None: ...

    def range(self) -> TensorRange: ...


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class MinMaxOptions:
    symmetric: bool = False


@dataclass(frozen=True)
class PercentileOptions:
    """Keep `percentile` percent of the values: 99.99 clips 0.005 % on each side (asymmetric)
    or the top 0.01 % of |x| (symmetric)."""

    percentile: float = 99.99
    bins: int = 2048
    symmetric: bool = False


@dataclass(frozen=True)
class EntropyOptions:
    """`levels` is the number of quantization levels over the whole range (256 for int8);
    a symmetric range spends half of them on each side of zero. `min_bin_count`: before the
    search, a histogram with fewer values per used bin on average is merged, pairs of bins at
    a time, until it has that many; one too sparse to fill `levels` bins keeps its whole range."""

    bins: int = 2048
    levels: int = 256
    symmetric: bool = False
    min_bin_count: int = 16


@dataclass(frozen=True)
class MseOptions:
    bins: int = 2048
    levels: int = 256
    symmetric: bool = False


ObserverOptions = MinMaxOptions | PercentileOptions | EntropyOptions | MseOptions

OPTIONS_BY_METHOD: dict[str, type] = {
    "minmax": MinMaxOptions,
    "percentile": PercentileOptions,
    "entropy": EntropyOptions,
    "mse": MseOptions,
}
METHODS = tuple(OPTIONS_BY_METHOD)


def options_for(method: str, **values: object) -> ObserverOptions:
    """The options of `method`, defaults overridden by `values`, each checked.

    Raises:
        InvalidInput: unknown method, unknown option, or a value out of its range.
    """
    if method not in OPTIONS_BY_METHOD:
        raise InvalidInput(f"calibration method: expected one of {list(METHODS)}, found {method!r}")
    cls = OPTIONS_BY_METHOD[method]
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInput(
            f"{method} options: unknown {unknown}; expected some of {sorted(known)}"
        )
    options = cls(**values)
    check_options(options)
    return options


def check_options(options: ObserverOptions) -> None:
    """Raises: InvalidInput naming the option, expected and found."""
    if isinstance(options, PercentileOptions) and not 50.0 < options.percentile <= 100.0:
        raise InvalidInput(
            f"percentile: expected a value in (50, 100], found {options.percentile}"
        )
    bins = getattr(options, "bins", None)
    if bins is not None and not (isinstance(bins, int) and 16 <= bins <= 1 << 20):
        raise InvalidInput(f"bins: expected an integer in [16, 1048576], found {bins!r}")
    min_bin_count = getattr(options, "min_bin_count", None)
    if min_bin_count is not None and not (isinstance(min_bin_count, int) and min_bin_count >= 0):
        raise InvalidInput(f"min_bin_count: expected an integer >= 0, found {min_bin_count!r}")
    levels = getattr(options, "levels", None)
    if levels is not None:
        if not (isinstance(levels, int) and 4 <= levels <= bins):
            raise InvalidInput(
                f"levels: expected an integer in [4, bins={bins}], found {levels!r}"
            )


def options_dict(options: ObserverOptions) -> dict[str, object]:
    return asdict(options)


def make_observer(options: ObserverOptions) -> Observer:
    """One fresh observer for the method these options belong to."""
    if isinstance(options, MinMaxOptions):
        return MinMaxObserver(options)
    if isinstance(options, PercentileOptions):
        return PercentileObserver(options)
    if isinstance(options, EntropyOptions):
        return EntropyObserver(options)
    if isinstance(options, MseOptions):
        return MseObserver(options)
    raise InvalidInput(f"observer options: unknown type {type(options).__name__}")


# --------------------------------------------------------------------------------------------
# The streaming histogram


class StreamingHistogram:
    """A histogram of at most `bins` bins whose width grows as the data's range grows.

    Bin edges are the integer multiples of `width = 2**exponent`: bin i covers
    [(origin + i) * width, (origin + i + 1) * width). When a batch extends the range beyond
    `bins` bins, the width doubles (as often as needed) and every old bin falls exactly into
    one new bin, so re-binning loses no count and moves none across an edge.

    The exponent is always the smallest one at which [low, high] fits in `bins` bins (that
    smallest width only grows as the range grows, and fitting is monotone in the width), so
    the final histogram depends only on the values seen — not on their order or batching.
    Counts are exact integers; memory is `bins` int64 whatever the number of values.
    """

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.count = 0
        self.low = math.inf
        self.high = -math.inf
        self.exponent: int | None = None  # None while every value seen is the same
        self.origin = 0
        self.counts = np.zeros(bins, dtype=np.int64)

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent) if self.exponent is not None else 0.0

    def add(self, values: np.ndarray) -> None:
        flat = np.asarray(values).reshape(-1)
        if flat.dtype not in (np.float32, np.float64):
            flat = flat.astype(np.float32)
        if flat.size == 0:
            return
        low, high = float(flat.min()), float(flat.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InvalidInput("observed tensor holds NaN or infinite values")
        previous_count, previous_low = self.count, self.low
        self.count += flat.size
        self.low, self.high = min(self.low, low), max(self.high, high)
        if self.low == self.high:
            return  # constant so far: count, low and high say everything
        exponent = self._smallest_exponent(self.low, self.high)
        if self.exponent is None:
            self._set_grid(exponent)
            if previous_count:  # the constant values seen before this batch
                self.counts[self._index(np.array([previous_low]))[0]] += previous_count
        elif exponent > self.exponent:
            self._regrid(exponent)
        elif math.floor(math.ldexp(self.low, -self.exponent)) < self.origin:
            self._regrid(self.exponent)  # same width, the range moved left
        counts = np.bincount(self._index(flat), minlength=self.bins)
        if counts.size != self.bins:  # the grid always covers [low, high]: this is a bug
            raise AssertionError(f"histogram index out of range: {counts.size} > {self.bins}")
        self.counts += counts

    def edges(self) -> np.ndarray:
        """The `bins + 1` bin edges (float64, exact)."""
        if self.exponent is None:
            return np.full(self.bins + 1, self.low)
        return (self.origin + np.arange(self.bins + 1, dtype=np.float64)) * self.width

    def used(self) -> int:
        """Bins from the first to the one holding `high` (the rest are empty)."""
        if self.exponent is None:
            return 1
        return math.floor(math.ldexp(self.high, -self.exponent)) - self.origin + 1

    def coarsened(self, steps: int) -> StreamingHistogram:
        """A copy with bins `2**steps` times as wide: every bin merges into one, exactly."""
        copy = StreamingHistogram(self.bins)
        copy.count, copy.low, copy.high = self.count, self.low, self.high
        copy.exponent, copy.origin, copy.counts = self.exponent, self.origin, self.counts.copy()
        if steps and copy.exponent is not None:
            copy._regrid(copy.exponent + steps)
        return copy

    def _smallest_exponent(self, low: float, high: float) -> int:
        # Start one below the estimate from the span; the loop corrects by at most a few steps.
        exponent = math.frexp((high - low) / self.bins)[1] - 1
        if self.exponent is not None:
            exponent = max(exponent, self.exponent)
        while self._bins_needed(low, high, exponent) > self.bins:
            exponent += 1
        return exponent

    @staticmethod
    def _bins_needed(low: float, high: float, exponent: int) -> int:
        return math.floor(math.ldexp(high, -exponent)) - math.floor(math.ldexp(low, -exponent)) + 1

    def _set_grid(self, exponent: int) -> None:
        self.exponent = exponent
        self.origin = math.floor(math.ldexp(self.low, -exponent))

    def _regrid(self, exponent: int) -> None:
        old_origin, shift = self.origin, exponent - self.exponent
        self._set_grid(exponent)
        # Old bin i is [(o + i) w, (o + i + 1) w); with w' = w * 2**shift it lies in new bin
        # floor((o + i) / 2**shift) - o' — integer arithmetic, exact.
        old_index = old_origin + np.arange(self.bins, dtype=np.int64)
        new_index = (old_index >> shift) - self.origin
        occupied = self.counts != 0
        self.counts = np.bincount(
            new_index[occupied], weights=self.counts[occupied], minlength=self.bins
        ).astype(np.int64)

    def _index(self, values: np.ndarray) -> np.ndarray:
        """Bin of every value: floor(x / width) - origin, exact.

        x * 2**-exponent only changes the exponent of x, so it is exact in x's own precision
        (float32 activations stay float32, twice as fast); the subtraction is exact in float32
        while the indices stay below 2**24, else it is done in float64 / int64. Values lie in
        [low, high], which the grid covers, so every index is in [0, bins).
        """
        exponent = self.exponent
        assert exponent is not None
        if values.dtype == np.float32 and -126 <= -exponent <= 127 and abs(self.origin) + self.bins < 1 << 24:
            scaled = values * np.float32(math.ldexp(1.0, -exponent))
            np.floor(scaled, out=scaled)
            # Integers below 2**24: the subtraction is exact. (Subtracting before the floor
            # would round x / width - origin when x / width is small and origin is not.)
            scaled -= np.float32(self.origin)
            return scaled.astype(np.intp)
        scaled = np.floor(np.ldexp(values.astype(np.float64), -exponent))
        return scaled.astype(np.int64) - self.origin


# --------------------------------------------------------------------------------------------
# Observers


class MinMaxObserver:
    """The smallest and largest value seen; symmetric: [-max|x|, max|x|]."""

    def __init__(self, options: MinMaxOptions = MinMaxOptions()) -> None:
        self.options = options
        self.low = math.inf
        self.high = -math.inf

    def observe(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InvalidInput("observed tensor holds NaN or infinite values")
        self.low, self.high = min(self.low, low), max(self.high, high)

    def range(self) -> TensorRange:
        _require_values(self.low <= self.high)
        if self.options.symmetric:
            bound = max(abs(self.low), abs(self.high))
            return TensorRange(-bound, bound)
        return TensorRange(self.low, self.high)


class _HistogramObserver:
    """Shared by the histogram observers: what to observe (x or |x|), and the final range."""

    # Whether the range search leaves out exact zeros (see `counts_without_zeros`).
    SKIPS_ZEROS = False

    def __init__(self, bins: int, symmetric: bool) -> None:
        self.symmetric = symmetric
        self.histogram = StreamingHistogram(bins)
        self.zeros = 0

    def observe(self, values: np.ndarray) -> None:
        self.histogram.add(np.abs(values) if self.symmetric else values)
        if self.SKIPS_ZEROS:
            self.zeros += int(np.count_nonzero(values == 0))

    def counts_without_zeros(self, histogram: StreamingHistogram | None = None) -> np.ndarray:
        """The counts of `histogram` (default: the observed one, or a coarsened copy of it)
        less the exact zeros.

        Every quantization range holds zero exactly (the zero point), so exact zeros — the
        spike a ReLU leaves — cost nothing whatever the range. Left in, that spike dominates
        the first bins: KL divergence then punishes every window whose first level spreads it
        over more bins, and picks too narrow a range (pytorch-quantization flattens the same
        spike with `bins[0] = bins[1]` in `_compute_amax_entropy`).
        """
        histogram = histogram or self.histogram
        counts = histogram.counts.copy()
        zero_bin = -histogram.origin
        if self.zeros and 0 <= zero_bin < histogram.bins:
            counts[zero_bin] -= self.zeros
        return counts

    def range(self) -> TensorRange:
        histogram = self.histogram
        _require_values(histogram.count > 0)
        if histogram.exponent is None:  # every value equal
            low, high = histogram.low, histogram.high
        else:
            low, high = self._choose(histogram)
            low, high = max(low, histogram.low), min(high, histogram.high)
        if self.symmetric:
            return TensorRange(-high, high)
        return TensorRange(low, high)

    def _choose(self, histogram: StreamingHistogram) -> tuple[float, float]:
        raise NotImplementedError


class PercentileObserver(_HistogramObserver):
    """Edges of the bins holding the order statistics at the cut points, clipped to the data.

    The upper bound is the upper edge of the bin holding the ceil(q * n)-th smallest value
    (q = 1 - cut), so it is at most one bin width above the exact percentile; the lower bound
    likewise at most one bin below.
    """

    def __init__(self, options: PercentileOptions = PercentileOptions()) -> None:
        super().__init__(options.bins, options.symmetric)
        self.options = options

    def _choose(self, histogram: StreamingHistogram) -> tuple[float, float]:
        cut = (100.0 - self.options.percentile) / 100.0
        if not self.symmetric:
            cut /= 2.0
        cumulative = np.cumsum(histogram.counts)
        edges = histogram.edges()
        n = histogram.count
        high_rank = max(1, math.ceil((1.0 - cut) * n))
        high = float(edges[np.searchsorted(cumulative, high_rank) + 1])
        if self.symmetric:
            return 0.0, high
        low_rank = max(1, math.ceil(cut * n))
        low = float(edges[np.searchsorted(cumulative, low_rank)])
        return low, high


MAX_WINDOWS = 512


def candidate_windows(
    histogram: StreamingHistogram, levels: int, max_windows: int | None = None
) -> tuple[int, np.ndarray, np.ndarray]:
    """Candidate clipping windows, as bin index pairs [start, stop), shrinking toward zero.

    The windows keep the zero edge (or the data's nearer end, when zero lies outside it) at
    the same relative place, so they shrink both sides in proportion — from all used bins
    down to `levels` bins (fewer would put several levels in one bin), in steps of one bin, or
    of a few when that would make more than `max_windows` windows. Returns
    (used bins, starts, stops).
    """
    used = histogram.used()
    zero = min(max(-histogram.origin, 0), used)  # the bin edge at 0, clamped to the data
    smallest = min(levels, used)
    step = max(1, (used - smallest) // max_windows) if max_windows else 1
    sizes = np.unique(np.append(np.arange(smallest, used + 1, step), used))
    left = np.rint(sizes * (zero / used)).astype(np.int64)
    starts = zero - left
    stops = starts + sizes
    return used, starts, stops


class EntropyObserver(_HistogramObserver):
    """The window whose distribution, quantized to `levels` levels, loses the least information.

    For each candidate window [start, stop) of m bins: the reference P is the histogram inside
    the window with the clipped outliers added to its first and last bin; the candidate Q
    merges the in-window bins (without the outliers) into `levels` groups — bin j of the window
    joins level floor(j * levels / m) — and spreads each group's count evenly over its bins
    where P is non-zero. The window with the least KL(P||Q) (P and Q normalised; bins where P
    is 0 add nothing; where Q is 0 but P is not, Q counts as EPSILON) wins. Exact zeros are left
    out (`counts_without_zeros`).

    A sparse histogram is merged first (`EntropyOptions.min_bin_count`): with a few values per
    bin, P is mostly sampling noise (a bin of 16 counts is off by 1/sqrt(16) = 25 %), and KL
    then rewards clipping the thin tail of a small set. Measured on the example at 200 samples
    (benchmarks/README.md), merging to 16 per bin on average keeps the dense tensors' ranges and
    stops the sparse ones (the fully connected layers) from being clipped.

    Every window is scored, from prefix sums over the bins: O(windows x levels), no loop over bins.
    """

    EPSILON = 1e-4
    SKIPS_ZEROS = True
    BLOCK = 256

    def __init__(self, options: EntropyOptions = EntropyOptions()) -> None:
        super().__init__(options.bins, options.symmetric)
        self.options = options

    @property
    def levels(self) -> int:
        return self.options.levels // 2 if self.symmetric else self.options.levels

    def _choose(self, histogram: StreamingHistogram) -> tuple[float, float]:
        histogram = self.merged(histogram)
        # Entropy costs O(levels) per window: at most MAX_WINDOWS of them (a step of 1/512 of
        # the range is finer than any choice among them matters).
        used, starts, stops = candidate_windows(histogram, self.levels, MAX_WINDOWS)
        counts = self.counts_without_zeros(histogram)[:used].astype(np.float64)
        if not counts.any():  # nothing but zeros and the two extremes' bins
            counts = histogram.counts[:used].astype(np.float64)
        # In blocks of windows, so the [windows, levels] work arrays stay small (~2 MB).
        divergences = np.concatenate([
            self.divergences(counts, starts[block : block + self.BLOCK], stops[block : block + self.BLOCK])
            for block in range(0, starts.size, self.BLOCK)
        ])
        best = int(np.argmin(divergences))  # the first of equal ones
        edges = histogram.edges()
        return float(edges[starts[best]]), float(edges[stops[best]])

    def merged(self, histogram: StreamingHistogram) -> StreamingHistogram:
        """`histogram` with bins merged until they hold `min_bin_count` values on average
        (exact zeros not counted) or no more than `levels` bins are used: a set too small for
        that many levels keeps its whole range, as MinMax would."""
        values = histogram.count - self.zeros
        merged, steps = histogram, 0
        while merged.used() > self.levels and values < self.options.min_bin_count * merged.used():
            steps += 1
            merged = histogram.coarsened(steps)
        return merged

    def divergences(self, counts: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """KL(P||Q) of every window [starts[k], stops[k]).

        With N the total count, S the in-window count (Q's total), and sums over bins:
        KL = (sum p log p - sum p log q) / N + log(S / N). Within level g every non-zero p
        has q = T_g / n_g (T_g: in-window count of the level, n_g: its non-zero bins of P), so
        sum p log q = sum_g (T_g + outliers folded into g) * log(T_g / n_g).
        """
        levels, eps = self.levels, self.EPSILON

        def xlogx(x: np.ndarray) -> np.ndarray:
            return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)

        def prefix(values: np.ndarray) -> np.ndarray:
            return np.concatenate([[0.0], np.cumsum(values)])

        count, nonzero, entropy = prefix(counts), prefix(counts != 0), prefix(xlogx(counts))
        total = count[-1]
        sizes = stops - starts
        left = count[starts]  # clipped below, folded into the window's first bin
        right = total - count[stops]  # clipped above, folded into its last bin
        first, last = counts[starts], counts[stops - 1]
        p_first, p_last = first + left, last + right
        # sum p log p: the window's bins, with its two end bins replaced by their folded counts.
        p_log_p = (
            entropy[stops] - entropy[starts] - xlogx(first) - xlogx(last)
            + xlogx(p_first) + xlogx(p_last)
        )
        # Level g holds window bins [ceil(g m / L), ceil((g + 1) m / L)).
        g = np.arange(levels + 1)[None, :]
        bounds = starts[:, None] + (g * sizes[:, None] + levels - 1) // levels
        level_total = np.diff(count[bounds], axis=1)
        level_nonzero = np.diff(nonzero[bounds], axis=1)
        # Inner levels: P's level count is the in-window count; an empty level adds nothing
        # (log 1 = 0). Only the two end levels take the folded outliers, so only they can hold
        # P without Q ("starved": q is EPSILON there). The [windows, levels] work is one
        # division, one log and one product.
        filled = level_total > 0
        log_q = np.log(np.divide(level_total, level_nonzero, out=np.ones_like(level_total), where=filled))
        p_log_q = (level_total * log_q).sum(axis=1)
        in_window = count[stops] - count[starts]
        for column, folded, end in ((0, left, first), (-1, right, last)):
            end_filled = filled[:, column]
            # Folded outliers where the end level has in-window counts: q is that level's.
            p_log_q += np.where(end_filled, folded * log_q[:, column], 0.0)
            # An end bin P holds only outliers in counts as one more non-zero bin of its level.
            extra = end_filled & (end == 0) & (folded > 0)
            if extra.any():
                t, n = level_total[:, column], level_nonzero[:, column]
                p = t + folded
                corrected = np.log(np.divide(t, n + 1, out=np.ones_like(t), where=extra))
                p_log_q += np.where(extra, p * (corrected - log_q[:, column]), 0.0)
            starved = ~end_filled & (folded > 0)
            p_log_q += np.where(starved, folded * math.log(eps), 0.0)
            in_window = in_window + eps * starved
        with np.errstate(divide="ignore"):
            divergence = (p_log_p - p_log_q) / total + np.log(in_window / total)
        divergence[~(in_window > 0)] = math.inf
        return divergence


class MseObserver(_HistogramObserver):
    """The window with the least expected squared error of quantize-then-dequantize.

    With step d = (high - low) / (levels - 1), a value inside the window is off by a rounding
    error uniform in [-d/2, d/2] (variance d**2 / 12); a value outside is clipped to the nearer
    bound. Values are taken at their bin centres; exact zeros, which the range always
    represents exactly, are left out.
    """

    SKIPS_ZEROS = True

    def __init__(self, options: MseOptions = MseOptions()) -> None:
        super().__init__(options.bins, options.symmetric)
        self.options = options

    @property
    def levels(self) -> int:
        return self.options.levels // 2 if self.symmetric else self.options.levels

    def _choose(self, histogram: StreamingHistogram) -> tuple[float, float]:
        used, starts, stops = candidate_windows(histogram, self.levels)
        errors = self.errors(histogram, starts, stops)
        best = int(np.argmin(errors))
        edges = histogram.edges()
        return float(edges[starts[best]]), float(edges[stops[best]])

    def errors(
        self, histogram: StreamingHistogram, starts: np.ndarray, stops: np.ndarray
    ) -> np.ndarray:
        """Expected squared error of every window, from prefix sums (one pass over the bins)."""
        used = histogram.used()
        edges = histogram.edges()[: used + 1]
        centres = (edges[:-1] + edges[1:]) / 2.0
        counts = self.counts_without_zeros()[:used].astype(np.float64)

        def prefix(values: np.ndarray) -> np.ndarray:
            return np.concatenate([[0.0], np.cumsum(values)])

        n, s1, s2 = prefix(counts), prefix(counts * centres), prefix(counts * centres**2)
        low, high = edges[starts], edges[stops]
        # The quantizer widens every range to hold zero (ONNX Runtime's compute_scale_zp).
        step = (np.maximum(high, 0.0) - np.minimum(low, 0.0)) / max(self.levels - 1, 1)
        inside = n[stops] - n[starts]
        # sum h (c - b)^2 = sum h c^2 - 2 b sum h c + b^2 sum h, below the window and above it.
        below = s2[starts] - 2 * low * s1[starts] + low**2 * n[starts]
        above_n, above_s1, above_s2 = n[-1] - n[stops], s1[-1] - s1[stops], s2[-1] - s2[stops]
        above = above_s2 - 2 * high * above_s1 + high**2 * above_n
        return inside * step * step / 12.0 + np.maximum(below, 0.0) + np.maximum(above, 0.0)


class PerChannelObserver:
    """One observer per slice along `axis` (weights: the output-channel axis)."""

    def __init__(self, make: Callable[[], Observer], axis: int = 0) -> None:
        self.make = make
        self.axis = axis
        self.channels: list[Observer] = []

    def observe(self, values: np.ndarray) -> None:
        moved = np.moveaxis(values, self.axis, 0)
        if not self.channels:
            self.channels = [self.make() for _ in range(moved.shape[0])]
        if moved.shape[0] != len(self.channels):
            raise InvalidInput(
                f"per-channel observer: expected {len(self.channels)} channels on axis "
                f"{self.axis}, found {moved.shape[0]}"
            )
        for observer, channel in zip(self.channels, moved):
            observer.observe(channel)

    def ranges(self) -> tuple[TensorRange, ...]:
        _require_values(bool(self.channels))
        return tuple(observer.range() for observer in self.channels)


def _require_values(seen: bool) -> None:
    if not seen:
        raise InvalidInput("observer: no values observed, so there is no range")
