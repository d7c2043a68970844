# PAD (ops/pad.py): the output filled with the pad value, then the input rows copied in.

cdef void pad_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                   uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const PadParams* prm = &d.params.pad
    cdef int64_t N = prm.N, C = prm.C, H = prm.H, W = prm.W, OH = prm.OH, OW = prm.OW
    cdef int64_t pt = prm.pt, pl = prm.pl
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int64_t nc, r
    memset(y, <int>(prm.value & 0xFF), <size_t>(N * C * OH * OW))
    for nc in range(N * C):
        for r in range(H):
            memcpy(y + (nc * OH + r + pt) * OW + pl, x + (nc * H + r) * W, <size_t>W)
