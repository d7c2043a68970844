# CONV (ops/conv.py): 8-bit inputs by the packed kernels of i8r_qgemm.h (a direct
# convolution over a four-channel repacked input at stride 1, gathered columns otherwise, a
# depthwise path for one input channel per group), on the host's instruction set and threads;
# `conv_wide` for int16 inputs (int32 columns, int64 accumulators).

cdef void conv_narrow(const OpDesc* d, uint8_t* a, const uint8_t* cb, uint8_t* scratch,
                      const Host* host) noexcept nogil:
    cdef const ConvParams* prm = &d.params.conv
    cdef i8r_conv_t c
    cdef i8r_requant_t rq = requant_params(prm.mode, prm.sg_out, prm.yzp, prm.qmin, prm.qmax,
                                           cb + d.c[CONV_C_MULTIPLIERS],
                                           cb + d.c[CONV_C_SHIFTS])
    c.N, c.C, c.H, c.W, c.M = prm.N, prm.C, prm.H, prm.W, prm.M
    c.kh, c.kw, c.sh, c.sw, c.pt, c.pl = prm.kh, prm.kw, prm.sh, prm.sw, prm.pt, prm.pl
    c.dh, c.dw, c.G, c.OH, c.OW = prm.dh, prm.dw, prm.groups, prm.OH, prm.OW
    c.xzp = <int32_t>prm.xzp
    c.x_signed = prm.sg_in == SG_INT8
    c.depthwise = <int32_t>prm.depthwise
    c.rows = prm.rows
    i8r_conv(&c, a + d.inp[0], cb + d.c[CONV_C_WEIGHTS],
             <const int32_t*>(cb + d.c[CONV_C_BIAS]),
             <const int32_t*>(cb + d.c[CONV_C_SUM_FACTOR]), &rq, a + d.out, scratch,
             host.isa, host.pool)


cdef void conv_wide(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                    uint8_t* scratch) noexcept nogil:
    cdef const ConvParams* prm = &d.params.conv
    # CONV over an int16 input: k_conv's im2col with int32 `x - zp` values and int64
    # accumulators (see the header for the bound), one output channel at a time.
    cdef int64_t N = prm.N, C = prm.C, H = prm.H, W = prm.W, M = prm.M
    cdef int64_t kh = prm.kh, kw = prm.kw, sh = prm.sh, sw = prm.sw, pt = prm.pt, pl = prm.pl
    cdef int64_t dh = prm.dh, dw = prm.dw, G = prm.groups, OH = prm.OH, OW = prm.OW
    cdef int32_t xzp = <int32_t>prm.xzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t so = prm.sg_out, mode = prm.mode
    cdef int64_t Cg = C // G, Mg = M // G, K = Cg * kh * kw, P = OH * OW, HW = H * W
    cdef const int16_t* w = <const int16_t*>(cb + d.c[CONV_C_WEIGHTS])
    cdef const int32_t* bias = <const int32_t*>(cb + d.c[CONV_C_BIAS])
    cdef const float* fs = <const float*>(cb + d.c[CONV_C_MULTIPLIERS])
    cdef const int32_t* mul = <const int32_t*>(cb + d.c[CONV_C_MULTIPLIERS])
    cdef const int32_t* sh_ = <const int32_t*>(cb + d.c[CONV_C_SHIFTS])
    # scratch: [x - zp as int32, C*H*W] [im2col columns, K*P int32] [accumulators, P int64]
    cdef int32_t* xs = <int32_t*>scratch
    cdef int32_t* col = <int32_t*>(scratch + ((C * HW * 4 + 15) // 16) * 16)
    cdef int64_t* acc = <int64_t*>(scratch + ((C * HW * 4 + 15) // 16) * 16
                                   + ((K * P * 4 + 15) // 16) * 16)
    cdef const int16_t* x = <const int16_t*>(a + d.inp[0])
    cdef uint8_t* y = a + d.out
    cdef bint pointwise = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0
                           and pl == 0 and OH == H and OW == W)
    cdef int64_t n, g, c, ky, kx, oy, ox, iy, ix, m, k, p, i, base
    cdef int32_t* dst
    cdef const int32_t* src
    cdef const int32_t* cols
    cdef const int32_t* ck
    cdef int32_t wv
    for n in range(N):
        for i in range(C * HW):
            xs[i] = <int32_t>x[n * C * HW + i] - xzp
        for g in range(G):
            if pointwise:
                cols = xs + g * Cg * HW
            else:
                for c in range(Cg):
                    for ky in range(kh):
                        for kx in range(kw):
                            dst = col + ((c * kh + ky) * kw + kx) * P
                            src = xs + (g * Cg + c) * HW
                            for oy in range(OH):
                                iy = oy * sh - pt + ky * dh
                                for ox in range(OW):
                                    ix = ox * sw - pl + kx * dw
                                    if iy < 0 or iy >= H or ix < 0 or ix >= W:
                                        dst[oy * OW + ox] = 0  # padding is the zero point
                                    else:
                                        dst[oy * OW + ox] = src[iy * W + ix]
                cols = col
            for m in range(g * Mg, (g + 1) * Mg):
                for p in range(P):
                    acc[p] = bias[m]
                for k in range(K):
                    wv = w[m * K + k]
                    if wv == 0:
                        continue
                    ck = cols + k * P
                    for p in range(P):
                        acc[p] += wv * ck[p]  # |product| < 2^24: exact in int32
                base = (n * M + m) * P
                for p in range(P):
                    st(y, base + p, so, requant64(acc[p], mode, fs[m], mul[m], sh_[m], yzp,
                                                  qmin, qmax))


cdef void conv_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                   uint8_t* scratch, const Host* host) noexcept nogil:
    if d.params.conv.sg_in == SG_INT16:
        conv_wide(d, a, cb, scratch)
    else:
        conv_narrow(d, a, cb, scratch, host)
