# REDUCE_MEAN (ops/reducemean.py): the mean over up to three reduced groups of axes, for each
# position of up to three kept groups; (size, stride) pairs index the input.

cdef void reducemean_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                          uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const ReducemeanParams* prm = &d.params.reducemean
    cdef int64_t k0 = prm.k0, k1 = prm.k1, k2 = prm.k2
    cdef int64_t ks0 = prm.ks0, ks1 = prm.ks1, ks2 = prm.ks2
    cdef int64_t r0 = prm.r0, r1 = prm.r1, r2 = prm.r2
    cdef int64_t rs0 = prm.rs0, rs1 = prm.rs1, rs2 = prm.rs2
    cdef int64_t sg = prm.sg_in, so = prm.sg_out, mode = prm.mode
    cdef int32_t xzp = <int32_t>prm.xzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int32_t mult = <int32_t>prm.mult, shift = <int32_t>prm.shift
    cdef float xs = d.f[REDUCEMEAN_F_X_SCALE], ys = d.f[REDUCEMEAN_F_Y_SCALE]
    cdef float count = <float>(r0 * r1 * r2)
    cdef int32_t n = <int32_t>(r0 * r1 * r2)
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef float* yf = <float*>(a + d.out)
    cdef const int32_t* xw = <const int32_t*>(a + d.inp[0])
    cdef int64_t o0, o1, o2, q0, q1, q2, base, b1, b2, iy = 0
    cdef int64_t s
    cdef float mean
    for o0 in range(k0):
        for o1 in range(k1):
            for o2 in range(k2):
                base = o0 * ks0 + o1 * ks1 + o2 * ks2
                s = 0
                for q0 in range(r0):
                    for q1 in range(r1):
                        b2 = base + q0 * rs0 + q1 * rs1
                        if prm.wide_in:
                            for q2 in range(r2):
                                s += xw[b2 + q2 * rs2]
                        else:
                            for q2 in range(r2):
                                s += ld(x, b2 + q2 * rs2, sg)
                # the exact sum of x - zp: < 2^31 for 8- and 16-bit inputs (at most 2^23 and
                # 2^15 values), < 2^40 for int32 ones of at most 2^24 (2^15 values)
                s -= xzp * n
                if prm.float_out or mode == MODE_ORT:
                    # ORT: DequantizeLinear, float32 sum, `/= N` (reduction_ops.h
                    # FastReduceKR), then QuantizeLinear's division by the output scale.
                    # The exact sum times x_scale, rounded once to float32, stands for
                    # ORT's float32 sum.
                    mean = (<float>(<double>s * xs)) / count
                    if prm.float_out:
                        yf[iy] = mean
                    else:
                        st(y, iy, so, f2q(mean / ys, yzp, qmin, qmax))
                else:
                    # one rounding (i8r_mbqm64): the multiplier x_scale / (y_scale * N) is
                    # small, and TFLite's double rounding would first round at a fraction
                    # of an output step (one LSB off on ~6% of the means of 7x7 images)
                    st(y, iy, so, requant64(s, mode, 0, mult, shift, yzp, qmin, qmax))
                iy += 1
