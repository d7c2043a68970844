/* Elementwise int8 kernels with vector paths: QuantizeLinear, QLinearAdd over a contiguous
   span, MaxPool. Each has a scalar C form (the reference, and the tails) and, for Quantize and
   Add, AVX2 and AVX-512 forms that reproduce it bit for bit; MaxPool is integer max only and
   is written as plain loops the compiler vectorizes for the baseline. */
#ifndef I8R_ELTWISE_H
#define I8R_ELTWISE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "i8r_isa.h"
#include "i8r_requant.h"
#if I8R_X86
#include <immintrin.h>
#endif

/* QuantizeLinear: y = saturate(round_half_even(x / scale) + zp) (ONNX; ONNX Runtime divides,
   MlasQuantizeLinear), into uint8 (0), int8 (1) or int16 (2). */
typedef struct {
    int64_t n;
    float scale;
    int32_t zp, qmin, qmax, out_code;
} i8r_quantize_t;

/* QLinearAdd over one contiguous span (elementwise, or one side a scalar: stride 0), 8-bit in
   and out. mode 0 (`ort`): ONNX Runtime's MlasQLinearAddKernelAvx2Helper in its uint8 domain
   (values + off): fma(a, rAC, fma(b, rBC, FixedPart)), a scalar side folded into FixedPart with
   a separate multiply and add, then round half to even, clamp, - off. mode 1 (`fixed-point`):
   TFLite's reference Add (integer_ops/add.h): both inputs - zp shifted left by left_shift,
   rescaled, summed, rescaled to the output. */
typedef struct {
    int32_t mode, x_signed, off, left_shift;
    int32_t azp, bzp, yzp, qmin, qmax;
    float rac, rbc, fixed;
    int32_t mult_a, shift_a, mult_b, shift_b, mult_y, shift_y;
} i8r_add_t;

static inline int32_t i8r_ld8(const uint8_t* p, int64_t i, int s) {
    return s ? (int32_t)((const int8_t*)p)[i] : (int32_t)p[i];
}

static void i8r_quantize_portable(const i8r_quantize_t* q, const float* x, uint8_t* y,
                                  int64_t i0) {
    int64_t i;
    for (i = i0; i < q->n; i++) {
        int32_t v = i8r_f2q(x[i] / q->scale, q->zp, q->qmin, q->qmax);
        if (q->out_code == 2)
            ((int16_t*)y)[i] = (int16_t)v;
        else
            y[i] = (uint8_t)v;
    }
}

/* Elements [i0, n) of an Add span. */
static void i8r_add_portable(const i8r_add_t* p, const uint8_t* A, int64_t asi,
                             const uint8_t* B, int64_t bsi, uint8_t* y, int64_t n, int64_t i0) {
    int64_t i;
    int s = p->x_signed;
    if (p->mode == 0) {
        int32_t lo = p->qmin + p->off, hi = p->qmax + p->off;
        if (bsi == 0 && asi != 0) {
            float fx = p->fixed + (float)(i8r_ld8(B, 0, s) + p->off) * p->rbc;
            for (i = i0; i < n; i++)
                y[i] = (uint8_t)(i8r_f2q(fmaf((float)(i8r_ld8(A, i, s) + p->off), p->rac, fx), 0,
                                         lo, hi) - p->off);
        } else if (asi == 0 && bsi != 0) {
            float fx = p->fixed + (float)(i8r_ld8(A, 0, s) + p->off) * p->rac;
            for (i = i0; i < n; i++)
                y[i] = (uint8_t)(i8r_f2q(fmaf((float)(i8r_ld8(B, i, s) + p->off), p->rbc, fx), 0,
                                         lo, hi) - p->off);
        } else {
            for (i = i0; i < n; i++) {
                float v = fmaf((float)(i8r_ld8(A, i * asi, s) + p->off), p->rac,
                               fmaf((float)(i8r_ld8(B, i * bsi, s) + p->off), p->rbc, p->fixed));
                y[i] = (uint8_t)(i8r_f2q(v, 0, lo, hi) - p->off);
            }
        }
        return;
    }
    for (i = i0; i < n; i++) {
        /* (x - zp) << left_shift in int32, as TFLite: |x - zp| <= 255 and the shift is at
           most 20 for 8-bit tensors, so nothing overflows */
        int32_t qa = i8r_mbqm((int32_t)((uint32_t)(i8r_ld8(A, i * asi, s) - p->azp) << p->left_shift),
                              p->mult_a, p->shift_a);
        int32_t qb = i8r_mbqm((int32_t)((uint32_t)(i8r_ld8(B, i * bsi, s) - p->bzp) << p->left_shift),
                              p->mult_b, p->shift_b);
        int32_t r = i8r_mbqm((int32_t)((uint32_t)qa + (uint32_t)qb), p->mult_y, p->shift_y) + p->yzp;
        y[i] = (uint8_t)i8r_clamp(r, p->qmin, p->qmax);
    }
}

#if I8R_X86
#include <immintrin.h>

/* ---- AVX-512 ----------------------------------------------------------------------------- */
#define I8R_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

I8R_T512 static inline __m512 i8r_f2q_ps_512(__m512 v, __m512 lo, __m512 hi) {
    v = _mm512_min_ps(hi, _mm512_max_ps(lo, v)); /* a NaN stays NaN */
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
}

I8R_T512 static inline __m512i i8r_load16_512(const uint8_t* p, int s) {
    __m128i b = _mm_loadu_si128((const __m128i*)p);
    return s ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
}

I8R_T512 static void i8r_quantize_avx512(const i8r_quantize_t* q, const float* x, uint8_t* y) {
    __m512 s = _mm512_set1_ps(q->scale), lo = _mm512_set1_ps((float)(q->qmin - q->zp));
    __m512 hi = _mm512_set1_ps((float)(q->qmax - q->zp));
    __m512i zp = _mm512_set1_epi32(q->zp);
    int64_t i;
    for (i = 0; i + 16 <= q->n; i += 16) {
        __m512 v = i8r_f2q_ps_512(_mm512_div_ps(_mm512_loadu_ps(x + i), s), lo, hi);
        __m512i r = _mm512_add_epi32(_mm512_cvtps_epi32(v), zp);
        if (q->out_code == 2)
            _mm256_storeu_si256((__m256i*)((int16_t*)y + i), _mm512_cvtepi32_epi16(r));
        else
            _mm_storeu_si128((__m128i*)(y + i), _mm512_cvtepi32_epi8(r));
    }
    i8r_quantize_portable(q, x, y, i);
}

/* (x << ls) then i8r_mbqm without the saturating steps: callers check that no shift is
   positive and no multiplier is INT32_MIN (requantize.py writes neither). */
I8R_T512 static inline __m512i i8r_mbqm_512(__m512i x, int32_t m, int32_t shift) {
    __m512i mv = _mm512_set1_epi32(m), nudge = _mm512_set1_epi64(1LL << 30);
    __m512i e = _mm512_srli_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, mv), nudge), 31);
    __m512i o = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(x, 32), mv), nudge);
    __m512i h = _mm512_mask_blend_epi32(0xAAAA, e, _mm512_slli_epi64(_mm512_srli_epi64(o, 31), 32));
    int rs = -shift;
    __m512i mask = _mm512_set1_epi32((int32_t)((1LL << rs) - 1));
    __m512i thr = _mm512_add_epi32(_mm512_srai_epi32(mask, 1), _mm512_srli_epi32(h, 31));
    __m512i r = _mm512_sra_epi32(h, _mm_cvtsi32_si128(rs));
    __mmask16 up = _mm512_cmpgt_epi32_mask(_mm512_and_si512(h, mask), thr);
    return _mm512_mask_add_epi32(r, up, r, _mm512_set1_epi32(1));
}

I8R_T512 static void i8r_add_avx512(const i8r_add_t* p, const uint8_t* A, int64_t asi,
                                    const uint8_t* B, int64_t bsi, uint8_t* y, int64_t n) {
    int64_t i = 0;
    int s = p->x_signed;
    if (p->mode == 0) {
        __m512i off = _mm512_set1_epi32(p->off);
        __m512 lo = _mm512_set1_ps((float)(p->qmin + p->off));
        __m512 hi = _mm512_set1_ps((float)(p->qmax + p->off));
        __m512 rac = _mm512_set1_ps(p->rac), rbc = _mm512_set1_ps(p->rbc);
        float f;
        const uint8_t* X = A;
        __m512 r;
        if (asi && bsi) {
            __m512 fixed = _mm512_set1_ps(p->fixed);
            for (; i + 16 <= n; i += 16) {
                __m512 a = _mm512_cvtepi32_ps(_mm512_add_epi32(i8r_load16_512(A + i, s), off));
                __m512 b = _mm512_cvtepi32_ps(_mm512_add_epi32(i8r_load16_512(B + i, s), off));
                __m512 v = i8r_f2q_ps_512(_mm512_fmadd_ps(a, rac, _mm512_fmadd_ps(b, rbc, fixed)), lo, hi);
                _mm_storeu_si128((__m128i*)(y + i),
                                 _mm512_cvtepi32_epi8(_mm512_sub_epi32(_mm512_cvtps_epi32(v), off)));
            }
        } else {
            if (bsi == 0) {
                f = p->fixed + (float)(i8r_ld8(B, 0, s) + p->off) * p->rbc;
                r = rac;
            } else {
                f = p->fixed + (float)(i8r_ld8(A, 0, s) + p->off) * p->rac;
                r = rbc;
                X = B;
            }
            __m512 fx = _mm512_set1_ps(f);
            for (; i + 16 <= n; i += 16) {
                __m512 a = _mm512_cvtepi32_ps(_mm512_add_epi32(i8r_load16_512(X + i, s), off));
                __m512 v = i8r_f2q_ps_512(_mm512_fmadd_ps(a, r, fx), lo, hi);
                _mm_storeu_si128((__m128i*)(y + i),
                                 _mm512_cvtepi32_epi8(_mm512_sub_epi32(_mm512_cvtps_epi32(v), off)));
            }
        }
    } else if (asi && bsi) {
        __m512i azp = _mm512_set1_epi32(p->azp), bzp = _mm512_set1_epi32(p->bzp);
        __m512i yzp = _mm512_set1_epi32(p->yzp), qmin = _mm512_set1_epi32(p->qmin);
        __m512i qmax = _mm512_set1_epi32(p->qmax);
        __m128i ls = _mm_cvtsi32_si128(p->left_shift);
        for (; i + 16 <= n; i += 16) {
            __m512i a = _mm512_sll_epi32(_mm512_sub_epi32(i8r_load16_512(A + i, s), azp), ls);
            __m512i b = _mm512_sll_epi32(_mm512_sub_epi32(i8r_load16_512(B + i, s), bzp), ls);
            __m512i t = _mm512_add_epi32(i8r_mbqm_512(a, p->mult_a, p->shift_a),
                                         i8r_mbqm_512(b, p->mult_b, p->shift_b));
            t = _mm512_add_epi32(i8r_mbqm_512(t, p->mult_y, p->shift_y), yzp);
            t = _mm512_min_epi32(_mm512_max_epi32(t, qmin), qmax);
            _mm_storeu_si128((__m128i*)(y + i), _mm512_cvtepi32_epi8(t));
        }
    }
    i8r_add_portable(p, A, asi, B, bsi, y, n, i);
}

/* ---- AVX2 (with FMA) ------------------------------------------------------------------------ */
#define I8R_T256 __attribute__((target("avx2,fma")))

I8R_T256 static inline __m256 i8r_f2q_ps_256(__m256 v, __m256 lo, __m256 hi) {
    v = _mm256_min_ps(hi, _mm256_max_ps(lo, v));
    return _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
}

I8R_T256 static inline __m256i i8r_load8_256(const uint8_t* p, int s) {
    __m128i b = _mm_loadl_epi64((const __m128i*)p);
    return s ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
}

/* the low byte of each of 8 int32 lanes, in order, to 8 bytes */
I8R_T256 static inline void i8r_store8_256(uint8_t* p, __m256i v) {
    __m256i m = _mm256_and_si256(v, _mm256_set1_epi32(0xFF));
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    _mm_storel_epi64((__m128i*)p, _mm_packus_epi16(w, w));
}

I8R_T256 static void i8r_quantize_avx2(const i8r_quantize_t* q, const float* x, uint8_t* y) {
    __m256 s = _mm256_set1_ps(q->scale), lo = _mm256_set1_ps((float)(q->qmin - q->zp));
    __m256 hi = _mm256_set1_ps((float)(q->qmax - q->zp));
    __m256i zp = _mm256_set1_epi32(q->zp);
    int64_t i;
    for (i = 0; i + 8 <= q->n; i += 8) {
        __m256 v = i8r_f2q_ps_256(_mm256_div_ps(_mm256_loadu_ps(x + i), s), lo, hi);
        __m256i r = _mm256_add_epi32(_mm256_cvtps_epi32(v), zp);
        if (q->out_code == 2) {
            __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
            _mm_storeu_si128((__m128i*)((int16_t*)y + i), w); /* in int16 range: exact */
        } else {
            i8r_store8_256(y + i, r);
        }
    }
    i8r_quantize_portable(q, x, y, i);
}

I8R_T256 static void i8r_add_avx2(const i8r_add_t* p, const uint8_t* A, int64_t asi,
                                  const uint8_t* B, int64_t bsi, uint8_t* y, int64_t n) {
    int64_t i = 0;
    int s = p->x_signed;
    if (p->mode == 0) {
        __m256i off = _mm256_set1_epi32(p->off);
        __m256 lo = _mm256_set1_ps((float)(p->qmin + p->off));
        __m256 hi = _mm256_set1_ps((float)(p->qmax + p->off));
        __m256 rac = _mm256_set1_ps(p->rac), rbc = _mm256_set1_ps(p->rbc);
        if (asi && bsi) {
            __m256 fixed = _mm256_set1_ps(p->fixed);
            for (; i + 8 <= n; i += 8) {
                __m256 a = _mm256_cvtepi32_ps(_mm256_add_epi32(i8r_load8_256(A + i, s), off));
                __m256 b = _mm256_cvtepi32_ps(_mm256_add_epi32(i8r_load8_256(B + i, s), off));
                __m256 v = i8r_f2q_ps_256(_mm256_fmadd_ps(a, rac, _mm256_fmadd_ps(b, rbc, fixed)), lo, hi);
                i8r_store8_256(y + i, _mm256_sub_epi32(_mm256_cvtps_epi32(v), off));
            }
        } else {
            const uint8_t* X = bsi == 0 ? A : B;
            float f = bsi == 0 ? p->fixed + (float)(i8r_ld8(B, 0, s) + p->off) * p->rbc
                               : p->fixed + (float)(i8r_ld8(A, 0, s) + p->off) * p->rac;
            __m256 r = bsi == 0 ? rac : rbc, fx = _mm256_set1_ps(f);
            for (; i + 8 <= n; i += 8) {
                __m256 a = _mm256_cvtepi32_ps(_mm256_add_epi32(i8r_load8_256(X + i, s), off));
                __m256 v = i8r_f2q_ps_256(_mm256_fmadd_ps(a, r, fx), lo, hi);
                i8r_store8_256(y + i, _mm256_sub_epi32(_mm256_cvtps_epi32(v), off));
            }
        }
    }
    /* fixed-point Add: the AVX-512 form only; the scalar form serves AVX2 */
    i8r_add_portable(p, A, asi, B, bsi, y, n, i);
}
#endif /* I8R_X86 */

static void i8r_quantize(int isa, const i8r_quantize_t* q, const float* x, uint8_t* y) {
#if I8R_X86
    if (isa == I8R_AVX512VNNI) {
        i8r_quantize_avx512(q, x, y);
        return;
    }
    if (isa == I8R_AVX2) {
        i8r_quantize_avx2(q, x, y);
        return;
    }
#endif
    (void)isa;
    i8r_quantize_portable(q, x, y, 0);
}

/* One Add span: A[i * asi] + B[i * bsi] for i < n (strides 0 or 1), 8-bit. */
static void i8r_add(int isa, const i8r_add_t* p, const uint8_t* A, int64_t asi, const uint8_t* B,
                    int64_t bsi, uint8_t* y, int64_t n) {
#if I8R_X86
    /* the vector fixed-point form leaves out the saturating steps: every shift a right shift
       (requantize.py: all three multipliers are below 1), no INT32_MIN multiplier, and
       |x - zp| << left_shift within int32 */
    int simple = p->shift_a <= 0 && p->shift_b <= 0 && p->shift_y <= 0 && p->mult_a != INT32_MIN
                 && p->mult_b != INT32_MIN && p->mult_y != INT32_MIN && p->left_shift >= 0
                 && p->left_shift <= 22;
    /* contiguous spans: both sides, or one side and a scalar */
    int spans = (asi == 1 && (bsi == 0 || bsi == 1)) || (asi == 0 && bsi == 1);
    if (isa == I8R_AVX512VNNI && spans && (p->mode == 0 || simple)) {
        i8r_add_avx512(p, A, asi, B, bsi, y, n);
        return;
    }
    if (isa == I8R_AVX2 && spans) {
        i8r_add_avx2(p, A, asi, B, bsi, y, n);
        return;
    }
#endif
    (void)isa;
    i8r_add_portable(p, A, asi, B, bsi, y, n, 0);
}

/* MaxPool over uint8 or int8 planes: the largest value of each window, padding never taking
   part. Windows that hold no input element at all (possible only with a padding as large as
   the kernel) make it return 0 and leave the op to the caller's scalar form. For each output
   row the window's input rows are reduced first (a vertical max into `row`, which has the
   left and right padding as 0, below every value), then the columns: one strided row is split
   into its sw phases so that every tap is a contiguous run. int8 runs in the uint8 domain
   (x ^ 0x80 keeps the order). The vector form (SSE2, every x86-64) works in whole 16-byte
   chunks: it reads up to 15 bytes past an input row (the arena has slack after its last
   tensor) and stores exactly. */
typedef struct {
    int64_t N, C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW;
    int32_t x_signed;
} i8r_maxpool_t;

/* The padded row's width: every column a window of the row reaches. */
static int64_t i8r_maxpool_width(const i8r_maxpool_t* p) {
    return p->OW * p->sw + p->kw * p->dw + p->W + p->pl;
}

/* `row` bytes: the padded row, then its sw phases, each with a vector's slack. */
static int64_t i8r_maxpool_scratch(const i8r_maxpool_t* p) {
    int64_t Wr = i8r_maxpool_width(p);
    return Wr + 64 + p->sw * ((Wr + p->sw - 1) / p->sw + 16) + 64;
}

static void i8r_max_bytes(uint8_t* o, const uint8_t* s, int64_t n) {
    int64_t i;
    for (i = 0; i < n; i++) o[i] = o[i] > s[i] ? o[i] : s[i];
}

#if I8R_X86
/* The common 2x2 window at stride 2 without padding or dilation, every window inside the
   input (SSE2): each output row straight from its two input rows, 8 outputs per step (the
   vertical max of 16 columns, then of each column pair: the low and high bytes of 16-bit
   lanes). Rows of 8 or more move their last step back to end at the row's end (it rewrites
   the same values); shorter rows take one step that reads up to 15 bytes past the row, as
   the general form does (the arena has slack), and writes 8 bytes: the bytes past the row are
   the next row's, which its own step writes afterwards, and the op's last row goes through a
   copy so that nothing past the output is written. Returns 0 (and does nothing) for other
   geometries. */
static inline __m128i i8r_max2x2_step(const uint8_t* r0, int64_t W, __m128i f, __m128i lo) {
    __m128i v = _mm_max_epu8(_mm_xor_si128(_mm_loadu_si128((const __m128i*)r0), f),
                             _mm_xor_si128(_mm_loadu_si128((const __m128i*)(r0 + W)), f));
    __m128i m = _mm_max_epu8(_mm_and_si128(v, lo), _mm_srli_epi16(v, 8));
    return _mm_xor_si128(_mm_packus_epi16(m, m), f);
}

static int i8r_maxpool_2x2(const i8r_maxpool_t* p, const uint8_t* x, uint8_t* y) {
    int64_t nc, oy, ox, rows = p->N * p->C * p->OH;
    __m128i f = _mm_set1_epi8((char)(p->x_signed ? 0x80 : 0)), lo = _mm_set1_epi16(0xFF);
    if (p->kh != 2 || p->kw != 2 || p->sh != 2 || p->sw != 2 || p->pt || p->pl || p->dh != 1
        || p->dw != 1 || 2 * p->OH > p->H || 2 * p->OW > p->W)
        return 0;
    for (nc = 0; nc < p->N * p->C; nc++)
        for (oy = 0; oy < p->OH; oy++) {
            const uint8_t* r0 = x + (nc * p->H + 2 * oy) * p->W;
            uint8_t* o = y + (nc * p->OH + oy) * p->OW;
            if (p->OW < 8) {
                __m128i m = i8r_max2x2_step(r0, p->W, f, lo);
                if ((nc * p->OH + oy) + 1 < rows) {
                    _mm_storel_epi64((__m128i*)o, m);
                } else {
                    uint8_t t8[16];
                    _mm_storeu_si128((__m128i*)t8, m);
                    memcpy(o, t8, (size_t)p->OW);
                }
                continue;
            }
            for (ox = 0;; ox += 8) {
                if (ox + 8 > p->OW) ox = p->OW - 8;
                _mm_storel_epi64((__m128i*)(o + ox), i8r_max2x2_step(r0 + 2 * ox, p->W, f, lo));
                if (ox + 8 == p->OW) break;
            }
        }
    return 1;
}
#endif

static int i8r_maxpool(int isa, const i8r_maxpool_t* p, const uint8_t* x, uint8_t* y,
                       uint8_t* row) {
    int64_t oy, ox, ky, kx, nc, i, q, Wr = i8r_maxpool_width(p), len = (Wr + p->sw - 1) / p->sw;
    uint8_t flip = p->x_signed ? 0x80 : 0, *phase = row + Wr + 64, *r = row + p->pl;
    int vec = 0;
#if I8R_X86
    vec = isa != I8R_PORTABLE;
    __m128i f = _mm_set1_epi8((char)flip), lo = _mm_set1_epi16(0xFF);
#endif
    (void)isa;
    for (oy = 0; oy < p->OH; oy++) {
        int any = 0;
        for (ky = 0; ky < p->kh; ky++) {
            int64_t iy = oy * p->sh - p->pt + ky * p->dh;
            any |= iy >= 0 && iy < p->H;
        }
        if (!any) return 0;
    }
    for (ox = 0; ox < p->OW; ox++) {
        int any = 0;
        for (kx = 0; kx < p->kw; kx++) {
            int64_t ix = ox * p->sw - p->pl + kx * p->dw;
            any |= ix >= 0 && ix < p->W;
        }
        if (!any) return 0;
    }
#if I8R_X86
    if (vec && i8r_maxpool_2x2(p, x, y)) return 1;
#endif
    memset(row, 0, (size_t)(Wr + 64));
    for (nc = 0; nc < p->N * p->C; nc++) {
        const uint8_t* plane = x + nc * p->H * p->W;
        uint8_t* out = y + nc * p->OH * p->OW;
        for (oy = 0; oy < p->OH; oy++) {
            const uint8_t* src;
            uint8_t* o = out + oy * p->OW;
            int first = 1;
            for (ky = 0; ky < p->kh; ky++) {
                int64_t iy = oy * p->sh - p->pt + ky * p->dh;
                if (iy < 0 || iy >= p->H) continue;
                src = plane + iy * p->W;
                i = 0;
#if I8R_X86
                if (vec)
                    for (; i < p->W; i += 16) {
                        __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i*)(src + i)), f);
                        if (!first) v = _mm_max_epu8(v, _mm_loadu_si128((const __m128i*)(r + i)));
                        _mm_storeu_si128((__m128i*)(r + i), v);
                    }
#endif
                if (first)
                    for (; i < p->W; i++) r[i] = src[i] ^ flip;
                else
                    for (; i < p->W; i++) r[i] = r[i] > (uint8_t)(src[i] ^ flip) ? r[i] : src[i] ^ flip;
                first = 0;
            }
            memset(r + p->W, 0, (size_t)(Wr - p->pl - p->W + 16)); /* the right padding */
            const uint8_t* taps = row;
            int64_t stride = 0;
            if (p->sw > 1) {
                /* the sw phases of the row: tap offset t = kx*dw reads phase t % sw from
                   column ox + t / sw */
                i = 0;
#if I8R_X86
                if (vec && p->sw == 2) /* even bytes: the low bytes of 16-bit lanes */
                    for (; i < len; i += 16) {
                        __m128i a = _mm_loadu_si128((const __m128i*)(row + 2 * i));
                        __m128i b = _mm_loadu_si128((const __m128i*)(row + 2 * i + 16));
                        _mm_storeu_si128((__m128i*)(phase + i),
                                         _mm_packus_epi16(_mm_and_si128(a, lo), _mm_and_si128(b, lo)));
                        _mm_storeu_si128((__m128i*)(phase + len + 16 + i),
                                         _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8)));
                    }
#endif
                for (q = 0; q < p->sw; q++) {
                    int64_t j;
                    for (j = (q < 2 ? i : 0); j < len; j++)
                        phase[q * (len + 16) + j] = row[j * p->sw + q];
                }
                taps = phase;
                stride = len + 16;
            }
            i = 0;
#if I8R_X86
            if (vec)
                for (; i < p->OW; i += 16) {
                    __m128i m = _mm_setzero_si128();
                    for (kx = 0; kx < p->kw; kx++) {
                        int64_t t = kx * p->dw;
                        const uint8_t* s = p->sw > 1 ? taps + (t % p->sw) * stride + t / p->sw
                                                     : taps + t;
                        m = _mm_max_epu8(m, _mm_loadu_si128((const __m128i*)(s + i)));
                    }
                    m = _mm_xor_si128(m, f);
                    if (i + 16 <= p->OW) {
                        _mm_storeu_si128((__m128i*)(o + i), m);
                    } else {
                        uint8_t t16[16];
                        _mm_storeu_si128((__m128i*)t16, m);
                        memcpy(o + i, t16, (size_t)(p->OW - i));
                    }
                }
#endif
            if (i < p->OW) {
                int64_t n = p->OW - i;
                memset(o + i, 0, (size_t)n);
                for (kx = 0; kx < p->kw; kx++) {
                    int64_t t = kx * p->dw;
                    i8r_max_bytes(o + i, (p->sw > 1 ? taps + (t % p->sw) * stride + t / p->sw
                                                    : taps + t) + i, n);
                }
                for (; i < p->OW; i++) o[i] ^= flip;
            }
        }
    }
    return 1;
}

#endif
