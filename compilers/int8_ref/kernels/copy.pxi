# COPY (ops/copy.py): the bytes of the input, unchanged, into the output.

cdef void copy_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                    uint8_t* scratch, const Host* host) noexcept nogil:
    memcpy(a + d.out, a + d.inp[0], <size_t>d.params.copy.nbytes)
