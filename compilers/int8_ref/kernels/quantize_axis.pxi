# QUANTIZE_AXIS (ops/quantize_axis.py): per-axis QuantizeLinear (float32 -> q) or, with
# `dequantize`, DequantizeLinear (q -> float32), one scale and zero point per channel.

cdef void quantize_axis_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                             uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const QuantizeAxisParams* prm = &d.params.quantize_axis
    cdef int64_t outer = prm.outer, C = prm.channels, inner = prm.inner, sg = prm.sg
    cdef int64_t o, c, i, k
    cdef const float* sc = <const float*>(cb + d.c[QUANTIZE_AXIS_C_SCALES])
    cdef const int32_t* zp = <const int32_t*>(cb + d.c[QUANTIZE_AXIS_C_ZERO_POINTS])
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef const float* xf = <const float*>(a + d.inp[0])
    cdef float* yf = <float*>(a + d.out)
    for o in range(outer):
        for c in range(C):
            for i in range(inner):
                k = (o * C + c) * inner + i
                if prm.dequantize:
                    # ONNX DequantizeLinear: (q - zp) * scale, per channel
                    yf[k] = <float>(ld(a + d.inp[0], k, sg) - zp[c]) * sc[c]
                else:
                    # ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zp)
                    st(a + d.out, k, sg, f2q(xf[k] / sc[c], zp[c], qmin, qmax))
