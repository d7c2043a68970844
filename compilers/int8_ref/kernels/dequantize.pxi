# DEQUANTIZE (ops/dequantize.py): int8 / uint8 / int16 -> float32, ONNX DequantizeLinear.

cdef void dequantize_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                          uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const DequantizeParams* prm = &d.params.dequantize
    cdef int64_t n = prm.n, i, sg = prm.sg_in
    cdef const uint8_t* x = a + d.inp[0]
    cdef float* y = <float*>(a + d.out)
    cdef int32_t zp = <int32_t>prm.zp
    cdef float s = d.f[DEQUANTIZE_F_SCALE]
    for i in range(n):
        # ONNX DequantizeLinear: (x - zp) * scale, int32 difference converted to float.
        y[i] = <float>(ld(x, i, sg) - zp) * s
