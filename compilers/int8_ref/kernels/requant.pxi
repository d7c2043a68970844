# REQUANT (ops/requant.py): q -> q at another scale, zero point or element type.

cdef void requant_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                       uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const RequantParams* prm = &d.params.requant
    cdef int64_t n = prm.n, i, sg = prm.sg_in, so = prm.sg_out, mode = prm.mode
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int32_t zi = <int32_t>prm.zp_in, zo = <int32_t>prm.zp_out
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int32_t mult = <int32_t>prm.mult, shift = <int32_t>prm.shift
    cdef float v
    cdef bint wide = sg == SG_INT16 or so == SG_INT16
    for i in range(n):
        if mode == MODE_ORT:
            # DQ -> Q left in float by ONNX Runtime: dequantize, then divide by the new scale.
            v = <float>(ld(x, i, sg) - zi) * d.f[REQUANT_F_X_SCALE]
            st(y, i, so, f2q(v / d.f[REQUANT_F_Y_SCALE], zo, qmin, qmax))
        elif wide:
            st(y, i, so, requant64(ld(x, i, sg) - zi, mode, 0, mult, shift, zo, qmin, qmax))
        else:
            st(y, i, so, clampi(i8r_mbqm(ld(x, i, sg) - zi, mult, shift) + zo, qmin, qmax))
