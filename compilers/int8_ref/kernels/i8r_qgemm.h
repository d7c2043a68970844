/* int8 Conv and Gemm for the int8-ref firmware: weights packed at compile time, vector
   micro-kernels chosen at run time (i8r_isa.h), requantization as i8r_requant.h.

   The dot product. A Conv or Gemm output is acc = bias + sum_k (x_k - xzp) (w_k - wzp). The
   micro-kernels multiply unsigned by signed bytes four at a time (VPDPBUSD: u8 x s8, summed
   into an int32 lane), so the sum is expanded, as ONNX Runtime's MLAS does with its row and
   column sums (onnxruntime/core/mlas/lib/qgemm.h, MlasGemmU8X8Operation):

       sum_k (x_k - xzp)(w_k - wzp) = sum_k x_k w_k - wzp sum_k x_k - xzp sum_k w_k + K xzp wzp

   The last two terms are constants folded into the bias at compile time; the second is
   computed at run time only when a weight zero point (or, below, the sign flip) asks for it.
   All of it is int32 arithmetic with wrap-around: the terms may leave the int32 range, their
   sum is the exact accumulator whenever the accumulator itself fits (the compiler refuses
   reductions that could overflow), so every path gives the same bits.

   Operand types. The unsigned operand of VPDPBUSD must be the vector one (the broadcast one
   can only be the signed one):
   - Conv broadcasts weights and loads activations: activations become u8 when they are packed
     (int8 x ^ 0x80 = x + 128, zero point + 128), weights stay s8 (uint8 weights become
     w - 128 with zero point - 128). zb = the weight zero point (s8 domain).
   - Gemm loads weights and broadcasts activations, which it reads in place: uint8
     activations pair with s8 weights; int8 activations with weights stored as u8 (w ^ 0x80 =
     w + 128), and then sum_k x_k w_k = sum_k x_k (w_k + 128) - 128 sum_k x_k, so
     zb = wzp + 128 and the row sums are always taken.
   The expansion's bias and zb are computed by the compiler (int8_ref/kernel_pack.py).

   Packed weights [Mb][Kq][16][4]: blocks of 16 output channels, for each group of four
   packed k the 16 channels' four bytes (VPDPBUSD's dword), zero past the last channel or k.
   Conv has two k orders: im2col order (c, ky, kx) padded to 4; direct order
   (c/4, ky, kx, c%4) with channels padded to 4. Depthwise Conv keeps int16 w - wzp per tap and
   multiplies int16 x - xzp, which needs no expansion at all.

   Conv paths (chosen by the compiler, a parameter of the op):
   - direct (stride 1): the input is repacked once into [C/4][Hp][Wp][4] (four channels'
     bytes per pixel, padding rows and columns at the zero point) and each k group's dwords
     for consecutive output columns are consecutive: no im2col. Columns run over the padded
     width (j = oy Wp + ox); the Wp - OW extra ones per row are computed and dropped.
   - im2col (any stride): columns (image, oy, ox) are gathered in chunks into [Kq][QS][4].
   - depthwise: one int16 padded plane per channel; int32 lanes along the output columns. */
#ifndef I8R_QGEMM_H
#define I8R_QGEMM_H

#include <stdint.h>
#include <string.h>

#include "i8r_isa.h"
#include "i8r_pool.h"
#include "i8r_requant.h"

static inline int32_t i8r_ld32(const void* p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Where column j of a plan goes: (a, b) = divmod(j + jofs, L); kept when b < V; element
   a*S + b of the channel's output. Consecutive channels are `plane` elements apart. */
typedef struct {
    int64_t L, V, S, J, jofs, plane;
} i8r_map_t;

/* Store 16 elements (`esz` bytes each) of columns j0..j0+15 through `map`; (a, b) is column
   j0's place. */
static void i8r_map_store(const i8r_map_t* map, uint8_t* ych, int esz, const uint8_t* vals,
                          int64_t j0, int64_t a, int64_t b) {
    int64_t l = 0, left = map->J - j0;
    while (l < 16 && l < left) {
        int64_t seg = 16 - l;
        if (seg > map->L - b) seg = map->L - b;
        if (seg > left - l) seg = left - l;
        int64_t keep = map->V - b < seg ? map->V - b : seg;
        if (keep > 0)
            memcpy(ych + (a * map->S + b) * esz, vals + l * esz, (size_t)(keep * esz));
        l += seg;
        b += seg;
        if (b == map->L) {
            b = 0;
            a++;
        }
    }
}

/* The panel table of a map, I8R_PAN int64 per panel of 16 columns: {a, b, n, then n pairs
   (base, mask)}. (a, b) is where the panel's column j0 lands (for i8r_map_store); the kept
   lanes form n runs that land on consecutive elements, run r storing lanes `mask` (a
   contiguous set of bits) at element base + lane. n = 0: more than I8R_PAN_RUNS runs (a
   width under 8), left to i8r_map_store. */
#define I8R_PAN_RUNS 4
#define I8R_PAN (3 + 2 * I8R_PAN_RUNS)

static void i8r_panel_table(const i8r_map_t* map, int64_t* pan) {
    int64_t np = (map->J + 15) / 16, p, l, a = map->jofs / map->L, b = map->jofs % map->L;
    for (p = 0; p < np; p++, pan += I8R_PAN) {
        int64_t aa = a, bb = b, n = 0, last = -2, last_lane = -2;
        pan[0] = a;
        pan[1] = b;
        for (l = 0; l < 16; l++) {
            if (16 * p + l < map->J && bb < map->V) {
                int64_t ofs = aa * map->S + bb;
                if (ofs != last + 1 || l != last_lane + 1 || n == 0) {
                    if (n == I8R_PAN_RUNS) {
                        n = -1;
                        break;
                    }
                    pan[3 + 2 * n] = ofs - l;
                    pan[4 + 2 * n] = 0;
                    n++;
                }
                pan[4 + 2 * (n - 1)] |= (int64_t)1 << l;
                last = ofs;
                last_lane = l;
            }
            if (++bb == map->L) {
                bb = 0;
                aa++;
            }
        }
        pan[2] = n < 0 ? 0 : n;
        for (l = 0; l < 16; l++) /* the next panel's start */
            if (++b == map->L) {
                b = 0;
                a++;
            }
    }
}

/* One Conv GEMM over a set of columns (one image and group, or one chunk of its rows). */
typedef struct {
    int64_t Kq;            /* k groups */
    const int64_t* koff;   /* [Kq]: byte offset of k group kg from column 0's dword */
    const uint8_t* b;      /* column data (u8) */
    const int8_t* w;       /* the group's packed weights [Mb][Kq][16][4] */
    int64_t Mg, ch0;       /* output channels of the group and the first one's index */
    const int32_t* bias;   /* [M] folded */
    const int32_t* zb;     /* [M] */
    const int32_t* colsum; /* [columns rounded up to 16] or NULL when every zb is 0 */
    const i8r_requant_t* rq;
    uint8_t* y; /* the group's first channel's output */
    int esz;
    i8r_map_t map;
    const int64_t* pan; /* the map's panel table (i8r_panel_table) */
    int dense;          /* the map keeps every column, in order (i8r_map_dense) */
} i8r_cplan_t;

/* Whether column j of a map is element j: every panel but a last partial one is stored
   whole, without its panel table. */
static int i8r_map_dense(const i8r_map_t* m) {
    return m->jofs == 0 && m->L == m->V && m->V == m->S;
}

/* One Gemm: x [Mr][K] (in place) times packed w [Nb][Kq][16][4] into y [Mr][N]. */
typedef struct {
    int64_t Mr, K, N, Kq;
    const uint8_t* x;
    int x_signed;
    const uint8_t* w;
    const int32_t* bias;   /* [Nb*16] folded */
    const int32_t* zb;     /* [Nb*16] */
    const int32_t* rowsum; /* [Mr] or NULL */
    const i8r_requant_t* rq;
    uint8_t* y;
} i8r_gplan_t;

/* One depthwise channel over its padded int16 plane; `cp` carries the output side (its y and
   ch0 are the channel's, its map and panel table the plan's). */
typedef struct {
    int64_t taps;
    const int64_t* off; /* [taps] int16 elements from a column's first tap */
    const int32_t* bias;
    const i8r_requant_t* rq;
    int64_t OH, OW, Wp, sh, sw;
    i8r_cplan_t cp;
} i8r_dwplan_t;

/* ---- portable C ------------------------------------------------------------------------ */

static void i8r_conv_put_portable(const i8r_cplan_t* cp, int64_t ml, int64_t p,
                                  const int32_t* fin) {
    uint8_t out[16 * 4];
    int64_t ch = cp->ch0 + ml;
    const int64_t* pan = cp->pan + I8R_PAN * p;
    int l;
    for (l = 0; l < 16; l++) i8r_store1(cp->rq, ch, fin[l], out, l);
    i8r_map_store(&cp->map, cp->y + ml * cp->map.plane * cp->esz, cp->esz, out, 16 * p, pan[0],
                  pan[1]);
}

static void i8r_conv_run_portable(const i8r_cplan_t* cp, int64_t mb0, int64_t mb1) {
    int64_t np = (cp->map.J + 15) / 16, mb, ml, p, kg;
    for (mb = mb0; mb < mb1; mb++) {
        const int8_t* wb = cp->w + mb * cp->Kq * 64;
        for (ml = mb * 16; ml < mb * 16 + 16 && ml < cp->Mg; ml++) {
            int64_t ch = cp->ch0 + ml;
            const int8_t* w = wb + 4 * (ml - mb * 16);
            for (p = 0; p < np; p++) {
                uint32_t acc[16];
                int32_t fin[16];
                int l, i;
                for (l = 0; l < 16; l++) acc[l] = 0;
                for (kg = 0; kg < cp->Kq; kg++) {
                    const uint8_t* bk = cp->b + cp->koff[kg] + 64 * p;
                    const int8_t* wk = w + 64 * kg;
                    for (l = 0; l < 16; l++)
                        for (i = 0; i < 4; i++)
                            acc[l] += (uint32_t)((int32_t)bk[4 * l + i] * (int32_t)wk[i]);
                }
                for (l = 0; l < 16; l++) {
                    uint32_t a = acc[l] + (uint32_t)cp->bias[ch];
                    if (cp->colsum) a -= (uint32_t)cp->zb[ch] * (uint32_t)cp->colsum[16 * p + l];
                    fin[l] = (int32_t)a;
                }
                i8r_conv_put_portable(cp, ml, p, fin);
            }
        }
    }
}

static void i8r_gemm_run_portable(const i8r_gplan_t* gp, int64_t p0, int64_t p1) {
    int64_t r, n, k;
    int es = i8r_out_size(gp->rq);
    for (r = 0; r < gp->Mr; r++) {
        const uint8_t* x = gp->x + r * gp->K;
        for (n = 16 * p0; n < 16 * p1 && n < gp->N; n++) {
            const uint8_t* w = gp->w + (n / 16) * gp->Kq * 64 + 4 * (n % 16);
            uint32_t acc = 0;
            for (k = 0; k < gp->K; k++) {
                uint8_t xb = x[k], wb = w[64 * (k / 4) + k % 4];
                acc += gp->x_signed ? (uint32_t)((int32_t)(int8_t)xb * (int32_t)wb)
                                    : (uint32_t)((int32_t)xb * (int32_t)(int8_t)wb);
            }
            acc += (uint32_t)gp->bias[n];
            if (gp->rowsum) acc -= (uint32_t)gp->zb[n] * (uint32_t)gp->rowsum[r];
            i8r_store1(gp->rq, n, (int32_t)acc, gp->y + r * gp->N * es, n);
        }
    }
}

static void i8r_im2col_portable(const i8r_cplan_t* cp, const uint8_t* x4, const int64_t* koff,
                                int64_t sh, int64_t sw, int64_t Wp, int64_t OW, int64_t oy0,
                                int64_t oy1, uint8_t* dst, int64_t QS) {
    int64_t kg, oy, ox;
    for (kg = 0; kg < cp->Kq; kg++) {
        uint8_t* row = dst + kg * QS * 4;
        for (oy = oy0; oy < oy1; oy++, row += 4 * OW) {
            const uint8_t* src = x4 + koff[kg] + 4 * oy * sh * Wp;
            for (ox = 0; ox < OW; ox++) memcpy(row + 4 * ox, src + 4 * ox * sw, 4);
        }
    }
}

/* Any stride and dilation: one output element at a time. */
static void i8r_dw_generic(const i8r_dwplan_t* dp, const int16_t* plane, int64_t ch,
                           const int16_t* w, int64_t sw) {
    int64_t oy, ox, t;
    for (oy = 0; oy < dp->OH; oy++)
        for (ox = 0; ox < dp->OW; ox++) {
            const int16_t* src = plane + oy * dp->sh * dp->Wp + ox * sw;
            int32_t acc = dp->bias[ch];
            for (t = 0; t < dp->taps; t++) acc += (int32_t)src[dp->off[t]] * (int32_t)w[t];
            i8r_store1(dp->rq, ch, acc, dp->cp.y, oy * dp->OW + ox);
        }
}

/* ---- vector paths ---------------------------------------------------------------------- */
#if I8R_X86
#include <immintrin.h>

/* AVX-512 VNNI: 16 lanes, native VPDPBUSD. */
#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define SFX(n) i8r_##n##_avx512
#define VW 16
#define V __m512i
#define VF __m512
#define vzero() _mm512_setzero_si512()
#define vload(p) _mm512_loadu_si512((const void*)(p))
#define vstore(p, v) _mm512_storeu_si512((void*)(p), v)
#define vset1(x) _mm512_set1_epi32(x)
#define vadd _mm512_add_epi32
#define vsub _mm512_sub_epi32
#define vmullo _mm512_mullo_epi32
#define vmin _mm512_min_epi32
#define vmax _mm512_max_epi32
#define vand _mm512_and_si512
#define vsllv _mm512_sllv_epi32
#define vsrav _mm512_srav_epi32
#define vsrai _mm512_srai_epi32
#define vsrli _mm512_srli_epi32
#define vcmpgt(a, b) _mm512_movm_epi32(_mm512_cmpgt_epi32_mask(a, b))
#define vcmpeq(a, b) _mm512_movm_epi32(_mm512_cmpeq_epi32_mask(a, b))
#define vblend(a, b, m) _mm512_mask_blend_epi32(_mm512_movepi32_mask(m), a, b)
/* GCC (bug 94663) does not tie the accumulator of _mm512_dpbusd_epi32 to its destination
   and copies registers around every one; the instruction itself, as intgemm does. */
TGT static inline __m512i i8r_dpbusd_avx512(__m512i acc, __m512i a, __m512i b) {
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
#else
    return _mm512_dpbusd_epi32(acc, a, b);
#endif
}
#define vdpbusd i8r_dpbusd_avx512
#define vload_i16(p) _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i*)(p)))
#define vmadd _mm512_madd_epi16
TGT static inline __m512i i8r_dpwssd_avx512(__m512i acc, __m512i a, __m512i b) {
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); /* as VPDPBUSD above */
    return acc;
#else
    return _mm512_dpwssd_epi32(acc, a, b);
#endif
}
#define vdpwssd i8r_dpwssd_avx512
/* lanes (e0 o0 e1 o1 ...): the first 16 to lo[0], the next 16 to hi[0] */
TGT static inline void i8r_interleave_avx512(const __m512i* e, const __m512i* o, __m512i* lo,
                                             __m512i* hi) {
    lo[0] = _mm512_permutex2var_epi32(
        e[0], _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), o[0]);
    hi[0] = _mm512_permutex2var_epi32(
        e[0], _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), o[0]);
}
#define vinterleave i8r_interleave_avx512
#define vf_set1 _mm512_set1_ps
#define vf_load _mm512_loadu_ps
#define vf_mul _mm512_mul_ps
#define vf_cvt _mm512_cvtepi32_ps
#define vf_max _mm512_max_ps
#define vf_min _mm512_min_ps
#define vf_round _mm512_cvtps_epi32
#define VEC_REQUANT 1
#define CONV_R 4
#define CONV_TMAX 4
#define GEMM_RMAX 4
#define GEMM_TMAX 4
/* mhi: the odd lanes' multipliers in the even ones (vodd(m)). The odd quotients' low 32 bits
   are bits 31..62 of their sums: shifted left by one they are the high halves, which the
   blend keeps. */
TGT static inline __m512i i8r_mulhi31_avx512(__m512i x, __m512i m, __m512i mhi) {
    __m512i nudge = _mm512_set1_epi64(1LL << 30);
    __m512i e = _mm512_srli_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, m), nudge), 31);
    __m512i o = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(x, 32), mhi), nudge);
    return _mm512_mask_blend_epi32(0xAAAA, e, _mm512_slli_epi64(o, 1));
}
#define vmulhi31 i8r_mulhi31_avx512
#define vodd(m) _mm512_srli_epi64(m, 32)
#define vinc_gt(r, a, b) _mm512_mask_add_epi32(r, _mm512_cmpgt_epi32_mask(a, b), r, vset1(1))
#define vany(m) (_mm512_movepi32_mask(m) != 0)
#define vgather2(p)                                                                          \
    _mm512_permutex2var_epi32(                                                              \
        vload(p), _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), \
        vload((const uint8_t*)(p) + 64))
#define vpack16(r) _mm512_cvtepi32_epi8((r)[0])
#define vpack16_us(r) _mm512_cvtusepi32_epi8((r)[0])
#define vpack16_ss(r) _mm512_cvtsepi32_epi8((r)[0])
#define VPACK_SAT 1
/* Four vectors to 64 bytes: two saturating packs (each within 128-bit lanes, so lane L holds
   the dwords L of r0, r1, r2, r3 in turn), then a dword permutation back to r0 r1 r2 r3.
   The same bytes as four VPMOVUSDB / VPMOVSDB, in four operations instead of four of two. */
TGT static inline __m512i i8r_pack64_avx512(const __m512i* r, int out_signed) {
    __m512i a = _mm512_packs_epi32(r[0], r[1]), b = _mm512_packs_epi32(r[2], r[3]);
    __m512i v = out_signed ? _mm512_packs_epi16(a, b) : _mm512_packus_epi16(a, b);
    return _mm512_permutexvar_epi32(
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), v);
}
#define vpack64 i8r_pack64_avx512
/* the lanes of `mask` at p + lane (masked-out lanes are not touched: no fault, no write) */
#define vputmask(p, b, mask) _mm_mask_storeu_epi8(p, (__mmask16)(mask), b)
#include "i8r_simd_tmpl.h"
#include "i8r_simd_undef.h"

/* AVX2: 8 lanes; VPDPBUSD as two VPMADDWD over the even and odd bytes, exact (a product is
   at most 255 * 128 and a pair sum 65280, within int32). */
#define TGT __attribute__((target("avx2")))
#define SFX(n) i8r_##n##_avx2
#define VW 8
#define V __m256i
#define VF __m256
#define vzero() _mm256_setzero_si256()
#define vload(p) _mm256_loadu_si256((const __m256i*)(p))
#define vstore(p, v) _mm256_storeu_si256((__m256i*)(p), v)
#define vset1(x) _mm256_set1_epi32(x)
#define vadd _mm256_add_epi32
#define vsub _mm256_sub_epi32
#define vmullo _mm256_mullo_epi32
#define vmin _mm256_min_epi32
#define vmax _mm256_max_epi32
#define vand _mm256_and_si256
#define vsllv _mm256_sllv_epi32
#define vsrav _mm256_srav_epi32
#define vsrai _mm256_srai_epi32
#define vsrli _mm256_srli_epi32
#define vcmpgt _mm256_cmpgt_epi32
#define vcmpeq _mm256_cmpeq_epi32
#define vblend(a, b, m) _mm256_blendv_epi8(a, b, m)
TGT static inline __m256i i8r_dpbusd_avx2(__m256i acc, __m256i a, __m256i b) {
    __m256i lo = _mm256_set1_epi16(0x00FF);
    __m256i ae = _mm256_and_si256(a, lo), ao = _mm256_srli_epi16(a, 8);
    __m256i be = _mm256_srai_epi16(_mm256_slli_epi16(b, 8), 8), bo = _mm256_srai_epi16(b, 8);
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(ae, be),
                                                  _mm256_madd_epi16(ao, bo)));
}
#define vdpbusd i8r_dpbusd_avx2
#define vload_i16(p) _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i*)(p)))
#define vmadd _mm256_madd_epi16
#define vdpwssd(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
/* lanes (e0 o0 e1 o1 ...) of the 2 x 8 even and odd lanes: 16 to lo[0..1], 16 to hi[0..1] */
TGT static inline void i8r_interleave_avx2(const __m256i* e, const __m256i* o, __m256i* lo,
                                           __m256i* hi) {
    int v;
    for (v = 0; v < 2; v++) {
        __m256i a = _mm256_unpacklo_epi32(e[v], o[v]), b = _mm256_unpackhi_epi32(e[v], o[v]);
        __m256i* dst = v ? hi : lo;
        dst[0] = _mm256_permute2x128_si256(a, b, 0x20);
        dst[1] = _mm256_permute2x128_si256(a, b, 0x31);
    }
}
#define vinterleave i8r_interleave_avx2
#define vf_set1 _mm256_set1_ps
#define vf_load _mm256_loadu_ps
#define vf_mul _mm256_mul_ps
#define vf_cvt _mm256_cvtepi32_ps
#define vf_max _mm256_max_ps
#define vf_min _mm256_min_ps
#define vf_round _mm256_cvtps_epi32
#define VEC_REQUANT 1
#define CONV_R 4
#define CONV_TMAX 1
#define GEMM_RMAX 4
#define GEMM_TMAX 1
TGT static inline __m256i i8r_mulhi31_avx2(__m256i x, __m256i m, __m256i mhi) {
    __m256i nudge = _mm256_set1_epi64x(1LL << 30);
    __m256i e = _mm256_srli_epi64(_mm256_add_epi64(_mm256_mul_epi32(x, m), nudge), 31);
    __m256i o = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(x, 32), mhi), nudge);
    return _mm256_blend_epi32(e, _mm256_slli_epi64(o, 1), 0xAA);
}
#define vmulhi31 i8r_mulhi31_avx2
#define vodd(m) _mm256_srli_epi64(m, 32)
#define vinc_gt(r, a, b) _mm256_sub_epi32(r, _mm256_cmpgt_epi32(a, b))
#define vany(m) (_mm256_movemask_epi8(m) != 0)
TGT static inline __m256i i8r_gather2_avx2(const void* p) {
    __m256 a = _mm256_loadu_ps((const float*)p), b = _mm256_loadu_ps((const float*)p + 8);
    return _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(a, b, 0x88)), 0xD8);
}
#define vgather2 i8r_gather2_avx2
/* the low byte of each lane: mask, then two unsigned packs (exact on 0..255) */
TGT static inline __m128i i8r_pack16_avx2(const __m256i* r) {
    __m256i m = _mm256_set1_epi32(0xFF);
    __m256i w = _mm256_packus_epi32(_mm256_and_si256(r[0], m), _mm256_and_si256(r[1], m));
    w = _mm256_permute4x64_epi64(w, 0xD8);
    return _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}
#define vpack16 i8r_pack16_avx2
#define VPACK_SAT 0
/* the lanes of `mask` (contiguous bits) at p + lane */
TGT static inline void i8r_putmask_avx2(uint8_t* p, __m128i b, int64_t mask) {
    if (mask == 0xFFFF) {
        _mm_storeu_si128((__m128i*)p, b);
    } else {
        uint8_t t[16];
        int lo = __builtin_ctzll((unsigned long long)mask);
        _mm_storeu_si128((__m128i*)t, b);
        memcpy(p + lo, t + lo, (size_t)__builtin_popcountll((unsigned long long)mask));
    }
}
#define vputmask i8r_putmask_avx2
#include "i8r_simd_tmpl.h"
#include "i8r_simd_undef.h"

/* SSE4.1: 4 lanes, the AVX2 dot product on 128-bit vectors; scalar requantization (no
   per-lane variable shifts before AVX2). */
#define TGT __attribute__((target("sse4.1")))
#define SFX(n) i8r_##n##_sse41
#define VW 4
#define V __m128i
#define VF __m128
#define vzero() _mm_setzero_si128()
#define vload(p) _mm_loadu_si128((const __m128i*)(p))
#define vstore(p, v) _mm_storeu_si128((__m128i*)(p), v)
#define vset1(x) _mm_set1_epi32(x)
#define vadd _mm_add_epi32
#define vsub _mm_sub_epi32
#define vmullo _mm_mullo_epi32
#define vmin _mm_min_epi32
#define vmax _mm_max_epi32
TGT static inline __m128i i8r_dpbusd_sse41(__m128i acc, __m128i a, __m128i b) {
    __m128i lo = _mm_set1_epi16(0x00FF);
    __m128i ae = _mm_and_si128(a, lo), ao = _mm_srli_epi16(a, 8);
    __m128i be = _mm_srai_epi16(_mm_slli_epi16(b, 8), 8), bo = _mm_srai_epi16(b, 8);
    return _mm_add_epi32(acc, _mm_add_epi32(_mm_madd_epi16(ae, be), _mm_madd_epi16(ao, bo)));
}
#define vdpbusd i8r_dpbusd_sse41
#define vload_i16(p) _mm_cvtepi16_epi32(_mm_loadl_epi64((const __m128i*)(p)))
#define vmadd _mm_madd_epi16
#define vdpwssd(acc, a, b) _mm_add_epi32(acc, _mm_madd_epi16(a, b))
TGT static inline void i8r_interleave_sse41(const __m128i* e, const __m128i* o, __m128i* lo,
                                            __m128i* hi) {
    int v;
    for (v = 0; v < 4; v++) {
        __m128i* dst = v < 2 ? lo + 2 * v : hi + 2 * (v - 2);
        dst[0] = _mm_unpacklo_epi32(e[v], o[v]);
        dst[1] = _mm_unpackhi_epi32(e[v], o[v]);
    }
}
#define vinterleave i8r_interleave_sse41
TGT static inline __m128i i8r_gather2_sse41(const void* p) {
    return _mm_castps_si128(_mm_shuffle_ps(_mm_loadu_ps((const float*)p),
                                           _mm_loadu_ps((const float*)p + 4), 0x88));
}
#define vgather2 i8r_gather2_sse41
#define VEC_REQUANT 0
#define CONV_R 2
#define CONV_TMAX 1
#define GEMM_RMAX 2
#define GEMM_TMAX 1
#include "i8r_simd_tmpl.h"
#include "i8r_simd_undef.h"
#endif /* I8R_X86 */


/* ---- dispatch ---------------------------------------------------------------------------- */

static void i8r_conv_run(int isa, const i8r_cplan_t* cp, int64_t mb0, int64_t mb1) {
#if I8R_X86
    if (isa == I8R_AVX512VNNI) {
        i8r_conv_run_avx512(cp, mb0, mb1);
        return;
    }
    if (isa == I8R_AVX2) {
        i8r_conv_run_avx2(cp, mb0, mb1);
        return;
    }
    if (isa == I8R_SSE41) {
        i8r_conv_run_sse41(cp, mb0, mb1);
        return;
    }
#endif
    i8r_conv_run_portable(cp, mb0, mb1);
}

static void i8r_gemm_run(int isa, const i8r_gplan_t* gp, int64_t p0, int64_t p1) {
#if I8R_X86
    if (isa == I8R_AVX512VNNI) {
        i8r_gemm_run_avx512(gp, p0, p1);
        return;
    }
    if (isa == I8R_AVX2) {
        i8r_gemm_run_avx2(gp, p0, p1);
        return;
    }
    if (isa == I8R_SSE41) {
        i8r_gemm_run_sse41(gp, p0, p1);
        return;
    }
#endif
    i8r_gemm_run_portable(gp, p0, p1);
}

static void i8r_im2col(int isa, const i8r_cplan_t* cp, const uint8_t* x4, const int64_t* koff,
                       int64_t sh, int64_t sw, int64_t Wp, int64_t OW, int64_t oy0, int64_t oy1,
                       uint8_t* dst, int64_t QS) {
#if I8R_X86
    if (isa == I8R_AVX512VNNI) {
        i8r_im2col_avx512(cp, x4, koff, sh, sw, Wp, OW, oy0, oy1, dst, QS);
        return;
    }
    if (isa == I8R_AVX2) {
        i8r_im2col_avx2(cp, x4, koff, sh, sw, Wp, OW, oy0, oy1, dst, QS);
        return;
    }
    if (isa == I8R_SSE41) {
        i8r_im2col_sse41(cp, x4, koff, sh, sw, Wp, OW, oy0, oy1, dst, QS);
        return;
    }
#endif
    i8r_im2col_portable(cp, x4, koff, sh, sw, Wp, OW, oy0, oy1, dst, QS);
}

/* Depthwise kernels with two taps per multiply take up to this many tap pairs. */
#define I8R_DW_PAIRS 64

static void i8r_dw_run(int isa, const i8r_dwplan_t* dp, const int16_t* plane, int64_t ch,
                       const int16_t* w, int64_t kh, int64_t kw, int64_t sw, int64_t dw) {
#if I8R_X86
    int64_t pairs = (kw + 1) / 2, ky, q;
    if (isa != I8R_PORTABLE && dw == 1 && (sw == 2 || (sw == 1 && dp->sh == 1))
        && kh * pairs <= I8R_DW_PAIRS) {
        int32_t wp[I8R_DW_PAIRS];
        int64_t rows[I8R_DW_PAIRS];
        for (ky = 0; ky < kh; ky++) {
            rows[ky] = dp->off[ky * kw];
            for (q = 0; q < pairs; q++) {
                uint32_t lo = (uint16_t)w[ky * kw + 2 * q];
                uint32_t hi = 2 * q + 1 < kw ? (uint16_t)w[ky * kw + 2 * q + 1] : 0;
                wp[ky * pairs + q] = (int32_t)(lo | hi << 16);
            }
        }
        if (isa == I8R_AVX512VNNI) {
            i8r_dw_pairs_avx512(dp, plane, ch, wp, pairs, rows, kh);
            return;
        }
        if (isa == I8R_AVX2) {
            i8r_dw_pairs_avx2(dp, plane, ch, wp, pairs, rows, kh);
            return;
        }
        if (isa == I8R_SSE41) {
            i8r_dw_pairs_sse41(dp, plane, ch, wp, pairs, rows, kh);
            return;
        }
    }
    if (sw == 1 && dp->sh == 1) {
        if (isa == I8R_AVX512VNNI) {
            i8r_dw_flat_avx512(dp, plane, ch, w);
            return;
        }
        if (isa == I8R_AVX2) {
            i8r_dw_flat_avx2(dp, plane, ch, w);
            return;
        }
        if (isa == I8R_SSE41) {
            i8r_dw_flat_sse41(dp, plane, ch, w);
            return;
        }
    } else if (sw == 2) {
        if (isa == I8R_AVX512VNNI) {
            i8r_dw_stride2_avx512(dp, plane, ch, w);
            return;
        }
        if (isa == I8R_AVX2) {
            i8r_dw_stride2_avx2(dp, plane, ch, w);
            return;
        }
        if (isa == I8R_SSE41) {
            i8r_dw_stride2_sse41(dp, plane, ch, w);
            return;
        }
    }
#endif
    (void)isa, (void)kh, (void)kw, (void)dw;
    i8r_dw_generic(dp, plane, ch, w, sw);
}

/* ---- Conv: geometry, scratch, packing, driver ------------------------------------------- */

typedef struct {
    int64_t N, C, H, W, M, kh, kw, sh, sw, pt, pl, dh, dw, G, OH, OW;
    int32_t xzp;       /* the input's zero point, in its own type */
    int32_t x_signed;  /* int8 input */
    int32_t depthwise; /* one input channel per group: int16 taps, i8r_dw_* */
    int64_t rows;      /* strided (not depthwise): output rows per im2col chunk */
} i8r_conv_t;

/* Sizes derived from the geometry. The packed input covers rows and columns
   [-pt, Hp - pt) x [-pl, Wp - pl): every tap of every output. */
typedef struct {
    int64_t Cg, Mg, Cq, taps, K, Kq, Mb, Hp, Wp, direct, cols, QS, plane;
} i8r_conv_dims_t;

static i8r_conv_dims_t i8r_conv_dims(const i8r_conv_t* c) {
    i8r_conv_dims_t d;
    d.Cg = c->C / c->G;
    d.Mg = c->M / c->G;
    d.Cq = (d.Cg + 3) / 4;
    d.taps = c->kh * c->kw;
    d.K = d.Cg * d.taps;
    d.Kq = d.Cq * d.taps;
    d.Mb = (d.Mg + 15) / 16;
    d.Hp = (c->OH - 1) * c->sh + (c->kh - 1) * c->dh + 1;
    d.Wp = (c->OW - 1) * c->sw + (c->kw - 1) * c->dw + 1;
    d.direct = c->sh == 1 && c->sw == 1;
    if (c->depthwise)
        d.cols = d.direct ? c->OH * d.Wp : c->OW;
    else
        d.cols = d.direct ? c->OH * d.Wp : c->rows * c->OW;
    d.QS = (d.cols + 15) / 16 * 16 + 16; /* im2col row stride: +16 keeps it off powers of 2 */
    /* depthwise: one int16 plane per input channel + the widest over-read of a vector step */
    d.plane = (d.Hp * d.Wp + 128 + (c->kw - 1) * c->dw + 31) / 32 * 32;
    return d;
}

static int64_t i8r_align64(int64_t n) { return (n + 63) / 64 * 64; }

/* Depthwise with the channels in the lanes (i8r_dwcl_block, AVX-512) runs planes whose
   pairs and output bytes, per block of 16 channels, fit I8R_DWCL_BYTES; the scratch has a
   part that size for every block whichever path runs (the size is the geometry's alone). */
#define I8R_DWCL_BYTES (72 * 1024)
#define I8R_DWCL_MAXW 32

/* + 64: the part is used from its first 64-byte boundary */
static int64_t i8r_dwcl_block_bytes(const i8r_conv_t* c, const i8r_conv_dims_t* d) {
    return i8r_align64(d->Hp * d->Wp * 64 + (c->OH * c->OW + 16) * 16) + 64;
}

static int i8r_dwcl_geometry(const i8r_conv_t* c, const i8r_conv_dims_t* d) {
    return c->depthwise && d->Mg == 1 && c->dw == 1 && c->kh * ((c->kw + 1) / 2) <= I8R_DW_PAIRS
           && c->W <= I8R_DWCL_MAXW && i8r_dwcl_block_bytes(c, d) <= I8R_DWCL_BYTES;
}

/* Scratch layout, in one place for the size and the pointers. */
typedef struct {
    int64_t x4, cols, koff, colsum, pan, total;
} i8r_conv_scratch_t;

static i8r_conv_scratch_t i8r_conv_scratch_layout(const i8r_conv_t* c) {
    i8r_conv_dims_t d = i8r_conv_dims(c);
    i8r_conv_scratch_t s;
    int64_t np = (d.cols + 15) / 16, off = 0;
    s.x4 = off;
    if (c->depthwise) {
        int64_t planes = i8r_align64(c->C * d.plane * 2);
        int64_t blocks = i8r_dwcl_geometry(c, &d)
                             ? (c->C + 15) / 16 * i8r_dwcl_block_bytes(c, &d) : 0;
        off += planes > blocks ? planes : blocks;
    }
    else /* the packed input + a column's tap window past the last plane, + one panel */
        off += i8r_align64((d.Cq * d.Hp * d.Wp + 32 + (c->kw - 1) * c->dw) * 4);
    s.cols = off;
    if (!c->depthwise && !d.direct) off += i8r_align64(d.Kq * d.QS * 4);
    s.koff = off;
    off += i8r_align64((c->depthwise ? d.taps : 2 * d.Kq) * 8);
    s.colsum = off;
    if (!c->depthwise) off += i8r_align64(np * 16 * 4);
    s.pan = off;
    off += i8r_align64(np * I8R_PAN * 8);
    s.total = off;
    return s;
}

static int64_t i8r_conv_scratch(const i8r_conv_t* c) { return i8r_conv_scratch_layout(c).total; }

/* The packed input of one image and group: [Cq][Hp][Wp][4] u8, four channels' bytes per
   pixel, padding at the zero point, channels past the group's at 0 (their weights are 0 and
   column sums must not count them), then zeroed slack. */
/* Columns [col, x1) of one packed row: the dword of column i holds byte i of rows s[0..3]
   (each XOR flip; rows past `nch` give 0 bytes). Returns the first column not written. */
static inline int64_t i8r_pack_cols(int isa, const uint8_t* const* s, int64_t nch, uint8_t flip,
                                    uint32_t* out, int64_t col, int64_t x1) {
    int64_t i;
#if I8R_X86
    if (isa != I8R_PORTABLE) {
        /* SSE2 (every x86-64): interleave 16 pixels of four rows */
        __m128i f = _mm_set1_epi8((char)flip), z = _mm_setzero_si128();
        for (; col + 16 <= x1; col += 16) {
            __m128i a = _mm_xor_si128(_mm_loadu_si128((const __m128i*)(s[0] + col)), f);
            __m128i b = z, e = z, g = z;
            if (nch > 1) b = _mm_xor_si128(_mm_loadu_si128((const __m128i*)(s[1] + col)), f);
            if (nch > 2) e = _mm_xor_si128(_mm_loadu_si128((const __m128i*)(s[2] + col)), f);
            if (nch > 3) g = _mm_xor_si128(_mm_loadu_si128((const __m128i*)(s[3] + col)), f);
            __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
            __m128i eg0 = _mm_unpacklo_epi8(e, g), eg1 = _mm_unpackhi_epi8(e, g);
            _mm_storeu_si128((__m128i*)(out + col), _mm_unpacklo_epi16(ab0, eg0));
            _mm_storeu_si128((__m128i*)(out + col + 4), _mm_unpackhi_epi16(ab0, eg0));
            _mm_storeu_si128((__m128i*)(out + col + 8), _mm_unpacklo_epi16(ab1, eg1));
            _mm_storeu_si128((__m128i*)(out + col + 12), _mm_unpackhi_epi16(ab1, eg1));
        }
    }
#else
    (void)isa;
#endif
    for (; col < x1; col++) {
        uint32_t v = 0;
        for (i = 0; i < nch; i++) v |= (uint32_t)(s[i][col] ^ flip) << (8 * i);
        out[col] = v;
    }
    return col;
}

static void i8r_pack_input(int isa, const i8r_conv_t* c, const i8r_conv_dims_t* d,
                           const uint8_t* x, uint8_t xzpu, uint8_t flip, uint8_t* dst) {
    int64_t cq, r, col, i, HW = c->H * c->W;
    int64_t x0 = c->pl < d->Wp ? c->pl : d->Wp, x1 = c->pl + c->W < d->Wp ? c->pl + c->W : d->Wp;
    /* no padding: each group of four planes is one row of H*W columns */
    int whole = d->Hp == c->H && d->Wp == c->W && c->pt == 0 && c->pl == 0;
    for (cq = 0; cq < d->Cq; cq++) {
        int64_t nch = d->Cg - 4 * cq < 4 ? d->Cg - 4 * cq : 4;
        uint32_t padw = 0;
        const uint8_t* s[4];
        for (i = 0; i < nch; i++) padw |= (uint32_t)xzpu << (8 * i);
        if (whole) {
            for (i = 0; i < nch; i++) s[i] = x + (4 * cq + i) * HW;
            i8r_pack_cols(isa, s, nch, flip, (uint32_t*)(dst + cq * HW * 4), 0, HW);
            continue;
        }
        for (r = 0; r < d->Hp; r++) {
            uint32_t* out = (uint32_t*)(dst + (cq * d->Hp + r) * d->Wp * 4);
            int64_t iy = r - c->pt;
            if (iy < 0 || iy >= c->H || x1 <= x0) {
                for (col = 0; col < d->Wp; col++) out[col] = padw;
                continue;
            }
            for (col = 0; col < x0; col++) out[col] = padw;
            for (col = x1; col < d->Wp; col++) out[col] = padw;
            for (i = 0; i < nch; i++) s[i] = x + (4 * cq + i) * HW + iy * c->W - c->pl;
            i8r_pack_cols(isa, s, nch, flip, out, x0, x1);
        }
    }
    memset(dst + d->Cq * d->Hp * d->Wp * 4, 0, (size_t)((32 + (c->kw - 1) * c->dw) * 4));
}

#if I8R_X86
/* SSE2 (every x86-64): x - zp of n >= 8 elements, int16, in steps of 16 or 8 and a last step
   that overlaps the one before (it rewrites the same values) instead of a scalar tail. */
static inline void i8r_widen_sse2(const uint8_t* s, int16_t* o, int64_t n, int x_signed,
                                  int16_t xzp) {
    __m128i zp = _mm_set1_epi16(xzp), z = _mm_setzero_si128();
    int64_t i = 0;
    if (n >= 16) {
        for (;; i += 16) {
            if (i + 16 > n) i = n - 16;
            __m128i v = _mm_loadu_si128((const __m128i*)(s + i));
            __m128i ext = x_signed ? _mm_cmpgt_epi8(z, v) : z;
            _mm_storeu_si128((__m128i*)(o + i), _mm_sub_epi16(_mm_unpacklo_epi8(v, ext), zp));
            _mm_storeu_si128((__m128i*)(o + i + 8), _mm_sub_epi16(_mm_unpackhi_epi8(v, ext), zp));
            if (i + 16 == n) break;
        }
    } else {
        for (;; i += 8) {
            if (i + 8 > n) i = n - 8;
            __m128i v = _mm_loadl_epi64((const __m128i*)(s + i));
            __m128i ext = x_signed ? _mm_cmpgt_epi8(z, v) : z;
            _mm_storeu_si128((__m128i*)(o + i), _mm_sub_epi16(_mm_unpacklo_epi8(v, ext), zp));
            if (i + 8 == n) break;
        }
    }
}

/* The lanes [a, b) of 32 as a mask. */
static inline uint32_t i8r_lanes32(int64_t a, int64_t b) {
    uint32_t hi = b <= 0 ? 0u : (b >= 32 ? 0xFFFFFFFFu : (1u << b) - 1);
    uint32_t lo = a <= 0 ? 0u : (a >= 32 ? 0xFFFFFFFFu : (1u << a) - 1);
    return hi & ~lo;
}

/* AVX-512 (BW): 32 elements of a padded row per masked load, widening, masked subtraction
   and masked store; the masked-out bytes (the padding) are neither read nor kept. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void i8r_pack_plane_avx512(
    const i8r_conv_t* c, const i8r_conv_dims_t* d, const uint8_t* src, int16_t* plane) {
    int64_t r, c0, Wp = d->Wp;
    int64_t x0 = c->pl < Wp ? c->pl : Wp, x1 = c->pl + c->W < Wp ? c->pl + c->W : Wp;
    __m512i zp = _mm512_set1_epi16((short)c->xzp), zero = _mm512_setzero_si512();
    for (r = 0; r < d->Hp; r++) {
        int64_t iy = r - c->pt;
        int16_t* o = plane + r * Wp;
        if (iy < 0 || iy >= c->H || x1 <= x0) {
            for (c0 = 0; c0 < Wp; c0 += 32)
                _mm512_mask_storeu_epi16(o + c0, i8r_lanes32(0, Wp - c0), zero);
            continue;
        }
        /* padded column col of this row is s[col] (read only for x0 <= col < x1) */
        const uint8_t* s = src + iy * c->W - c->pl;
        for (c0 = 0; c0 < Wp; c0 += 32) {
            __mmask32 in = i8r_lanes32(x0 - c0, x1 - c0);
            __m512i v = zero;
            if (in) {
                __m256i b = _mm256_maskz_loadu_epi8(in, s + c0);
                v = c->x_signed ? _mm512_cvtepi8_epi16(b) : _mm512_cvtepu8_epi16(b);
                v = _mm512_maskz_sub_epi16(in, v, zp);
            }
            _mm512_mask_storeu_epi16(o + c0, i8r_lanes32(0, Wp - c0), v);
        }
    }
}
#endif

/* Depthwise: one channel's padded int16 plane of x - zp (padding 0), then zeroed slack. */
static void i8r_pack_plane(int isa, const i8r_conv_t* c, const i8r_conv_dims_t* d,
                           const uint8_t* src, int16_t* plane) {
    int64_t r, i;
    int64_t x0 = c->pl < d->Wp ? c->pl : d->Wp, x1 = c->pl + c->W < d->Wp ? c->pl + c->W : d->Wp;
    int16_t xzp = (int16_t)c->xzp;
    memset(plane + d->Hp * d->Wp, 0, (size_t)((128 + (c->kw - 1) * c->dw) * 2));
#if I8R_X86
    if (isa == I8R_AVX512VNNI) {
        i8r_pack_plane_avx512(c, d, src, plane);
        return;
    }
#endif
    for (r = 0; r < d->Hp; r++) {
        int64_t iy = r - c->pt;
        int16_t* o = plane + r * d->Wp;
        if (iy < 0 || iy >= c->H || x1 <= x0) {
            memset(o, 0, (size_t)(d->Wp * 2));
            continue;
        }
        for (i = 0; i < x0; i++) o[i] = 0;
        for (i = x1; i < d->Wp; i++) o[i] = 0;
        const uint8_t* s = src + iy * c->W - c->pl;
#if I8R_X86
        if (isa != I8R_PORTABLE && x1 - x0 >= 8) {
            i8r_widen_sse2(s + x0, o + x0, x1 - x0, c->x_signed, xzp);
            continue;
        }
#endif
        if (c->x_signed)
            for (i = x0; i < x1; i++) o[i] = (int16_t)((int8_t)s[i] - xzp);
        else
            for (i = x0; i < x1; i++) o[i] = (int16_t)(s[i] - xzp);
    }
}

/* Column sums of the packed data: over every k group, a column's four bytes. */
static void i8r_colsum(const uint8_t* b, const int64_t* koff, int64_t Kq, int64_t cols16,
                       int32_t* out) {
    int64_t j, kg;
    for (j = 0; j < cols16; j++) out[j] = 0;
    for (kg = 0; kg < Kq; kg++) {
        const uint8_t* bk = b + koff[kg];
        for (j = 0; j < cols16; j++)
            out[j] += (int32_t)bk[4 * j] + bk[4 * j + 1] + bk[4 * j + 2] + bk[4 * j + 3];
    }
}

static int i8r_any_nonzero(const int32_t* v, int64_t n) {
    int64_t i;
    for (i = 0; i < n; i++)
        if (v[i]) return 1;
    return 0;
}

/* Below this many multiply-accumulates per call an op runs on the caller alone: waking the
   workers would cost more than it saves. */
#define I8R_POOL_MIN_MACS (1 << 20)

typedef struct {
    int isa;
    const i8r_cplan_t* cp;
} i8r_conv_job_t;

static void i8r_conv_job(void* ctx, int64_t b, int64_t e) {
    const i8r_conv_job_t* j = (const i8r_conv_job_t*)ctx;
    i8r_conv_run(j->isa, j->cp, b, e);
}

typedef struct {
    int isa;
    const i8r_conv_t* c;
    const i8r_conv_dims_t* d;
    const i8r_dwplan_t* dp;
    int16_t* planes; /* the image's, one per input channel, `stride` apart */
    int64_t stride;
    const int16_t* w;
    uint8_t* y;       /* the image's output */
    const uint8_t* x; /* one output channel per input channel: the image's input, whose
                         planes are packed here, each just before it is used */
} i8r_dw_job_t;

static void i8r_dw_job(void* ctx, int64_t b, int64_t e) {
    const i8r_dw_job_t* j = (const i8r_dw_job_t*)ctx;
    i8r_dwplan_t dp = *j->dp;
    int64_t ch;
    for (ch = b; ch < e; ch++) {
        const int16_t* plane = j->planes + (ch / j->d->Mg) * j->stride;
        if (j->x) {
            /* the slot of the part's first channel (parts are disjoint), so the plane is
               still in the cache when it is read */
            int16_t* slot = j->planes + b * j->stride;
            i8r_pack_plane(j->isa, j->c, j->d, j->x + ch * j->c->H * j->c->W, slot);
            plane = slot;
        }
        dp.cp.ch0 = ch;
        dp.cp.y = j->y + ch * dp.cp.map.plane * dp.cp.esz;
        i8r_dw_run(j->isa, &dp, plane, ch, j->w + ch * j->d->taps, j->c->kh, j->c->kw,
                   j->c->sw, j->c->dw);
    }
}

#if I8R_X86
/* Depthwise over small planes, channels in the lanes (AVX-512): where a plane is only a few
   vectors wide, the per-channel costs of the plane path (its padded plane, a partly kept
   panel per row) outweigh its arithmetic. Here 16 channels are one vector: for each padded
   input position the channels' x - zp (their rows loaded and transposed) paired with the next
   column's in the two int16 halves of each lane, so that VPDPWSSD against (w[kx], w[kx + 1])
   adds two taps per lane, as the plane path does; then per-lane requantization and a 16 x 16
   byte transpose back to the channels' rows. The same integers as every other path. Each
   block of 16 channels has its own part of the scratch for the pairs and the output bytes
   (i8r_dwcl_geometry). */
#define I8R_TGT512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

static int i8r_dwcl_fits(const i8r_conv_t* c, const i8r_conv_dims_t* d, int isa,
                         const i8r_requant_t* rq) {
    return isa == I8R_AVX512VNNI && i8r_dwcl_geometry(c, d) && rq->mode != 2
           && rq->out_code != 2;
}

typedef struct {
    const i8r_conv_t* c;
    const i8r_conv_dims_t* d;
    const uint8_t* x; /* the image's input */
    const int16_t* w; /* [M][taps] w - wzp */
    const int32_t* bias;
    const i8r_requant_t* rq;
    uint8_t* y;       /* the image's output */
    uint8_t* blocks;  /* the scratch parts, i8r_dwcl_block_bytes apart */
} i8r_dwcl_job_t;

/* 16 rows of 16 bytes to 16 columns (SSE2 unpacks, four rounds). */
I8R_TGT512 static inline void i8r_transpose16(__m128i* r) {
    __m128i t[16];
    int i;
    for (i = 0; i < 8; i++) {
        t[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
        t[i + 8] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
    }
    for (i = 0; i < 4; i++) {
        r[i] = _mm_unpacklo_epi16(t[2 * i], t[2 * i + 1]);
        r[i + 4] = _mm_unpackhi_epi16(t[2 * i], t[2 * i + 1]);
        r[i + 8] = _mm_unpacklo_epi16(t[8 + 2 * i], t[8 + 2 * i + 1]);
        r[i + 12] = _mm_unpackhi_epi16(t[8 + 2 * i], t[8 + 2 * i + 1]);
    }
    for (i = 0; i < 8; i++) {
        t[i] = _mm_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[i + 8] = _mm_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (i = 0; i < 4; i++) {
        r[i] = _mm_unpacklo_epi64(t[2 * i], t[2 * i + 1]);
        r[i + 4] = _mm_unpackhi_epi64(t[2 * i], t[2 * i + 1]);
        r[i + 8] = _mm_unpacklo_epi64(t[8 + 2 * i], t[8 + 2 * i + 1]);
        r[i + 12] = _mm_unpackhi_epi64(t[8 + 2 * i], t[8 + 2 * i + 1]);
    }
    /* row k of the input is now byte k of every r, in the order the rounds leave */
    for (i = 0; i < 16; i++) t[i] = r[i];
    {
        static const int order[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
        for (i = 0; i < 16; i++) r[i] = t[order[i]];
    }
}

/* The outputs of a block from its pairs `pr`: `kh` kernel rows of `pairs` pair weights `wv`
   (inlined with the common sizes as constants). Four positions of a row per step, each with
   its own accumulator, so that one position's multiply-adds do not wait on another's. */
I8R_TGT512 static inline __attribute__((always_inline)) void i8r_dwcl_outputs(
    const i8r_conv_t* c, const i8r_rqo_t_avx512* o, const i8r_rqch_t_avx512* rc,
    const __m512i* pr, int64_t Wp, const __m512i* wv, __m512i bias, uint8_t* ob, int64_t kh,
    int64_t pairs) {
    int64_t oy, ox, ky, qq;
    int t;
    for (oy = 0; oy < c->OH; oy++) {
        for (ox = 0; ox + 4 <= c->OW; ox += 4) {
            __m512i acc[4] = {bias, bias, bias, bias}, r;
            for (ky = 0; ky < kh; ky++) {
                const __m512i* row = pr + (oy * c->sh + ky * c->dh) * Wp + ox * c->sw;
                for (qq = 0; qq < pairs; qq++)
                    for (t = 0; t < 4; t++)
                        acc[t] = i8r_dpwssd_avx512(
                            acc[t], _mm512_loadu_si512(row + t * c->sw + 2 * qq),
                            wv[ky * pairs + qq]);
            }
            for (t = 0; t < 4; t++) {
                r = i8r_rq_apply_avx512(o, rc, acc[t]);
                _mm_storeu_si128((__m128i*)(ob + 16 * (oy * c->OW + ox + t)),
                                 i8r_pack_avx512(o, &r));
            }
        }
        for (; ox < c->OW; ox++) {
            __m512i acc = bias, r;
            for (ky = 0; ky < kh; ky++) {
                const __m512i* row = pr + (oy * c->sh + ky * c->dh) * Wp + ox * c->sw;
                for (qq = 0; qq < pairs; qq++)
                    acc = i8r_dpwssd_avx512(acc, _mm512_loadu_si512(row + 2 * qq),
                                            wv[ky * pairs + qq]);
            }
            r = i8r_rq_apply_avx512(o, rc, acc);
            _mm_storeu_si128((__m128i*)(ob + 16 * (oy * c->OW + ox)), i8r_pack_avx512(o, &r));
        }
    }
}

I8R_TGT512 static void i8r_dwcl_block(const i8r_dwcl_job_t* j, const i8r_rqo_t_avx512* o,
                                      int64_t c0, __m512i* buf) {
    const i8r_conv_t* c = j->c;
    const i8r_conv_dims_t* d = j->d;
    const i8r_requant_t* q = j->rq;
    int64_t Hp = d->Hp, Wp = d->Wp, HW = c->H * c->W, P = c->OH * c->OW;
    int64_t n = c->C - c0 < 16 ? c->C - c0 : 16, pairs = (c->kw + 1) / 2;
    int64_t ky, qq, iy, ix, p0, l, taps = d->taps;
    __mmask16 km = (__mmask16)((1u << n) - 1);
    __m512i wv[I8R_DW_PAIRS], zero = _mm512_setzero_si512();
    __m512i* pr = buf; /* the pairs [Hp][Wp], then the output bytes [P][16] (unaligned) */
    uint8_t* ob = (uint8_t*)(buf + Hp * Wp);
    __m512i xzp = _mm512_set1_epi32(c->xzp), bias;
    i8r_rqch_t_avx512 rc;

    /* the lanes' pair weights, bias and requantization constants */
    for (ky = 0; ky < c->kh; ky++)
        for (qq = 0; qq < pairs; qq++) {
            int32_t tmp[16];
            for (l = 0; l < 16; l++) {
                const int16_t* wc = j->w + (c0 + l) * taps + ky * c->kw;
                uint32_t lo = l < n ? (uint16_t)wc[2 * qq] : 0;
                uint32_t hi = l < n && 2 * qq + 1 < c->kw ? (uint16_t)wc[2 * qq + 1] : 0;
                tmp[l] = (int32_t)(lo | hi << 16);
            }
            wv[ky * pairs + qq] = _mm512_loadu_si512(tmp);
        }
    bias = _mm512_maskz_loadu_epi32(km, j->bias + c0);
    i8r_rqch_zero_avx512(&rc);
    if (o->mode == 0) {
        rc.scale = _mm512_maskz_loadu_ps(km, q->scale + c0);
    } else {
        rc.mult = _mm512_maskz_loadu_epi32(km, q->mult + c0);
        rc.mhi = _mm512_srli_epi64(rc.mult, 32);
        rc.shift = _mm512_maskz_loadu_epi32(km, q->shift + c0);
        i8r_rqch_shift_avx512(&rc, o);
    }

    /* pairs: lane c of position (iy, ix) holds x - zp of columns ix and ix + 1 (0 outside
       the input), int16 each. Each input row of the 16 channels is loaded 16 columns at a
       time (masked: no byte past the row is read) and transposed to one vector per column. */
    for (iy = 0; iy < Hp; iy++) {
        int64_t yi = iy - c->pt, k;
        __m512i prev = zero, g_row[I8R_DWCL_MAXW];
        int live = yi >= 0 && yi < c->H;
        for (k = 0; live && k < c->W; k += 16) {
            __m128i rows[16];
            int64_t cols = c->W - k < 16 ? c->W - k : 16;
            __mmask16 cm = (__mmask16)((1u << cols) - 1);
            for (l = 0; l < 16; l++)
                rows[l] = l < n ? _mm_maskz_loadu_epi8(cm, j->x + (c0 + l) * HW + yi * c->W + k)
                                : _mm_setzero_si128();
            i8r_transpose16(rows);
            for (l = 0; l < cols; l++) {
                __m512i g = c->x_signed ? _mm512_cvtepi8_epi32(rows[l])
                                        : _mm512_cvtepu8_epi32(rows[l]);
                g_row[k + l] = _mm512_maskz_sub_epi32(km, g, xzp);
            }
        }
        for (ix = 0; ix <= Wp; ix++) {
            int64_t xi = ix - c->pl;
            __m512i g = live && ix < Wp && xi >= 0 && xi < c->W ? g_row[xi] : zero;
            if (ix > 0)
                _mm512_storeu_si512(pr + iy * Wp + ix - 1,
                                    _mm512_mask_blend_epi16(0xAAAAAAAA, prev,
                                                            _mm512_slli_epi32(g, 16)));
            prev = g;
        }
    }

    /* every output position: the taps, requantization, 16 bytes */
    if (c->kh == 3 && pairs == 2)
        i8r_dwcl_outputs(c, o, &rc, pr, Wp, wv, bias, ob, 3, 2);
    else
        i8r_dwcl_outputs(c, o, &rc, pr, Wp, wv, bias, ob, c->kh, pairs);

    /* back to the channels' rows, 16 positions at a time */
    for (p0 = 0; p0 < P; p0 += 16) {
        __m128i rows[16];
        __mmask16 keep = P - p0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (P - p0)) - 1);
        for (l = 0; l < 16; l++) rows[l] = _mm_loadu_si128((const __m128i*)(ob + 16 * (p0 + l)));
        i8r_transpose16(rows);
        for (l = 0; l < n; l++) _mm_mask_storeu_epi8(j->y + (c0 + l) * P + p0, keep, rows[l]);
    }
}

static void i8r_dwcl_job(void* ctx, int64_t b, int64_t e) {
    const i8r_dwcl_job_t* j = (const i8r_dwcl_job_t*)ctx;
    i8r_rqo_t_avx512 o;
    int64_t cb;
    i8r_rqo_init_avx512(&o, j->rq, 0, j->c->C);
    /* the part of the part's first block (parts are disjoint), reused while it is in the
       cache */
    uint8_t* part = j->blocks + b * i8r_dwcl_block_bytes(j->c, j->d);
    __m512i* buf = (__m512i*)(part + (64 - (uintptr_t)part % 64) % 64);
    for (cb = b; cb < e; cb++) i8r_dwcl_block(j, &o, 16 * cb, buf);
}
#endif

/* Conv over an 8-bit input. `w`: packed s8 [G][Mb][Kq][16][4], or for depthwise int16
   [M][taps] (w - wzp); `bias`, `zb`: [M] folded (depthwise: the plain bias, zb unused). */
static void i8r_conv(const i8r_conv_t* c, const uint8_t* x, const void* w, const int32_t* bias,
                     const int32_t* zb, const i8r_requant_t* rq, uint8_t* y, uint8_t* scratch,
                     int isa, i8r_pool_t* pool) {
    i8r_conv_dims_t d = i8r_conv_dims(c);
    i8r_conv_scratch_t sl = i8r_conv_scratch_layout(c);
    int64_t* koff = (int64_t*)(scratch + sl.koff);
    int32_t* colsum = (int32_t*)(scratch + sl.colsum);
    int64_t* pan = (int64_t*)(scratch + sl.pan);
    uint8_t* x4 = scratch + sl.x4;
    int esz = i8r_out_size(rq);
    int64_t HW = c->H * c->W, P = c->OH * c->OW, n, g, kg, cq, ky, kx;
    uint8_t flip = c->x_signed ? 0x80 : 0, xzpu = (uint8_t)(c->xzp ^ flip);
    i8r_cplan_t cp;
    memset(&cp, 0, sizeof cp);
    cp.rq = rq;
    cp.esz = esz;
    cp.pan = pan;
    cp.map.jofs = 0;
    cp.map.plane = P;
    if (c->N * c->M * P * d.K < I8R_POOL_MIN_MACS) pool = NULL;

#if I8R_X86
    if (i8r_dwcl_fits(c, &d, isa, rq)) {
        i8r_dwcl_job_t job = {c, &d, NULL, (const int16_t*)w, bias, rq, NULL, scratch + sl.x4};
        for (n = 0; n < c->N; n++) {
            job.x = x + n * c->C * HW;
            job.y = y + n * c->M * P;
            i8r_pool_run(pool, i8r_dwcl_job, &job, (c->C + 15) / 16);
        }
        return;
    }
#endif
    if (c->depthwise) {
        i8r_dwplan_t dp;
        i8r_dw_job_t job;
        int16_t* plane = (int16_t*)(scratch + sl.x4);
        int64_t t, ci;
        for (t = 0; t < d.taps; t++) koff[t] = (t / c->kw) * c->dh * d.Wp + (t % c->kw) * c->dw;
        if (d.direct)
            cp.map.L = d.Wp, cp.map.V = c->OW, cp.map.S = c->OW, cp.map.J = c->OH * d.Wp;
        else
            cp.map.L = c->OW, cp.map.V = c->OW, cp.map.S = c->OW, cp.map.J = c->OW;
        i8r_panel_table(&cp.map, pan);
        cp.dense = i8r_map_dense(&cp.map);
        dp.taps = d.taps;
        dp.off = koff;
        dp.bias = bias;
        dp.rq = rq;
        dp.OH = c->OH;
        dp.OW = c->OW;
        dp.Wp = d.Wp;
        dp.sh = c->sh;
        dp.sw = c->sw;
        cp.bias = bias; /* the plain bias (no zero-point terms to fold), no column sums */
        dp.cp = cp;
        job.isa = isa;
        job.c = c;
        job.d = &d;
        job.dp = &dp;
        job.planes = plane;
        job.stride = d.plane;
        job.w = (const int16_t*)w;
        for (n = 0; n < c->N; n++) {
            job.x = d.Mg == 1 ? x + n * c->C * HW : NULL;
            if (!job.x) /* channels that share a plane may be in different parts */
                for (ci = 0; ci < c->C; ci++)
                    i8r_pack_plane(isa, c, &d, x + (n * c->C + ci) * HW, plane + ci * d.plane);
            job.y = y + n * c->M * P * esz;
            i8r_pool_run(pool, i8r_dw_job, &job, c->M);
        }
        return;
    }

    i8r_conv_job_t job = {isa, &cp};
    int need_colsum = i8r_any_nonzero(zb, c->M);
    for (cq = 0, kg = 0; cq < d.Cq; cq++)
        for (ky = 0; ky < c->kh; ky++)
            for (kx = 0; kx < c->kw; kx++, kg++)
                koff[kg] = (cq * d.Hp * d.Wp + ky * c->dh * d.Wp + kx * c->dw) * 4;
    cp.Kq = d.Kq;
    cp.Mg = d.Mg;
    cp.bias = bias;
    cp.zb = zb;
    cp.colsum = need_colsum ? colsum : NULL;
    if (d.direct) {
        cp.b = x4;
        cp.koff = koff;
        cp.map.L = d.Wp, cp.map.V = c->OW, cp.map.S = c->OW, cp.map.J = d.cols;
        i8r_panel_table(&cp.map, pan);
        cp.dense = i8r_map_dense(&cp.map);
        for (n = 0; n < c->N; n++)
            for (g = 0; g < c->G; g++) {
                i8r_pack_input(isa, c, &d, x + (n * c->C + g * d.Cg) * HW, xzpu, flip, x4);
                if (need_colsum) i8r_colsum(x4, koff, d.Kq, (d.cols + 15) / 16 * 16, colsum);
                cp.w = (const int8_t*)w + g * d.Mb * d.Kq * 64;
                cp.ch0 = g * d.Mg;
                cp.y = y + (n * c->M + g * d.Mg) * P * esz;
                i8r_pool_run(pool, i8r_conv_job, &job, d.Mb);
            }
        return;
    }
    {
        /* strided: the columns of `rows` output rows at a time, gathered from the packed
           input; their k groups are QS columns apart */
        uint8_t* cols = scratch + sl.cols;
        int64_t* bkoff = koff + d.Kq, oy0, ncols = -1;
        for (kg = 0; kg < d.Kq; kg++) bkoff[kg] = kg * d.QS * 4;
        cp.b = cols;
        cp.koff = bkoff;
        cp.map.L = P, cp.map.V = P, cp.map.S = P;
        for (n = 0; n < c->N; n++)
            for (g = 0; g < c->G; g++) {
                i8r_pack_input(isa, c, &d, x + (n * c->C + g * d.Cg) * HW, xzpu, flip, x4);
                cp.w = (const int8_t*)w + g * d.Mb * d.Kq * 64;
                cp.ch0 = g * d.Mg;
                for (oy0 = 0; oy0 < c->OH; oy0 += c->rows) {
                    int64_t oy1 = oy0 + c->rows < c->OH ? oy0 + c->rows : c->OH;
                    if ((oy1 - oy0) * c->OW != ncols) {
                        ncols = (oy1 - oy0) * c->OW;
                        cp.map.J = ncols;
                        i8r_panel_table(&cp.map, pan);
                        cp.dense = i8r_map_dense(&cp.map);
                    }
                    i8r_im2col(isa, &cp, x4, koff, c->sh, c->sw, d.Wp, c->OW, oy0, oy1, cols,
                               d.QS);
                    if (need_colsum) i8r_colsum(cols, bkoff, d.Kq, (ncols + 15) / 16 * 16, colsum);
                    cp.y = y + ((n * c->M + g * d.Mg) * P + oy0 * c->OW) * esz;
                    i8r_pool_run(pool, i8r_conv_job, &job, d.Mb);
                }
            }
    }
}

/* ---- Gemm ------------------------------------------------------------------------------ */

typedef struct {
    int64_t Mr, K, N;
    int32_t x_signed;
} i8r_gemm_t;

static inline int64_t i8r_gemm_scratch(const i8r_gemm_t* g) { return i8r_align64(g->Mr * 4); }

typedef struct {
    int isa;
    const i8r_gplan_t* gp;
} i8r_gemm_job_t;

static void i8r_gemm_job(void* ctx, int64_t b, int64_t e) {
    const i8r_gemm_job_t* j = (const i8r_gemm_job_t*)ctx;
    i8r_gemm_run(j->isa, j->gp, b, e);
}

/* Gemm x [Mr][K] . W^T: `w` packed [Nb][Kq][16][4] (u8 when x is int8); `bias`, `zb` and the
   requantization arrays padded to Nb*16 channels. x is read in place, up to 3 bytes past a
   row (their weights are 0; the arena has slack after its last tensor). */
static void i8r_gemm(const i8r_gemm_t* g, const uint8_t* x, const uint8_t* w,
                     const int32_t* bias, const int32_t* zb, const i8r_requant_t* rq,
                     uint8_t* y, uint8_t* scratch, int isa, i8r_pool_t* pool) {
    i8r_gplan_t gp;
    i8r_gemm_job_t job = {isa, &gp};
    int64_t Nb = (g->N + 15) / 16, r, k;
    int32_t* rowsum = (int32_t*)scratch;
    gp.Mr = g->Mr;
    gp.K = g->K;
    gp.N = g->N;
    gp.Kq = (g->K + 3) / 4;
    gp.x = x;
    gp.x_signed = g->x_signed;
    gp.w = w;
    gp.bias = bias;
    gp.zb = zb;
    gp.rq = rq;
    gp.y = y;
    gp.rowsum = NULL;
    if (g->Mr * g->K * g->N < I8R_POOL_MIN_MACS) pool = NULL;
    if (g->x_signed || i8r_any_nonzero(zb, g->N)) {
        for (r = 0; r < g->Mr; r++) {
            int32_t s = 0;
            const uint8_t* xr = x + r * g->K;
            if (g->x_signed)
                for (k = 0; k < g->K; k++) s += (int8_t)xr[k];
            else
                for (k = 0; k < g->K; k++) s += xr[k];
            rowsum[r] = s;
        }
        gp.rowsum = rowsum;
    }
    i8r_pool_run(pool, i8r_gemm_job, &job, Nb);
}

#endif
