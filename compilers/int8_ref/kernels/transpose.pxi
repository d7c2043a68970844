# TRANSPOSE (ops/transpose.py): a byte gather over six nested loops.

cdef void transpose_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                         uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const TransposeParams* prm = &d.params.transpose
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t i0, i1, i2, i3, i4, i5, o = 0, b0, b1, b2, b3, b4
    for i0 in range(prm.d0):
        b0 = i0 * prm.s0
        for i1 in range(prm.d1):
            b1 = b0 + i1 * prm.s1
            for i2 in range(prm.d2):
                b2 = b1 + i2 * prm.s2
                for i3 in range(prm.d3):
                    b3 = b2 + i3 * prm.s3
                    for i4 in range(prm.d4):
                        b4 = b3 + i4 * prm.s4
                        for i5 in range(prm.d5):
                            y[o] = x[b4 + i5 * prm.s5]
                            o += 1
