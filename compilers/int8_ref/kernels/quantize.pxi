# QUANTIZE (ops/quantize.py): float32 -> int8 / uint8 / int16, ONNX QuantizeLinear.

cdef void quantize_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                        uint8_t* scratch) noexcept nogil:
    cdef const QuantizeParams* prm = &d.params.quantize
    cdef int64_t n = prm.n, i, so = prm.sg_out
    cdef const float* x = <const float*>(a + d.inp[0])
    cdef uint8_t* y = a + d.out
    cdef int32_t zp = <int32_t>prm.zp, qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef float s = d.f[QUANTIZE_F_SCALE]
    for i in range(n):
        # ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zp); ORT divides.
        st(y, i, so, f2q(x[i] / s, zp, qmin, qmax))
