# GEMM (ops/gemm.py): x[M, K] . W[N, K]^T + bias; 8-bit inputs by the packed kernel of
# i8r_qgemm.h (x read in place) on the host's instruction set and threads, int16 inputs with
# int16 `w - zp` weights and int64 sums.

cdef void gemm_narrow(const OpDesc* d, uint8_t* a, const uint8_t* cb, uint8_t* scratch,
                      const Host* host) noexcept nogil:
    cdef const GemmParams* prm = &d.params.gemm
    cdef i8r_gemm_t g
    cdef i8r_requant_t rq = requant_params(prm.mode, prm.sg_out, prm.yzp, prm.qmin, prm.qmax,
                                           cb + d.c[GEMM_C_MULTIPLIERS],
                                           cb + d.c[GEMM_C_SHIFTS])
    g.Mr, g.K, g.N = prm.M, prm.K, prm.N
    g.x_signed = prm.sg_in == SG_INT8
    i8r_gemm(&g, a + d.inp[0], cb + d.c[GEMM_C_WEIGHTS],
             <const int32_t*>(cb + d.c[GEMM_C_BIAS]),
             <const int32_t*>(cb + d.c[GEMM_C_SUM_FACTOR]), &rq, a + d.out, scratch, host.isa,
             host.pool)


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
                   uint8_t* scratch, const Host* host) noexcept nogil:
    if d.params.gemm.sg_in == SG_INT16:
        gemm_wide(d, a, cb, scratch)
    else:
        gemm_narrow(d, a, cb, scratch, host)
