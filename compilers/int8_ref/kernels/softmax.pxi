# SOFTMAX (ops/softmax.py): last-axis softmax through a 256-entry exp table.

cdef void softmax_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                       uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const SoftmaxParams* prm = &d.params.softmax
    # Softmax over the last axis with a 256-entry exp table indexed by the distance to the
    # row maximum (ORT QLinearSoftmax, contrib_ops/cpu/quantization/qlinear_softmax.cc).
    # ort: float32 table, float32 running sum in element order, nearbyintf((e * floor(1/ys))
    # / sum) + zp, and ORT's store (int8: only values above 255 saturate, the rest wrap).
    # fixed-point: uint32 table, uint64 products, integer division rounded half up; clamped.
    cdef int64_t rows = prm.rows, cols = prm.cols, sg = prm.sg_in, mode = prm.mode, r, i
    cdef int32_t off = <int32_t>prm.off
    cdef const float* tf = <const float*>(cb + d.c[SOFTMAX_C_EXP_TABLE])
    cdef const uint32_t* tu = <const uint32_t*>(cb + d.c[SOFTMAX_C_EXP_TABLE])
    cdef const uint8_t* x = a + d.inp[0]
    cdef uint8_t* y = a + d.out
    cdef int32_t mx, v, yzp = <int32_t>prm.yzp, qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int32_t vq
    cdef uint32_t idx
    cdef float fsum, ysc = d.f[SOFTMAX_F_YSCALE], fv
    cdef uint64_t usum, ysi = <uint64_t>prm.yscale_int
    for r in range(rows):
        mx = -2147483647
        for i in range(cols):
            v = ld(x, r * cols + i, sg)
            if v > mx:
                mx = v
        fsum = 0
        usum = 0
        for i in range(cols):
            idx = <uint32_t>((ld(x, r * cols + i, sg) + (127 if sg else 255) - mx) & 0xFF)
            if mode == MODE_ORT:
                fsum = fsum + tf[idx]
            else:
                usum = usum + tu[idx]
        for i in range(cols):
            idx = <uint32_t>((ld(x, r * cols + i, sg) + (127 if sg else 255) - mx) & 0xFF)
            if mode == MODE_ORT:
                if fsum == 0:
                    vq = yzp
                else:
                    fv = (tf[idx] * ysc) / fsum
                    if fv != fv or fv > 1e9:
                        fv = 1e9
                    vq = <int32_t>lrintf(fv) + yzp
                if off:
                    # QDQ graphs: ORT's uint8 kernel (zero point + 128), saturating at 255
                    vq = vq + off
                    if vq > 255:
                        vq = 255
                    vq = vq - off
                elif vq > 255:  # ORT's own store: only values above 255 saturate
                    vq = 255
                if not sg and vq < 0:
                    vq = 0
                y[r * cols + i] = <uint8_t>(vq & 0xFF)
            else:
                if usum == 0:
                    vq = yzp
                else:
                    vq = <int32_t>((tu[idx] * ysi + usum // 2) // usum) + yzp
                y[r * cols + i] = <uint8_t>clampi(vq, qmin, qmax)
