/* Scalar requantization: the reference every vector path must reproduce bit for bit.

   `ort` mode follows ONNX Runtime's MlasRequantizeOutput (onnxruntime/core/mlas/lib/
   quantize.cpp); `fixed-point` mode TFLite's MultiplyByQuantizedMultiplier
   (tensorflow/lite/kernels/internal/common.h, double rounding; fixed_point.h). requantize.py
   computes the parameters at compile time and explains both. */
#ifndef I8R_REQUANT_H
#define I8R_REQUANT_H

#include <stdint.h>

#include "fixed_point.h"

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
    const float* scale;   /* mode 0; finite (the loader refuses others: the vector paths
                             rely on it) */
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
