# LAYERNORM (ops/layernorm.py): integer LayerNorm over rows of n 8-bit values. Per row: exact
# sums S1, S2; the spread D = n S2 - S1^2; V = (D << vshift) + offset; an integer square root
# of V scaled into [2^60, 2^62) and one reciprocal; then per element z = norm * 2^20,
# acc = z G + B and the single-rounding requantization of acc (ops/layernorm.py derives the
# bounds: every product below stays under 2^63).

cdef inline uint64_t isqrt64(uint64_t v) noexcept nogil:
    # floor(sqrt(v)), one result bit per step (Hacker's Delight, 11-1)
    cdef uint64_t res = 0, bit = (<uint64_t>1) << 62
    while bit > v:
        bit >>= 2
    while bit != 0:
        if v >= res + bit:
            v -= res + bit
            res = (res >> 1) + bit
        else:
            res >>= 1
        bit >>= 2
    return res


cdef void layernorm_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                         uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const LayernormParams* prm = &d.params.layernorm
    cdef int64_t rows = prm.rows, n = prm.n, sgi = prm.sg_in, sgo = prm.sg_out, r, i
    cdef int64_t k = prm.vshift
    cdef const int32_t* g = <const int32_t*>(cb + d.c[LAYERNORM_C_GAMMA])
    cdef const int64_t* bias = <const int64_t*>(cb + d.c[LAYERNORM_C_BIAS])
    cdef const int32_t* mult = <const int32_t*>(cb + d.c[LAYERNORM_C_REQUANT])
    cdef const int32_t* shift = mult + n
    cdef int64_t offset = (<const int64_t*>(cb + d.c[LAYERNORM_C_OFFSET]))[0]
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int32_t yzp = <int32_t>prm.yzp, qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t s1, s2, spread, q, z, acc, half, t, sh, top
    cdef uint64_t v, sq, inv
    for r in range(rows):
        s1 = 0
        s2 = 0
        for i in range(n):
            q = ld(x, r * n + i, sgi)
            s1 += q
            s2 += q * q
        spread = n * s2 - s1 * s1
        sh = 0
        inv = 0
        if spread > 0:
            v = ((<uint64_t>spread) << k) + <uint64_t>offset  # < 2^62
            # t: V * 4^t in [2^60, 2^62), so the root has 31 significant bits
            top = 63
            while (v >> top) == 0:
                top -= 1
            t = (61 - top) // 2 if top < 60 else 0
            sq = isqrt64(v << (2 * t))  # in [2^30, 2^31)
            inv = ((<uint64_t>1) << 61) // sq  # in (2^30, 2^31]
            # z = d * 2^(k/2 + t + 20) / sq = d * inv >> (61 - k/2 - t - 20), a shift >= 10
            sh = 61 - k // 2 - t - 20
        half = ((<int64_t>1) << (sh - 1)) if sh > 0 else 0
        for i in range(n):
            if spread > 0:
                z = (((n * ld(x, r * n + i, sgi) - s1) * <int64_t>inv) + half) >> sh
            else:
                z = 0  # a constant row: every value is the mean
            acc = i8r_mbqm64(z * g[i] + bias[i], mult[i], shift[i]) + yzp
            if acc < qmin:  # clamped in int64: the product may exceed int32
                acc = qmin
            elif acc > qmax:
                acc = qmax
            st(y, r * n + i, sgo, <int32_t>acc)
