# LUT_CHANNELS (ops/lut_channels.py): out = tables[channel][in], entries of out_bytes bytes.

cdef void lut_channels_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                            uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const LutChannelsParams* prm = &d.params.lut_channels
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef const uint8_t* tables = cb + d.c[LUT_CHANNELS_C_TABLES]
    cdef const uint8_t* t
    cdef int64_t o, ch, i, base = 0, nb = prm.out_bytes
    for o in range(prm.outer):
        for ch in range(prm.channels):
            t = tables + ch * 256 * nb
            if nb == 1:
                for i in range(prm.inner):
                    y[base + i] = t[x[base + i]]
            else:
                for i in range(prm.inner):
                    memcpy(y + (base + i) * nb, t + x[base + i] * nb, nb)
            base += prm.inner
