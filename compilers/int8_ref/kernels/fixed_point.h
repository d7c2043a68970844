/* Fixed-point arithmetic of the int8-ref kernels: TFLite's MultiplyByQuantizedMultiplier
   (gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT) and its int64 form
   for int16 activations. Included by kernels/common.pxi; requantize.py computes the
   multipliers and shifts, and multiply_by_quantized_multiplier there models i8r_mbqm. */
#ifndef I8R_FIXED_POINT_H
#define I8R_FIXED_POINT_H

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

#endif /* I8R_FIXED_POINT_H */
