/* One vector path of the int8 kernels, included by i8r_qgemm.h once per instruction set with
   these macros defined (i8r_simd_undef.h undefines them after each inclusion):

     SFX(name)      the name with the path's suffix
     TGT            the per-function target attribute
     VW             int32 lanes per vector (4, 8 or 16); a panel of 16 columns is NV vectors
     V, VF          integer and float vector types
     vzero(), vload(p), vstore(p, v), vset1(x), vadd, vsub, vmullo, vmin, vmax, vand,
     vsllv, vsrav, vsrai, vsrli, vcmpgt, vcmpeq (all-ones lanes), vblend(a, b, mask),
     vany(mask)     whether any lane of a vcmp mask is set
     vdpbusd(acc, a, b)  acc + the sum of the four u8(a) x s8(b) products of each int32 lane
     vload_i16(p)   VW int16 values sign-extended to int32 lanes
     vmadd(x, w)    per int32 lane: the sum of the products of its two int16 halves (VPMADDWD)
     vdpwssd(acc, x, w)  acc + vmadd(x, w)
     vinterleave(e, o, lo, hi)  NV even and NV odd vectors to 32 lanes in order, e0 o0 e1 o1..
     vgather2(p)    VW dwords at p, p + 8, p + 16, ... bytes (every other dword)
     vpack16(v)     NV vectors of values in [-128, 255] to 16 bytes, each the low byte
     VPACK_SAT      1 when vpack16_us(v) / vpack16_ss(v) exist: the same with unsigned /
                    signed saturation (AVX-512)
     vpack64(r, s)  (optional; one vector per panel) four vectors to 64 bytes in order, with
                    signed (s) or unsigned saturation
     vputmask(p, b, m) store the bytes of lanes m (a contiguous set of bits) at p + lane
     vmulhi31(x, m, mhi)  per lane the low 32 bits of (x m + 2^30) >> 31, mhi = vodd(m)
     vodd(m)        the odd lanes' values in the even lanes (64-bit shift right by 32)
     vinc_gt(r, a, b)  r + 1 in the lanes where a > b
     VEC_REQUANT    1 when the vector requantization is compiled (it needs per-lane variable
                    shifts, AVX2 and up); otherwise i8r_store1 requantizes each element

   Nothing here rounds or saturates differently from i8r_requant.h: vdpbusd is the exact sum
   of four products added with int32 wrap-around (VPDPBUSD, not VPDPBUSDS; emulated with
   VPMADDWD on 16-bit halves, not VPMADDUBSW, whose int16 pair sums saturate: 255*127*2 >
   32767), and the requantization reproduces i8r_f2q / i8r_mbqm step for step. */

#define NV (16 / VW)

#if VEC_REQUANT
/* Requantization constants: an op's (rqo, set up once per kernel call) and one channel's,
   broadcast, or VW channels', per lane (rqch, set up per tile: only what the mode reads). */
typedef struct {
    VF lo, hi;
    V zp, qmin, qmax;
    int mode, general, satpack, out_signed;
} SFX(rqo_t);
typedef struct {
    VF scale;
    V mult, mhi, shift, rs, mask, thr, rs1, rnd;
} SFX(rqch_t);

/* `general`: among channels [c0, c1) a left shift or an INT32_MIN multiplier (rq_fixed must
   take the saturating steps; requantize.py never writes either, a crafted artifact may), or
   a right shift under 2 or a multiplier <= 0 (outside the short form's proof in rq_fixed;
   requantize.py writes these only for multipliers >= 0.25). */
TGT static inline void SFX(rqo_init)(SFX(rqo_t) * o, const i8r_requant_t* q, int64_t c0,
                                    int64_t c1) {
    int64_t ch;
    o->mode = q->mode;
    o->zp = vset1(q->zp);
    o->qmin = vset1(q->qmin);
    o->qmax = vset1(q->qmax);
    o->lo = vf_set1((float)(q->qmin - q->zp));
    o->hi = vf_set1((float)(q->qmax - q->zp));
    o->general = 0;
    /* fixed-point mode with qmax the type's maximum: the pack saturates instead of vmin */
    o->out_signed = q->out_code == 1;
    o->satpack = 0;
    if (VPACK_SAT && q->mode == 1 && q->out_code == 0 && q->qmax == 255) o->satpack = 1;
    if (VPACK_SAT && q->mode == 1 && q->out_code == 1 && q->qmax == 127) o->satpack = 2;
    if (q->mode == 1)
        for (ch = c0; ch < c1; ch++)
            if (q->shift[ch] > -2 || q->mult[ch] <= 0) o->general = 1;
}

/* Every field set (the unused ones to 0, which the compiler drops). */
TGT static inline void SFX(rqch_zero)(SFX(rqch_t) * c) {
    c->scale = vf_set1(0.0f);
    c->mult = c->mhi = c->shift = c->rs = c->mask = c->thr = c->rs1 = c->rnd = vzero();
}

TGT static inline void SFX(rqch_shift)(SFX(rqch_t) * c, const SFX(rqo_t) * o) {
    V zero = vzero(), one = vset1(1);
    c->rs = vmax(vsub(zero, c->shift), zero);
    c->mask = vsub(vsllv(one, c->rs), one);
    c->thr = vsrai(c->mask, 1);
    c->rs1 = vsub(c->rs, one);
    c->rnd = vadd(vadd(o->zp, o->zp), one);
}

/* Constants broadcast from channel `ch` (Conv). */
TGT static inline void SFX(rqch_channel)(SFX(rqch_t) * c, const SFX(rqo_t) * o,
                                        const i8r_requant_t* q, int64_t ch) {
    SFX(rqch_zero)(c);
    if (o->mode == 0) {
        c->scale = vf_set1(q->scale[ch]);
    } else if (o->mode == 1) {
        c->mult = c->mhi = vset1(q->mult[ch]);
        c->shift = vset1(q->shift[ch]);
        SFX(rqch_shift)(c, o);
    }
}

/* Constants per lane from channels n.. (Gemm; the arrays are padded to whole panels). */
TGT static inline void SFX(rqch_lanes)(SFX(rqch_t) * c, const SFX(rqo_t) * o,
                                      const i8r_requant_t* q, int64_t n) {
    SFX(rqch_zero)(c);
    if (o->mode == 0) {
        c->scale = vf_load(q->scale + n);
    } else if (o->mode == 1) {
        c->mult = vload(q->mult + n);
        c->mhi = vodd(c->mult);
        c->shift = vload(q->shift + n);
        SFX(rqch_shift)(c, o);
    }
}

/* i8r_f2q on VW lanes: multiply, clamp, convert half to even (the default MXCSR), add zp.
   No NaN can arise: the loader refuses a non-finite multiplier (ops/conv.py, ops/gemm.py), and
   an int32 times a finite float32 is a number (at worst an infinity, which the clamp bounds). */
TGT static inline __attribute__((always_inline)) V SFX(rq_ort)(
    const SFX(rqo_t) * o, const SFX(rqch_t) * c, V acc) {
    VF v = vf_mul(vf_cvt(acc), c->scale);
    v = vf_min(o->hi, vf_max(o->lo, v));
    return vadd(vf_round(v), o->zp);
}

/* i8r_mbqm plus the zero point on VW lanes. SaturatingRoundingDoublingHighMul is
   floor((x*m + 2^30) / 2^31), which equals TFLite's nudge-and-truncate for both signs (for a
   negative product p, trunc((p + 1 - 2^30) / 2^31) = ceil(...) = floor((p + 2^30) / 2^31));
   only the low 32 bits of each 64-bit quotient are kept, so a logical 64-bit shift serves
   (vmulhi31). Then
   RoundingDivideByPOT: (h >> rs) + 1 when the remainder exceeds half (half plus one when h is
   negative). The general form first shifts left with saturation and saturates
   INT32_MIN * INT32_MIN.

   The short form (multiplier > 0, right shift rs >= 2) takes five operations for that
   rounding and the zero point instead of seven. RoundingDivideByPOT is
   floor((h + 2^(rs-1) - [h < 0]) / 2^rs) = floor((floor(h' / 2^(rs-1)) + 1) / 2) with
   h' = h - [h < 0] (nested floors of divisions by positive integers compose), and adding
   zp outside equals adding 2 zp inside the outer floor. [h < 0] may be read as [x < 0]
   (the sign bit, x >> 31): with m > 0 they differ only for x < 0 with h = 0, where h' = -1
   gives floor(-1 / 2^(rs-1)) = -1 and (-1 + 1) >> 1 = 0 = (0 + 1) >> 1. Nothing overflows:
   h lies in [-2^31 + 1, 2^31 - 2] (|m| < 2^31), so h' >= -2^31, and with rs >= 2
   floor(h' / 2^(rs-1)) < 2^30, far from INT32_MAX after adding 2 zp + 1 <= 511. */
TGT static inline __attribute__((always_inline)) V SFX(rq_fixed)(
    const SFX(rqo_t) * o, const SFX(rqch_t) * c, V x) {
    V h;
    if (o->general) {
        V zero = vzero(), imax = vset1(INT32_MAX), imin = vset1(INT32_MIN);
        V ls = vmax(c->shift, zero);
        V xs = vsllv(x, ls);
        xs = vblend(xs, imax, vcmpgt(x, vsrav(imax, ls)));
        xs = vblend(xs, imin, vcmpgt(vsrav(imin, ls), x));
        h = vmulhi31(xs, c->mult, c->mhi);
        h = vblend(h, imax, vand(vcmpeq(xs, imin), vcmpeq(c->mult, imin)));
    } else {
        h = vadd(vmulhi31(x, c->mult, c->mhi), vsrai(x, 31));
        return vsrai(vadd(vsrav(h, c->rs1), c->rnd), 1);
    }
    V thr = vadd(c->thr, vsrli(h, 31));
    return vadd(vinc_gt(vsrav(h, c->rs), vand(h, c->mask), thr), o->zp);
}

/* The output value: the float clamp of rq_ort already keeps it in [qmin, qmax]; with
   `satpack` the upper clamp is left to the pack (SFX(pack)). */
TGT static inline __attribute__((always_inline)) V SFX(rq_apply)(
    const SFX(rqo_t) * o, const SFX(rqch_t) * c, V acc) {
    if (o->mode == 0) return SFX(rq_ort)(o, c, acc);
    V r = vmax(SFX(rq_fixed)(o, c, acc), o->qmin);
    return o->satpack ? r : vmin(r, o->qmax);
}

/* The 16 bytes of NV vectors of rq_apply. With `satpack` each value is >= qmin but may
   exceed qmax, the type's maximum: an unsigned (uint8, qmin >= 0) or signed (int8)
   saturating pack gives min(v, qmax), what vmin then the truncating vpack16 would. */
TGT static inline __attribute__((always_inline)) __m128i SFX(pack)(const SFX(rqo_t) * o,
                                                                   const V* r) {
#if VPACK_SAT
    if (o->satpack == 1) return vpack16_us(r);
    if (o->satpack == 2) return vpack16_ss(r);
#endif
    (void)o;
    return vpack16(r);
}

/* One panel's 16 bytes through its entry of the panel table (i8r_panel_table): a masked
   store per run of kept lanes, or the map for tables too narrow to hold the runs. */
TGT static inline __attribute__((always_inline)) void SFX(put_panel)(
    const i8r_map_t* map, uint8_t* ych, const int64_t* pe, int64_t j0, __m128i bytes) {
    int64_t n = pe[2], k;
    if (n == 1 && pe[4] == 0xFFFF) {
        _mm_storeu_si128((__m128i*)(ych + pe[3]), bytes);
    } else if (n == 1) {
        vputmask(ych + pe[3], bytes, pe[4]);
    } else if (n) {
        for (k = 0; k < n; k++) vputmask(ych + pe[3 + 2 * k], bytes, pe[4 + 2 * k]);
    } else {
        uint8_t out[16];
        _mm_storeu_si128((__m128i*)out, bytes);
        i8r_map_store(map, ych, 1, out, j0, pe[0], pe[1]);
    }
}
#endif

#if !VEC_REQUANT
typedef int SFX(rqo_t); /* the scalar requantization needs no prepared constants */
typedef int SFX(rqch_t);
#define SFX_RQO_INIT(o, q, c0, c1) (void)(o)
#define SFX_RQCH_CHANNEL(c, o, q, ch) (void)(c)
#else
#define SFX_RQO_INIT(o, q, c0, c1) SFX(rqo_init)(o, q, c0, c1)
#define SFX_RQCH_CHANNEL(c, o, q, ch) SFX(rqch_channel)(c, o, q, ch)
#endif

/* The final accumulators of `count` consecutive panels (from panel p) of group channel `ml`,
   which started from the (folded) bias, with the op's and the channel's requantization
   constants (SFX_RQO_INIT, SFX_RQCH_CHANNEL): subtract the column-sum term, requantize,
   store. A dense map (every
   column kept, in order) stores each panel whole, the last one masked; others go through the
   panel table. Everything the loop reads is copied to locals first: a byte store may alias
   anything, so the compiler would otherwise reload the plan after each one. */
TGT static inline __attribute__((always_inline)) void SFX(store_panels)(
    const i8r_cplan_t* cp, const SFX(rqo_t) * o, const SFX(rqch_t) * c, int64_t ml, int64_t p,
    int64_t count, V* acc) {
    const i8r_requant_t* q = cp->rq;
    const int32_t* colsum = cp->colsum;
    const int64_t* pan = cp->pan + I8R_PAN * p;
    const i8r_map_t map = cp->map;
    int64_t ch = cp->ch0 + ml, t;
    int esz = cp->esz;
    uint8_t* ych = cp->y + ml * map.plane * esz;
    V zb = colsum ? vset1(cp->zb[ch]) : vzero();
    int v;
    (void)o, (void)c;
    if (colsum)
        for (t = 0; t < count * NV; t++)
            acc[t] = vsub(acc[t], vmullo(zb, vload(colsum + 16 * p + VW * t)));
#if VEC_REQUANT
#ifdef vpack64
    if (q->mode != 2 && q->out_code != 2 && count == 4 && cp->dense
        && 16 * (p + 4) <= map.J) {
        /* four whole panels: 64 consecutive bytes from one pack of four vectors */
        V r[4];
        for (t = 0; t < 4; t++) r[t] = SFX(rq_apply)(o, c, acc[t]);
        vstore(ych + 16 * p, vpack64(r, o->out_signed));
        return;
    }
#endif
    if (q->mode != 2 && q->out_code != 2) {
        V r[NV];
        for (t = 0; t < count; t++) {
            int64_t j0 = 16 * (p + t);
            for (v = 0; v < NV; v++) r[v] = SFX(rq_apply)(o, c, acc[t * NV + v]);
            if (!cp->dense)
                SFX(put_panel)(&map, ych, pan + I8R_PAN * t, j0, SFX(pack)(o, r));
            else if (j0 + 16 <= map.J)
                _mm_storeu_si128((__m128i*)(ych + j0), SFX(pack)(o, r));
            else
                vputmask(ych + j0, SFX(pack)(o, r), (1 << (map.J - j0)) - 1);
        }
        return;
    }
#endif
    for (t = 0; t < count; t++) {
        int32_t tmp[16];
        uint8_t out[16 * 4];
        int i;
        for (v = 0; v < NV; v++) vstore(tmp + v * VW, acc[t * NV + v]);
        for (i = 0; i < 16; i++) i8r_store1(q, ch, tmp[i], out, i);
        i8r_map_store(&map, ych, esz, out, 16 * (p + t), pan[I8R_PAN * t], pan[I8R_PAN * t + 1]);
    }
}

/* Conv (orientation b, vectors along the columns): an R-channel x T-panel tile of
   acc[m][j] = sum over k groups of B(kg, j) . W(m, kg). B(kg, j) is the dword at
   b + koff[kg] + 4j (four u8); W(m, kg) the dword at w + 64 kg + 4 m of the channel block
   (four s8). Channels from block lane m0 (group channel ml0), panels from p. */
/* The dot products of a tile, written to `out` once at the end, so that nothing else
   indexes the accumulators inside the k loop and they stay in registers. */
#define CONV_DOT_STEP(R, T, kg, FIRST)                                                      \
    do {                                                                                    \
        const uint8_t* bk = b + cp->koff[kg];                                               \
        V bv[T * NV];                                                                       \
        for (t = 0; t < T * NV; t++) bv[t] = vload(bk + 4 * VW * t);                        \
        for (r = 0; r < R; r++) {                                                           \
            V wv = vset1(i8r_ld32(w + 64 * (kg) + 4 * r));                                  \
            for (t = 0; t < T * NV; t++)                                                    \
                acc[r * T * NV + t] =                                                       \
                    vdpbusd(FIRST ? bias[r] : acc[r * T * NV + t], bv[t], wv);              \
        }                                                                                   \
    } while (0)
/* The first k group starts the sums from the channels' biases (Kq >= 1): zeroing them in a
   loop of its own lets GCC turn it into a memset of `out`. */
#define CONV_DOT(R, T)                                                                      \
    TGT static inline __attribute__((always_inline)) void SFX(conv_dot_##R##x##T)(          \
        const i8r_cplan_t* cp, const int8_t* w, const V* bias, int64_t p, V* out) {         \
        V acc[R * T * NV];                                                                  \
        const uint8_t* b = cp->b + 64 * p;                                                  \
        int r, t;                                                                           \
        int64_t kg;                                                                         \
        CONV_DOT_STEP(R, T, 0, 1);                                                          \
        for (kg = 1; kg < cp->Kq; kg++) CONV_DOT_STEP(R, T, kg, 0);                         \
        for (r = 0; r < R * T * NV; r++) out[r] = acc[r];                                   \
    }
#define CONV_TILE(R, T)                                                                     \
    CONV_DOT(R, T)                                                                          \
    TGT static void SFX(conv_tile_##R##x##T)(const i8r_cplan_t* cp, const SFX(rqo_t) * o,   \
                                             const SFX(rqch_t) * chs, const int8_t* w,      \
                                             int64_t ml0, int64_t m0, int64_t p) {          \
        V acc[R * T * NV], bias[R];                                                         \
        int r;                                                                              \
        for (r = 0; r < R; r++) /* channels past the group's: 0 (their sums are dropped) */ \
            bias[r] = ml0 + r < cp->Mg ? vset1(cp->bias[cp->ch0 + ml0 + r]) : vzero();      \
        SFX(conv_dot_##R##x##T)(cp, w + 4 * m0, bias, p, acc);                             \
        int64_t panels = (cp->map.J + 15) / 16 - p;                                          \
        if (panels > T) panels = T;                                                         \
        for (r = 0; r < R && ml0 + r < cp->Mg; r++)                                         \
            SFX(store_panels)(cp, o, chs + m0 + r, ml0 + r, p, panels, acc + r * T * NV);  \
    }

#define CONV_TILE_X(R, T) CONV_TILE(R, T)
CONV_TILE_X(CONV_R, 1)
CONV_TILE_X(CONV_R, 2)
CONV_TILE_X(CONV_R, 3)
CONV_TILE_X(CONV_R, 4)
#define CONV_CALL2(R, T) SFX(conv_tile_##R##x##T)
#define CONV_CALL(R, T) CONV_CALL2(R, T)

/* Channel blocks [mb0, mb1) of one plan, every panel; a block's channel constants are set
   up once for all its panels. */
TGT static void SFX(conv_run)(const i8r_cplan_t* cp, int64_t mb0, int64_t mb1) {
    int64_t np = (cp->map.J + 15) / 16, mb, p, m0;
    SFX(rqo_t) o;
    SFX(rqch_t) chs[16];
    SFX_RQO_INIT(&o, cp->rq, cp->ch0, cp->ch0 + cp->Mg);
    for (mb = mb0; mb < mb1; mb++) {
        const int8_t* w = cp->w + mb * cp->Kq * 64;
        for (m0 = 0; m0 < 16 && mb * 16 + m0 < cp->Mg; m0++)
            SFX_RQCH_CHANNEL(&chs[m0], &o, cp->rq, cp->ch0 + mb * 16 + m0);
        for (p = 0; p < np; p += CONV_TMAX) {
            int64_t left = np - p < CONV_TMAX ? np - p : CONV_TMAX;
            for (m0 = 0; m0 < 16 && mb * 16 + m0 < cp->Mg; m0 += CONV_R) {
                int64_t ml0 = mb * 16 + m0;
                if (left >= 4)
                    CONV_CALL(CONV_R, 4)(cp, &o, chs, w, ml0, m0, p);
                else if (left == 3)
                    CONV_CALL(CONV_R, 3)(cp, &o, chs, w, ml0, m0, p);
                else if (left == 2)
                    CONV_CALL(CONV_R, 2)(cp, &o, chs, w, ml0, m0, p);
                else
                    CONV_CALL(CONV_R, 1)(cp, &o, chs, w, ml0, m0, p);
            }
        }
    }
}

/* Gemm output: channels n0.. of row `row`: folded bias, row-sum correction, requantization. */
TGT static void SFX(gemm_put)(const i8r_gplan_t* gp, const SFX(rqo_t) * o, int64_t row,
                              int64_t n0, V* acc) {
    const i8r_requant_t* q = gp->rq;
    int64_t count = gp->N - n0 < 16 ? gp->N - n0 : 16;
    int es = i8r_out_size(q), v, i;
    uint8_t* y = gp->y + (row * gp->N + n0) * es;
    for (v = 0; v < NV; v++) {
        acc[v] = vadd(acc[v], vload(gp->bias + n0 + VW * v));
        if (gp->rowsum)
            acc[v] = vsub(acc[v], vmullo(vload(gp->zb + n0 + VW * v), vset1(gp->rowsum[row])));
    }
#if VEC_REQUANT
    if (q->mode != 2 && q->out_code != 2) {
        V r[NV];
        for (v = 0; v < NV; v++) {
            SFX(rqch_t) c;
            SFX(rqch_lanes)(&c, o, q, n0 + VW * v);
            r[v] = SFX(rq_apply)(o, &c, acc[v]);
        }
        vputmask(y, SFX(pack)(o, r), (1 << count) - 1);
        return;
    }
#endif
    {
        int32_t tmp[16];
        for (v = 0; v < NV; v++) vstore(tmp + v * VW, acc[v]);
        for (i = 0; i < count; i++) i8r_store1(q, n0 + i, tmp[i], y, i);
    }
}

/* Gemm (orientation a, vectors along the output channels): an R-row x T-panel tile of
   acc[r][n] = sum over k groups of X(r, kg) . W(kg, n); X(r, kg) is the dword at
   x + r*K + 4 kg, read in place; W the packed [Nb][Kq][16][4]. S: x is int8 and the weights
   are stored as u8 (the u8 operand of vdpbusd must be the vector one). */
#define GEMM_TILE(R, T, S)                                                                  \
    TGT static void SFX(gemm_tile_##R##x##T##_##S)(const i8r_gplan_t* gp,                   \
                                                   const SFX(rqo_t) * o, int64_t r0,       \
                                                   int64_t p0) {                           \
        V acc[R * T * NV];                                                                  \
        const uint8_t* x = gp->x + r0 * gp->K;                                              \
        const uint8_t* w = gp->w + p0 * gp->Kq * 64;                                        \
        int r, t;                                                                           \
        int64_t kg;                                                                         \
        for (r = 0; r < R * T * NV; r++) acc[r] = vzero();                                  \
        for (kg = 0; kg < gp->Kq; kg++) {                                                   \
            V wv[T * NV];                                                                   \
            for (t = 0; t < T * NV; t++)                                                    \
                wv[t] = vload(w + (t / NV) * gp->Kq * 64 + 64 * kg + 4 * VW * (t % NV));    \
            for (r = 0; r < R; r++) {                                                       \
                V xv = vset1(i8r_ld32(x + r * gp->K + 4 * kg));                             \
                for (t = 0; t < T * NV; t++)                                                \
                    acc[r * T * NV + t] = S ? vdpbusd(acc[r * T * NV + t], wv[t], xv)       \
                                            : vdpbusd(acc[r * T * NV + t], xv, wv[t]);      \
            }                                                                               \
        }                                                                                   \
        for (r = 0; r < R; r++)                                                             \
            for (t = 0; t < T; t++)                                                         \
                SFX(gemm_put)(gp, o, r0 + r, 16 * (p0 + t), acc + (r * T + t) * NV);        \
    }

#define GEMM_ROWS(T, S)                                                                     \
    GEMM_TILE(1, T, S) GEMM_TILE(2, T, S) GEMM_TILE(3, T, S) GEMM_TILE(4, T, S)
GEMM_ROWS(1, 0)
GEMM_ROWS(2, 0)
GEMM_ROWS(4, 0)
GEMM_ROWS(1, 1)
GEMM_ROWS(2, 1)
GEMM_ROWS(4, 1)

typedef void (*SFX(gemm_tile_fn))(const i8r_gplan_t*, const SFX(rqo_t)*, int64_t, int64_t);
#define GEMM_FNS(S)                                                                         \
    {{SFX(gemm_tile_1x1_##S), SFX(gemm_tile_2x1_##S), SFX(gemm_tile_3x1_##S),               \
      SFX(gemm_tile_4x1_##S)},                                                              \
     {SFX(gemm_tile_1x2_##S), SFX(gemm_tile_2x2_##S), SFX(gemm_tile_3x2_##S),               \
      SFX(gemm_tile_4x2_##S)},                                                              \
     {SFX(gemm_tile_1x4_##S), SFX(gemm_tile_2x4_##S), SFX(gemm_tile_3x4_##S),               \
      SFX(gemm_tile_4x4_##S)}}

/* Panels [p0, p1) of every row, in tiles of up to GEMM_RMAX rows x GEMM_TMAX panels. */
TGT static void SFX(gemm_run)(const i8r_gplan_t* gp, int64_t p0, int64_t p1) {
    static SFX(gemm_tile_fn) const fns[2][3][4] = {GEMM_FNS(0), GEMM_FNS(1)};
    int s = gp->x_signed ? 1 : 0;
    int64_t p, r;
    SFX(rqo_t) o;
    SFX_RQO_INIT(&o, gp->rq, 0, gp->N);
    for (p = p0; p < p1;) {
        int64_t tp = p1 - p >= 4 && GEMM_TMAX >= 4 ? 4 : (p1 - p >= 2 && GEMM_TMAX >= 2 ? 2 : 1);
        int ti = tp == 4 ? 2 : (tp == 2 ? 1 : 0);
        for (r = 0; r < gp->Mr;) {
            int64_t rr = gp->Mr - r < GEMM_RMAX ? gp->Mr - r : GEMM_RMAX;
            fns[s][ti][rr - 1](gp, &o, r, p);
            r += rr;
        }
        p += tp;
    }
}

/* Strided Conv: the im2col columns of output rows [oy0, oy1) from the packed input: column
   (oy, ox) of k group (cq, ky, kx) is the dword at x4 + koff[kg] + 4 (oy sh Wp + ox sw), so
   each k group's row is a strided dword copy. */
TGT static void SFX(im2col)(const i8r_cplan_t* cp, const uint8_t* x4, const int64_t* koff,
                            int64_t sh, int64_t sw, int64_t Wp, int64_t OW, int64_t oy0,
                            int64_t oy1, uint8_t* dst, int64_t QS) {
    int64_t kg, oy, ox;
    for (kg = 0; kg < cp->Kq; kg++) {
        uint8_t* row = dst + kg * QS * 4;
        for (oy = oy0; oy < oy1; oy++, row += 4 * OW) {
            const uint8_t* src = x4 + koff[kg] + 4 * oy * sh * Wp;
            ox = 0;
            if (sw == 2)
                for (; ox + VW <= OW; ox += VW) vstore(row + 4 * ox, vgather2(src + 8 * ox));
            for (; ox < OW; ox++) memcpy(row + 4 * ox, src + 4 * ox * sw, 4);
        }
    }
}

/* Depthwise (one input channel per output channel), stride 1: columns run over the padded
   width, acc[j] = bias + sum over taps t of plane[j + off[t]] * w[t], the int16 plane holding
   x - zp (padding 0) and w = w - wzp, so each product is exact in int32 and no zero-point term
   is left. Two panels per step. */
TGT static void SFX(dw_flat)(const i8r_dwplan_t* dp, const int16_t* plane, int64_t ch,
                             const int16_t* w) {
    int64_t j0, t, J = dp->cp.map.J, taps = dp->taps;
    const int64_t* off = dp->off;
    int v;
    SFX(rqo_t) rqo;
    SFX(rqch_t) c;
    SFX_RQO_INIT(&rqo, dp->rq, ch, ch + 1);
    SFX_RQCH_CHANNEL(&c, &rqo, dp->rq, ch);
    for (j0 = 0; j0 < J; j0 += 32) {
        V acc[2 * NV];
        for (v = 0; v < 2 * NV; v++) acc[v] = vset1(dp->bias[ch]);
        for (t = 0; t < taps; t++) {
            V wv = vset1((int32_t)(uint16_t)w[t]);
            const int16_t* src = plane + j0 + off[t];
            for (v = 0; v < 2 * NV; v++)
                acc[v] = vadd(acc[v], vmadd(vload_i16(src + VW * v), wv));
        }
        SFX(store_panels)(&dp->cp, &rqo, &c, 0, j0 / 16, j0 + 16 < J ? 2 : 1, acc);
    }
}

/* Depthwise with a horizontal stride of 2, one output row at a time: the even int16 of each
   pair is the low half of an int32 lane, and w's high half is 0. */
TGT static void SFX(dw_stride2)(const i8r_dwplan_t* dp, const int16_t* plane, int64_t ch,
                                const int16_t* w) {
    int64_t oy, j0, t, taps = dp->taps;
    const int64_t* off = dp->off;
    int v;
    i8r_cplan_t cp = dp->cp;
    SFX(rqo_t) rqo;
    SFX(rqch_t) c;
    SFX_RQO_INIT(&rqo, dp->rq, ch, ch + 1);
    SFX_RQCH_CHANNEL(&c, &rqo, dp->rq, ch);
    for (oy = 0; oy < dp->OH; oy++) {
        const int16_t* row = plane + oy * dp->sh * dp->Wp;
        cp.y = dp->cp.y + oy * dp->OW * dp->cp.esz;
        for (j0 = 0; j0 < dp->OW; j0 += 16) {
            V acc[NV];
            for (v = 0; v < NV; v++) acc[v] = vset1(dp->bias[ch]);
            for (t = 0; t < taps; t++) {
                V wv = vset1((int32_t)(uint16_t)w[t]);
                const int16_t* src = row + 2 * j0 + off[t];
                for (v = 0; v < NV; v++)
                    acc[v] = vadd(acc[v], vmadd(vload(src + 2 * VW * v), wv));
            }
            SFX(store_panels)(&cp, &rqo, &c, 0, j0 / 16, 1, acc);
        }
    }
}

/* Depthwise, two horizontally adjacent taps per multiply (horizontal dilation 1): a dword read
   at an int16 offset of the plane holds two neighbours, low half first, and vdpwssd against
   (w[kx], w[kx + 1]) adds both taps' products to its int32 lane; a last odd tap pairs with a
   weight of 0. `wp`: the channel's pair weights, `pairs` per kernel row; `rows`: the kernel
   rows' offsets in the plane. Stride 1: even and odd output columns are separate vectors
   (both read whole dwords), interleaved once before the store. */
/* Stride 1: `kh` kernel rows of `pairs` pairs; inlined with the common sizes as constants,
   so that the weights stay in registers and the tap loops unroll. */
TGT static inline __attribute__((always_inline)) void SFX(dw_pairs_s1)(
    const i8r_dwplan_t* dp, const SFX(rqo_t) * rqo, const SFX(rqch_t) * c,
    const int16_t* plane, const int32_t* wp, int64_t pairs, const int64_t* rows, int64_t kh) {
    int64_t J = dp->cp.map.J, j0, ky, q;
    int v;
    /* two such steps at once while 64 columns remain: four independent accumulators */
    for (j0 = 0; j0 + 64 <= J; j0 += 64) {
        V e[2 * NV], o[2 * NV], acc[4 * NV];
        for (v = 0; v < 2 * NV; v++) e[v] = o[v] = vset1(dp->bias[dp->cp.ch0]);
        for (ky = 0; ky < kh; ky++) {
            const int16_t* base = plane + j0 + rows[ky];
            for (q = 0; q < pairs; q++) {
                V wv = vset1(wp[ky * pairs + q]);
                for (v = 0; v < 2 * NV; v++) {
                    const int16_t* at = base + 32 * (v / NV) + 2 * q + 2 * VW * (v % NV);
                    e[v] = vdpwssd(e[v], vload(at), wv);
                    o[v] = vdpwssd(o[v], vload(at + 1), wv);
                }
            }
        }
        vinterleave(e, o, acc, acc + NV);
        vinterleave(e + NV, o + NV, acc + 2 * NV, acc + 3 * NV);
        SFX(store_panels)(&dp->cp, rqo, c, 0, j0 / 16, 4, acc);
    }
    for (; j0 < J; j0 += 32) {
        V e[NV], o[NV], acc[2 * NV];
        /* both start from the bias: each lane becomes one output */
        for (v = 0; v < NV; v++) e[v] = o[v] = vset1(dp->bias[dp->cp.ch0]);
        for (ky = 0; ky < kh; ky++) {
            const int16_t* base = plane + j0 + rows[ky];
            for (q = 0; q < pairs; q++) {
                V wv = vset1(wp[ky * pairs + q]);
                for (v = 0; v < NV; v++) {
                    e[v] = vdpwssd(e[v], vload(base + 2 * q + 2 * VW * v), wv);
                    o[v] = vdpwssd(o[v], vload(base + 1 + 2 * q + 2 * VW * v), wv);
                }
            }
        }
        vinterleave(e, o, acc, acc + NV);
        SFX(store_panels)(&dp->cp, rqo, c, 0, j0 / 16, j0 + 16 < J ? 2 : 1, acc);
    }
}

/* Other strides (horizontal 2, any vertical): one output row at a time; the dword at int16
   offset 2 j + 2 q of a kernel row holds the taps 2q and 2q + 1 of output column j. `T`
   panels of the row from panel p, each with its own accumulators, so that the multiply-adds
   of one panel do not wait on another's; the same sums, panel by panel, and the same reads as
   one panel at a time. */
TGT static inline __attribute__((always_inline)) void SFX(dw_rows_step)(
    const i8r_dwplan_t* dp, const i8r_cplan_t* cp, const SFX(rqo_t) * rqo,
    const SFX(rqch_t) * c, const int16_t* row, const int32_t* wp, int64_t pairs,
    const int64_t* rows, int64_t kh, int64_t p, int T) {
    V acc[4 * NV];
    int64_t ky, q;
    int v;
    for (v = 0; v < T * NV; v++) acc[v] = vset1(dp->bias[dp->cp.ch0]);
    for (ky = 0; ky < kh; ky++) {
        const int16_t* base = row + rows[ky] + 32 * p;
        for (q = 0; q < pairs; q++) {
            V wv = vset1(wp[ky * pairs + q]);
            for (v = 0; v < T * NV; v++)
                acc[v] = vdpwssd(acc[v], vload(base + 2 * q + 2 * VW * v), wv);
        }
    }
    SFX(store_panels)(cp, rqo, c, 0, p, T, acc);
}

/* Every output row: four panels per step while four remain, then two, then one. */
TGT static inline __attribute__((always_inline)) void SFX(dw_pairs_rows)(
    const i8r_dwplan_t* dp, const SFX(rqo_t) * rqo, const SFX(rqch_t) * c,
    const int16_t* plane, const int32_t* wp, int64_t pairs, const int64_t* rows, int64_t kh) {
    i8r_cplan_t cp = dp->cp;
    int64_t oy, p, np = (dp->OW + 15) / 16;
    for (oy = 0; oy < dp->OH; oy++) {
        const int16_t* row = plane + oy * dp->sh * dp->Wp;
        cp.y = dp->cp.y + oy * dp->OW * dp->cp.esz;
        for (p = 0; p + 4 <= np; p += 4)
            SFX(dw_rows_step)(dp, &cp, rqo, c, row, wp, pairs, rows, kh, p, 4);
        if (p + 2 <= np) {
            SFX(dw_rows_step)(dp, &cp, rqo, c, row, wp, pairs, rows, kh, p, 2);
            p += 2;
        }
        if (p < np) SFX(dw_rows_step)(dp, &cp, rqo, c, row, wp, pairs, rows, kh, p, 1);
    }
}

TGT static void SFX(dw_pairs)(const i8r_dwplan_t* dp, const int16_t* plane, int64_t ch,
                              const int32_t* wp, int64_t pairs, const int64_t* rows,
                              int64_t kh) {
    SFX(rqo_t) rqo;
    SFX(rqch_t) c;
    SFX_RQO_INIT(&rqo, dp->rq, ch, ch + 1);
    SFX_RQCH_CHANNEL(&c, &rqo, dp->rq, ch);
    if (dp->sh == 1 && dp->sw == 1) {
        if (kh == 3 && pairs == 2)
            SFX(dw_pairs_s1)(dp, &rqo, &c, plane, wp, 2, rows, 3);
        else if (kh == 5 && pairs == 3)
            SFX(dw_pairs_s1)(dp, &rqo, &c, plane, wp, 3, rows, 5);
        else
            SFX(dw_pairs_s1)(dp, &rqo, &c, plane, wp, pairs, rows, kh);
    } else if (kh == 3 && pairs == 2) {
        SFX(dw_pairs_rows)(dp, &rqo, &c, plane, wp, 2, rows, 3);
    } else if (kh == 5 && pairs == 3) {
        SFX(dw_pairs_rows)(dp, &rqo, &c, plane, wp, 3, rows, 5);
    } else {
        SFX(dw_pairs_rows)(dp, &rqo, &c, plane, wp, pairs, rows, kh);
    }
}

#undef CONV_TILE
#undef SFX_RQO_INIT
#undef SFX_RQCH_CHANNEL
#undef CONV_DOT
#undef CONV_DOT_STEP
#undef CONV_TILE_X
#undef CONV_CALL
#undef CONV_CALL2
#undef GEMM_TILE
#undef GEMM_ROWS
#undef GEMM_FNS
#undef NV
