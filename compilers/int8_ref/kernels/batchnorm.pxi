# AFFINE (ops/batchnorm.py): y = x * scale[c] + bias[c] over [outer, channels, inner].

cdef void batchnorm_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                         uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const BatchnormParams* prm = &d.params.batchnorm
    cdef int64_t sg = prm.sg_in, so = prm.sg_out, mode = prm.mode
    cdef int32_t xzp = <int32_t>prm.xzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef float xs = d.f[BATCHNORM_F_X_SCALE], ys = d.f[BATCHNORM_F_Y_SCALE]
    cdef const float* fscale = <const float*>(cb + d.c[BATCHNORM_C_SCALE_OR_PRE])
    cdef const float* fbias = <const float*>(cb + d.c[BATCHNORM_C_BIAS_OR_OFFSET])
    cdef const int32_t* pre = <const int32_t*>(cb + d.c[BATCHNORM_C_SCALE_OR_PRE])
    cdef const int32_t* offset = <const int32_t*>(cb + d.c[BATCHNORM_C_BIAS_OR_OFFSET])
    cdef const int32_t* mult = <const int32_t*>(cb + d.c[BATCHNORM_C_MULT])
    cdef const int32_t* shift = <const int32_t*>(cb + d.c[BATCHNORM_C_SHIFT])
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t o, ch, i, base = 0
    cdef float v, s, b
    cdef int32_t p, off, m, sh
    for o in range(prm.outer):
        for ch in range(prm.channels):
            if mode == MODE_ORT:
                # ORT: DequantizeLinear, then Eigen's X * new_scale + new_bias (a multiply
                # and an add, each rounded to float32), then QuantizeLinear.
                s = fscale[ch]
                b = fbias[ch]
                for i in range(prm.inner):
                    v = <float>(ld(x, base + i, sg) - xzp) * xs
                    v = v * s
                    v = v + b
                    st(y, base + i, so, f2q(v / ys, yzp, qmin, qmax))
            else:
                # integers only: (x - zp) * pre + offset < 2^31 by the choice of pre
                # (ops/batchnorm.py), then TFLite's MultiplyByQuantizedMultiplier.
                p = pre[ch]
                off = offset[ch]
                m = mult[ch]
                sh = shift[ch]
                for i in range(prm.inner):
                    st(y, base + i, so, clampi(
                        i8r_mbqm((ld(x, base + i, sg) - xzp) * p + off, m, sh) + yzp,
                        qmin, qmax))
            base += prm.inner
