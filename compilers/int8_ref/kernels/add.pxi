# ADD (ops/add.py): broadcast a + b over (outer, mid, inner) blocks.

cdef void add_eval(const OpDesc* d, uint8_t* a, const uint8_t* cb,
                   uint8_t* scratch, const Host* host) noexcept nogil:
    cdef const AddParams* prm = &d.params.add
    cdef int64_t O = prm.outer, Mi = prm.mid, I = prm.inner
    cdef int64_t aso = prm.a_so, asm = prm.a_sm, asi = prm.a_si, bso = prm.b_so, bsm = prm.b_sm
    cdef int64_t bsi = prm.b_si
    cdef int32_t azp = <int32_t>prm.azp, bzp = <int32_t>prm.bzp, yzp = <int32_t>prm.yzp
    cdef int32_t qmin = <int32_t>prm.qmin, qmax = <int32_t>prm.qmax
    cdef int64_t sg = prm.sg_in, so = prm.sg_out, mode = prm.mode, ls = prm.left_shift
    cdef int64_t femu = prm.femu
    cdef int32_t off = <int32_t>prm.off
    cdef int32_t ma = <int32_t>prm.mult_a, sa = <int32_t>prm.shift_a, mb = <int32_t>prm.mult_b
    cdef int32_t sb = <int32_t>prm.shift_b, my = <int32_t>prm.mult_y, sy = <int32_t>prm.shift_y
    cdef const uint8_t* A = a + d.inp[0]
    cdef const uint8_t* B = a + d.inp[1]
    cdef uint8_t* y = a + d.out
    cdef int64_t o, mi, i, ia, ib, iy = 0
    # femu: the a, b and output scales in these slots
    cdef float rac = d.f[ADD_F_RAC_OR_A_SCALE], rbc = d.f[ADD_F_RBC_OR_B_SCALE]
    cdef float fixed = d.f[ADD_F_FIXED_OR_Y_SCALE], fx, v
    cdef int32_t qa, qb, r
    cdef i8r_add_t q
    if not femu and sg != SG_INT16 and so != SG_INT16:
        # 8-bit in and out: one span at a time through i8r_add (vector paths for contiguous
        # spans and scalar sides; the same arithmetic as the loops below)
        q.mode, q.x_signed, q.off, q.left_shift = <int32_t>mode, sg == SG_INT8, off, <int32_t>ls
        q.azp, q.bzp, q.yzp, q.qmin, q.qmax = azp, bzp, yzp, qmin, qmax
        q.rac, q.rbc, q.fixed = rac, rbc, fixed
        q.mult_a, q.shift_a, q.mult_b, q.shift_b, q.mult_y, q.shift_y = ma, sa, mb, sb, my, sy
        for o in range(O):
            for mi in range(Mi):
                i8r_add(host.isa, &q, A + o * aso + mi * asm, asi, B + o * bso + mi * bsm, bsi,
                        y + iy, I)
                iy += I
        return
    for o in range(O):
        for mi in range(Mi):
            ia = o * aso + mi * asm
            ib = o * bso + mi * bsm
            if mode == MODE_ORT and femu:
                # ORT kept this Add in float: DQ(a) + DQ(b) in float32, then QuantizeLinear
                # (division by the output scale, round half to even).
                for i in range(I):
                    fx = <float>(ld(A, ia + i * asi, sg) - azp) * rac
                    v = <float>(ld(B, ib + i * bsi, sg) - bzp) * rbc
                    fx = fx + v
                    st(y, iy, so, f2q(fx / fixed, yzp, qmin, qmax))
                    iy += 1
            elif mode == MODE_ORT:
                # ORT MlasQLinearAddKernelAvx2Helper: FixedPart = zc - (rAC*za + rBC*zb);
                # when one side is a scalar over the span it is folded into FixedPart,
                # FixedPart + b*rBC (contracted to an fma, as the compiler builds ORT's AVX2
                # unit), else c = fma(a, rAC, fma(b, rBC, FixedPart)); cvtps2dq (round half
                # to even), saturating packs.
                if bsi == 0 and asi != 0:
                    fx = fmaf(<float>(ld(B, ib, sg) + off), rbc, fixed)
                    for i in range(I):
                        v = fmaf(<float>(ld(A, ia + i, sg) + off), rac, fx)
                        y[iy] = <uint8_t>(f2q(v, 0, qmin + off, qmax + off) - off)
                        iy += 1
                elif asi == 0 and bsi != 0:
                    fx = fmaf(<float>(ld(A, ia, sg) + off), rac, fixed)
                    for i in range(I):
                        v = fmaf(<float>(ld(B, ib + i, sg) + off), rbc, fx)
                        y[iy] = <uint8_t>(f2q(v, 0, qmin + off, qmax + off) - off)
                        iy += 1
                else:
                    for i in range(I):
                        v = fmaf(<float>(ld(A, ia + i * asi, sg) + off), rac,
                                 fmaf(<float>(ld(B, ib + i * bsi, sg) + off), rbc, fixed))
                        y[iy] = <uint8_t>(f2q(v, 0, qmin + off, qmax + off) - off)
                        iy += 1
            else:
                # TFLite reference Add (integer_ops/add.h): both inputs shifted left by 20,
                # rescaled to 2*max(scale), summed, rescaled to the output.
                for i in range(I):
                    qa = i8r_mbqm((ld(A, ia + i * asi, sg) - azp) * (1 << ls), ma, sa)
                    qb = i8r_mbqm((ld(B, ib + i * bsi, sg) - bzp) * (1 << ls), mb, sb)
                    r = i8r_mbqm(qa + qb, my, sy) + yzp
                    st(y, iy, so, clampi(r, qmin, qmax))
                    iy += 1
