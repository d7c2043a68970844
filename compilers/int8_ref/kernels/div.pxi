# DIV (ops/div.py): broadcast a / b over (outer, mid, inner) blocks.

cdef void div_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                   uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const DivParams* prm = &d.params.div
    cdef int64_t O = prm.outer, Mi = prm.mid, I = prm.inner
    cdef int64_t aso = prm.a_so, asm = prm.a_sm, asi = prm.a_si, bso = prm.b_so, bsm = prm.b_sm
    cdef int64_t bsi = prm.b_si
    cdef int32_t azp = <int32_t>prm.azp, bzp = <int32_t>prm.bzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t sg = prm.sg_in, so = prm.sg_out
    cdef int32_t mult = <int32_t>prm.mult, shift = <int32_t>prm.shift
    cdef float sa = d.f[DIV_F_A_SCALE], sb = d.f[DIV_F_B_SCALE], sy = d.f[DIV_F_Y_SCALE]
    cdef const uint8_t* A = a + d.inp[0]
    cdef const uint8_t* B = a + d.inp[1]
    cdef uint8_t* y = a + d.out
    cdef int64_t o, mi, i, ia, ib, iy = 0, num, q, r
    cdef int32_t ka, kb
    cdef float fa, fb
    for o in range(O):
        for mi in range(Mi):
            ia = o * aso + mi * asm
            ib = o * bso + mi * bsm
            for i in range(I):
                ka = ld(A, ia + i * asi, sg) - azp
                kb = ld(B, ib + i * bsi, sg) - bzp
                if prm.femu:
                    # ORT: DequantizeLinear both, float32 division, QuantizeLinear
                    fa = <float>ka * sa
                    fb = <float>kb * sb
                    st(y, iy, so, f2q((fa / fb) / sy, yzp, qmin, qmax))
                elif kb == 0:
                    # +-inf saturates; 0/0 is NaN, which ORT's QuantizeLinear stores as qmin
                    st(y, iy, so, qmax if ka > 0 else qmin)
                else:
                    # round(ka * 2^frac / kb), half away from zero, then * M / 2^frac;
                    # |ka| <= 255 and frac <= 32, so |num| < 2^40
                    num = (<int64_t>ka) << prm.frac
                    if kb < 0:
                        num = -num
                        kb = -kb
                    q = (num + kb // 2) // kb if num >= 0 else -((-num + kb // 2) // kb)
                    r = i8r_mbqm64(q, mult, shift) + yzp
                    if r < qmin:
                        r = qmin
                    if r > qmax:
                        r = qmax
                    st(y, iy, so, <int32_t>r)
                iy += 1
