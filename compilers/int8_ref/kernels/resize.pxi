# RESIZE_NEAREST (ops/resize.py): output pixels gathered through precomputed indices.

cdef void resize_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                      uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const ResizeParams* prm = &d.params.resize
    cdef int64_t NC = prm.NC, H = prm.H, W = prm.W, OH = prm.OH, OW = prm.OW
    cdef const int32_t* idx = <const int32_t*>(cb + d.c[RESIZE_C_INDICES])
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t nc, oy, ox, src
    for nc in range(NC):
        for oy in range(OH):
            src = (nc * H + idx[oy]) * W
            for ox in range(OW):
                y[(nc * OH + oy) * OW + ox] = x[src + idx[OH + ox]]
