"""The firmware's op set: op kinds, their integer parameter layouts, and constant slots.

This is the contract between the compiler (lowering.py writes ops) and the runtime
(_kernels.pyx reads them). Each op carries:

- ``ints``: int64 parameters, in the order given by ``PARAMS[kind]`` (the Cython engine reads
  them by index, so the order here is the ABI and must not change within a format version);
- ``floats``: up to ``MAX_FLOATS`` float32 parameters (``ort`` mode scales);
- ``inputs`` / ``outputs``: tensor ids (every tensor lives in the one arena);
- ``consts``: constant ids (weights, bias, per-channel requantization arrays, lookup tables).
"""

from __future__ import annotations

import enum


class Kind(enum.IntEnum):
    QUANTIZE = 1  # float32 -> int8/uint8 (ONNX QuantizeLinear)
    DEQUANTIZE = 2  # int8/uint8 -> float32 (ONNX DequantizeLinear)
    REQUANT = 3  # q -> q with other scale / zero point
    CONV = 4  # 2-D convolution, groups, dilations, int32 accumulation
    GEMM = 5  # x[M,K] . W[N,K]^T + bias (weights constant)
    MATMUL = 6  # batched a[B,M,K] . b[B,K,N], both activations
    MAXPOOL = 7
    AVGPOOL = 8
    GLOBALAVGPOOL = 9
    ADD = 10
    MUL = 11
    COPY = 12  # Reshape / Flatten / Squeeze / Unsqueeze / Identity / Dropout
    TRANSPOSE = 13
    CONCAT_PART = 14  # copy (or LUT-requantize) one input into its slot of the output
    LUT = 15  # out = table[in]: Sigmoid, requantization through a 256-entry table
    CLAMP = 16  # standalone Relu / Clip in the quantized domain
    PAD = 17  # constant padding with the zero point
    RESIZE_NEAREST = 18
    SOFTMAX = 19
    LOAD_CONST = 20  # copy a constant operand (e.g. of Add) into the arena


# "off" (AVGPOOL, ADD, SOFTMAX in ort mode): ONNX Runtime on x86-64 runs these int8 kernels in the
# uint8 domain (QDQS8ToU8Transformer: x + 128, zero point + 128); where a zero point is added in
# float before rounding this changes the rounding, so the kernel works on values + off.

# "femu" (ADD, MUL in ort mode): ONNX Runtime left this node in float (its QDQ selectors
# rejected the group), so the kernel emulates DequantizeLinear -> float32 op -> QuantizeLinear
# exactly: f[0..2] are the a, b and output scales.

# Requantization / output mode of an op (ints["mode"]).
MODE_ORT = 0  # float32 multiplier, round half to even (MlasRequantizeOutput)
MODE_FIXED = 1  # int32 multiplier + shift (TFLite MultiplyByQuantizedMultiplier)
MODE_INT32 = 2  # no requantization: int32 accumulator out (ConvInteger / MatMulInteger)

REQUANT_MODES = {"ort": MODE_ORT, "fixed-point": MODE_FIXED}

MAX_INPUTS = 2
MAX_CONSTS = 4
MAX_FLOATS = 4
MAX_INTS = 40

# Integer parameter layouts, by kind. "sg_in"/"sg_out": 1 when the tensor is int8, 0 uint8.
PARAMS: dict[Kind, tuple[str, ...]] = {
    Kind.QUANTIZE: ("n", "zp", "qmin", "qmax", "sg_out"),
    Kind.DEQUANTIZE: ("n", "zp", "sg_in"),
    Kind.REQUANT: ("n", "zp_in", "zp_out", "qmin", "qmax", "sg_in", "sg_out", "mode",
                   "mult", "shift"),
    Kind.CONV: ("N", "C", "H", "W", "M", "kh", "kw", "sh", "sw", "pt", "pl", "dh", "dw",
                "groups", "OH", "OW", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode"),
    Kind.GEMM: ("M", "K", "N", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode"),
    Kind.MATMUL: ("B", "M", "K", "N", "azp", "bzp", "yzp", "qmin", "qmax", "sg_in", "sg_out",
                  "mode", "mult", "shift", "b_batch"),
    Kind.MAXPOOL: ("N", "C", "H", "W", "kh", "kw", "sh", "sw", "pt", "pl", "dh", "dw", "OH",
                   "OW", "sg_in"),
    Kind.AVGPOOL: ("N", "C", "H", "W", "kh", "kw", "sh", "sw", "pt", "pl", "OH", "OW",
                   "count_include_pad", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out",
                   "mode", "mult", "shift", "off"),
    Kind.GLOBALAVGPOOL: ("NC", "HW", "xzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode",
                         "mult", "shift"),
    # Binary elementwise with NumPy broadcasting reduced to (outer, mid, inner) blocks:
    # a index = o*a_so + m*a_sm + i*a_si, same for b; out is dense [outer, mid, inner].
    Kind.ADD: ("outer", "mid", "inner", "a_so", "a_sm", "a_si", "b_so", "b_sm", "b_si", "azp",
               "bzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode", "mult_a", "shift_a",
               "mult_b", "shift_b", "mult_y", "shift_y", "left_shift", "off", "femu"),
    Kind.MUL: ("outer", "mid", "inner", "a_so", "a_sm", "a_si", "b_so", "b_sm", "b_si", "azp",
               "bzp", "yzp", "qmin", "qmax", "sg_in", "sg_out", "mode", "mult", "shift", "femu"),
    Kind.COPY: ("nbytes",),
    # Transpose of a tensor of up to 6 dims: out dims d0..d5, input strides (elements)
    # permuted to output order s0..s5.
    Kind.TRANSPOSE: ("d0", "d1", "d2", "d3", "d4", "d5", "s0", "s1", "s2", "s3", "s4", "s5"),
    Kind.CONCAT_PART: ("outer", "inner_in", "inner_out", "offset", "use_lut"),
    Kind.LUT: ("n", "sg_in"),
    Kind.CLAMP: ("n", "lo", "hi", "sg_in"),
    Kind.PAD: ("N", "C", "H", "W", "OH", "OW", "pt", "pl", "value"),
    Kind.RESIZE_NEAREST: ("NC", "H", "W", "OH", "OW"),
    Kind.LOAD_CONST: ("nbytes",),
    Kind.SOFTMAX: ("rows", "cols", "sg_in", "sg_out", "yzp", "qmin", "qmax", "mode",
                   "yscale_int", "off"),
}

# Number of inputs and constants each kind takes (checked by the loader).
N_INPUTS: dict[Kind, int] = {k: 1 for k in Kind}
N_INPUTS.update({Kind.MATMUL: 2, Kind.ADD: 2, Kind.MUL: 2, Kind.LOAD_CONST: 0})
N_CONSTS: dict[Kind, tuple[int, int]] = {k: (0, 0) for k in Kind}  # (min, max)
N_CONSTS.update({
    Kind.CONV: (4, 4), Kind.GEMM: (4, 4), Kind.LUT: (1, 1), Kind.CONCAT_PART: (0, 1),
    Kind.SOFTMAX: (1, 1), Kind.RESIZE_NEAREST: (1, 1), Kind.LOAD_CONST: (1, 1),
})

for _k in Kind:
    assert _k in PARAMS and len(PARAMS[_k]) <= MAX_INTS

# Quantized element type codes ("sg_in" / "sg_out"): the int8 images' booleans plus int16.
SG_UINT8, SG_INT8, SG_INT16 = 0, 1, 2
SG_DTYPE = {SG_UINT8: "uint8", SG_INT8: "int8", SG_INT16: "int16"}
SG_ITEMSIZE = {SG_UINT8: 1, SG_INT8: 1, SG_INT16: 2}
# Kinds whose kernels take int16 activations (code 2); every other kind stays 8-bit.
INT16_KINDS = frozenset({Kind.QUANTIZE, Kind.DEQUANTIZE, Kind.REQUANT, Kind.CONV, Kind.GEMM,
                         Kind.MATMUL, Kind.MAXPOOL, Kind.AVGPOOL, Kind.GLOBALAVGPOOL, Kind.ADD,
                         Kind.MUL, Kind.CLAMP})
# COPY, TRANSPOSE, CONCAT_PART and RESIZE_NEAREST move bytes and carry no type code: the
# compiler gives them byte counts (an int16 tensor is a byte tensor with a last axis of 2).


def _align16(n: int) -> int:
    return (n + 15) // 16 * 16


def conv_scratch(chw: int, K: int, P: int, wide: bool) -> int:
    """CONV scratch bytes, as _kernels.pyx lays it out: the `x - zp` image, the im2col
    columns, then accumulators. 8-bit inputs: int16 image and columns, four rows of int32
    accumulators. int16 inputs (`wide`): |x - zp| <= 65535 needs int32 image and columns, and
    one row of int64 accumulators."""
    if wide:
        return _align16(chw * 4) + _align16(K * P * 4) + P * 8
    return _align16(chw * 2) + _align16(K * P * 2) + 4 * P * 4


def matmul_scratch(K: int, N: int, wide: bool) -> int:
    """MATMUL scratch bytes: B transposed ([N, K]) and one row of A, as `x - zp` (int16; int32
    for int16 inputs)."""
    if wide:
        return _align16(N * K * 4) + K * 4
    return _align16(N * K * 2) + K * 2


def gemm_scratch(K: int, N: int, wide: bool) -> int:
    """GEMM scratch bytes: one `x - zp` row (int16; int32 for int16 inputs) and N
    accumulators (int32; int64 for int16 inputs)."""
    if wide:
        return _align16(K * 4) + N * 8
    return _align16(K * 2) + N * 4
