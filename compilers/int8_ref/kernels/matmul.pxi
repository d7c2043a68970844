# MATMUL (ops/matmul.py): batched a . b of two activations; B is transposed once per batch
# into scratch as `b - zp`.

cdef void matmul_narrow(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                        uint8_t* scratch) noexcept nogil:
    cdef const MatmulParams* prm = &d.params.matmul
    cdef int64_t B = prm.B, M = prm.M, K = prm.K, N = prm.N
    cdef int32_t azp = <int32_t>prm.azp, bzp = <int32_t>prm.bzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t sg = prm.sg_in, so = prm.sg_out, mode = prm.mode, bb = prm.b_batch
    cdef int32_t mult = <int32_t>prm.mult, shift = <int32_t>prm.shift
    cdef float scale = d.f[MATMUL_F_MULTIPLIER]
    cdef int16_t* bt = <int16_t*>scratch
    cdef int16_t* ar = <int16_t*>(scratch + ((N * K * 2 + 15) // 16) * 16)
    cdef const uint8_t* A = a + d.inp[0]
    cdef const uint8_t* Bm = a + d.inp[1]
    cdef uint8_t* y = a + d.out
    cdef int32_t* y32 = <int32_t*>(a + d.out)
    cdef int64_t b, m, n, k, boff
    cdef int32_t s
    for b in range(B):
        boff = (b if bb else 0) * K * N
        for k in range(K):
            for n in range(N):
                bt[n * K + k] = <int16_t>(ld(Bm, boff + k * N + n, sg) - bzp)
        for m in range(M):
            for k in range(K):
                ar[k] = <int16_t>(ld(A, (b * M + m) * K + k, sg) - azp)
            for n in range(N):
                s = 0
                for k in range(K):
                    s += ar[k] * bt[n * K + k]
                if mode == MODE_INT32:
                    y32[(b * M + m) * N + n] = s
                elif so == SG_INT16:
                    st(y, (b * M + m) * N + n, so, requant64(s, mode, scale, mult, shift, yzp,
                                                             qmin, qmax))
                else:
                    st(y, (b * M + m) * N + n, so, requant(s, mode, scale, mult, shift, yzp,
                                                           qmin, qmax))


cdef void matmul_wide(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                      uint8_t* scratch) noexcept nogil:
    cdef const MatmulParams* prm = &d.params.matmul
    # MATMUL of two int16 activations: int32 `x - zp` operands, int64 products and sums
    # (|a - azp| * |b - bzp| <= 65535^2 > 2^31).
    cdef int64_t B = prm.B, M = prm.M, K = prm.K, N = prm.N
    cdef int32_t azp = <int32_t>prm.azp, bzp = <int32_t>prm.bzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t so = prm.sg_out, mode = prm.mode, bb = prm.b_batch
    cdef int32_t mult = <int32_t>prm.mult, shift = <int32_t>prm.shift
    cdef float scale = d.f[MATMUL_F_MULTIPLIER]
    cdef int32_t* bt = <int32_t*>scratch
    cdef int32_t* ar = <int32_t*>(scratch + ((N * K * 4 + 15) // 16) * 16)
    cdef const int16_t* A = <const int16_t*>(a + d.inp[0])
    cdef const int16_t* Bm = <const int16_t*>(a + d.inp[1])
    cdef uint8_t* y = a + d.out
    cdef int64_t b, m, n, k, boff, s
    for b in range(B):
        boff = (b if bb else 0) * K * N
        for k in range(K):
            for n in range(N):
                bt[n * K + k] = <int32_t>Bm[boff + k * N + n] - bzp
        for m in range(M):
            for k in range(K):
                ar[k] = <int32_t>A[(b * M + m) * K + k] - azp
            for n in range(N):
                s = 0
                for k in range(K):
                    s += <int64_t>ar[k] * bt[n * K + k]
                st(y, (b * M + m) * N + n, so, requant64(s, mode, scale, mult, shift, yzp,
                                                         qmin, qmax))


cdef void matmul_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                     uint8_t* scratch, const Host* host) noexcept nogil:
    if d.params.matmul.sg_in == SG_INT16:
        matmul_wide(d, a, cb, scratch)
    else:
        matmul_narrow(d, a, cb, scratch)
