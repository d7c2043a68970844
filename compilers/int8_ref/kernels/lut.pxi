# LUT (ops/lut.py): out = table[in].

cdef void lut_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                   uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const LutParams* prm = &d.params.lut
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef const uint8_t* t = cb + d.c[LUT_C_TABLE]
    cdef int64_t i
    for i in range(prm.n):
        y[i] = t[x[i]]
