"""Integer parameters of a per-channel affine op that reproduce a table of output codes.

A 1x1 DEPTHWISE_CONV_2D computes, per channel, `acc = (q - z_in) * w + b` (int8 weight w,
int32 bias b) and XNNPACK requantizes it in float32, rounding half to even:
`out = clamp(rne(float(acc) * M) + z_out)`, with `M = (s_in * s_w) / s_out` evaluated in
float32 from the tensors' scales (XNNPACK's `fp32` requantization, which LiteRT's default CPU
path runs). Given the code ONNX Runtime writes for each of the 256 input codes
(compilers/tflite/reference_codes.py), `fit_channel` picks w, the weight scale s_w and b for a
channel so that this arithmetic writes the same codes for every input code: exact, where
rounding the folded offset to the bias of the weight ONNX Runtime quantized leaves values
near a rounding boundary on the other side.

The search: the range of slopes (output LSBs per input LSB) that keeps every input code inside
its output code's rounding interval for some offset, a linear program in two variables; then,
for w from 127 down (the finest accumulator grid first) and slopes across that range, the
integer biases inside every interval, each checked against the float32 arithmetic above before
it is taken.
"""

from __future__ import annotations

import numpy as np

INPUT_CODES = np.arange(-128, 128, dtype=np.int64)
SLOPE_SAMPLES = 33  # slopes tried across the feasible range, middle first


def requantized(acc: np.ndarray, multiplier: np.float32, output_zero_point: int) -> np.ndarray:
    """XNNPACK's fp32 requantization of int32 accumulators to int8 codes."""
    scaled = (acc.astype(np.float32) * np.float32(multiplier)).astype(np.float32)
    return np.clip(np.rint(scaled) + output_zero_point, -128, 127).astype(np.int64)


def multiplier(input_scale: float, weight_scale: np.float32, output_scale: float) -> np.float32:
    """The requantization multiplier as XNNPACK evaluates it: (input × weight) / output, float32."""
    return np.float32(np.float32(np.float32(input_scale) * np.float32(weight_scale)) / np.float32(output_scale))


def fit_channel(target: np.ndarray, slope: float, input_scale: float, input_zero_point: int,
                output_scale: float, output_zero_point: int) -> tuple[int, np.float32, int]:
    """(w, s_w, b) whose depthwise arithmetic writes `target` (int8 codes for input codes
    -128..127) for real slope `slope` (output per input, real units): every code when some
    choice does, else the choice writing the most of them."""
    target = target.astype(np.int64)
    steps_in = (INPUT_CODES - input_zero_point).astype(np.float64)
    lower = np.where(target == -128, -np.inf, target - output_zero_point - 0.5)  # saturated codes
    upper = np.where(target == 127, np.inf, target - output_zero_point + 0.5)    # bound one side
    sign = -1 if slope < 0 else 1
    real = abs(slope) * input_scale / output_scale  # output LSBs per input LSB
    best, best_missed = None, INPUT_CODES.size + 1
    # The real slope at the finest grid writes most channels' codes; the linear program only
    # runs for the others.
    for attempt in ("real", "feasible"):
        gains = [real] if attempt == "real" else _gains(steps_in, lower, upper, sign)
        for magnitude in range(127, 0, -1) if attempt == "feasible" and len(gains) else (127,):
            for gain in gains:
                weight_scale = np.float32(gain * output_scale / (input_scale * magnitude))
                step = multiplier(input_scale, weight_scale, output_scale)
                if not np.isfinite(step) or step <= 0:
                    continue
                low = float(np.max(lower - sign * gain * steps_in)) / float(step)
                high = float(np.min(upper - sign * gain * steps_in)) / float(step)
                acc = steps_in.astype(np.int64) * sign * magnitude
                for bias in _around((low + high) / 2, min(low, high), max(low, high)):
                    if abs(bias) >= 2**31:
                        continue
                    missed = _missed(target, acc + bias, step, output_zero_point)
                    if missed < best_missed:
                        best, best_missed = (sign * magnitude, weight_scale, bias), missed
                    if missed == 0:
                        return best
    return best


def _gains(steps_in: np.ndarray, lower: np.ndarray, upper: np.ndarray, sign: int) -> np.ndarray:
    """Output LSBs per input LSB that keep every code in its interval for some offset: the
    feasible range of the slope (a two-variable linear program, solved over all pairs of
    codes), sampled from its middle out; empty when no affine map writes the codes."""
    slopes = sign * steps_in
    rise = slopes[:, None] - slopes[None, :]             # code i above code j when > 0
    gap = lower[:, None] - upper[None, :]                # a * rise >= gap for every pair
    with np.errstate(divide="ignore", invalid="ignore"):
        bounds = gap / rise
    low = np.max(np.where(rise > 0, bounds, -np.inf), initial=0.0)
    high = np.min(np.where(rise < 0, bounds, np.inf), initial=np.inf)
    if not (np.isfinite(low) and np.isfinite(high)) or low > high or high <= 0:
        return np.zeros(0)
    samples = np.linspace(low, high, SLOPE_SAMPLES)
    return samples[np.argsort(np.abs(samples - (low + high) / 2), kind="stable")]


def _missed(target: np.ndarray, acc: np.ndarray, step: np.float32, output_zero_point: int) -> int:
    return int(np.count_nonzero(requantized(acc, step, output_zero_point) != target))


def _around(centre: float, low: float, high: float) -> list[int]:
    """Integer biases to try: those in [low - 1, high + 1], nearest `centre` first (float32
    rounding may move an interval's ends by a fraction)."""
    first, last = int(np.floor(min(low, centre))) - 1, int(np.ceil(max(high, centre))) + 1
    return sorted(range(first, last + 1), key=lambda value: abs(value - centre))[:8]
