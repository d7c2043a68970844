# AVGPOOL (ops/avgpool.py): window means in both requantization modes.

cdef void avgpool_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                       uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const AvgpoolParams* prm = &d.params.avgpool
    cdef int64_t N = prm.N, C = prm.C, H = prm.H, W = prm.W, kh = prm.kh, kw = prm.kw
    cdef int64_t sh = prm.sh, sw = prm.sw, pt = prm.pt, pl = prm.pl, OH = prm.OH
    cdef int64_t OW = prm.OW, cip = prm.count_include_pad
    cdef int32_t xzp = <int32_t>prm.xzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t sg = prm.sg_in, so = prm.sg_out, mode = prm.mode
    cdef int32_t off = <int32_t>prm.off
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t nc, oy, ox, ky, kx, iy, ix, base, cnt, y0, x0, q64, den, r64, rem
    cdef int32_t s, q
    cdef float v, fs
    cdef bint wide = sg == SG_INT16 or so == SG_INT16
    for nc in range(N * C):
        base = nc * H * W
        for oy in range(OH):
            for ox in range(OW):
                s = 0
                fs = 0
                cnt = 0
                y0 = oy * sh - pt
                x0 = ox * sw - pl
                for ky in range(kh):
                    iy = y0 + ky
                    if iy < 0 or iy >= H:
                        continue
                    for kx in range(kw):
                        ix = x0 + kx
                        if ix < 0 or ix >= W:
                            continue
                        q = ld(x, base + iy * W + ix, sg) - xzp
                        s += q
                        # ORT QLinearAveragePool dequantizes first: x_scale * (x - zp)
                        fs = fs + d.f[AVGPOOL_F_X_SCALE] * <float>q
                        cnt += 1
                if cip:
                    cnt = kh * kw  # ORT divides by the whole kernel size
                if cnt == 0:
                    cnt = 1
                if mode == MODE_ORT and wide:
                    # ORT runs an int16 AveragePool in float: the same float mean, then
                    # QuantizeLinear, which adds the zero point after rounding (averages are
                    # often exact halves, so the order matters for half-to-even).
                    v = (fs / <float>cnt) / d.f[AVGPOOL_F_Y_SCALE]
                    if v < -1e9 or v != v:
                        v = -1e9
                    if v > 1e9:
                        v = 1e9
                    st(y, (nc * OH + oy) * OW + ox, so,
                       clampi(<int32_t>lrintf(v) + yzp, qmin, qmax))
                elif mode == MODE_ORT:
                    # ORT (contrib_ops/cpu/quantization/qlinear_pool.cc): float sum in window
                    # order, divided by the count, then nearbyintf(y / y_scale + y_zp), in
                    # ORT's uint8 domain (zero point + off).
                    v = fs / <float>cnt
                    v = v / d.f[AVGPOOL_F_Y_SCALE] + <float>(yzp + off)
                    if v < -1e9 or v != v:
                        v = -1e9
                    if v > 1e9:
                        v = 1e9
                    st(y, (nc * OH + oy) * OW + ox, so,
                       clampi(<int32_t>lrintf(v), qmin + off, qmax + off) - off)
                elif wide:
                    # fixed-point, int16: rescale the sum first, keeping 16 fraction bits
                    # (|s| < 2^31, so s * 2^16 < 2^47), then one integer division by the count,
                    # rounded half to even as QuantizeLinear rounds (means are often exact
                    # halves): the mean is not rounded twice.
                    q64 = i8r_mbqm64(<int64_t>s * 65536, <int32_t>prm.mult, <int32_t>prm.shift)
                    den = cnt * 65536
                    r64 = q64 // den  # truncates (cdivision); the next line makes it a floor
                    if q64 - r64 * den < 0:
                        r64 -= 1
                    rem = q64 - r64 * den
                    if 2 * rem > den or (2 * rem == den and (r64 & 1)):
                        r64 += 1
                    q64 = r64
                    if q64 < qmin - yzp:
                        q64 = qmin - yzp
                    if q64 > qmax - yzp:
                        q64 = qmax - yzp
                    st(y, (nc * OH + oy) * OW + ox, so, <int32_t>q64 + yzp)
                else:
                    # fixed-point: integer mean rounded half away from zero, then rescaled by
                    # x_scale / y_scale (MultiplyByQuantizedMultiplier).
                    if s >= 0:
                        s = (s + <int32_t>(cnt // 2)) // <int32_t>cnt
                    else:
                        s = -((-s + <int32_t>(cnt // 2)) // <int32_t>cnt)
                    st(y, (nc * OH + oy) * OW + ox, so, clampi(
                        i8r_mbqm(s, <int32_t>prm.mult, <int32_t>prm.shift) + yzp, qmin, qmax))
