# GATHER (ops/gather.py): for each outer block, the input's blocks at the constant indices.

cdef void gather_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                      uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const GatherParams* prm = &d.params.gather
    cdef const int32_t* idx = <const int32_t*>(cb + d.c[GATHER_C_INDICES])
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t outer = prm.outer, n = prm.n, axis = prm.axis, inner = prm.inner, o, j
    for o in range(outer):
        for j in range(n):
            memcpy(y + (o * n + j) * inner, x + (o * axis + idx[j]) * inner, <size_t>inner)
