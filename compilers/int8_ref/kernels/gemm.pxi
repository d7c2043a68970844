# GEMM (ops/gemm.py): x[M, K] . W[N, K]^T + bias with constant int16 `w - zp` weights;
# int64 sums for int16 inputs.

cdef void gemm_narrow(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                      uint8_t* scratch) noexcept nogil:
    cdef const GemmParams* prm = &d.params.gemm
    cdef int64_t M = prm.M, K = prm.K, N = prm.N
    cdef int32_t xzp = <int32_t>prm.xzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t sg = prm.sg_in, so = prm.sg_out, mode = prm.mode
    cdef const int16_t* w = <const int16_t*>(cb + d.c[GEMM_C_WEIGHTS])
    cdef const int32_t* bias = <const int32_t*>(cb + d.c[GEMM_C_BIAS])
    cdef const float* fs = <const float*>(cb + d.c[GEMM_C_MULTIPLIERS])
    cdef const int32_t* mul = <const int32_t*>(cb + d.c[GEMM_C_MULTIPLIERS])
    cdef const int32_t* shf = <const int32_t*>(cb + d.c[GEMM_C_SHIFTS])
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
        if mode == MODE_INT32:
            for n in range(N):
                y32[m * N + n] = acc[n]
        elif so == SG_INT16:
            for n in range(N):
                st(y, m * N + n, so, requant64(acc[n], mode, fs[n], mul[n], shf[n], yzp, qmin,
                                               qmax))
        elif mode == MODE_ORT:
            for n in range(N):
                st(y, m * N + n, so, f2q(<float>acc[n] * fs[n], yzp, qmin, qmax))
        else:
            for n in range(N):
                st(y, m * N + n, so, clampi(i8r_mbqm(acc[n], mul[n], shf[n]) + yzp,
                                            qmin, qmax))


cdef void gemm_wide(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                    uint8_t* scratch) noexcept nogil:
    cdef const GemmParams* prm = &d.params.gemm
    # GEMM over an int16 input: int32 `x - zp` row, int64 sums (bound in the header).
    cdef int64_t M = prm.M, K = prm.K, N = prm.N
    cdef int32_t xzp = <int32_t>prm.xzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t so = prm.sg_out, mode = prm.mode
    cdef const int16_t* w = <const int16_t*>(cb + d.c[GEMM_C_WEIGHTS])
    cdef const int32_t* bias = <const int32_t*>(cb + d.c[GEMM_C_BIAS])
    cdef const float* fs = <const float*>(cb + d.c[GEMM_C_MULTIPLIERS])
    cdef const int32_t* mul = <const int32_t*>(cb + d.c[GEMM_C_MULTIPLIERS])
    cdef const int32_t* shf = <const int32_t*>(cb + d.c[GEMM_C_SHIFTS])
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


cdef void gemm_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                   uint8_t* scratch) noexcept nogil:
    if d.params.gemm.sg_in == SG_INT16:
        gemm_wide(d, a, cb, scratch)
    else:
        gemm_narrow(d, a, cb, scratch)
