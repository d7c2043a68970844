"""ONNX Runtime's QLinearAdd and QLinearMul, step for step in TFLite CPU ops (ADD and MUL in
`float_ops`, both operands activations).

TFLite's int8 ADD and MUL requantize with integer multipliers and shifts; ONNX Runtime's
kernels (what its session runs for a DequantizeLinear → Add/Mul → QuantizeLinear group) compute
in float32 and convert with `cvtps2dq`, rounding half to even. Near a rounding boundary the two
disagree by 1 LSB (docs/ethos-u.md, "The real-model suite"), and no int8 parameter is the
converter's to choose. Here the float32 sequence of ONNX Runtime's x86-64 kernels is written out:

QLinearMul (onnxruntime/core/mlas/lib/qlmul.cpp, SSE2, no FMA):
    p = (a - z_a) · (b - z_b)                   integer, |p| <= 255², exact in float32
    y = fl(fl(p · fl(fl(s_a · s_b) / s_c)) + z_c)

QLinearAdd (onnxruntime/core/mlas/lib/intrinsics/avx2/qladd_avx2.cpp, on AVX2 CPUs):
    r_a = fl(s_a / s_c), r_b = fl(s_b / s_c)
    F = fl(z_c - fma(r_a, z_a, fl(r_b · z_b)))  (the compiler contracts it: measured against
                                                 ONNX Runtime, the unfused form misses codes)
    y = fma(a, r_a, fma(b, r_b, F))              each FMA rounds once

and the code is saturate(round_half_even(y)). `a`, `b` and the zero points are the codes ONNX
Runtime stores: uint8 for its default activations, the converter's int8 codes + 128 (the
zero-point differences of QLinearMul do not see the shift; QLinearAdd's float sums do).

TFLite has no FMA op, and a float MUL then ADD rounds twice (on RegNetX-400MF's 16 ADDs, 3 input
pairs of their 16 × 65,536 come out another code that way). Each FMA is therefore computed exactly in
int64 on the grid 2^-K on which r_a, r_b and F are integers, and one CAST to float32 rounds it,
to nearest even as the FMA does: fma(b, r_b, F) = CAST(b · r_b·2^K + F·2^K) · 2^-K.

Rounding to an integer half to even: + 1.5·2^23, then − 1.5·2^23 in float32 (for |y| < 2^22 the
sum's unit is 1), not ROUND (TFLite's reference kernels lack it) nor QUANTIZE (its reference
kernel rounds half away from zero, and its output would need scale 1). The saturated integer
is CAST to the int8 output, whose scale and zero point are ONNX Runtime's.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from tapeout.compilers.tflite.flatbuffer import FbTensor, array_bytes
from tapeout.compilers.tflite.lowering import NO_ACTIVATION, Lowering, refuse
from tapeout.compilers.tflite.qdq import Activation

# 1.5 · 2^23: added to a float32 of magnitude below 2^22, the sum's unit in the last place is 1.
ROUNDING_CONSTANT = 12582912.0
# int64 accumulators stay below this (exactness of the grid arithmetic, checked per node).
INT64_LIMIT = 2 ** 62


def fma32(x: float, y: float, z: float) -> np.float32:
    """float32 fma(x, y, z): x·y + z exact, rounded once to float32 (nearest, ties to even)."""
    exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
    return round_to_float32(exact)


def round_to_float32(value: Fraction) -> np.float32:
    """`value` rounded to the nearest float32, ties to even (no double rounding via float64)."""
    candidate = np.float32(float(value))
    if Fraction(float(candidate)) == value or candidate == 0 or not np.isfinite(candidate):
        return candidate
    below, above = ((np.nextafter(candidate, np.float32(-np.inf)), candidate) if Fraction(float(candidate)) > value
                    else (candidate, np.nextafter(candidate, np.float32(np.inf))))
    low, high = value - Fraction(float(below)), Fraction(float(above)) - value
    if low != high:
        return below if low < high else above
    return below if int(below.view(np.int32)) % 2 == 0 else above


def grid_exponent(*values: np.float32) -> int:
    """The smallest K >= 0 for which every float32 value times 2^K is an integer."""
    exponent = 0
    for value in values:
        fraction = Fraction(float(value))
        while fraction.denominator > 2 ** exponent:
            exponent += 1
    return exponent


class _Emitter:
    """TFLite tensors and ops of one node's exact sequence, all of one shape."""

    def __init__(self, lowering: Lowering, name: str, shape: tuple[int, ...]) -> None:
        self.lowering, self.name, self.shape, self.count = lowering, name, shape, 0

    def _tensor(self, dtype: str, shape=None, data=None) -> int:
        self.count += 1
        return self.lowering.add(FbTensor(f"{self.name}_exact{self.count}", tuple(self.shape if shape is None else shape),
                                          dtype, data=data))

    def constant(self, value, dtype: str) -> int:
        array = np.array([value], dtype)
        return self._tensor(dtype, array.shape, array_bytes(array))

    def op(self, opcode: str, inputs, dtype: str, shape=None) -> int:
        options = {"ADD": ("AddOptions", {"FusedActivationFunction": NO_ACTIVATION}),
                   "MUL": ("MulOptions", {"FusedActivationFunction": NO_ACTIVATION})}.get(opcode)
        output = self._tensor(dtype, shape)
        self.lowering.emit(opcode, tuple(inputs), (output,), options)
        return output

    def add(self, x: int, value, dtype: str) -> int:
        """x + value, of x's shape."""
        shape = self.lowering.shape_of(x)
        return self.op("ADD", (x, self.constant(value, dtype)), dtype, shape)

    def mul(self, x: int, value, dtype: str) -> int:
        return self.op("MUL", (x, self.constant(value, dtype)), dtype)

    def to_code(self, y: int, offset: int, output: int) -> None:
        """saturate(round_half_even(y)) - offset, CAST into the int8 tensor `output`."""
        rounded = self.add(y, np.float32(ROUNDING_CONSTANT), "float32")
        code = self.add(rounded, np.float32(-ROUNDING_CONSTANT - offset), "float32")
        code = self.op("MINIMUM", (self.op("MAXIMUM", (code, self.constant(-128.0, "float32")), "float32"),
                                   self.constant(127.0, "float32")), "float32")
        self.lowering.emit("CAST", (code,), (output,))


def stored_offset(lowering: Lowering, act: Activation) -> int:
    """128 where ONNX Runtime stores `act` as uint8 (the converter's codes are 128 lower)."""
    q = lowering.qdq.producer.get(act.name)
    if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3:
        return 0
    return 128 if lowering.qdq.initializers[q.input[2]].dtype == np.uint8 else 0


def lower_exact_mul(lowering: Lowering, node, a: int, b: int, operands, result: Activation, output: int) -> None:
    """QLinearMul's float32 sequence (module docstring); `a`, `b` the int8 tensors of the two
    activations `operands`, `output` the int8 tensor of `result`."""
    emit = _Emitter(lowering, node.name, lowering.shape_of(output))
    first, second = operands
    ratio = np.float32(np.float32(np.float32(first.scale) * np.float32(second.scale)) / np.float32(result.scale))
    centred = []
    for index, act in ((a, first), (b, second)):
        as_float = emit.op("CAST", (index,), "float32", lowering.shape_of(index))
        centred.append(emit.add(as_float, np.float32(-act.zero_point), "float32"))  # exact: small integers
    product = emit.op("MUL", centred, "float32")  # exact: |p| <= 255² < 2^24
    offset = stored_offset(lowering, result)
    y = emit.add(emit.mul(product, ratio, "float32"), np.float32(result.zero_point + offset), "float32")
    emit.to_code(y, offset, output)


def lower_exact_add(lowering: Lowering, node, a: int, b: int, operands, result: Activation, output: int) -> None:
    """QLinearAdd's AVX2 sequence (module docstring), each FMA exact in int64 and rounded once
    by a CAST to float32.

    Raises:
        UnsupportedOperator: the operands' shapes differ (ONNX Runtime's broadcast path
            computes another sequence), or the grid 2^-K needs more than int64.
    """
    first, second = operands
    if first.shape != second.shape:
        raise refuse(node, f"ADD in float_ops needs operands of one shape, found {list(first.shape)} and "
                           f"{list(second.shape)} (ONNX Runtime's broadcast path rounds otherwise)")
    offsets = [stored_offset(lowering, act) for act in (first, second, result)]
    z_a, z_b, z_c = (act.zero_point + offset for act, offset in zip((first, second, result), offsets))
    scale_c = np.float32(result.scale)
    r_a, r_b = np.float32(np.float32(first.scale) / scale_c), np.float32(np.float32(second.scale) / scale_c)
    fixed = np.float32(np.float32(z_c) - fma32(r_a, np.float32(z_a), np.float32(r_b * np.float32(z_b))))
    k = grid_exponent(r_a, r_b, fixed)
    big_a, big_b, big_fixed = (int(Fraction(float(v)) * 2 ** k) for v in (r_a, r_b, fixed))
    bound = 256 * (abs(big_a) + abs(big_b)) * 2 + abs(big_fixed)
    if bound >= INT64_LIMIT:
        raise refuse(node, f"ADD in float_ops: scale ratios {r_a}, {r_b} and offset {fixed} need a grid of "
                           f"2^-{k}, beyond int64")
    emit = _Emitter(lowering, node.name, lowering.shape_of(output))
    codes = []
    for index, offset in ((a, offsets[0]), (b, offsets[1])):
        wide = emit.op("CAST", (index,), "int64")
        codes.append(emit.add(wide, offset, "int64"))  # ONNX Runtime's stored code
    # t = fma(b, r_b, F), exact on the grid, rounded once to float32, back on the grid (an integer).
    t = emit.op("CAST", (emit.add(emit.mul(codes[1], big_b, "int64"), big_fixed, "int64"),), "float32")
    t = emit.op("CAST", (t,), "int64")
    # y = fma(a, r_a, t), likewise; then 2^-K (exact) takes it off the grid.
    y = emit.op("CAST", (emit.op("ADD", (emit.mul(codes[0], big_a, "int64"), t), "int64"),), "float32")
    emit.to_code(emit.mul(y, np.float32(2.0 ** -k), "float32"), offsets[2], output)


def exact_binary(lowering: Lowering, node, opcode: str, indices, operands, result: Activation, output: int) -> None:
    """ADD or MUL of two activations as ONNX Runtime computes it (module docstring)."""
    lower = {"ADD": lower_exact_add, "MUL": lower_exact_mul}[opcode]
    lower(lowering, node, indices[0], indices[1], operands, result, output)
