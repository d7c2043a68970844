# LRN (ops/lrn.py): y = zp + round(k * G(S)), S the sum of k^2 over the channel window,
# G interpolated from the table (int32 with `frac` fraction bits).

cdef inline int64_t lrn_gain(const int32_t* t, int64_t s) noexcept nogil:
    # G(s): exact below 256; above, the 7 bits after s's leading one pick the point of its
    # octave and the bits below them interpolate linearly to the next point
    cdef int64_t e, sh, idx, r
    if s < 256:
        return t[s]
    e = 63
    while not (s >> e) & 1:
        e -= 1
    sh = e - 7
    idx = 256 + (e - 8) * 128 + ((s >> sh) - 128)
    r = s & ((<int64_t>1 << sh) - 1)
    return t[idx] + (((<int64_t>t[idx + 1] - t[idx]) * r) >> sh)


cdef void lrn_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                   uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const LrnParams* prm = &d.params.lrn
    cdef int64_t N = prm.N, C = prm.C, I = prm.inner, size = prm.size, pre = prm.pre
    cdef int64_t sg = prm.sg_in, so = prm.sg_out, frac = prm.frac
    cdef int32_t xzp = <int32_t>prm.xzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef const int32_t* t = <const int32_t*>(cb + d.c[LRN_C_TABLE])
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t n, c, i, j, lo, hi, base, s, v, half = (<int64_t>1 << frac) >> 1, r
    cdef int32_t k, kj
    for n in range(N):
        for c in range(C):
            # the window: channels c - pre .. c + size - 1 - pre, inside [0, C)
            lo = c - pre if c >= pre else 0
            hi = c + size - 1 - pre
            if hi > C - 1:
                hi = C - 1
            for i in range(I):
                base = n * C * I + i
                s = 0
                for j in range(lo, hi + 1):
                    kj = ld(x, base + j * I, sg) - xzp
                    s += kj * kj  # size <= 2^15 values of at most 255^2: < 2^31
                k = ld(x, base + c * I, sg) - xzp
                v = k * lrn_gain(t, s)  # |v| < 2^39
                r = (v + half) >> frac if v >= 0 else -((-v + half) >> frac)
                r += yzp
                if r < qmin:
                    r = qmin
                if r > qmax:
                    r = qmax
                st(y, base + c * I, so, <int32_t>r)
