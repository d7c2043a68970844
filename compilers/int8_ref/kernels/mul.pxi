# MUL (ops/mul.py): broadcast a * b over (outer, mid, inner) blocks.

cdef void mul_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                   uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const MulParams* prm = &d.params.mul
    cdef int64_t O = prm.outer, Mi = prm.mid, I = prm.inner
    cdef int64_t aso = prm.a_so, asm = prm.a_sm, asi = prm.a_si, bso = prm.b_so, bsm = prm.b_sm
    cdef int64_t bsi = prm.b_si
    cdef int32_t azp = <int32_t>prm.azp, bzp = <int32_t>prm.bzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t sg = prm.sg_in, so = prm.sg_out, mode = prm.mode, femu = prm.femu
    cdef int32_t mult = <int32_t>prm.mult, shift = <int32_t>prm.shift
    # femu: the a, b and output scales in the float slots
    cdef float scale = d.f[MUL_F_MULTIPLIER_OR_A_SCALE], fa, fb
    cdef int64_t prod64
    cdef const uint8_t* A = a + d.inp[0]
    cdef const uint8_t* B = a + d.inp[1]
    cdef uint8_t* y = a + d.out
    cdef int64_t o, mi, i, ia, ib, iy = 0
    cdef int32_t prod
    for o in range(O):
        for mi in range(Mi):
            ia = o * aso + mi * asm
            ib = o * bso + mi * bsm
            for i in range(I):
                if mode == MODE_ORT and femu:
                    # ORT kept this Mul in float: DQ(a) * DQ(b) in float32, then
                    # QuantizeLinear.
                    fa = <float>(ld(A, ia + i * asi, sg) - azp) * scale
                    fb = <float>(ld(B, ib + i * bsi, sg) - bzp) * d.f[MUL_F_B_SCALE]
                    fa = fa * fb
                    st(y, iy, so, f2q(fa / d.f[MUL_F_Y_SCALE], yzp, qmin, qmax))
                elif sg == SG_INT16:
                    # int16: |a - azp| * |b - bzp| <= 65535^2 needs int64
                    prod64 = (<int64_t>(ld(A, ia + i * asi, sg) - azp)
                              * (ld(B, ib + i * bsi, sg) - bzp))
                    st(y, iy, so, requant64(prod64, mode, scale, mult, shift, yzp, qmin,
                                            qmax))
                elif mode == MODE_ORT:
                    # ORT MlasQLinearMulKernel: the output zero point is added in float
                    # before rounding, float(prod) * scale + zc, then round half to even
                    # (a product that lands on .5 rounds with the zero point's parity).
                    prod = (ld(A, ia + i * asi, sg) - azp) * (ld(B, ib + i * bsi, sg) - bzp)
                    st(y, iy, so, f2q(<float>prod * scale + <float>yzp, 0, qmin, qmax))
                else:
                    prod = (ld(A, ia + i * asi, sg) - azp) * (ld(B, ib + i * bsi, sg) - bzp)
                    st(y, iy, so, requant(prod, mode, scale, mult, shift, yzp, qmin, qmax))
                iy += 1
