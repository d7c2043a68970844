# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The int8-ref "firmware": integer kernels and the op-list engine.

Kernels follow TFLite Micro's reference int8 kernels (reference/integer_ops/conv.h,
fully_connected.h): accumulate in int32, add the int32 bias, requantize, add the output zero
point, clamp, store. Every requantization parameter was computed at compile time
(requantize.py); nothing here allocates per op or imports a framework.

The engine owns three typed memoryviews: the arena (every tensor at a fixed offset from the
memory plan), the constant blob, and a scratch area (im2col columns, accumulators). The loader
(runtime.py / artifact_format.py) has checked every offset and size against these buffers
before an Engine is built, so kernels index without bounds checks.

Accumulator range (conv.h's argument): |x - x_zp| <= 255 and |w - w_zp| <= 255, so one
product is < 2^16 and an int32 accumulator holds any sum of up to 2^15 = 32768 products plus a
bias; the compiler refuses larger reductions (lowering.MAX_REDUCTION).

int16 activations ("sg" code 2; 0 is uint8, 1 int8). An int16 input may carry a zero point
(ONNX Runtime's quantizer gives a non-negative range zero point -32768), so |x - x_zp| <= 65535
and one product with an 8-bit weight is < 2^24: an int32 accumulator would hold only 2^7 of
them. Conv and Gemm over int16 inputs therefore keep `x - zp` as int32 and accumulate in int64:
|acc| <= 2^15 * 65535 * 255 + 2^31 < 2^40 for the same 2^15-term limit (the products
themselves are < 2^24, so each is formed in int32 and added to the int64 sum). Every op with
an int16 input or output requantizes with requant64: `fixed-point` through i8r_mbqm64 below
(single rounding), `ort` through the same float32 step as the 8-bit kernels (ONNX Runtime
runs these nodes in float, so there is no fused kernel to match bit for bit;
docs/int8-ref.md gives the measured difference).
"""

from libc.stdint cimport int8_t, uint8_t, int16_t, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.math cimport lrintf, fmaf, expf
from cpython.mem cimport PyMem_Malloc, PyMem_Free

FIRMWARE_REVISION = "1.1.0"  # the simulated firmware: reads artifact formats 1 and 2 (int16)
DEF MAX_INTS = 40

cdef extern from *:
    """
    #include <stdint.h>
    /* gemmlowp SaturatingRoundingDoublingHighMul as TFLite uses it (internal/common.h):
       (a*b + nudge) / 2^31 with nudge = +2^30 or 1 - 2^30 by the product's sign, C++ integer
       division truncating toward zero; the one overflow case (both INT32_MIN) saturated. */
    static inline int32_t i8r_srdhm(int32_t a, int32_t b) {
        if (a == b && a == INT32_MIN) return INT32_MAX;
        int64_t ab = (int64_t)a * (int64_t)b;
        int64_t nudge = ab >= 0 ? (1LL << 30) : (1 - (1LL << 30));
        return (int32_t)((ab + nudge) / (1LL << 31));
    }
    /* gemmlowp RoundingDivideByPOT: arithmetic shift right, rounding half away from zero. */
    static inline int32_t i8r_rdbpot(int32_t x, int e) {
        if (e <= 0) return x;
        int32_t mask = (int32_t)((1LL << e) - 1);
        int32_t rem = x & mask;
        int32_t thr = (mask >> 1) + (x < 0 ? 1 : 0);
        return (x >> e) + (rem > thr ? 1 : 0);
    }
    /* TFLite MultiplyByQuantizedMultiplier (double rounding, TFLITE_SINGLE_ROUNDING off). */
    static inline int32_t i8r_mbqm(int32_t x, int32_t m, int32_t shift) {
        int ls = shift > 0 ? shift : 0;
        int rs = shift > 0 ? 0 : -shift;
        int64_t xs = (int64_t)x * ((int64_t)1 << ls);
        if (xs > INT32_MAX) xs = INT32_MAX;
        if (xs < INT32_MIN) xs = INT32_MIN;
        return i8r_rdbpot(i8r_srdhm((int32_t)xs, m), rs);
    }
    /* MultiplyByQuantizedMultiplier for ops with an int16 input or output: round(x * m /
       2^(31 - shift)) in single rounding, (x*m + 2^(t-1)) >> t with an arithmetic shift, i.e.
       half toward +infinity, as TFLite's TFLITE_SINGLE_ROUNDING variant and its int64
       overload (tensorflow/lite/kernels/internal/common.cc) round. TFLite's int64 overload
       first reduces m to 16 bits; that costs up to 2 LSB at int16 outputs, so the full Q31
       mantissa is kept here and the (up to 94-bit) product is formed from two 32 x 31-bit
       halves, in portable C99. Results beyond +-2^62 saturate (the caller clamps to 16 bits
       anyway). */
    static inline int64_t i8r_mbqm64(int64_t x, int32_t m, int32_t shift) {
        int t = 31 - shift;  /* 1 .. 62 for shift in [-31, 30] */
        int neg = x < 0;
        uint64_t ax = neg ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
        uint64_t um = m > 0 ? (uint64_t)m : 0;
        uint64_t p0 = (ax & 0xFFFFFFFFu) * um;  /* < 2^63 */
        uint64_t p1 = (ax >> 32) * um;          /* < 2^62 */
        uint64_t lo = p0 + (p1 << 32);
        uint64_t hi = (p1 >> 32) + (lo < p0 ? 1u : 0u);
        /* x >= 0: floor((|x|m + 2^(t-1)) / 2^t). x < 0: floor((-v + 2^(t-1)) / 2^t) =
           -floor((v + 2^(t-1) - 1) / 2^t) with v = |x|m. */
        uint64_t r = ((uint64_t)1 << (t - 1)) - (neg ? 1u : 0u);
        uint64_t lo2 = lo + r;
        hi += lo2 < lo ? 1u : 0u;
        uint64_t q = (lo2 >> t) | (hi << (64 - t));
        if ((hi >> t) != 0 || q > ((uint64_t)1 << 62)) q = (uint64_t)1 << 62;
        return neg ? -(int64_t)q : (int64_t)q;
    }
    """
    int32_t i8r_mbqm(int32_t x, int32_t m, int32_t shift) nogil
    int64_t i8r_mbqm64(int64_t x, int32_t m, int32_t shift) nogil


cdef struct OpDesc:
    int kind
    int64_t p[MAX_INTS]
    float f[4]
    int64_t inp[2]
    int64_t out
    int64_t c[4]


cdef inline int32_t ld(const uint8_t* base, int64_t i, int64_t sg) noexcept nogil:
    # element i of a quantized tensor by its type code: 0 uint8, 1 int8, 2 int16
    if sg == 1:
        return (<const int8_t*>base)[i]
    if sg == 2:
        return (<const int16_t*>base)[i]
    return base[i]


cdef inline void st(uint8_t* base, int64_t i, int64_t sg, int32_t v) noexcept nogil:
    # store an already clamped value as element i: int16 for code 2, else one byte
    if sg == 2:
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
    if v != v:  # NaN
        v = 0
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
    if mode == 0:
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
    if mode == 0:
        return f2q(<float>acc * scale, zp, qmin, qmax)
    r = i8r_mbqm64(acc, mult, shift) + zp
    if r < qmin:
        return qmin
    if r > qmax:
        return qmax
    return <int32_t>r


cdef void k_quantize(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef int64_t n = d.p[0], i, so = d.p[4]
    cdef const float* x = <const float*>(a + d.inp[0])
    cdef uint8_t* y = a + d.out
    cdef int32_t zp = <int32_t>d.p[1], qmin = <int32_t>d.p[2], qmax = <int32_t>d.p[3]
    cdef float s = d.f[0]
    for i in range(n):
        # ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zp); ORT divides.
        st(y, i, so, f2q(x[i] / s, zp, qmin, qmax))


cdef void k_dequantize(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef int64_t n = d.p[0], i, sg = d.p[2]
    cdef const uint8_t* x = a + d.inp[0]
    cdef float* y = <float*>(a + d.out)
    cdef int32_t zp = <int32_t>d.p[1]
    cdef float s = d.f[0]
    for i in range(n):
        # ONNX DequantizeLinear: (x - zp) * scale, int32 difference converted to float.
        y[i] = <float>(ld(x, i, sg) - zp) * s


cdef void k_requant(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef int64_t n = d.p[0], i, sg = d.p[5], so = d.p[6], mode = d.p[7]
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int32_t zi = <int32_t>d.p[1], zo = <int32_t>d.p[2]
    cdef int32_t qmin = <int32_t>d.p[3], qmax = <int32_t>d.p[4]
    cdef int32_t mult = <int32_t>d.p[8], shift = <int32_t>d.p[9]
    cdef float v
    cdef bint wide = sg == 2 or so == 2
    for i in range(n):
        if mode == 0:
            # DQ -> Q left in float by ONNX Runtime: dequantize, then divide by the new scale.
            v = <float>(ld(x, i, sg) - zi) * d.f[0]
            st(y, i, so, f2q(v / d.f[1], zo, qmin, qmax))
        elif wide:
            st(y, i, so, requant64(ld(x, i, sg) - zi, mode, 0, mult, shift, zo, qmin, qmax))
        else:
            st(y, i, so, clampi(i8r_mbqm(ld(x, i, sg) - zi, mult, shift) + zo, qmin, qmax))


cdef void store_row(OpDesc* d, const int32_t* acc, int64_t P, uint8_t* y, int64_t mode,
                    float scale, int32_t mult, int32_t shift, int32_t zp, int32_t qmin,
                    int32_t qmax, int64_t sg_out) noexcept nogil:
    cdef int64_t p
    cdef int32_t* y32
    if mode == 2:
        y32 = <int32_t*>y
        for p in range(P):
            y32[p] = acc[p]
        return
    cdef int64_t ab, nudge
    cdef int32_t hi, rem, thr, mask, r
    cdef int rs
    cdef int16_t* y16
    if sg_out == 2:
        # an int16 output of an 8-bit input (ORT runs this node in float): the int32
        # accumulator is exact; requantized as the int16 kernels do
        y16 = <int16_t*>y
        for p in range(P):
            y16[p] = <int16_t>requant64(acc[p], mode, scale, mult, shift, zp, qmin, qmax)
        return
    if mode == 0:
        for p in range(P):
            y[p] = <uint8_t>f2q(<float>acc[p] * scale, zp, qmin, qmax)
    elif shift > 0 or mult <= 0:
        for p in range(P):
            y[p] = <uint8_t>clampi(i8r_mbqm(acc[p], mult, shift) + zp, qmin, qmax)
    else:
        # MultiplyByQuantizedMultiplier for a right shift (every multiplier < 1), inlined:
        # with mult > 0 the saturating case (both operands INT32_MIN) cannot occur.
        rs = -shift
        mask = <int32_t>((1 << rs) - 1) if rs < 31 else <int32_t>0x7FFFFFFF
        for p in range(P):
            ab = <int64_t>acc[p] * mult
            nudge = (1 << 30) if ab >= 0 else (1 - (1 << 30))
            hi = <int32_t>((ab + nudge) / (<int64_t>1 << 31))
            if rs > 0:
                rem = hi & mask
                thr = (mask >> 1) + (1 if hi < 0 else 0)
                r = (hi >> rs) + (1 if rem > thr else 0)
            else:
                r = hi
            y[p] = <uint8_t>clampi(r + zp, qmin, qmax)


cdef void k_conv(OpDesc* d, uint8_t* a, const uint8_t* cb, uint8_t* scratch) noexcept nogil:
    cdef int64_t N = d.p[0], C = d.p[1], H = d.p[2], W = d.p[3], M = d.p[4]
    cdef int64_t kh = d.p[5], kw = d.p[6], sh = d.p[7], sw = d.p[8], pt = d.p[9], pl = d.p[10]
    cdef int64_t dh = d.p[11], dw = d.p[12], G = d.p[13], OH = d.p[14], OW = d.p[15]
    cdef int32_t xzp = <int32_t>d.p[16], yzp = <int32_t>d.p[17]
    cdef int32_t qmin = <int32_t>d.p[18], qmax = <int32_t>d.p[19]
    cdef int64_t sg = d.p[20], so = d.p[21], mode = d.p[22]
    cdef int64_t Cg = C // G, Mg = M // G, K = Cg * kh * kw, P = OH * OW, HW = H * W
    cdef const int16_t* w = <const int16_t*>(cb + d.c[0])
    cdef const int32_t* bias = <const int32_t*>(cb + d.c[1])
    cdef const float* fs = <const float*>(cb + d.c[2])
    cdef const int32_t* mul = <const int32_t*>(cb + d.c[2])
    cdef const int32_t* sh_ = <const int32_t*>(cb + d.c[3])
    # scratch: [x - zp as int16, C*H*W] [im2col columns, K*P int16] [accumulators, 4P int32]
    cdef int16_t* xs = <int16_t*>scratch
    cdef int16_t* col = <int16_t*>(scratch + ((C * HW * 2 + 15) // 16) * 16)
    cdef int32_t* acc = <int32_t*>(scratch + ((C * HW * 2 + 15) // 16) * 16
                                   + ((K * P * 2 + 15) // 16) * 16)
    cdef const uint8_t* x = a + d.inp[0]
    cdef const int8_t* xi8 = <const int8_t*>(a + d.inp[0])
    cdef uint8_t* y = a + d.out
    cdef int64_t osz = 4 if mode == 2 else (2 if so == 2 else 1)
    cdef bint pointwise = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0
                           and pl == 0 and OH == H and OW == W)
    cdef int64_t n, g, c, ky, kx, oy, ox, iy, ix, row, m, k, p, mm, i, ox0, ox1, shift_x
    cdef int16_t* crow
    cdef int16_t* dst
    cdef const int16_t* src
    cdef const int16_t* cols
    cdef int16_t wv, w0, w1, w2, w3
    cdef const int16_t* ck
    for n in range(N):
        # r = s(q - Z): subtract the input zero point once per image. Padding then
        # contributes 0, as ONNX QLinearConv pads with the zero point.
        if sg:
            for i in range(C * HW):
                xs[i] = <int16_t>(xi8[n * C * HW + i] - xzp)
        else:
            for i in range(C * HW):
                xs[i] = <int16_t>(x[n * C * HW + i] - xzp)
        for g in range(G):
            if pointwise:
                cols = xs + g * Cg * HW
            else:
                for c in range(Cg):
                    for ky in range(kh):
                        for kx in range(kw):
                            row = (c * kh + ky) * kw + kx
                            crow = col + row * P
                            shift_x = kx * dw - pl
                            for oy in range(OH):
                                iy = oy * sh - pt + ky * dh
                                dst = crow + oy * OW
                                if iy < 0 or iy >= H:
                                    memset(dst, 0, <size_t>(OW * 2))
                                    continue
                                src = xs + (g * Cg + c) * HW + iy * W
                                if sw == 1:
                                    # valid ox: 0 <= ox + shift_x < W
                                    ox0 = -shift_x if shift_x < 0 else 0
                                    ox1 = W - shift_x
                                    if ox1 > OW:
                                        ox1 = OW
                                    if ox0 > OW:
                                        ox0 = OW
                                    if ox1 < ox0:
                                        ox1 = ox0
                                    if ox0 > 0:
                                        memset(dst, 0, <size_t>(ox0 * 2))
                                    if ox1 > ox0:
                                        memcpy(dst + ox0, src + ox0 + shift_x,
                                               <size_t>((ox1 - ox0) * 2))
                                    if ox1 < OW:
                                        memset(dst + ox1, 0, <size_t>((OW - ox1) * 2))
                                else:
                                    for ox in range(OW):
                                        ix = ox * sw + shift_x
                                        if ix < 0 or ix >= W:
                                            dst[ox] = 0
                                        else:
                                            dst[ox] = src[ix]
                cols = col
            mm = 0
            while mm + 4 <= Mg:
                # four output channels at once: each column value is loaded once, used 4x
                m = g * Mg + mm
                for p in range(P):
                    acc[p] = bias[m]
                    acc[P + p] = bias[m + 1]
                    acc[2 * P + p] = bias[m + 2]
                    acc[3 * P + p] = bias[m + 3]
                for k in range(K):
                    w0 = w[m * K + k]
                    w1 = w[(m + 1) * K + k]
                    w2 = w[(m + 2) * K + k]
                    w3 = w[(m + 3) * K + k]
                    ck = cols + k * P
                    for p in range(P):
                        # int16 x int16 -> int32 (a widening multiply the compiler vectorizes)
                        acc[p] += <int32_t>w0 * <int32_t>ck[p]
                        acc[P + p] += <int32_t>w1 * <int32_t>ck[p]
                        acc[2 * P + p] += <int32_t>w2 * <int32_t>ck[p]
                        acc[3 * P + p] += <int32_t>w3 * <int32_t>ck[p]
                for i in range(4):
                    store_row(d, acc + i * P, P, y + ((n * M + m + i) * P) * osz, mode,
                              fs[m + i], mul[m + i], sh_[m + i], yzp, qmin, qmax, so)
                mm += 4
            while mm < Mg:
                m = g * Mg + mm
                for p in range(P):
                    acc[p] = bias[m]
                for k in range(K):
                    wv = w[m * K + k]
                    if wv == 0:
                        continue
                    ck = cols + k * P
                    for p in range(P):
                        acc[p] += <int32_t>wv * <int32_t>ck[p]
                store_row(d, acc, P, y + ((n * M + m) * P) * osz, mode,
                          fs[m], mul[m], sh_[m], yzp, qmin, qmax, so)
                mm += 1


cdef void k_gemm(OpDesc* d, uint8_t* a, const uint8_t* cb, uint8_t* scratch) noexcept nogil:
    cdef int64_t M = d.p[0], K = d.p[1], N = d.p[2]
    cdef int32_t xzp = <int32_t>d.p[3], yzp = <int32_t>d.p[4]
    cdef int32_t qmin = <int32_t>d.p[5], qmax = <int32_t>d.p[6]
    cdef int64_t sg = d.p[7], so = d.p[8], mode = d.p[9]
    cdef const int16_t* w = <const int16_t*>(cb + d.c[0])
    cdef const int32_t* bias = <const int32_t*>(cb + d.c[1])
    cdef const float* fs = <const float*>(cb + d.c[2])
    cdef const int32_t* mul = <const int32_t*>(cb + d.c[2])
    cdef const int32_t* shf = <const int32_t*>(cb + d.c[3])
    cdef int16_t* xr = <int16_t*>scratch
    cdef int32_t* acc = <int32_t*>(scratch + ((K * 2 + 15) // 16) * 16)
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int32_t* y32 = <int32_t*>(a + d.out)
    cdef int64_t m, n, k
    cdef int32_t s
    cdef const int16_t* wr
    for m in range(M):
        for k in range(K):
            xr[k] = <int16_t>(ld(x, m * K + k, sg) - xzp)
        for n in range(N):
            wr = w + n * K
            s = 0
            for k in range(K):
                s += xr[k] * wr[k]
            acc[n] = s + bias[n]
        if mode == 2:
            for n in range(N):
                y32[m * N + n] = acc[n]
        elif so == 2:
            for n in range(N):
                st(y, m * N + n, so, requant64(acc[n], mode, fs[n], mul[n], shf[n], yzp, qmin,
                                               qmax))
        elif mode == 0:
            for n in range(N):
                st(y, m * N + n, so, f2q(<float>acc[n] * fs[n], yzp, qmin, qmax))
        else:
            for n in range(N):
                st(y, m * N + n, so, clampi(i8r_mbqm(acc[n], mul[n], shf[n]) + yzp,
                                            qmin, qmax))


cdef void k_conv_wide(OpDesc* d, uint8_t* a, const uint8_t* cb,
                      uint8_t* scratch) noexcept nogil:
    # CONV over an int16 input: k_conv's im2col with int32 `x - zp` values and int64
    # accumulators (see the header for the bound), one output channel at a time.
    cdef int64_t N = d.p[0], C = d.p[1], H = d.p[2], W = d.p[3], M = d.p[4]
    cdef int64_t kh = d.p[5], kw = d.p[6], sh = d.p[7], sw = d.p[8], pt = d.p[9], pl = d.p[10]
    cdef int64_t dh = d.p[11], dw = d.p[12], G = d.p[13], OH = d.p[14], OW = d.p[15]
    cdef int32_t xzp = <int32_t>d.p[16], yzp = <int32_t>d.p[17]
    cdef int32_t qmin = <int32_t>d.p[18], qmax = <int32_t>d.p[19]
    cdef int64_t so = d.p[21], mode = d.p[22]
    cdef int64_t Cg = C // G, Mg = M // G, K = Cg * kh * kw, P = OH * OW, HW = H * W
    cdef const int16_t* w = <const int16_t*>(cb + d.c[0])
    cdef const int32_t* bias = <const int32_t*>(cb + d.c[1])
    cdef const float* fs = <const float*>(cb + d.c[2])
    cdef const int32_t* mul = <const int32_t*>(cb + d.c[2])
    cdef const int32_t* sh_ = <const int32_t*>(cb + d.c[3])
    # scratch: [x - zp as int32, C*H*W] [im2col columns, K*P int32] [accumulators, P int64]
    cdef int32_t* xs = <int32_t*>scratch
    cdef int32_t* col = <int32_t*>(scratch + ((C * HW * 4 + 15) // 16) * 16)
    cdef int64_t* acc = <int64_t*>(scratch + ((C * HW * 4 + 15) // 16) * 16
                                   + ((K * P * 4 + 15) // 16) * 16)
    cdef const int16_t* x = <const int16_t*>(a + d.inp[0])
    cdef uint8_t* y = a + d.out
    cdef bint pointwise = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0
                           and pl == 0 and OH == H and OW == W)
    cdef int64_t n, g, c, ky, kx, oy, ox, iy, ix, m, k, p, i, base
    cdef int32_t* dst
    cdef const int32_t* src
    cdef const int32_t* cols
    cdef const int32_t* ck
    cdef int32_t wv
    for n in range(N):
        for i in range(C * HW):
            xs[i] = <int32_t>x[n * C * HW + i] - xzp
        for g in range(G):
            if pointwise:
                cols = xs + g * Cg * HW
            else:
                for c in range(Cg):
                    for ky in range(kh):
                        for kx in range(kw):
                            dst = col + ((c * kh + ky) * kw + kx) * P
                            src = xs + (g * Cg + c) * HW
                            for oy in range(OH):
                                iy = oy * sh - pt + ky * dh
                                for ox in range(OW):
                                    ix = ox * sw - pl + kx * dw
                                    if iy < 0 or iy >= H or ix < 0 or ix >= W:
                                        dst[oy * OW + ox] = 0  # padding is the zero point
                                    else:
                                        dst[oy * OW + ox] = src[iy * W + ix]
                cols = col
            for m in range(g * Mg, (g + 1) * Mg):
                for p in range(P):
                    acc[p] = bias[m]
                for k in range(K):
                    wv = w[m * K + k]
                    if wv == 0:
                        continue
                    ck = cols + k * P
                    for p in range(P):
                        acc[p] += wv * ck[p]  # |product| < 2^24: exact in int32
                base = (n * M + m) * P
                for p in range(P):
                    st(y, base + p, so, requant64(acc[p], mode, fs[m], mul[m], sh_[m], yzp,
                                                  qmin, qmax))


cdef void k_gemm_wide(OpDesc* d, uint8_t* a, const uint8_t* cb,
                      uint8_t* scratch) noexcept nogil:
    # GEMM over an int16 input: int32 `x - zp` row, int64 sums (bound in the header).
    cdef int64_t M = d.p[0], K = d.p[1], N = d.p[2]
    cdef int32_t xzp = <int32_t>d.p[3], yzp = <int32_t>d.p[4]
    cdef int32_t qmin = <int32_t>d.p[5], qmax = <int32_t>d.p[6]
    cdef int64_t so = d.p[8], mode = d.p[9]
    cdef const int16_t* w = <const int16_t*>(cb + d.c[0])
    cdef const int32_t* bias = <const int32_t*>(cb + d.c[1])
    cdef const float* fs = <const float*>(cb + d.c[2])
    cdef const int32_t* mul = <const int32_t*>(cb + d.c[2])
    cdef const int32_t* shf = <const int32_t*>(cb + d.c[3])
    cdef int32_t* xr = <int32_t*>scratch
    cdef int64_t* acc = <int64_t*>(scratch + ((K * 4 + 15) // 16) * 16)
    cdef const int16_t* x = <const int16_t*>(a + d.inp[0])
    cdef uint8_t* y = a + d.out
    cdef int64_t m, n, k, s
    cdef const int16_t* wr
    for m in range(M):
        for k in range(K):
            xr[k] = <int32_t>x[m * K + k] - xzp
        for n in range(N):
            wr = w + n * K
            s = 0
            for k in range(K):
                s += xr[k] * wr[k]  # |product| < 2^24: exact in int32
            acc[n] = s + bias[n]
        for n in range(N):
            st(y, m * N + n, so, requant64(acc[n], mode, fs[n], mul[n], shf[n], yzp, qmin,
                                           qmax))


cdef void k_matmul(OpDesc* d, uint8_t* a, uint8_t* scratch) noexcept nogil:
    cdef int64_t B = d.p[0], M = d.p[1], K = d.p[2], N = d.p[3]
    cdef int32_t azp = <int32_t>d.p[4], bzp = <int32_t>d.p[5], yzp = <int32_t>d.p[6]
    cdef int32_t qmin = <int32_t>d.p[7], qmax = <int32_t>d.p[8]
    cdef int64_t sg = d.p[9], so = d.p[10], mode = d.p[11], bb = d.p[14]
    cdef int32_t mult = <int32_t>d.p[12], shift = <int32_t>d.p[13]
    cdef int16_t* bt = <int16_t*>scratch
    cdef int16_t* ar = <int16_t*>(scratch + ((N * K * 2 + 15) // 16) * 16)
    cdef const uint8_t* A = a + d.inp[0]
    cdef const uint8_t* Bm = a + d.inp[1]
    cdef uint8_t* y = a + d.out
    cdef int32_t* y32 = <int32_t*>(a + d.out)
    cdef int64_t b, m, n, k, boff
    cdef int32_t s
    for b in range(B):
        boff = (b if bb else 0) * K * N
        for k in range(K):
            for n in range(N):
                bt[n * K + k] = <int16_t>(ld(Bm, boff + k * N + n, sg) - bzp)
        for m in range(M):
            for k in range(K):
                ar[k] = <int16_t>(ld(A, (b * M + m) * K + k, sg) - azp)
            for n in range(N):
                s = 0
                for k in range(K):
                    s += ar[k] * bt[n * K + k]
                if mode == 2:
                    y32[(b * M + m) * N + n] = s
                elif so == 2:
                    st(y, (b * M + m) * N + n, so, requant64(s, mode, d.f[0], mult, shift,
                                                             yzp, qmin, qmax))
                else:
                    st(y, (b * M + m) * N + n, so, requant(s, mode, d.f[0], mult, shift,
                                                           yzp, qmin, qmax))


cdef void k_matmul_wide(OpDesc* d, uint8_t* a, uint8_t* scratch) noexcept nogil:
    # MATMUL of two int16 activations: int32 `x - zp` operands, int64 products and sums
    # (|a - azp| * |b - bzp| <= 65535^2 > 2^31).
    cdef int64_t B = d.p[0], M = d.p[1], K = d.p[2], N = d.p[3]
    cdef int32_t azp = <int32_t>d.p[4], bzp = <int32_t>d.p[5], yzp = <int32_t>d.p[6]
    cdef int32_t qmin = <int32_t>d.p[7], qmax = <int32_t>d.p[8]
    cdef int64_t so = d.p[10], mode = d.p[11], bb = d.p[14]
    cdef int32_t mult = <int32_t>d.p[12], shift = <int32_t>d.p[13]
    cdef int32_t* bt = <int32_t*>scratch
    cdef int32_t* ar = <int32_t*>(scratch + ((N * K * 4 + 15) // 16) * 16)
    cdef const int16_t* A = <const int16_t*>(a + d.inp[0])
    cdef const int16_t* Bm = <const int16_t*>(a + d.inp[1])
    cdef uint8_t* y = a + d.out
    cdef int64_t b, m, n, k, boff, s
    for b in range(B):
        boff = (b if bb else 0) * K * N
        for k in range(K):
            for n in range(N):
                bt[n * K + k] = <int32_t>Bm[boff + k * N + n] - bzp
        for m in range(M):
            for k in range(K):
                ar[k] = <int32_t>A[(b * M + m) * K + k] - azp
            for n in range(N):
                s = 0
                for k in range(K):
                    s += <int64_t>ar[k] * bt[n * K + k]
                st(y, (b * M + m) * N + n, so, requant64(s, mode, d.f[0], mult, shift, yzp,
                                                         qmin, qmax))


cdef void k_maxpool(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef int64_t N = d.p[0], C = d.p[1], H = d.p[2], W = d.p[3], kh = d.p[4], kw = d.p[5]
    cdef int64_t sh = d.p[6], sw = d.p[7], pt = d.p[8], pl = d.p[9], dh = d.p[10], dw = d.p[11]
    cdef int64_t OH = d.p[12], OW = d.p[13], sg = d.p[14]
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t nc, oy, ox, ky, kx, iy, ix, base, rbase
    cdef int32_t best, v
    for nc in range(N * C):
        base = nc * H * W
        for oy in range(OH):
            for ox in range(OW):
                best = -2147483647
                for ky in range(kh):
                    iy = oy * sh - pt + ky * dh
                    if iy < 0 or iy >= H:
                        continue
                    rbase = base + iy * W
                    for kx in range(kw):
                        ix = ox * sw - pl + kx * dw
                        if ix < 0 or ix >= W:
                            continue
                        v = ld(x, rbase + ix, sg)
                        if v > best:
                            best = v
                st(y, (nc * OH + oy) * OW + ox, sg, best)


cdef void k_avgpool(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef int64_t N = d.p[0], C = d.p[1], H = d.p[2], W = d.p[3], kh = d.p[4], kw = d.p[5]
    cdef int64_t sh = d.p[6], sw = d.p[7], pt = d.p[8], pl = d.p[9], OH = d.p[10]
    cdef int64_t OW = d.p[11], cip = d.p[12]
    cdef int32_t xzp = <int32_t>d.p[13], yzp = <int32_t>d.p[14]
    cdef int32_t qmin = <int32_t>d.p[15], qmax = <int32_t>d.p[16]
    cdef int64_t sg = d.p[17], so = d.p[18], mode = d.p[19]
    cdef int32_t off = <int32_t>d.p[22]
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t nc, oy, ox, ky, kx, iy, ix, base, cnt, y0, x0, q64, den, r64, rem
    cdef int32_t s, q
    cdef float v, fs
    cdef bint wide = sg == 2 or so == 2
    for nc in range(N * C):
        base = nc * H * W
        for oy in range(OH):
            for ox in range(OW):
                s = 0
                fs = 0
                cnt = 0
                y0 = oy * sh - pt
                x0 = ox * sw - pl
                for ky in range(kh):
                    iy = y0 + ky
                    if iy < 0 or iy >= H:
                        continue
                    for kx in range(kw):
                        ix = x0 + kx
                        if ix < 0 or ix >= W:
                            continue
                        q = ld(x, base + iy * W + ix, sg) - xzp
                        s += q
                        # ORT QLinearAveragePool dequantizes first: x_scale * (x - zp)
                        fs = fs + d.f[0] * <float>q
                        cnt += 1
                if cip:
                    cnt = kh * kw  # ORT divides by the whole kernel size
                if cnt == 0:
                    cnt = 1
                if mode == 0 and wide:
                    # ORT runs an int16 AveragePool in float: the same float mean, then
                    # QuantizeLinear, which adds the zero point after rounding (averages are
                    # often exact halves, so the order matters for half-to-even).
                    v = (fs / <float>cnt) / d.f[1]
                    if v < -1e9 or v != v:
                        v = -1e9
                    if v > 1e9:
                        v = 1e9
                    st(y, (nc * OH + oy) * OW + ox, so,
                       clampi(<int32_t>lrintf(v) + yzp, qmin, qmax))
                elif mode == 0:
                    # ORT (contrib_ops/cpu/quantization/qlinear_pool.cc): float sum in window
                    # order, divided by the count, then nearbyintf(y / y_scale + y_zp), in
                    # ORT's uint8 domain (zero point + off).
                    v = fs / <float>cnt
                    v = v / d.f[1] + <float>(yzp + off)
                    if v < -1e9 or v != v:
                        v = -1e9
                    if v > 1e9:
                        v = 1e9
                    st(y, (nc * OH + oy) * OW + ox, so,
                       clampi(<int32_t>lrintf(v), qmin + off, qmax + off) - off)
                elif wide:
                    # fixed-point, int16: rescale the sum first, keeping 16 fraction bits
                    # (|s| < 2^31, so s * 2^16 < 2^47), then one integer division by the count,
                    # rounded half to even as QuantizeLinear rounds (means are often exact
                    # halves): the mean is not rounded twice.
                    q64 = i8r_mbqm64(<int64_t>s * 65536, <int32_t>d.p[20], <int32_t>d.p[21])
                    den = cnt * 65536
                    r64 = q64 // den  # truncates (cdivision); the next line makes it a floor
                    if q64 - r64 * den < 0:
                        r64 -= 1
                    rem = q64 - r64 * den
                    if 2 * rem > den or (2 * rem == den and (r64 & 1)):
                        r64 += 1
                    q64 = r64
                    if q64 < qmin - yzp:
                        q64 = qmin - yzp
                    if q64 > qmax - yzp:
                        q64 = qmax - yzp
                    st(y, (nc * OH + oy) * OW + ox, so, <int32_t>q64 + yzp)
                else:
                    # fixed-point: integer mean rounded half away from zero, then rescaled by
                    # x_scale / y_scale (MultiplyByQuantizedMultiplier).
                    if s >= 0:
                        s = (s + <int32_t>(cnt // 2)) // <int32_t>cnt
                    else:
                        s = -((-s + <int32_t>(cnt // 2)) // <int32_t>cnt)
                    st(y, (nc * OH + oy) * OW + ox, so, clampi(
                        i8r_mbqm(s, <int32_t>d.p[20], <int32_t>d.p[21]) + yzp, qmin, qmax))


cdef void k_gap(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef int64_t NC = d.p[0], HW = d.p[1], sg = d.p[6], so = d.p[7], mode = d.p[8]
    cdef int32_t xzp = <int32_t>d.p[2], yzp = <int32_t>d.p[3]
    cdef int32_t qmin = <int32_t>d.p[4], qmax = <int32_t>d.p[5]
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t c, i
    cdef int32_t s
    for c in range(NC):
        s = 0
        for i in range(HW):
            s += ld(x, c * HW + i, sg)
        # ORT MlasQLinearGlobalAveragePoolNchw: int32 sum minus zp * image size, then
        # MlasRequantizeOutput with scale x_scale / (y_scale * image size).
        s -= xzp * <int32_t>HW
        if sg == 2 or so == 2:
            st(y, c, so, requant64(s, mode, d.f[0], <int32_t>d.p[9], <int32_t>d.p[10], yzp,
                                   qmin, qmax))
        else:
            st(y, c, so, requant(s, mode, d.f[0], <int32_t>d.p[9], <int32_t>d.p[10], yzp,
                                 qmin, qmax))


cdef void k_add(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef int64_t O = d.p[0], Mi = d.p[1], I = d.p[2]
    cdef int64_t aso = d.p[3], asm = d.p[4], asi = d.p[5], bso = d.p[6], bsm = d.p[7]
    cdef int64_t bsi = d.p[8]
    cdef int32_t azp = <int32_t>d.p[9], bzp = <int32_t>d.p[10], yzp = <int32_t>d.p[11]
    cdef int32_t qmin = <int32_t>d.p[12], qmax = <int32_t>d.p[13]
    cdef int64_t sg = d.p[14], so = d.p[15], mode = d.p[16], ls = d.p[23], femu = d.p[25]
    cdef int32_t off = <int32_t>d.p[24]
    cdef int32_t ma = <int32_t>d.p[17], sa = <int32_t>d.p[18], mb = <int32_t>d.p[19]
    cdef int32_t sb = <int32_t>d.p[20], my = <int32_t>d.p[21], sy = <int32_t>d.p[22]
    cdef const uint8_t* A = a + d.inp[0]
    cdef const uint8_t* B = a + d.inp[1]
    cdef uint8_t* y = a + d.out
    cdef int64_t o, mi, i, ia, ib, iy = 0
    cdef float rac = d.f[0], rbc = d.f[1], fixed = d.f[2], fx, v
    cdef int32_t qa, qb, r
    for o in range(O):
        for mi in range(Mi):
            ia = o * aso + mi * asm
            ib = o * bso + mi * bsm
            if mode == 0 and femu:
                # ORT kept this Add in float: DQ(a) + DQ(b) in float32, then QuantizeLinear
                # (division by the output scale, round half to even).
                for i in range(I):
                    fx = <float>(ld(A, ia + i * asi, sg) - azp) * rac
                    v = <float>(ld(B, ib + i * bsi, sg) - bzp) * rbc
                    fx = fx + v
                    st(y, iy, so, f2q(fx / fixed, yzp, qmin, qmax))
                    iy += 1
            elif mode == 0:
                # ORT MlasQLinearAddKernelAvx2Helper: FixedPart = zc - (rAC*za + rBC*zb);
                # when one side is a scalar over the span it is folded into FixedPart with
                # a separate multiply and add, else c = fma(a, rAC, fma(b, rBC, FixedPart));
                # cvtps2dq (round half to even), saturating packs.
                if bsi == 0 and asi != 0:
                    fx = fixed + <float>(ld(B, ib, sg) + off) * rbc
                    for i in range(I):
                        v = fmaf(<float>(ld(A, ia + i, sg) + off), rac, fx)
                        y[iy] = <uint8_t>(f2q(v, 0, qmin + off, qmax + off) - off)
                        iy += 1
                elif asi == 0 and bsi != 0:
                    fx = fixed + <float>(ld(A, ia, sg) + off) * rac
                    for i in range(I):
                        v = fmaf(<float>(ld(B, ib + i, sg) + off), rbc, fx)
                        y[iy] = <uint8_t>(f2q(v, 0, qmin + off, qmax + off) - off)
                        iy += 1
                else:
                    for i in range(I):
                        v = fmaf(<float>(ld(A, ia + i * asi, sg) + off), rac,
                                 fmaf(<float>(ld(B, ib + i * bsi, sg) + off), rbc, fixed))
                        y[iy] = <uint8_t>(f2q(v, 0, qmin + off, qmax + off) - off)
                        iy += 1
            else:
                # TFLite reference Add (integer_ops/add.h): both inputs shifted left by 20,
                # rescaled to 2*max(scale), summed, rescaled to the output.
                for i in range(I):
                    qa = i8r_mbqm((ld(A, ia + i * asi, sg) - azp) * (1 << ls), ma, sa)
                    qb = i8r_mbqm((ld(B, ib + i * bsi, sg) - bzp) * (1 << ls), mb, sb)
                    r = i8r_mbqm(qa + qb, my, sy) + yzp
                    st(y, iy, so, clampi(r, qmin, qmax))
                    iy += 1


cdef void k_mul(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef int64_t O = d.p[0], Mi = d.p[1], I = d.p[2]
    cdef int64_t aso = d.p[3], asm = d.p[4], asi = d.p[5], bso = d.p[6], bsm = d.p[7]
    cdef int64_t bsi = d.p[8]
    cdef int32_t azp = <int32_t>d.p[9], bzp = <int32_t>d.p[10], yzp = <int32_t>d.p[11]
    cdef int32_t qmin = <int32_t>d.p[12], qmax = <int32_t>d.p[13]
    cdef int64_t sg = d.p[14], so = d.p[15], mode = d.p[16], femu = d.p[19]
    cdef int32_t mult = <int32_t>d.p[17], shift = <int32_t>d.p[18]
    cdef float fa, fb
    cdef int64_t prod64
    cdef const uint8_t* A = a + d.inp[0]
    cdef const uint8_t* B = a + d.inp[1]
    cdef uint8_t* y = a + d.out
    cdef int64_t o, mi, i, ia, ib, iy = 0
    cdef int32_t prod
    for o in range(O):
        for mi in range(Mi):
            ia = o * aso + mi * asm
            ib = o * bso + mi * bsm
            for i in range(I):
                if mode == 0 and femu:
                    # ORT kept this Mul in float: DQ(a) * DQ(b) in float32, then
                    # QuantizeLinear.
                    fa = <float>(ld(A, ia + i * asi, sg) - azp) * d.f[0]
                    fb = <float>(ld(B, ib + i * bsi, sg) - bzp) * d.f[1]
                    fa = fa * fb
                    st(y, iy, so, f2q(fa / d.f[2], yzp, qmin, qmax))
                elif sg == 2:
                    # int16: |a - azp| * |b - bzp| <= 65535^2 needs int64
                    prod64 = (<int64_t>(ld(A, ia + i * asi, sg) - azp)
                              * (ld(B, ib + i * bsi, sg) - bzp))
                    st(y, iy, so, requant64(prod64, mode, d.f[0], mult, shift, yzp, qmin,
                                            qmax))
                else:
                    prod = (ld(A, ia + i * asi, sg) - azp) * (ld(B, ib + i * bsi, sg) - bzp)
                    st(y, iy, so, requant(prod, mode, d.f[0], mult, shift, yzp, qmin, qmax))
                iy += 1


cdef void k_transpose(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t i0, i1, i2, i3, i4, i5, o = 0, b0, b1, b2, b3, b4
    for i0 in range(d.p[0]):
        b0 = i0 * d.p[6]
        for i1 in range(d.p[1]):
            b1 = b0 + i1 * d.p[7]
            for i2 in range(d.p[2]):
                b2 = b1 + i2 * d.p[8]
                for i3 in range(d.p[3]):
                    b3 = b2 + i3 * d.p[9]
                    for i4 in range(d.p[4]):
                        b4 = b3 + i4 * d.p[10]
                        for i5 in range(d.p[5]):
                            y[o] = x[b4 + i5 * d.p[11]]
                            o += 1


cdef void k_concat_part(OpDesc* d, uint8_t* a, const uint8_t* cb) noexcept nogil:
    cdef int64_t outer = d.p[0], ii = d.p[1], io = d.p[2], off = d.p[3], lut = d.p[4]
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef const uint8_t* t = cb + d.c[0]
    cdef int64_t o, i
    for o in range(outer):
        if lut:
            for i in range(ii):
                y[o * io + off + i] = t[x[o * ii + i]]
        else:
            memcpy(y + o * io + off, x + o * ii, <size_t>ii)


cdef void k_lut(OpDesc* d, uint8_t* a, const uint8_t* cb) noexcept nogil:
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef const uint8_t* t = cb + d.c[0]
    cdef int64_t i
    for i in range(d.p[0]):
        y[i] = t[x[i]]


cdef void k_clamp(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t i, sg = d.p[3]
    cdef int32_t lo = <int32_t>d.p[1], hi = <int32_t>d.p[2]
    for i in range(d.p[0]):
        st(y, i, sg, clampi(ld(x, i, sg), lo, hi))


cdef void k_pad(OpDesc* d, uint8_t* a) noexcept nogil:
    cdef int64_t N = d.p[0], C = d.p[1], H = d.p[2], W = d.p[3], OH = d.p[4], OW = d.p[5]
    cdef int64_t pt = d.p[6], pl = d.p[7]
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t nc, r
    memset(y, <int>(d.p[8] & 0xFF), <size_t>(N * C * OH * OW))
    for nc in range(N * C):
        for r in range(H):
            memcpy(y + (nc * OH + r + pt) * OW + pl, x + (nc * H + r) * W, <size_t>W)


cdef void k_resize(OpDesc* d, uint8_t* a, const uint8_t* cb) noexcept nogil:
    cdef int64_t NC = d.p[0], H = d.p[1], W = d.p[2], OH = d.p[3], OW = d.p[4]
    cdef const int32_t* idx = <const int32_t*>(cb + d.c[0])
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t nc, oy, ox, src
    for nc in range(NC):
        for oy in range(OH):
            src = (nc * H + idx[oy]) * W
            for ox in range(OW):
                y[(nc * OH + oy) * OW + ox] = x[src + idx[OH + ox]]


cdef void k_softmax(OpDesc* d, uint8_t* a, const uint8_t* cb, uint8_t* scratch) noexcept nogil:
    # Softmax over the last axis with a 256-entry exp table indexed by the distance to the
    # row maximum (ORT QLinearSoftmax, contrib_ops/cpu/quantization/qlinear_softmax.cc).
    # ort: float32 table, float32 running sum in element order, nearbyintf((e * floor(1/ys))
    # / sum) + zp, and ORT's store (int8: only values above 255 saturate, the rest wrap).
    # fixed-point: uint32 table, uint64 products, integer division rounded half up; clamped.
    cdef int64_t rows = d.p[0], cols = d.p[1], sg = d.p[2], mode = d.p[7], r, i
    cdef int32_t off = <int32_t>d.p[9]
    cdef const float* tf = <const float*>(cb + d.c[0])
    cdef const uint32_t* tu = <const uint32_t*>(cb + d.c[0])
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int32_t mx, v, yzp = <int32_t>d.p[4], qmin = <int32_t>d.p[5], qmax = <int32_t>d.p[6]
    cdef int32_t vq
    cdef uint32_t idx
    cdef float fsum, ysc = d.f[0], fv
    cdef uint64_t usum, ysi = <uint64_t>d.p[8]
    for r in range(rows):
        mx = -2147483647
        for i in range(cols):
            v = ld(x, r * cols + i, sg)
            if v > mx:
                mx = v
        fsum = 0
        usum = 0
        for i in range(cols):
            idx = <uint32_t>((ld(x, r * cols + i, sg) + (127 if sg else 255) - mx) & 0xFF)
            if mode == 0:
                fsum = fsum + tf[idx]
            else:
                usum = usum + tu[idx]
        for i in range(cols):
            idx = <uint32_t>((ld(x, r * cols + i, sg) + (127 if sg else 255) - mx) & 0xFF)
            if mode == 0:
                if fsum == 0:
                    vq = yzp
                else:
                    fv = (tf[idx] * ysc) / fsum
                    if fv != fv or fv > 1e9:
                        fv = 1e9
                    vq = <int32_t>lrintf(fv) + yzp
                if off:
                    # QDQ graphs: ORT's uint8 kernel (zero point + 128), saturating at 255
                    vq = vq + off
                    if vq > 255:
                        vq = 255
                    vq = vq - off
                elif vq > 255:  # ORT's own store: only values above 255 saturate
                    vq = 255
                if not sg and vq < 0:
                    vq = 0
                y[r * cols + i] = <uint8_t>(vq & 0xFF)
            else:
                if usum == 0:
                    vq = yzp
                else:
                    vq = <int32_t>((tu[idx] * ysi + usum // 2) // usum) + yzp
                y[r * cols + i] = <uint8_t>clampi(vq, qmin, qmax)


cdef class Engine:
    """Runs a validated op list over one arena. Built once per loaded artifact."""

    cdef OpDesc* ops
    cdef int n_ops
    cdef public object arena_array
    cdef unsigned char[::1] arena
    cdef const unsigned char[::1] consts
    cdef unsigned char[::1] scratch

    def __cinit__(self):
        self.ops = NULL
        self.n_ops = 0

    def __init__(self, object arena, const unsigned char[::1] consts,
                 unsigned char[::1] scratch, const int32_t[::1] kinds,
                 const int64_t[:, ::1] ints, const float[:, ::1] floats,
                 const int64_t[:, ::1] inp, const int64_t[::1] out,
                 const int64_t[:, ::1] cofs):
        cdef int i, j
        n = kinds.shape[0]
        if (ints.shape[0] != n or floats.shape[0] != n or inp.shape[0] != n
                or out.shape[0] != n or cofs.shape[0] != n or ints.shape[1] != MAX_INTS
                or floats.shape[1] != 4 or inp.shape[1] != 2 or cofs.shape[1] != 4):
            raise ValueError("engine tables have inconsistent shapes")
        self.arena_array = arena
        self.arena = arena
        self.consts = consts
        self.scratch = scratch
        self.ops = <OpDesc*>PyMem_Malloc(max(n, 1) * sizeof(OpDesc))
        if self.ops == NULL:
            raise MemoryError()
        self.n_ops = n
        for i in range(n):
            self.ops[i].kind = kinds[i]
            for j in range(MAX_INTS):
                self.ops[i].p[j] = ints[i, j]
            for j in range(4):
                self.ops[i].f[j] = floats[i, j]
                self.ops[i].c[j] = cofs[i, j]
            self.ops[i].inp[0] = inp[i, 0]
            self.ops[i].inp[1] = inp[i, 1]
            self.ops[i].out = out[i]

    def __dealloc__(self):
        if self.ops != NULL:
            PyMem_Free(self.ops)
            self.ops = NULL

    def run_range(self, int start, int stop):
        """Execute ops [start, stop) (for tracing intermediate tensors)."""
        cdef uint8_t* ar = &self.arena[0]
        cdef const uint8_t* cb = &self.consts[0]
        cdef uint8_t* sc = &self.scratch[0]
        cdef int i
        if start < 0 or stop > self.n_ops or start > stop:
            raise IndexError("op range out of bounds")
        with nogil:
            for i in range(start, stop):
                run_op(&self.ops[i], ar, cb, sc)

    def run(self):
        """Execute every op in order (no GIL held)."""
        cdef uint8_t* ar = &self.arena[0]
        cdef const uint8_t* cb = &self.consts[0]
        cdef uint8_t* sc = &self.scratch[0]
        cdef int i
        with nogil:
            for i in range(self.n_ops):
                run_op(&self.ops[i], ar, cb, sc)


cdef void run_op(OpDesc* d, uint8_t* a, const uint8_t* cb, uint8_t* sc) noexcept nogil:
    cdef int k = d.kind
    if k == 1:
        k_quantize(d, a)
    elif k == 2:
        k_dequantize(d, a)
    elif k == 3:
        k_requant(d, a)
    elif k == 4:
        if d.p[20] == 2:
            k_conv_wide(d, a, cb, sc)
        else:
            k_conv(d, a, cb, sc)
    elif k == 5:
        if d.p[7] == 2:
            k_gemm_wide(d, a, cb, sc)
        else:
            k_gemm(d, a, cb, sc)
    elif k == 6:
        if d.p[9] == 2:
            k_matmul_wide(d, a, sc)
        else:
            k_matmul(d, a, sc)
    elif k == 7:
        k_maxpool(d, a)
    elif k == 8:
        k_avgpool(d, a)
    elif k == 9:
        k_gap(d, a)
    elif k == 10:
        k_add(d, a)
    elif k == 11:
        k_mul(d, a)
    elif k == 12:
        memcpy(a + d.out, a + d.inp[0], <size_t>d.p[0])
    elif k == 13:
        k_transpose(d, a)
    elif k == 14:
        k_concat_part(d, a, cb)
    elif k == 15:
        k_lut(d, a, cb)
    elif k == 16:
        k_clamp(d, a)
    elif k == 17:
        k_pad(d, a)
    elif k == 18:
        k_resize(d, a, cb)
    elif k == 19:
        k_softmax(d, a, cb, sc)
    elif k == 20:
        memcpy(a + d.out, cb + d.c[0], <size_t>d.p[0])


def mbqm64(int64_t x, int32_t m, int32_t shift):
    """i8r_mbqm64 for tests: round(x * m / 2^(31 - shift)), half toward +infinity."""
    return i8r_mbqm64(x, m, shift)
