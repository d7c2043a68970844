# CONCAT_PART (ops/concat.py): one input into its slot of the output, copied or through
# its 256-entry table.

cdef void concat_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                      uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const ConcatParams* prm = &d.params.concat
    cdef int64_t outer = prm.outer, ii = prm.inner_in, io = prm.inner_out, off = prm.offset
    cdef int64_t lut = prm.use_lut
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef const uint8_t* t = cb + d.c[CONCAT_C_TABLE]
    cdef int64_t o, i
    for o in range(outer):
        if lut:
            for i in range(ii):
                y[o * io + off + i] = t[x[o * ii + i]]
        else:
            memcpy(y + o * io + off, x + o * ii, <size_t>ii)
