/* Scalar requantization: the reference every vector path must reproduce bit for bit.

   `ort` mode follows ONNX Runtime's MlasRequantizeOutput (onnxruntime/core/mlas/lib/
   quantize.cpp); `fixed-point` mode TFLite's MultiplyByQuantizedMultiplier
   (tensorflow/lite/kernels/internal/common.h, double rounding). requantize.py computes the
   parameters at compile time and explains both. */
#ifndef I8R_REQUANT_H
#define I8R_REQUANT_H

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
    int t = 31 - shift; /* 1 .. 62 for shift in [-31, 30] */
    int neg = x < 0;
    uint64_t ax = neg ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
    uint64_t um = m > 0 ? (uint64_t)m : 0;
    uint64_t p0 = (ax & 0xFFFFFFFFu) * um; /* < 2^63 */
    uint64_t p1 = (ax >> 32) * um;         /* < 2^62 */
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

/* ONNX Runtime MlasQuantizeLinear / MlasRequantizeOutput: clamp to the range shifted by the
   zero point in float, convert with round-half-to-even (cvtps2dq under the default MXCSR),
   then add the zero point. A NaN (only from a non-finite multiplier) becomes 0 after the
   clamp. |v| <= 65535 after the clamp (int16 with a zero point at most), so adding and
   subtracting 1.5 * 2^23 rounds it to an integer, half to even, in float32 arithmetic (MLAS's
   MagicBias trick, exact for |v| < 2^22); the cast is then exact. */
static inline int32_t i8r_f2q(float v, int32_t zp, int32_t qmin, int32_t qmax) {
    float lo = (float)(qmin - zp), hi = (float)(qmax - zp);
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    if (v != v) v = 0;
    const float magic = 12582912.0f;
    float t = v + magic; /* float32 add: rounds to an integer, half to even */
    t = t - magic;
    return (int32_t)t + zp;
}

static inline int32_t i8r_clamp(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* How an accumulator becomes an output element (Conv, Gemm): per-channel arrays indexed by
   the output channel, scalars for the rest. */
typedef struct {
    int32_t mode;     /* 0 ort (float32 multiplier), 1 fixed-point (mult, shift), 2 int32 out */
    int32_t out_code; /* 0 uint8, 1 int8, 2 int16 */
    int32_t zp, qmin, qmax;
    const float* scale;   /* mode 0 */
    const int32_t* mult;  /* mode 1 */
    const int32_t* shift; /* mode 1 */
} i8r_requant_t;

/* The element size of the output in bytes. */
static inline int i8r_out_size(const i8r_requant_t* q) {
    return q->mode == 2 ? 4 : (q->out_code == 2 ? 2 : 1);
}

/* Requantize accumulator `acc` of channel `ch` and store it as element `i` of `y`. */
static inline void i8r_store1(const i8r_requant_t* q, int64_t ch, int32_t acc, uint8_t* y,
                              int64_t i) {
    if (q->mode == 2) {
        ((int32_t*)y)[i] = acc;
    } else if (q->out_code == 2) {
        /* an int16 output of an 8-bit input (ORT runs this node in float): the int32
           accumulator is exact; requantized as the int16 kernels do (_kernels.pyx) */
        int64_t r;
        if (q->mode == 0) {
            r = i8r_f2q((float)acc * q->scale[ch], q->zp, q->qmin, q->qmax);
        } else {
            r = i8r_mbqm64(acc, q->mult[ch], q->shift[ch]) + q->zp;
            r = r < q->qmin ? q->qmin : (r > q->qmax ? q->qmax : r);
        }
        ((int16_t*)y)[i] = (int16_t)r;
    } else if (q->mode == 0) {
        y[i] = (uint8_t)i8r_f2q((float)acc * q->scale[ch], q->zp, q->qmin, q->qmax);
    } else {
        y[i] = (uint8_t)i8r_clamp(i8r_mbqm(acc, q->mult[ch], q->shift[ch]) + q->zp, q->qmin,
                                  q->qmax);
    }
}

#endif
