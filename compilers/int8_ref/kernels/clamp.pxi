# CLAMP (ops/clamp.py): a standalone Relu / Clip on the integers.

cdef void clamp_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                     uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const ClampParams* prm = &d.params.clamp
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t i, sg = prm.sg_in
    cdef int32_t lo = <int32_t>prm.lo, hi = <int32_t>prm.hi
    for i in range(prm.n):
        st(y, i, sg, clampi(ld(x, i, sg), lo, hi))
