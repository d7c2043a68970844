# GLOBALAVGPOOL (ops/globalavgpool.py): one mean per channel.

cdef void globalavgpool_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                             uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const GlobalavgpoolParams* prm = &d.params.globalavgpool
    cdef int64_t NC = prm.NC, HW = prm.HW, sg = prm.sg_in, so = prm.sg_out, mode = prm.mode
    cdef int32_t xzp = <int32_t>prm.xzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int32_t mult = <int32_t>prm.mult, shift = <int32_t>prm.shift
    cdef float scale = d.f[GLOBALAVGPOOL_F_MULTIPLIER]
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t c, i
    cdef int32_t s
    for c in range(NC):
        s = 0
        for i in range(HW):
            s += ld(x, c * HW + i, sg)
        # ORT MlasQLinearGlobalAveragePoolNchw: int32 sum minus zp * image size, then
        # MlasRequantizeOutput with scale x_scale / (y_scale * image size).
        s -= xzp * <int32_t>HW
        if sg == SG_INT16 or so == SG_INT16:
            st(y, c, so, requant64(s, mode, scale, mult, shift, yzp, qmin, qmax))
        else:
            st(y, c, so, requant(s, mode, scale, mult, shift, yzp, qmin, qmax))
