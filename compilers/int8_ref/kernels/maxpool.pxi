# MAXPOOL (ops/maxpool.py): the largest integer in each window (padding never wins).

cdef void maxpool_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                       uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const MaxpoolParams* prm = &d.params.maxpool
    cdef int64_t N = prm.N, C = prm.C, H = prm.H, W = prm.W, kh = prm.kh, kw = prm.kw
    cdef int64_t sh = prm.sh, sw = prm.sw, pt = prm.pt, pl = prm.pl, dh = prm.dh, dw = prm.dw
    cdef int64_t OH = prm.OH, OW = prm.OW, sg = prm.sg_in
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t nc, oy, ox, ky, kx, iy, ix, base, rbase
    cdef int32_t best, v
    cdef i8r_maxpool_t q
    if sg != SG_INT16:
        # 8-bit: whole rows at a time (i8r_eltwise.h); it declines a window of padding only
        q.N, q.C, q.H, q.W, q.kh, q.kw, q.sh, q.sw = N, C, H, W, kh, kw, sh, sw
        q.pt, q.pl, q.dh, q.dw, q.OH, q.OW, q.x_signed = pt, pl, dh, dw, OH, OW, sg == SG_INT8
        if i8r_maxpool(host.isa, &q, x, y, scratch):
            return
    for nc in range(N * C):
        base = nc * H * W
        for oy in range(OH):
            for ox in range(OW):
                best = -2147483647
                for ky in range(kh):
                    iy = oy * sh - pt + ky * dh
                    if iy < 0 or iy >= H:
                        continue
                    rbase = base + iy * W
                    for kx in range(kw):
                        ix = ox * sw - pl + kx * dw
                        if ix < 0 or ix >= W:
                            continue
                        v = ld(x, rbase + ix, sg)
                        if v > best:
                            best = v
                st(y, (nc * OH + oy) * OW + ox, sg, best)
