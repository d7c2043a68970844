# What every kernel unit shares: the fixed-point helpers (fixed_point.h), element loads and
# stores by type code, clamping, and the two requantizations. Included by _kernels.pyx before
# the kernel units.
#
# Accumulator range (TFLite's conv.h argument): |x - x_zp| <= 255 and |w - w_zp| <= 255, so one
# product is < 2^16 and an int32 accumulator holds any sum of up to 2^15 = 32768 products plus
# a bias; the compiler refuses larger reductions (kernel_abi.MAX_REDUCTION) and the loader
# refuses images that ask for them.
#
# int16 activations (type code 2; 0 is uint8, 1 int8). An int16 input may carry a zero point
# (ONNX Runtime's quantizer gives a non-negative range zero point -32768), so |x - x_zp| <=
# 65535 and one product with an 8-bit weight is < 2^24: an int32 accumulator would hold only
# 2^7 of them. Conv and Gemm over int16 inputs therefore keep `x - zp` as int32 and accumulate
# in int64: |acc| <= 2^15 * 65535 * 255 + 2^31 < 2^40 for the same 2^15-term limit (the
# products themselves are < 2^24, so each is formed in int32 and added to the int64 sum).
# Every op with an int16 input or output requantizes with requant64: `fixed-point` through
# i8r_mbqm64 (single rounding), `ort` through the same float32 step as the 8-bit kernels
# (ONNX Runtime runs these nodes in float, so there is no fused kernel to match bit for bit;
# docs/int8-ref.md gives the measured difference).

cdef extern from "fixed_point.h":
    int32_t i8r_mbqm(int32_t x, int32_t m, int32_t shift) nogil
    int64_t i8r_mbqm64(int64_t x, int32_t m, int32_t shift) nogil

# The vector kernels (i8r_qgemm.h: packed Conv and Gemm; i8r_eltwise.h: Quantize, Add, MaxPool)
# with their instruction-set paths (i8r_isa.h) and worker threads (i8r_pool.h).
cdef extern from "i8r_qgemm.h":
    int I8R_N_ISA
    const char* I8R_ISA_NAMES[]
    int i8r_isa_supported(int isa) nogil
    int i8r_isa_default() nogil
    ctypedef struct i8r_pool_t:
        pass
    i8r_pool_t* i8r_pool_new(int threads) nogil
    void i8r_pool_free(i8r_pool_t* pool) nogil
    ctypedef struct i8r_requant_t:
        int32_t mode, out_code, zp, qmin, qmax
        const float* scale
        const int32_t* mult
        const int32_t* shift
    ctypedef struct i8r_conv_t:
        int64_t N, C, H, W, M, kh, kw, sh, sw, pt, pl, dh, dw, G, OH, OW
        int32_t xzp, x_signed, depthwise
        int64_t rows
    ctypedef struct i8r_gemm_t:
        int64_t Mr, K, N
        int32_t x_signed
    int64_t i8r_conv_scratch(const i8r_conv_t* c) nogil
    int64_t i8r_gemm_scratch(const i8r_gemm_t* g) nogil
    void i8r_conv(const i8r_conv_t* c, const uint8_t* x, const void* w, const int32_t* bias,
                  const int32_t* zb, const i8r_requant_t* rq, uint8_t* y, uint8_t* scratch,
                  int isa, i8r_pool_t* pool) nogil
    void i8r_gemm(const i8r_gemm_t* g, const uint8_t* x, const uint8_t* w,
                  const int32_t* bias, const int32_t* zb, const i8r_requant_t* rq, uint8_t* y,
                  uint8_t* scratch, int isa, i8r_pool_t* pool) nogil

cdef extern from "i8r_eltwise.h":
    ctypedef struct i8r_quantize_t:
        int64_t n
        float scale
        int32_t zp, qmin, qmax, out_code
    ctypedef struct i8r_add_t:
        int32_t mode, x_signed, off, left_shift, azp, bzp, yzp, qmin, qmax
        float rac, rbc, fixed
        int32_t mult_a, shift_a, mult_b, shift_b, mult_y, shift_y
    ctypedef struct i8r_maxpool_t:
        int64_t N, C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW
        int32_t x_signed
    void i8r_quantize(int isa, const i8r_quantize_t* q, const float* x, uint8_t* y) nogil
    void i8r_add(int isa, const i8r_add_t* p, const uint8_t* A, int64_t asi, const uint8_t* B,
                 int64_t bsi, uint8_t* y, int64_t n) nogil
    int64_t i8r_maxpool_scratch(const i8r_maxpool_t* p) nogil
    int i8r_maxpool(int isa, const i8r_maxpool_t* p, const uint8_t* x, uint8_t* y,
                    uint8_t* row) nogil


# What a kernel may use of the machine the firmware runs on: the instruction-set path its
# vector kernels take (i8r_isa.h) and the worker threads they may split work over (NULL: the
# caller alone). Every path and every split gives the same bytes.
cdef struct Host:
    int isa
    i8r_pool_t* pool


cdef inline i8r_requant_t requant_params(int64_t mode, int64_t out_code, int64_t zp,
                                         int64_t qmin, int64_t qmax, const uint8_t* mult,
                                         const uint8_t* shift) noexcept nogil:
    # the per-channel multipliers are float32 in `ort` mode, int32 mantissas otherwise
    cdef i8r_requant_t r
    r.mode = <int32_t>mode
    r.out_code = <int32_t>out_code
    r.zp = <int32_t>zp
    r.qmin = <int32_t>qmin
    r.qmax = <int32_t>qmax
    r.scale = <const float*>mult
    r.mult = <const int32_t*>mult
    r.shift = <const int32_t*>shift
    return r


cdef inline int32_t ld(const uint8_t* base, int64_t i, int64_t sg) noexcept nogil:
    # element i of a quantized tensor by its type code: 0 uint8, 1 int8, 2 int16
    if sg == SG_INT8:
        return (<const int8_t*>base)[i]
    if sg == SG_INT16:
        return (<const int16_t*>base)[i]
    return base[i]


cdef inline void st(uint8_t* base, int64_t i, int64_t sg, int32_t v) noexcept nogil:
    # store an already clamped value as element i: int16 for code 2, else one byte
    if sg == SG_INT16:
        (<int16_t*>base)[i] = <int16_t>v
    else:
        base[i] = <uint8_t>v


cdef inline int32_t clampi(int32_t v, int32_t lo, int32_t hi) noexcept nogil:
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


cdef inline int32_t f2q(float v, int32_t zp, int32_t qmin, int32_t qmax) noexcept nogil:
    # ONNX Runtime MlasQuantizeLinear / MlasRequantizeOutput: clamp to the range shifted by
    # the zero point in float, convert with round-half-to-even (cvtps2dq under the default
    # MXCSR; lrintf under the default FE_TONEAREST), then add the zero point.
    cdef float lo = <float>(qmin - zp)
    cdef float hi = <float>(qmax - zp)
    if v < lo:
        v = lo
    if v > hi:
        v = hi
    if v != v:  # NaN: maxps(NaN, lo) is lo in MLAS's clamp, so ORT stores qmin
        v = lo
    # |v| <= 65535 here (int16 with a zero point at most), so adding and subtracting
    # 1.5 * 2^23 rounds to an integer, half to even, in float32 arithmetic (MLAS's MagicBias
    # trick, exact for |v| < 2^22); the cast is then exact.
    cdef float magic = 12582912.0
    cdef float t = v + magic  # float32 add: rounds to an integer, half to even
    t = t - magic
    return <int32_t>t + zp


cdef inline int32_t requant(int32_t acc, int64_t mode, float scale, int32_t mult,
                            int32_t shift, int32_t zp, int32_t qmin,
                            int32_t qmax) noexcept nogil:
    if mode == MODE_ORT:
        # ort: float(acc) * f32 multiplier, round half to even (MlasRequantizeOutput).
        return f2q(<float>acc * scale, zp, qmin, qmax)
    # fixed-point: TFLite MultiplyByQuantizedMultiplier, then zero point and clamp.
    return clampi(i8r_mbqm(acc, mult, shift) + zp, qmin, qmax)


cdef inline int32_t requant64(int64_t acc, int64_t mode, float scale, int32_t mult,
                              int32_t shift, int32_t zp, int32_t qmin,
                              int32_t qmax) noexcept nogil:
    # The requantization of every op with an int16 input or output. ort: float32, as the
    # 8-bit kernels (the conversion and the product each round at 2^-24 relative, < 2^-7 LSB
    # at the int16 extremes). fixed-point: i8r_mbqm64 (single rounding), then zero point and
    # clamp in int64. Not the double rounding of `requant`: an int16 output's multiplier is
    # ~256x an int8 one, so the first rounding (at 2^-rs of an output step) would no longer be
    # negligible and would cost one LSB on a large fraction of the outputs.
    cdef int64_t r
    if mode == MODE_ORT:
        return f2q(<float>acc * scale, zp, qmin, qmax)
    r = i8r_mbqm64(acc, mult, shift) + zp
    if r < qmin:
        return qmin
    if r > qmax:
        return qmax
    return <int32_t>r
