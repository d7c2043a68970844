# CONV (ops/conv.py): 2-D convolution by im2col; `conv_narrow` for 8-bit inputs (int16
# columns, int32 accumulators, four output channels at a time), `conv_wide` for int16 inputs
# (int32 columns, int64 accumulators).

cdef void store_row(const int32_t* acc, int64_t P, uint8_t* y, int64_t mode, float scale,
                   int32_t mult, int32_t shift, int32_t zp, int32_t qmin, int32_t qmax,
                   int64_t sg_out) noexcept nogil:
    cdef int64_t p
    cdef int32_t* y32
    if mode == MODE_INT32:
        y32 = <int32_t*>y
        for p in range(P):
            y32[p] = acc[p]
        return
    cdef int64_t ab, nudge
    cdef int32_t hi, rem, thr, mask, r
    cdef int rs
    cdef int16_t* y16
    if sg_out == SG_INT16:
        # an int16 output of an 8-bit input (ORT runs this node in float): the int32
        # accumulator is exact; requantized as the int16 kernels do
        y16 = <int16_t*>y
        for p in range(P):
            y16[p] = <int16_t>requant64(acc[p], mode, scale, mult, shift, zp, qmin, qmax)
        return
    if mode == MODE_ORT:
        for p in range(P):
            y[p] = <uint8_t>f2q(<float>acc[p] * scale, zp, qmin, qmax)
    elif shift > 0 or mult <= 0:
        for p in range(P):
            y[p] = <uint8_t>clampi(i8r_mbqm(acc[p], mult, shift) + zp, qmin, qmax)
    else:
        # MultiplyByQuantizedMultiplier for a right shift (every multiplier < 1), inlined:
        # with mult > 0 the saturating case (both operands INT32_MIN) cannot occur.
        rs = -shift
        mask = <int32_t>((1 << rs) - 1) if rs < 31 else <int32_t>0x7FFFFFFF
        for p in range(P):
            ab = <int64_t>acc[p] * mult
            nudge = (1 << 30) if ab >= 0 else (1 - (1 << 30))
            hi = <int32_t>((ab + nudge) / (<int64_t>1 << 31))
            if rs > 0:
                rem = hi & mask
                thr = (mask >> 1) + (1 if hi < 0 else 0)
                r = (hi >> rs) + (1 if rem > thr else 0)
            else:
                r = hi
            y[p] = <uint8_t>clampi(r + zp, qmin, qmax)


cdef void conv_narrow(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                      uint8_t* scratch) noexcept nogil:
    cdef const ConvParams* prm = &d.params.conv
    cdef int64_t N = prm.N, C = prm.C, H = prm.H, W = prm.W, M = prm.M
    cdef int64_t kh = prm.kh, kw = prm.kw, sh = prm.sh, sw = prm.sw, pt = prm.pt, pl = prm.pl
    cdef int64_t dh = prm.dh, dw = prm.dw, G = prm.groups, OH = prm.OH, OW = prm.OW
    cdef int32_t xzp = <int32_t>prm.xzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t sg = prm.sg_in, so = prm.sg_out, mode = prm.mode
    cdef int64_t Cg = C // G, Mg = M // G, K = Cg * kh * kw, P = OH * OW, HW = H * W
    cdef const int16_t* w = <const int16_t*>(cb + d.c[CONV_C_WEIGHTS])
    cdef const int32_t* bias = <const int32_t*>(cb + d.c[CONV_C_BIAS])
    cdef const float* fs = <const float*>(cb + d.c[CONV_C_MULTIPLIERS])
    cdef const int32_t* mul = <const int32_t*>(cb + d.c[CONV_C_MULTIPLIERS])
    cdef const int32_t* sh_ = <const int32_t*>(cb + d.c[CONV_C_SHIFTS])
    # scratch: [x - zp as int16, C*H*W] [im2col columns, K*P int16] [accumulators, 4P int32]
    cdef int16_t* xs = <int16_t*>scratch
    cdef int16_t* col = <int16_t*>(scratch + ((C * HW * 2 + 15) // 16) * 16)
    cdef int32_t* acc = <int32_t*>(scratch + ((C * HW * 2 + 15) // 16) * 16
                                   + ((K * P * 2 + 15) // 16) * 16)
    cdef const uint8_t* x = a + d.inp[0]
    cdef const int8_t* xi8 = <const int8_t*>(a + d.inp[0])
    cdef uint8_t* y = a + d.out
    cdef int64_t osz = 4 if mode == MODE_INT32 else (2 if so == SG_INT16 else 1)
    cdef bint pointwise = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0
                           and pl == 0 and OH == H and OW == W)
    cdef int64_t n, g, c, ky, kx, oy, ox, iy, ix, row, m, k, p, mm, i, ox0, ox1, shift_x
    cdef int16_t* crow
    cdef int16_t* dst
    cdef const int16_t* src
    cdef const int16_t* cols
    cdef int16_t wv, w0, w1, w2, w3
    cdef const int16_t* ck
    for n in range(N):
        # r = s(q - Z): subtract the input zero point once per image. Padding then
        # contributes 0, as ONNX QLinearConv pads with the zero point.
        if sg:
            for i in range(C * HW):
                xs[i] = <int16_t>(xi8[n * C * HW + i] - xzp)
        else:
            for i in range(C * HW):
                xs[i] = <int16_t>(x[n * C * HW + i] - xzp)
        for g in range(G):
            if pointwise:
                cols = xs + g * Cg * HW
            else:
                for c in range(Cg):
                    for ky in range(kh):
                        for kx in range(kw):
                            row = (c * kh + ky) * kw + kx
                            crow = col + row * P
                            shift_x = kx * dw - pl
                            for oy in range(OH):
                                iy = oy * sh - pt + ky * dh
                                dst = crow + oy * OW
                                if iy < 0 or iy >= H:
                                    memset(dst, 0, <size_t>(OW * 2))
                                    continue
                                src = xs + (g * Cg + c) * HW + iy * W
                                if sw == 1:
                                    # valid ox: 0 <= ox + shift_x < W
                                    ox0 = -shift_x if shift_x < 0 else 0
                                    ox1 = W - shift_x
                                    if ox1 > OW:
                                        ox1 = OW
                                    if ox0 > OW:
                                        ox0 = OW
                                    if ox1 < ox0:
                                        ox1 = ox0
                                    if ox0 > 0:
                                        memset(dst, 0, <size_t>(ox0 * 2))
                                    if ox1 > ox0:
                                        memcpy(dst + ox0, src + ox0 + shift_x,
                                               <size_t>((ox1 - ox0) * 2))
                                    if ox1 < OW:
                                        memset(dst + ox1, 0, <size_t>((OW - ox1) * 2))
                                else:
                                    for ox in range(OW):
                                        ix = ox * sw + shift_x
                                        if ix < 0 or ix >= W:
                                            dst[ox] = 0
                                        else:
                                            dst[ox] = src[ix]
                cols = col
            mm = 0
            while mm + 4 <= Mg:
                # four output channels at once: each column value is loaded once, used 4x
                m = g * Mg + mm
                for p in range(P):
                    acc[p] = bias[m]
                    acc[P + p] = bias[m + 1]
                    acc[2 * P + p] = bias[m + 2]
                    acc[3 * P + p] = bias[m + 3]
                for k in range(K):
                    w0 = w[m * K + k]
                    w1 = w[(m + 1) * K + k]
                    w2 = w[(m + 2) * K + k]
                    w3 = w[(m + 3) * K + k]
                    ck = cols + k * P
                    for p in range(P):
                        # int16 x int16 -> int32 (a widening multiply the compiler vectorizes)
                        acc[p] += <int32_t>w0 * <int32_t>ck[p]
                        acc[P + p] += <int32_t>w1 * <int32_t>ck[p]
                        acc[2 * P + p] += <int32_t>w2 * <int32_t>ck[p]
                        acc[3 * P + p] += <int32_t>w3 * <int32_t>ck[p]
                for i in range(4):
                    store_row(acc + i * P, P, y + ((n * M + m + i) * P) * osz, mode,
                              fs[m + i], mul[m + i], sh_[m + i], yzp, qmin, qmax, so)
                mm += 4
            while mm < Mg:
                m = g * Mg + mm
                for p in range(P):
                    acc[p] = bias[m]
                for k in range(K):
                    wv = w[m * K + k]
                    if wv == 0:
                        continue
                    ck = cols + k * P
                    for p in range(P):
                        acc[p] += <int32_t>wv * <int32_t>ck[p]
                store_row(acc, P, y + ((n * M + m) * P) * osz, mode,
                          fs[m], mul[m], sh_[m], yzp, qmin, qmax, so)
                mm += 1


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
                   uint8_t* scratch) noexcept nogil:
    if d.params.conv.sg_in == SG_INT16:
        conv_wide(d, a, cb, scratch)
    else:
        conv_narrow(d, a, cb, scratch)
