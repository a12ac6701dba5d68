/*
 * Bit-packed XNOR/popcount 3x3 binary convolutions for BBCU units (CPU).
 *
 * Activations: for every pixel, ceil(C/64) pairs of 64-bit words (sign plane, nonzero plane), stored
 * NHWC-like with a one-pixel border of zero words: [N][H+2][W+2][K][2]. A zero nonzero-bit makes a
 * channel contribute nothing, which reproduces both zero padding and torch.sign(0) == 0 exactly.
 * Weights: sign bits of W, packed once, [Cout/16][9 taps][K][16 outputs] (1 = negative), padded
 * outputs and channels are zero. Every weight must be nonzero (checked at pack time).
 *
 *   count[o] = sum_{tap,k} popcount(nz) - 2 * popcount(nz & (xs ^ ws[o]))
 *
 * The epilogue applies, per output channel, the float arithmetic of models/deploy.py in the same
 * order and without contraction (compiled with -ffp-contract=off):
 *   v = count * alpha; v = v + pre; v = v > 0 ? v : v * slope; v = v + post; v = v + residual
 * and packs sign(v + next_shift) for the next unit. An upsampling unit (r > 1) has its outputs
 * ordered sub-pixel major (o = (i*r + j)*C + c, reordered at pack time by the Python wrapper) and
 * writes the pixel-shuffled result with the nearest-upsampled input as residual.
 *
 * The conv core exists in three builds selected at run time: AVX-512 (VPOPCNTDQ), AVX2 (nibble
 * lookup popcount) and portable C. Rows are shared by threads that claim them one at a time (see
 * parallel_rows: the caller never waits for a helper thread that has not started, which matters when
 * other processes keep the other cores busy).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>
#include <stdatomic.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define BP_X86 1
#include <immintrin.h>
#else
#define BP_X86 0
#endif

#define GROUP 16   /* outputs per weight group */
#define MAX_OUT 4096

enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
static const char *ISA_NAMES[] = {"scalar", "avx2", "avx512"};
static int g_isa = ISA_SCALAR;
static int g_best = ISA_SCALAR;

typedef struct {
    int N, H, W, K;          /* input batch, size, words of input channels */
    int ng;                  /* weight groups of 16 outputs */
    int cout;                /* real outputs = r*r*C */
    int r, C;                /* upscale and channels per sub-pixel (C == cout when r == 1) */
    const uint64_t *act;     /* [N][H+2][W+2][K][2] */
    const uint64_t *wp;      /* [ng][9][K][16] */
    const float *alpha, *pre, *slope, *post;   /* [cout] (sub-pixel major when r > 1) */
    const float *resid;      /* [N][H][W][C] (NHWC) or [N][C][H][W] (resid_nchw), or NULL */
    float *out;              /* [N][H*r][W*r][C] (NHWC) or [N][C][H*r][W*r] (out_nchw) */
    int resid_nchw, out_nchw;
    const float *nshift;     /* [C] or NULL: pack sign(out + nshift) into nact */
    uint64_t *nact;          /* [N][H*r+2][W*r+2][Kn][2] */
    int32_t *counts;         /* raw counts [N][H][W][cout] instead of the epilogue, or NULL */
} unit_args;

/* ------------------------------------------------------------------------------------------ */
/* portable core */

static inline int popc64(uint64_t v) { return __builtin_popcountll(v); }

static inline void core_scalar(const unit_args *a, const uint64_t *const taps[9], int32_t *cnt) {
    const int K = a->K;
    int P = 0;
    for (int t = 0; t < 9; t++)
        for (int k = 0; k < K; k++) P += popc64(taps[t][2 * k + 1]);
    for (int g = 0; g < a->ng; g++) {
        const uint64_t *w = a->wp + (size_t)g * 9 * K * GROUP;
        int acc[GROUP] = {0};
        for (int t = 0; t < 9; t++) {
            for (int k = 0; k < K; k++) {
                const uint64_t xs = taps[t][2 * k], nz = taps[t][2 * k + 1];
                for (int j = 0; j < GROUP; j++) acc[j] += popc64(nz & (xs ^ w[j]));
                w += GROUP;
            }
        }
        for (int j = 0; j < GROUP; j++) cnt[g * GROUP + j] = P - 2 * acc[j];
    }
}

static inline void pack_bits_scalar(const float *v, const float *shift, int n, uint64_t *sw, uint64_t *nw,
                                    int bit0) {
    uint64_t s = 0, z = 0;
    for (int c = 0; c < n; c++) {
        const float x = v[c] + shift[c];
        s |= (uint64_t)(x < 0.0f) << (bit0 + c);
        z |= (uint64_t)(x != 0.0f) << (bit0 + c);
    }
    *sw |= s;
    *nw |= z;
}

/* ------------------------------------------------------------------------------------------ */
#if BP_X86

#define T_AVX2 __attribute__((target("avx2,popcnt")))
#define T_AVX512 __attribute__((target("avx2,popcnt,avx512f,avx512bw,avx512vl,avx512vpopcntdq")))

T_AVX2 static inline __m256i popcnt8_avx2(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

/* G groups of 16 outputs for one pixel (4*G byte accumulators of 4 lanes), constant G, K and MASK when
 * inlined; MASK == 0 when every nonzero bit of the window is set (no AND needed). */
T_AVX2 static inline __attribute__((always_inline)) void pass_avx2(const uint64_t *const taps[9], const uint64_t *w0,
                                                                   size_t gstride, const int K, const int G,
                                                                   const int MASK, int P, int32_t *cnt) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i b[8], s[8];
    for (int q = 0; q < 4 * G; q++) b[q] = s[q] = zero;
    int pending = 0;
    for (int t = 0; t < 9; t++) {
        for (int k = 0; k < K; k++) {
            const __m256i xs = _mm256_set1_epi64x((long long)taps[t][2 * k]);
            const __m256i nz = _mm256_set1_epi64x((long long)taps[t][2 * k + 1]);
            const uint64_t *w = w0 + ((size_t)t * K + k) * GROUP;
            for (int g = 0; g < G; g++) {
                for (int h = 0; h < 4; h++) {
                    __m256i d = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + g * gstride + 4 * h)), xs);
                    if (MASK) d = _mm256_and_si256(d, nz);
                    b[4 * g + h] = _mm256_add_epi8(b[4 * g + h], popcnt8_avx2(d));
                }
            }
            if (++pending == 31) { /* 31 * 8 <= 255: bytes cannot overflow */
                for (int q = 0; q < 4 * G; q++) {
                    s[q] = _mm256_add_epi64(s[q], _mm256_sad_epu8(b[q], zero));
                    b[q] = zero;
                }
                pending = 0;
            }
        }
    }
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256i pv = _mm256_set1_epi32(P);
    for (int q = 0; q < 4 * G; q += 2) {
        /* the low 32 bits of each 64-bit lane hold the sum: gather them into 8 int32 */
        const __m256i s0 = _mm256_add_epi64(s[q], _mm256_sad_epu8(b[q], zero));
        const __m256i s1 = _mm256_add_epi64(s[q + 1], _mm256_sad_epu8(b[q + 1], zero));
        const __m256i lo = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(s0, idx),
                                                     _mm256_permutevar8x32_epi32(s1, idx), 0x20);
        _mm256_storeu_si256((__m256i *)(cnt + 4 * q), _mm256_sub_epi32(pv, _mm256_slli_epi32(lo, 1)));
    }
}

T_AVX2 static inline __attribute__((always_inline)) void core_avx2_k(const unit_args *a,
                                                                     const uint64_t *const taps[9], int32_t *cnt,
                                                                     const int K, const int MASK, int P) {
    const size_t gstride = (size_t)9 * K * GROUP;
    int g = 0;
    for (; g + 2 <= a->ng; g += 2) pass_avx2(taps, a->wp + g * gstride, gstride, K, 2, MASK, P, cnt + g * GROUP);
    if (g < a->ng) pass_avx2(taps, a->wp + g * gstride, gstride, K, 1, MASK, P, cnt + g * GROUP);
}

T_AVX2 static inline void core_avx2(const unit_args *a, const uint64_t *const taps[9], int32_t *cnt) {
    const int K = a->K;
    int P = 0;
    uint64_t all = ~(uint64_t)0;
    for (int t = 0; t < 9; t++)
        for (int k = 0; k < K; k++) {
            P += (int)_mm_popcnt_u64(taps[t][2 * k + 1]);
            all &= taps[t][2 * k + 1];
        }
    if (K == 1 && all == ~(uint64_t)0)
        core_avx2_k(a, taps, cnt, 1, 0, P);
    else if (K == 1)
        core_avx2_k(a, taps, cnt, 1, 1, P);
    else
        core_avx2_k(a, taps, cnt, K, 1, P);
}

/* G groups of 16 outputs for one pixel: 2*G accumulators of 8 lanes; inlined with constant G (and K). */
#define AI __attribute__((always_inline))
T_AVX512 static inline AI void pass_avx512(const uint64_t *const taps[9], const uint64_t *w0, size_t gstride,
                                           const int K, const int G, int P, int32_t *cnt) {
    __m512i acc[8];
    for (int q = 0; q < 2 * G; q++) acc[q] = _mm512_setzero_si512();
    for (int t = 0; t < 9; t++) {
        for (int k = 0; k < K; k++) {
            const __m512i xs = _mm512_set1_epi64((long long)taps[t][2 * k]);
            const __m512i nz = _mm512_set1_epi64((long long)taps[t][2 * k + 1]);
            const uint64_t *w = w0 + ((size_t)t * K + k) * GROUP;
            for (int g = 0; g < G; g++) {
                /* imm 0x28: nz & (w ^ xs) with (a, b, c) = (w, xs, nz) */
                for (int h = 0; h < 2; h++) {
                    const __m512i d = _mm512_ternarylogic_epi64(_mm512_loadu_si512(w + g * gstride + 8 * h), xs,
                                                                nz, 0x28);
                    acc[2 * g + h] = _mm512_add_epi64(acc[2 * g + h], _mm512_popcnt_epi64(d));
                }
            }
        }
    }
    const __m256i pv = _mm256_set1_epi32(P);
    for (int q = 0; q < 2 * G; q++)
        _mm256_storeu_si256((__m256i *)(cnt + 8 * q),
                            _mm256_sub_epi32(pv, _mm256_slli_epi32(_mm512_cvtepi64_epi32(acc[q]), 1)));
}

T_AVX512 static inline AI void core_avx512_k(const unit_args *a, const uint64_t *const taps[9], int32_t *cnt,
                                             const int K) {
    int P = 0;
    for (int t = 0; t < 9; t++)
        for (int k = 0; k < K; k++) P += (int)_mm_popcnt_u64(taps[t][2 * k + 1]);
    const size_t gstride = (size_t)9 * K * GROUP;
    int g = 0;
    for (; g + 4 <= a->ng; g += 4) pass_avx512(taps, a->wp + g * gstride, gstride, K, 4, P, cnt + g * GROUP);
    if (g + 2 <= a->ng) {
        pass_avx512(taps, a->wp + g * gstride, gstride, K, 2, P, cnt + g * GROUP);
        g += 2;
    }
    if (g < a->ng) pass_avx512(taps, a->wp + g * gstride, gstride, K, 1, P, cnt + g * GROUP);
}

T_AVX512 static inline void core_avx512(const unit_args *a, const uint64_t *const taps[9], int32_t *cnt) {
    if (a->K == 1)
        core_avx512_k(a, taps, cnt, 1);
    else
        core_avx512_k(a, taps, cnt, a->K);
}

/* Pack sign/nonzero bits of v[c] + shift[c] for c in [c0, c1), 8 at a time; returns the next c. */
T_AVX2 static inline int pack8_avx2(const float *v, const float *shift, int c0, int c1, uint64_t *sw,
                                    uint64_t *nw) {
    const __m256 zero = _mm256_setzero_ps();
    int c = c0;
    for (; c + 8 <= c1; c += 8) {
        const __m256 q = _mm256_add_ps(_mm256_loadu_ps(v + c), _mm256_loadu_ps(shift + c));
        *sw |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(q, zero, _CMP_LT_OQ)) << (c - c0);
        *nw |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(q, zero, _CMP_NEQ_UQ)) << (c - c0);
    }
    return c;
}

static inline void finish_pixel(const unit_args *a, int n, int y, int x, int i, int j, float *v, int vec);

/* Epilogue, 8 channels at a time; the same float operations as the scalar version. */
T_AVX2 static inline void epilogue_avx2(const unit_args *a, int n, int y, int x, const int32_t *cnt) {
    const int r = a->r, C = a->C;
    const __m256 zero = _mm256_setzero_ps();
    float v[MAX_OUT];
    for (int i = 0; i < r; i++) {
        for (int j = 0; j < r; j++) {
            const int s = i * r + j;
            const int32_t *cs = cnt + s * C;
            const float *al = a->alpha + s * C, *pr = a->pre + s * C, *sl = a->slope + s * C,
                        *po = a->post + s * C;
            if (!a->resid_nchw && !a->out_nchw && C % 8 == 0) {
                /* fast path, everything NHWC: one pass per 64 channels */
                const int Kn = (C + 63) / 64;
                const size_t Ho = (size_t)a->H * r, Wo = (size_t)a->W * r;
                const size_t oy = (size_t)y * r + i, ox = (size_t)x * r + j;
                const float *res = a->resid ? a->resid + (((size_t)n * a->H + y) * a->W + x) * C : NULL;
                float *out = a->out + (((size_t)n * Ho + oy) * Wo + ox) * C;
                uint64_t *na = a->nshift
                    ? a->nact + (((size_t)n * (Ho + 2) + oy + 1) * (Wo + 2) + ox + 1) * 2 * Kn : NULL;
                for (int k = 0; k < Kn; k++) {
                    const int c0 = 64 * k, c1 = C < c0 + 64 ? C : c0 + 64;
                    uint32_t sw[2] = {0, 0}, nw[2] = {0, 0};
                    for (int c = c0; c < c1; c += 8) {
                        __m256 t = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(cs + c)));
                        t = _mm256_mul_ps(t, _mm256_loadu_ps(al + c));
                        t = _mm256_add_ps(t, _mm256_loadu_ps(pr + c));
                        const __m256 neg = _mm256_mul_ps(t, _mm256_loadu_ps(sl + c));
                        t = _mm256_blendv_ps(neg, t, _mm256_cmp_ps(t, zero, _CMP_GT_OQ));
                        t = _mm256_add_ps(t, _mm256_loadu_ps(po + c));
                        if (res) t = _mm256_add_ps(t, _mm256_loadu_ps(res + c));
                        _mm256_storeu_ps(out + c, t);
                        if (na) {
                            const __m256 q = _mm256_add_ps(t, _mm256_loadu_ps(a->nshift + c));
                            const int b = c - c0;
                            sw[b >> 5] |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(q, zero, _CMP_LT_OQ)) << (b & 31);
                            nw[b >> 5] |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(q, zero, _CMP_NEQ_UQ)) << (b & 31);
                        }
                    }
                    if (na) {
                        na[2 * k] = (uint64_t)sw[0] | (uint64_t)sw[1] << 32;
                        na[2 * k + 1] = (uint64_t)nw[0] | (uint64_t)nw[1] << 32;
                    }
                }
                continue;
            }
            int c = 0;
            for (; c + 8 <= C; c += 8) {
                __m256 t = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(cs + c)));
                t = _mm256_mul_ps(t, _mm256_loadu_ps(al + c));
                t = _mm256_add_ps(t, _mm256_loadu_ps(pr + c));
                const __m256 neg = _mm256_mul_ps(t, _mm256_loadu_ps(sl + c));
                t = _mm256_blendv_ps(neg, t, _mm256_cmp_ps(t, zero, _CMP_GT_OQ));
                _mm256_storeu_ps(v + c, _mm256_add_ps(t, _mm256_loadu_ps(po + c)));
            }
            for (; c < C; c++) {
                float t = (float)cs[c] * al[c];
                t = t + pr[c];
                t = t > 0.0f ? t : t * sl[c];
                v[c] = t + po[c];
            }
            finish_pixel(a, n, y, x, i, j, v, 1);
        }
    }
}
#endif /* BP_X86 */

/* The float part of the epilogue, shared by every ISA: v[] already holds prelu(c*alpha + pre) + post
 * for the C channels of one output pixel; add the residual, store, pack the next unit's bits. */
static inline void finish_pixel(const unit_args *a, int n, int y, int x, int i, int j, float *v, int vec) {
    const int r = a->r, C = a->C, Kn = (C + 63) / 64;
    const size_t Ho = (size_t)a->H * r, Wo = (size_t)a->W * r;
    const size_t oy = (size_t)y * r + i, ox = (size_t)x * r + j;
    if (a->resid) {
        if (a->resid_nchw) {
            const size_t hw = (size_t)a->H * a->W;
            const float *res = a->resid + (size_t)n * C * hw + (size_t)y * a->W + x;
            for (int c = 0; c < C; c++) v[c] = v[c] + res[c * hw];
        } else {
            const float *res = a->resid + (((size_t)n * a->H + y) * a->W + x) * C;
            for (int c = 0; c < C; c++) v[c] = v[c] + res[c];
        }
    }
    if (a->out_nchw) {
        float *out = a->out + (size_t)n * C * Ho * Wo + oy * Wo + ox;
        for (int c = 0; c < C; c++) out[c * Ho * Wo] = v[c];
    } else {
        memcpy(a->out + ((n * Ho + oy) * Wo + ox) * C, v, sizeof(float) * (size_t)C);
    }
    if (!a->nshift) return;
    uint64_t *na = a->nact + (((size_t)n * (Ho + 2) + oy + 1) * (Wo + 2) + ox + 1) * 2 * Kn;
    for (int k = 0; k < Kn; k++) {
        const int c0 = 64 * k, c1 = C < c0 + 64 ? C : c0 + 64;
        uint64_t sw = 0, nw = 0;
        int c = c0;
#if BP_X86
        if (vec) c = pack8_avx2(v, a->nshift, c0, c1, &sw, &nw);
#else
        (void)vec;
#endif
        for (; c < c1; c++) {
            const float q = v[c] + a->nshift[c];
            sw |= (uint64_t)(q < 0.0f) << (c - c0);
            nw |= (uint64_t)(q != 0.0f) << (c - c0);
        }
        na[2 * k] = sw;
        na[2 * k + 1] = nw;
    }
}

static inline void epilogue_scalar(const unit_args *a, int n, int y, int x, const int32_t *cnt) {
    const int r = a->r, C = a->C;
    float v[MAX_OUT];
    for (int i = 0; i < r; i++) {
        for (int j = 0; j < r; j++) {
            const int s = i * r + j;
            for (int c = 0; c < C; c++) {
                const int o = s * C + c;
                float t = (float)cnt[o] * a->alpha[o];
                t = t + a->pre[o];
                t = t > 0.0f ? t : t * a->slope[o];
                v[c] = t + a->post[o];
            }
            finish_pixel(a, n, y, x, i, j, v, 0);
        }
    }
}


/* ------------------------------------------------------------------------------------------ */
/* one output row of one image: conv core + epilogue (or raw counts) for every pixel */

#define DEFINE_ROW(NAME, ATTR, CORE, EPI)                                                          \
    ATTR static void NAME(const unit_args *a, int n, int y, int32_t *cnt) {                        \
        const size_t pw = (size_t)2 * a->K, rs = (size_t)(a->W + 2) * pw;                          \
        const uint64_t *base = a->act + ((size_t)n * (a->H + 2) + y) * rs;                         \
        for (int x = 0; x < a->W; x++) {                                                           \
            const uint64_t *p = base + (size_t)x * pw;                                             \
            const uint64_t *const taps[9] = {p, p + pw, p + 2 * pw,                                \
                                             p + rs, p + rs + pw, p + rs + 2 * pw,                 \
                                             p + 2 * rs, p + 2 * rs + pw, p + 2 * rs + 2 * pw};    \
            if (a->counts) {                                                                       \
                int32_t *dst = a->counts + (((size_t)n * a->H + y) * a->W + x) * a->cout;          \
                CORE(a, taps, cnt);                                                                \
                memcpy(dst, cnt, sizeof(int32_t) * (size_t)a->cout);                               \
            } else {                                                                               \
                CORE(a, taps, cnt);                                                                \
                EPI(a, n, y, x, cnt);                                                              \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_ROW(row_scalar, , core_scalar, epilogue_scalar)
#if BP_X86
DEFINE_ROW(row_avx2, T_AVX2, core_avx2, epilogue_avx2)
DEFINE_ROW(row_avx512, T_AVX512, core_avx512, epilogue_avx2)
#endif

typedef void (*row_fn)(const unit_args *, int, int, int32_t *);

static row_fn pick_row(void) {
#if BP_X86
    if (g_isa == ISA_AVX512) return row_avx512;
    if (g_isa == ISA_AVX2) return row_avx2;
#endif
    return row_scalar;
}

static void zero_border(uint64_t *act, int N, int H, int W, int K) {
    const size_t pw = (size_t)2 * K, rs = (size_t)(W + 2) * pw;
    for (int n = 0; n < N; n++) {
        uint64_t *img = act + (size_t)n * (H + 2) * rs;
        memset(img, 0, rs * sizeof(uint64_t));
        memset(img + (size_t)(H + 1) * rs, 0, rs * sizeof(uint64_t));
        for (int y = 1; y <= H; y++) {
            memset(img + (size_t)y * rs, 0, pw * sizeof(uint64_t));
            memset(img + (size_t)y * rs + (size_t)(W + 1) * pw, 0, pw * sizeof(uint64_t));
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Threads: the caller and nthreads - 1 helpers claim rows with an atomic counter. The caller waits
 * only for rows that were claimed; a helper that starts late finds no row left and just releases
 * the job (reference counted), so a descheduled helper never stalls the call. */

typedef void (*rowwork_fn)(const void *ctx, int row);

typedef struct {
    rowwork_fn fn;
    const void *ctx;
    int rows;
    atomic_int next, done, refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} rowjob;

static void job_release(rowjob *j) {
    if (atomic_fetch_sub(&j->refs, 1) == 1) {
        pthread_mutex_destroy(&j->mu);
        pthread_cond_destroy(&j->cv);
        free(j);
    }
}

static void job_work(rowjob *j) {
    int r;
    while ((r = atomic_fetch_add(&j->next, 1)) < j->rows) {
        j->fn(j->ctx, r);
        if (atomic_fetch_add(&j->done, 1) + 1 == j->rows) {
            pthread_mutex_lock(&j->mu);
            pthread_cond_signal(&j->cv);
            pthread_mutex_unlock(&j->mu);
        }
    }
}

static void *job_thread(void *p) {
    rowjob *j = (rowjob *)p;
    job_work(j);
    job_release(j);
    return NULL;
}

static void parallel_rows(rowwork_fn fn, const void *ctx, int rows, int nthreads) {
    if (nthreads > rows) nthreads = rows;
    rowjob *j = nthreads > 1 ? (rowjob *)malloc(sizeof(rowjob)) : NULL;
    if (!j) {
        for (int r = 0; r < rows; r++) fn(ctx, r);
        return;
    }
    j->fn = fn;
    j->ctx = ctx;
    j->rows = rows;
    atomic_init(&j->next, 0);
    atomic_init(&j->done, 0);
    atomic_init(&j->refs, 1);
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (int t = 1; t < nthreads; t++) {
        pthread_t th;
        atomic_fetch_add(&j->refs, 1);
        if (pthread_create(&th, &attr, job_thread, j) != 0) atomic_fetch_sub(&j->refs, 1);
    }
    pthread_attr_destroy(&attr);
    job_work(j);
    pthread_mutex_lock(&j->mu);
    while (atomic_load(&j->done) < rows) pthread_cond_wait(&j->cv, &j->mu);
    pthread_mutex_unlock(&j->mu);
    job_release(j);
}

typedef struct {
    const unit_args *a;
    row_fn row;
} unit_job;

static void unit_row(const void *ctx, int ry) {
    const unit_job *u = (const unit_job *)ctx;
    int32_t cnt[MAX_OUT + GROUP];
    u->row(u->a, ry / u->a->H, ry % u->a->H, cnt);
}

static void run_unit(const unit_args *a, int nthreads) {
    if (a->nshift) zero_border(a->nact, a->N, a->H * a->r, a->W * a->r, (a->C + 63) / 64);
    const unit_job u = {a, pick_row()};
    parallel_rows(unit_row, &u, a->N * a->H, nthreads);
}

typedef struct {
    const float *x, *shift;
    uint64_t *o;
    int H, W, C, nchw;
} pack_job;

static void pack_row(const void *ctx, int ry) {
    const pack_job *p = (const pack_job *)ctx;
    const int H = p->H, W = p->W, C = p->C, K = (C + 63) / 64;
    const int n = ry / H, y = ry % H;
    float tmp[MAX_OUT];
    for (int xx = 0; xx < W; xx++) {
        const float *px = p->x + (((size_t)n * H + y) * W + xx) * C;
        if (p->nchw) {
            const size_t hw = (size_t)H * W;
            const float *q = p->x + (size_t)n * C * hw + (size_t)y * W + xx;
            for (int c = 0; c < C; c++) tmp[c] = q[c * hw];
            px = tmp;
        }
        uint64_t *po = p->o + (((size_t)n * (H + 2) + y + 1) * (W + 2) + xx + 1) * 2 * K;
        for (int k = 0; k < K; k++) {
            const int c0 = 64 * k, c1 = C < c0 + 64 ? C : c0 + 64;
            uint64_t sw = 0, nw = 0;
            pack_bits_scalar(px + c0, p->shift + c0, c1 - c0, &sw, &nw, 0);
            po[2 * k] = sw;
            po[2 * k + 1] = nw;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Python interface: tensors are passed as data pointers (int) with their sizes. */

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = 0; i < 3; i++) {
        if (strcmp(name, ISA_NAMES[i]) == 0) {
            if (i > g_best) {
                PyErr_Format(PyExc_ValueError, "this CPU does not support %s (best: %s)", name,
                             ISA_NAMES[g_best]);
                return NULL;
            }
            g_isa = i;
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown ISA %s", name);
    return NULL;
}

static PyObject *py_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return Py_BuildValue("(ss)", ISA_NAMES[g_isa], ISA_NAMES[g_best]);
}

/* pack_weights(w_ptr, cout, cin, out_ptr) -> number of zero weights (the packing is then invalid)
 * w: float [cout][cin][3][3]; out: uint64 [ceil(cout/16)][9][ceil(cin/64)][16] */
static PyObject *py_pack_weights(PyObject *self, PyObject *args) {
    unsigned long long wptr, optr;
    int cout, cin;
    (void)self;
    if (!PyArg_ParseTuple(args, "KiiK", &wptr, &cout, &cin, &optr)) return NULL;
    if (cout < 1 || cin < 1 || cout > MAX_OUT) {
        PyErr_SetString(PyExc_ValueError, "channel counts out of range");
        return NULL;
    }
    const float *w = (const float *)(uintptr_t)wptr;
    uint64_t *o = (uint64_t *)(uintptr_t)optr;
    const int K = (cin + 63) / 64, ng = (cout + GROUP - 1) / GROUP;
    memset(o, 0, sizeof(uint64_t) * (size_t)ng * 9 * K * GROUP);
    long zeros = 0;
    for (int oc = 0; oc < cout; oc++) {
        const int g = oc / GROUP, j = oc % GROUP;
        for (int ic = 0; ic < cin; ic++) {
            for (int t = 0; t < 9; t++) {
                const float v = w[((size_t)oc * cin + ic) * 9 + t];
                if (v == 0.0f) zeros++;
                if (v < 0.0f)
                    o[(((size_t)g * 9 + t) * K + ic / 64) * GROUP + j] |= (uint64_t)1 << (ic % 64);
            }
        }
    }
    return PyLong_FromLong(zeros);
}

/* pack_act(x_ptr, N, H, W, C, shift_ptr, out_ptr, nthreads, nchw): x float NHWC (or NCHW when nchw),
 * out [N][H+2][W+2][K][2] */
static PyObject *py_pack_act(PyObject *self, PyObject *args) {
    unsigned long long xptr, sptr, optr;
    int N, H, W, C, nthreads, nchw;
    (void)self;
    if (!PyArg_ParseTuple(args, "KiiiiKKii", &xptr, &N, &H, &W, &C, &sptr, &optr, &nthreads, &nchw)) return NULL;
    const float *x = (const float *)(uintptr_t)xptr, *shift = (const float *)(uintptr_t)sptr;
    uint64_t *o = (uint64_t *)(uintptr_t)optr;
    const int K = (C + 63) / 64;
    if (C < 1 || C > MAX_OUT) {
        PyErr_SetString(PyExc_ValueError, "channel count out of range");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    zero_border(o, N, H, W, K);
    const pack_job job = {x, shift, o, H, W, C, nchw};
    parallel_rows(pack_row, &job, N * H, nthreads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* unit(act, N, H, W, cin, wp, cout, r, alpha, pre, slope, post, resid, out, nshift, nact, counts, nthreads,
 *      resid_nchw, out_nchw)
 * Pointers may be 0 for: resid (no residual), nshift/nact (no packing), out (when counts != 0).
 * out may equal resid (in place) when r == 1 and both have the same layout. */
static PyObject *py_unit(PyObject *self, PyObject *args) {
    unsigned long long act, wp, al, pr, sl, po, res, out, ns, na, cn;
    int N, H, W, cin, cout, r, nthreads, resid_nchw, out_nchw;
    (void)self;
    if (!PyArg_ParseTuple(args, "KiiiiKiiKKKKKKKKKiii", &act, &N, &H, &W, &cin, &wp, &cout, &r, &al, &pr, &sl,
                          &po, &res, &out, &ns, &na, &cn, &nthreads, &resid_nchw, &out_nchw))
        return NULL;
    if (N < 1 || H < 1 || W < 1 || cin < 1 || cout < 1 || cout > MAX_OUT || r < 1 || cout % (r * r)) {
        PyErr_SetString(PyExc_ValueError, "bad unit shape");
        return NULL;
    }
    unit_args a;
    a.N = N;
    a.H = H;
    a.W = W;
    a.K = (cin + 63) / 64;
    a.ng = (cout + GROUP - 1) / GROUP;
    a.cout = cout;
    a.r = r;
    a.C = cout / (r * r);
    a.act = (const uint64_t *)(uintptr_t)act;
    a.wp = (const uint64_t *)(uintptr_t)wp;
    a.alpha = (const float *)(uintptr_t)al;
    a.pre = (const float *)(uintptr_t)pr;
    a.slope = (const float *)(uintptr_t)sl;
    a.post = (const float *)(uintptr_t)po;
    a.resid = (const float *)(uintptr_t)res;
    a.out = (float *)(uintptr_t)out;
    a.nshift = (const float *)(uintptr_t)ns;
    a.nact = (uint64_t *)(uintptr_t)na;
    a.counts = (int32_t *)(uintptr_t)cn;
    a.resid_nchw = resid_nchw;
    a.out_nchw = out_nchw;
    if (!a.counts && (!a.out || !a.alpha || !a.pre || !a.slope || !a.post)) {
        PyErr_SetString(PyExc_ValueError, "missing epilogue pointers");
        return NULL;
    }
    if (a.nshift && !a.nact) {
        PyErr_SetString(PyExc_ValueError, "next shift given without a packed output");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    run_unit(&a, nthreads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_isa", py_set_isa, METH_VARARGS, "Select the conv core: 'scalar', 'avx2' or 'avx512'."},
    {"isa", py_isa, METH_NOARGS, "(selected ISA, best ISA this CPU supports)."},
    {"pack_weights", py_pack_weights, METH_VARARGS, "Pack the sign bits of a 3x3 weight tensor."},
    {"pack_act", py_pack_act, METH_VARARGS, "Pack sign(x + shift) of an NHWC float tensor."},
    {"unit", py_unit, METH_VARARGS, "Binary conv + fused epilogue of one unit."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_bitpacked",
                                    "Bit-packed XNOR/popcount BBCU kernels.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__bitpacked(void) {
#if BP_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) g_best = ISA_AVX2;
    if (g_best == ISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq"))
        g_best = ISA_AVX512;
#endif
    g_isa = g_best;
    return PyModule_Create(&module);
}
