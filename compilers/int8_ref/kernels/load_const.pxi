# LOAD_CONST (ops/load_const.py): a constant operand from the constant data into the arena.

cdef void load_const_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                          uint8_t* scratch, const Host* host) noexcept nogil:
    memcpy(a + d.out, cb + d.c[LOAD_CONST_C_DATA], <size_t>d.params.load_const.nbytes)
