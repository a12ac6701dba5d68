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

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>
#include <stdatomic.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define BP_X86 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define BP_X86 0
#endif

/* AMX tiles (int8 dot products) need GCC >= 11 or Clang >= 12 for the intrinsics */
#if BP_X86 && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define BP_AMX 1
#else
#define BP_AMX 0
#endif

#define GROUP 16   /* outputs per weight group */
#define MAX_STAGES 258 /* of a wavefront: 255 units (MAX_CHAIN), the packing and a tail */
#define MAX_OUT 4096

enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_AMX = 3, N_ISA = 4 };
static const char *ISA_NAMES[] = {"scalar", "avx2", "avx512", "amx"};
static int g_isa = ISA_SCALAR;
static int g_best = ISA_SCALAR;

typedef struct {
    int N, H, W, K;          /* input batch, size, words of input channels */
    int ng;                  /* weight groups of 16 outputs */
    int cout;                /* real outputs = r*r*C */
    int r, C;                /* upscale and channels per sub-pixel (C == cout when r == 1) */
    int cin;                 /* real input channels */
    const uint64_t *act;     /* [N][H+2][W+2][K][2] */
    const uint64_t *wp;      /* [ng][9][K][16] */
    const float *alpha, *pre, *slope, *post;   /* [cout] (sub-pixel major when r > 1) */
    const float *resid;      /* [N][H][W][C] (NHWC) or [N][C][H][W] (resid_nchw), or NULL */
    float *out;              /* [N][H*r][W*r][C] (NHWC) or [N][C][H*r][W*r] (out_nchw) */
    int resid_nchw, out_nchw;
    const float *nshift;     /* [C] or NULL: pack sign(out + nshift) into nact */
    uint64_t *nact;          /* [N][H*r+2][W*r+2][Kn][2] */
    int32_t *counts;         /* raw counts [N][H][W][cout] instead of the epilogue, or NULL */
    const int8_t *wamx;      /* AMX core only: weights as int8 tiles [9][K][ng][16][64] (see amx_weights) */
    const uint8_t *wlut;     /* AVX2 core only: the weights as lookup nibbles (see lut_weights), or NULL */
    int leaky;               /* 1: a leaky ReLU after the residual, v > 0 ? v : v * act_slope (torch's) */
    float act_slope;
    /* chains (N == 1): padded row p of the input bits at act_rows[p] and of the output bits at
     * nact_rows[p] (ring buffers), instead of the whole-image act and nact; NULL otherwise */
    const uint64_t *const *act_rows;
    uint64_t *const *nact_rows;
    /* AMX chains of 64-channel units: the input or output rows as int8 signs (64 bytes a pixel,
     * padded like the bit rows, see amx_row) instead of bits; NULL otherwise */
    const int8_t *const *act8_rows;
    int8_t *const *nact8_rows;
    /* pipes (N == 1, NHWC): output row oy at out_rows[oy], residual row y at resid_rows[y] (rings),
     * instead of the whole-image out and resid; NULL otherwise */
    float *const *out_rows;
    const float *const *resid_rows;
} unit_args;

/* padded input row p (0: the zero border above) of image n */
static inline const uint64_t *act_row(const unit_args *a, int n, int p) {
    if (a->act_rows) return a->act_rows[p];
    return a->act + ((size_t)n * (a->H + 2) + p) * (size_t)(a->W + 2) * 2 * a->K;
}

/* the next unit's bit words of output pixel (oy, ox) of image n */
static inline uint64_t *nact_at(const unit_args *a, int n, size_t oy, size_t ox) {
    const size_t Kn = (size_t)(a->C + 63) / 64, Ho = (size_t)a->H * a->r, Wo = (size_t)a->W * a->r;
    if (a->nact_rows) return a->nact_rows[oy + 1] + (ox + 1) * 2 * Kn;
    return a->nact + (((size_t)n * (Ho + 2) + oy + 1) * (Wo + 2) + ox + 1) * 2 * Kn;
}

/* ------------------------------------------------------------------------------------------ */
/* portable core */

/* 64 input channels (K == 1): whether every activation of the window is nonzero (no mask needed) */
static inline int window_full(const uint64_t *const taps[9]) {
    return (taps[0][1] & taps[1][1] & taps[2][1] & taps[3][1] & taps[4][1] & taps[5][1] & taps[6][1] &
            taps[7][1] & taps[8][1]) == ~(uint64_t)0;
}

/* The AVX2 core's lookup table: entry v holds popcount((v & 15) ^ j) in byte j and
 * popcount((v >> 4) ^ j) in byte 16 + j (j < 16), for each value v of an input byte */
#define POP4(x) (((x) & 1) + (((x) >> 1) & 1) + (((x) >> 2) & 1) + (((x) >> 3) & 1))
#define LUT_HALF(n) POP4((n) ^ 0), POP4((n) ^ 1), POP4((n) ^ 2), POP4((n) ^ 3), POP4((n) ^ 4), POP4((n) ^ 5), \
    POP4((n) ^ 6), POP4((n) ^ 7), POP4((n) ^ 8), POP4((n) ^ 9), POP4((n) ^ 10), POP4((n) ^ 11),             \
    POP4((n) ^ 12), POP4((n) ^ 13), POP4((n) ^ 14), POP4((n) ^ 15)
#define LUT_1(v) {LUT_HALF((v) & 15), LUT_HALF((v) >> 4)}
#define LUT_4(v) LUT_1(v), LUT_1((v) + 1), LUT_1((v) + 2), LUT_1((v) + 3)
#define LUT_16(v) LUT_4(v), LUT_4((v) + 4), LUT_4((v) + 8), LUT_4((v) + 12)
#define LUT_64(v) LUT_16(v), LUT_16((v) + 16), LUT_16((v) + 32), LUT_16((v) + 48)
static const uint8_t LUT_TABLE[256][32] __attribute__((aligned(64))) = {LUT_64(0), LUT_64(64), LUT_64(128),
                                                                         LUT_64(192)};

/* The lookup form of a unit's weights (lut_px_avx2) with 64 input channels and outputs in blocks
 * of 64: per block, for each tap t, byte b of the input word and quarter q of the block, 32 bytes:
 * the low nibbles of byte b of the weight words of outputs 16q..16q+15 of tap t, then their high
 * nibbles. NULL where it does not apply or memory is short (the nibble popcount then runs). */
#define LUT_BLOCK_BYTES (9 * 8 * 4 * 32)
static uint8_t *lut_weights(const unit_args *a) {
    if (a->K != 1 || a->ng % 4) return NULL;
    const int blocks = a->ng / 4;
    uint8_t *d = (uint8_t *)aligned_alloc(64, (size_t)blocks * LUT_BLOCK_BYTES), *m = d;
    if (!m) return NULL;
    for (int s = 0; s < blocks; s++)
        for (int t = 0; t < 9; t++)
            for (int b = 0; b < 8; b++)
                for (int q = 0; q < 4; q++, d += 32) {
                    const uint64_t *w = a->wp + ((size_t)(4 * s + q) * 9 + t) * GROUP;
                    for (int i = 0; i < GROUP; i++) {
                        const unsigned byte = (unsigned)(w[i] >> (8 * b)) & 255u;
                        d[i] = (uint8_t)(byte & 15u);
                        d[16 + i] = (uint8_t)(byte >> 4);
                    }
                }
    return m;
}

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

/* fma for the thin convolution (every AVX2 CPU has it; dispatch checks); -ffp-contract=off keeps the
 * compiler from fusing anything else */
#define T_AVX2 __attribute__((target("avx2,popcnt,fma")))
#define T_AVX512 __attribute__((target("avx2,popcnt,fma,avx512f,avx512bw,avx512vl,avx512vpopcntdq")))

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
            if (9 * K > 31 && ++pending == 31) { /* 31 * 8 <= 255: bytes cannot overflow */
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
    if (K == 1) { /* one group a pass: its 4 accumulators, the table and the taps fit the 16 registers */
        for (; g < a->ng; g++) pass_avx2(taps, a->wp + g * gstride, gstride, 1, 1, MASK, P, cnt + g * GROUP);
        return;
    }
    for (; g + 2 <= a->ng; g += 2) pass_avx2(taps, a->wp + g * gstride, gstride, K, 2, MASK, P, cnt + g * GROUP);
    if (g < a->ng) pass_avx2(taps, a->wp + g * gstride, gstride, K, 1, MASK, P, cnt + g * GROUP);
}

#define AI __attribute__((always_inline))
/* Counts of one block of 64 outputs for NP (1 or 2) neighbouring pixels whose windows are full (every
 * activation nonzero): 576 - 2 * the differing bits of the nine taps. The differing bits of a 4-bit
 * slice are a table lookup: for byte b of an input word, vpshufb looks the 16 outputs' weight
 * nibbles up in that byte's LUT_TABLE entry (low nibbles in the low lane, high in the high), so one
 * shuffle and one byte add cover 128 bit products, where the nibble popcount takes eight operations
 * for 256. Two pixels share each weight load. The byte sums (at most 4 a lookup, 32 a tap: 160 for
 * taps 0-4, 128 for 5-8) widen to 16 bits once, at the end; the integer sums equal the other cores'
 * counts bit for bit. */
T_AVX2 static inline AI void lut_px_avx2(const uint8_t *wlut, int block, const uint64_t *const *const tp[2],
                                         const int NP, int32_t *const cnt[2]) {
    const __m256i zero = _mm256_setzero_si256();
    const uint8_t *w0 = wlut + (size_t)block * LUT_BLOCK_BYTES;
    __m256i first[2][4]; /* the byte sums of taps 0-4, widened with those of 5-8 at the end */
    for (int part = 0; part < 2; part++) {
        __m256i acc[2][4];
        for (int p = 0; p < NP; p++)
            for (int q = 0; q < 4; q++) acc[p][q] = zero;
        for (int t = part ? 5 : 0; t < (part ? 9 : 5); t++) {
            const uint8_t *x[2];
            for (int p = 0; p < NP; p++) x[p] = (const uint8_t *)tp[p][t];
            const uint8_t *w = w0 + (size_t)t * 8 * 4 * 32;
#pragma GCC unroll 8
            for (int b = 0; b < 8; b++) {
                __m256i tab[2];
                for (int p = 0; p < NP; p++) tab[p] = _mm256_load_si256((const __m256i *)LUT_TABLE[x[p][b]]);
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++) {
                    __m256i wq = _mm256_load_si256((const __m256i *)(w + (4 * b + q) * 32));
                    __asm__("" : "+x"(wq)); /* one load for both pixels, not one folded into each shuffle */
                    for (int p = 0; p < NP; p++) {
                        acc[p][q] = _mm256_add_epi8(acc[p][q], _mm256_shuffle_epi8(tab[p], wq));
                        __asm__("" : "+x"(acc[p][q])); /* keeps the adds a chain: reassociated, they spill */
                    }
                }
            }
        }
        if (part == 0) {
            for (int p = 0; p < NP; p++)
                for (int q = 0; q < 4; q++) first[p][q] = acc[p][q];
            continue;
        }
        /* a 16-bit lane of lo (hi) holds output i (8 + i) of its quarter, low nibbles in the low 128
         * bits and high nibbles in the high 128 */
        const __m256i all = _mm256_set1_epi32(9 * 64);
        for (int p = 0; p < NP; p++)
            for (int q = 0; q < 4; q++) {
                const __m256i lo = _mm256_add_epi16(_mm256_unpacklo_epi8(first[p][q], zero),
                                                    _mm256_unpacklo_epi8(acc[p][q], zero));
                const __m256i hi = _mm256_add_epi16(_mm256_unpackhi_epi8(first[p][q], zero),
                                                    _mm256_unpackhi_epi8(acc[p][q], zero));
                const __m128i l = _mm_add_epi16(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1));
                const __m128i h = _mm_add_epi16(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
                int32_t *c = cnt[p] + 16 * q;
                _mm256_storeu_si256((__m256i *)c, _mm256_sub_epi32(all, _mm256_slli_epi32(_mm256_cvtepu16_epi32(l), 1)));
                _mm256_storeu_si256((__m256i *)(c + 8), _mm256_sub_epi32(all, _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 1)));
            }
    }
}

T_AVX2 static inline void core_avx2(const unit_args *a, const uint64_t *const taps[9], int32_t *cnt) {
    if (a->wlut && window_full(taps)) { /* wlut: K == 1 */
        const uint64_t *const *tp[2] = {taps, taps};
        for (int block = 0; block < a->ng / 4; block++) {
            int32_t *const c[2] = {cnt + 64 * block, cnt + 64 * block};
            lut_px_avx2(a->wlut, block, tp, 1, c);
        }
        return;
    }
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

/* G groups of 16 outputs for one pixel: 2*G accumulators of 8 lanes; inlined with constant G, K and
 * MASK. MASK == 0 where every nonzero bit of the window is set (the interior of a sign map): a plain
 * XOR with the weights, whose load folds into it. With the mask, nz stays in a register: a broadcast
 * folded into the ternary op would split it into two micro-ops and load nz once per product. */
T_AVX512 static inline AI void pass_avx512(const uint64_t *const taps[9], const uint64_t *w0, size_t gstride,
                                           const int K, const int G, const int MASK, __m512i P, int32_t *cnt,
                                           __m512i *out) {
    __m512i acc[8];
    for (int q = 0; q < 2 * G; q++) acc[q] = _mm512_setzero_si512();
    for (int t = 0; t < 9; t++) {
        for (int k = 0; k < K; k++) {
            const __m512i xs = _mm512_set1_epi64((long long)taps[t][2 * k]);
            __m512i nz = _mm512_setzero_si512();
            if (MASK) {
                nz = _mm512_set1_epi64((long long)taps[t][2 * k + 1]);
                __asm__("" : "+v"(nz));
            }
            const uint64_t *w = w0 + ((size_t)t * K + k) * GROUP;
            for (int g = 0; g < G; g++) {
                for (int h = 0; h < 2; h++) {
                    const __m512i wv = _mm512_loadu_si512(w + g * gstride + 8 * h);
                    /* imm 0x28: nz & (w ^ xs) with (a, b, c) = (w, xs, nz) */
                    const __m512i d = MASK ? _mm512_ternarylogic_epi64(wv, xs, nz, 0x28) : _mm512_xor_si512(wv, xs);
                    acc[2 * g + h] = _mm512_add_epi64(acc[2 * g + h], _mm512_popcnt_epi64(d));
                }
            }
        }
    }
    /* the low 32 bits of each 64-bit lane hold a count: one permute gathers 16 of them in order */
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (int g = 0; g < G; g++) {
        const __m512i c = _mm512_permutex2var_epi32(acc[2 * g], even, acc[2 * g + 1]);
        const __m512i v = _mm512_sub_epi32(P, _mm512_slli_epi32(c, 1));
        if (out) out[g] = v;
        else _mm512_storeu_si512(cnt + 16 * g, v);
    }
}

T_AVX512 static inline AI void core_avx512_k(const unit_args *a, const uint64_t *const taps[9], int32_t *cnt,
                                             const int K, const int MASK, int P) {
    const __m512i pv = _mm512_set1_epi32(P);
    const size_t gstride = (size_t)9 * K * GROUP;
    int g = 0;
    for (; g + 4 <= a->ng; g += 4) pass_avx512(taps, a->wp + g * gstride, gstride, K, 4, MASK, pv, cnt + g * GROUP, NULL);
    if (g + 2 <= a->ng) {
        pass_avx512(taps, a->wp + g * gstride, gstride, K, 2, MASK, pv, cnt + g * GROUP, NULL);
        g += 2;
    }
    if (g < a->ng) pass_avx512(taps, a->wp + g * gstride, gstride, K, 1, MASK, pv, cnt + g * GROUP, NULL);
}

/* 64 input channels (K == 1): how many activations of the window are nonzero */
T_AVX512 static inline int window_nonzero(const uint64_t *const taps[9]) {
    int P = 0;
    for (int t = 0; t < 9; t++) P += (int)_mm_popcnt_u64(taps[t][1]);
    return P;
}

T_AVX512 static inline AI void core_avx512(const unit_args *a, const uint64_t *const taps[9], int32_t *cnt) {
    const int K = a->K;
    if (K == 1) {
        if (window_full(taps))
            core_avx512_k(a, taps, cnt, 1, 0, 9 * 64);
        else
            core_avx512_k(a, taps, cnt, 1, 1, window_nonzero(taps));
        return;
    }
    int P = 0;
    for (int t = 0; t < 9; t++)
        for (int k = 0; k < K; k++) P += (int)_mm_popcnt_u64(taps[t][2 * k + 1]);
    core_avx512_k(a, taps, cnt, K, 1, P);
}

/* core_avx512 for 64 outputs and 64 inputs (ng == 4, K == 1): the counts stay in registers */
T_AVX512 static inline AI void core64_avx512(const uint64_t *wp, const uint64_t *const taps[9], __m512i c[4]) {
    const size_t gstride = (size_t)9 * GROUP;
    if (window_full(taps))
        pass_avx512(taps, wp, gstride, 1, 4, 0, _mm512_set1_epi32(9 * 64), NULL, c);
    else
        pass_avx512(taps, wp, gstride, 1, 4, 1, _mm512_set1_epi32(window_nonzero(taps)), NULL, c);
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
/* 8 channels of the epilogue: prelu(count * alpha + pre) + post, then + residual (res not NULL) and
 * the leaky ReLU (leaky): the operations and order every core's epilogue uses */
T_AVX2 static inline __attribute__((always_inline)) __m256 epi8_avx2(const int32_t *cs, const float *al,
                                                                    const float *pr, const float *sl,
                                                                    const float *po, const float *res,
                                                                    int leaky, float act_slope) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 t = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)cs));
    t = _mm256_mul_ps(t, _mm256_loadu_ps(al));
    t = _mm256_add_ps(t, _mm256_loadu_ps(pr));
    const __m256 neg = _mm256_mul_ps(t, _mm256_loadu_ps(sl));
    t = _mm256_blendv_ps(neg, t, _mm256_cmp_ps(t, zero, _CMP_GT_OQ));
    t = _mm256_add_ps(t, _mm256_loadu_ps(po));
    if (res) t = _mm256_add_ps(t, _mm256_loadu_ps(res));
    if (leaky) t = _mm256_blendv_ps(_mm256_mul_ps(t, _mm256_set1_ps(act_slope)), t, _mm256_cmp_ps(t, zero, _CMP_GT_OQ));
    return t;
}

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
                /* a pipe's stages read and write ring rows (N == 1) */
                const float *res = a->resid_rows ? a->resid_rows[y] + (size_t)x * C
                                   : a->resid ? a->resid + (((size_t)n * a->H + y) * a->W + x) * C : NULL;
                float *out = a->out_rows ? a->out_rows[oy] + ox * C : a->out + (((size_t)n * Ho + oy) * Wo + ox) * C;
                uint64_t *na = a->nshift ? nact_at(a, n, oy, ox) : NULL;
                for (int k = 0; k < Kn; k++) {
                    const int c0 = 64 * k, c1 = C < c0 + 64 ? C : c0 + 64;
                    uint32_t sw[2] = {0, 0}, nw[2] = {0, 0};
                    for (int c = c0; c < c1; c += 8) {
                        const __m256 t = epi8_avx2(cs + c, al + c, pr + c, sl + c, po + c, res ? res + c : NULL,
                                                   a->leaky, a->act_slope);
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
            for (; c + 8 <= C; c += 8)
                _mm256_storeu_ps(v + c, epi8_avx2(cs + c, al + c, pr + c, sl + c, po + c, NULL, 0, 0.0f));
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

/* The AVX-512 epilogue with the row's pointers worked out once (epi_row_init), for NHWC output and
 * residual, C % 16 == 0 and r <= EPI_MAX_R: per pixel only the arithmetic, the loads and the stores.
 * Same operations in the same order as epilogue_avx2 (masked multiplies select exactly what its
 * blends select). */
#define EPI_MAX_R 4
typedef struct {
    const float *al, *pr, *sl, *po, *sh; /* [cout], [C] */
    const float *res;                    /* residual row y of image n, or NULL */
    float *out[EPI_MAX_R];               /* output rows y*r + i of image n */
    uint64_t *na[EPI_MAX_R];             /* the next unit's bits of output rows y*r + i (pixel 0), or NULL */
    int8_t *na8[EPI_MAX_R];              /* or their int8 signs (pixel 0; 64 channels), or NULL */
    int C, r, Kn, leaky;
    float act_slope;
} epi_row;

/* 0 when the fast epilogue does not apply (the caller then takes epilogue_avx2) */
static int epi_row_init(const unit_args *a, int n, int y, epi_row *e) {
    const int r = a->r, C = a->C;
    if (a->counts || a->resid_nchw || a->out_nchw || C % 16 || r > EPI_MAX_R) return 0;
    /* the next unit's bits compare against -shift (below), exact only for a finite shift */
    if (a->nshift)
        for (int c = 0; c < C; c++)
            if (!isfinite(a->nshift[c])) return 0;
    const size_t Ho = (size_t)a->H * r, Wo = (size_t)a->W * r;
    e->al = a->alpha;
    e->pr = a->pre;
    e->sl = a->slope;
    e->po = a->post;
    e->sh = a->nshift;
    e->res = a->resid_rows ? a->resid_rows[y] : a->resid ? a->resid + ((size_t)n * a->H + y) * a->W * C : NULL;
    for (int i = 0; i < r; i++) {
        const size_t oy = (size_t)y * r + i;
        e->out[i] = a->out_rows ? a->out_rows[oy] : a->out + ((size_t)n * Ho + oy) * Wo * C;
        e->na[i] = a->nshift && !a->nact8_rows ? nact_at(a, n, oy, 0) : NULL;
        e->na8[i] = a->nshift && a->nact8_rows ? a->nact8_rows[oy + 1] + 64 : NULL;
    }
    e->C = C;
    e->r = r;
    e->Kn = (C + 63) / 64;
    e->leaky = a->leaky;
    e->act_slope = a->act_slope;
    return 1;
}

/* the int8 signs of 64 channels (the AMX layout) from their sign and nonzero bits */
T_AVX512 static inline AI void epi_store8(int8_t *dst, uint64_t sw, uint64_t nw) {
    const __m512i v = _mm512_mask_blend_epi8((__mmask64)sw, _mm512_set1_epi8(1), _mm512_set1_epi8(-1));
    _mm512_store_si512((__m512i *)dst, _mm512_maskz_mov_epi8((__mmask64)nw, v));
}

T_AVX512 static inline AI void epi_px(const epi_row *e, int x, const int32_t *cnt) {
    const int C = e->C, r = e->r, Kn = e->Kn;
    const __m512 zero = _mm512_setzero_ps(), act = _mm512_set1_ps(e->act_slope);
    const float *res = e->res ? e->res + (size_t)x * C : NULL;
    for (int i = 0; i < r; i++) {
        for (int j = 0; j < r; j++) {
            const int s = i * r + j;
            const int32_t *cs = cnt + s * C;
            const float *al = e->al + s * C, *pr = e->pr + s * C, *sl = e->sl + s * C, *po = e->po + s * C;
            const size_t ox = (size_t)x * r + j;
            float *out = e->out[i] + ox * C;
            uint64_t *na = e->na[i] ? e->na[i] + ox * 2 * Kn : NULL;
            uint64_t bits[2];
            if (e->na8[i]) na = bits; /* one word pair (64 channels), written as int8 below */
            for (int k = 0; k < Kn; k++) {
                const int c0 = 64 * k, c1 = C < c0 + 64 ? C : c0 + 64;
                uint64_t sw = 0, nw = 0;
                for (int c = c0; c < c1; c += 16) {
                    __m512 t = _mm512_cvtepi32_ps(_mm512_loadu_si512(cs + c));
                    t = _mm512_mul_ps(t, _mm512_loadu_ps(al + c));
                    t = _mm512_add_ps(t, _mm512_loadu_ps(pr + c));
                    t = _mm512_mask_mul_ps(t, _mm512_cmp_ps_mask(t, zero, _CMP_NGT_UQ), t, _mm512_loadu_ps(sl + c));
                    t = _mm512_add_ps(t, _mm512_loadu_ps(po + c));
                    if (res) t = _mm512_add_ps(t, _mm512_loadu_ps(res + c));
                    if (e->leaky) t = _mm512_mask_mul_ps(t, _mm512_cmp_ps_mask(t, zero, _CMP_NGT_UQ), t, act);
                    _mm512_storeu_ps(out + c, t);
                    if (na) {
                        const __m512 q = _mm512_add_ps(t, _mm512_loadu_ps(e->sh + c));
                        sw |= (uint64_t)_mm512_cmp_ps_mask(q, zero, _CMP_LT_OQ) << (c - c0);
                        nw |= (uint64_t)_mm512_cmp_ps_mask(q, zero, _CMP_NEQ_UQ) << (c - c0);
                    }
                }
                if (na) {
                    na[2 * k] = sw;
                    na[2 * k + 1] = nw;
                }
            }
            if (e->na8[i]) epi_store8(e->na8[i] + 64 * ox, bits[0], bits[1]);
        }
    }
}

/* the constants of a 64-channel epilogue (r == 1), held in registers across a row */
typedef struct {
    __m512 al[4], pr[4], sl[4], po[4], nsh[4]; /* nsh: -shift */
} epi64_k;

/* the constants of sub-pixel s (0 when r == 1) */
T_AVX512 static inline AI void epi64_load(const epi_row *e, epi64_k *k, int s) {
    for (int i = 0; i < 4; i++) {
        k->al[i] = _mm512_loadu_ps(e->al + 64 * s + 16 * i);
        k->pr[i] = _mm512_loadu_ps(e->pr + 64 * s + 16 * i);
        k->sl[i] = _mm512_loadu_ps(e->sl + 64 * s + 16 * i);
        k->po[i] = _mm512_loadu_ps(e->po + 64 * s + 16 * i);
        k->nsh[i] = e->sh ? _mm512_sub_ps(_mm512_setzero_ps(), _mm512_loadu_ps(e->sh + 16 * i)) : _mm512_setzero_ps();
    }
}

/* epi_px for C == 64 and r == 1 with the constants in k */
T_AVX512 static inline AI void epi64_at(const epi_row *e, const epi64_k *k, int i, size_t ox, const float *res,
                                         const __m512i *cnt);

T_AVX512 static inline AI void epi64_px(const epi_row *e, const epi64_k *k, int x, const __m512i *cnt) {
    epi64_at(e, k, 0, (size_t)x, e->res ? e->res + (size_t)x * 64 : NULL, cnt);
}

/* output pixel ox of output row i (of this row's r) from 64 counts: the 64-channel epilogue */
T_AVX512 static inline AI void epi64_at(const epi_row *e, const epi64_k *k, int i, size_t ox, const float *res,
                                         const __m512i *cnt) {
    const __m512 zero = _mm512_setzero_ps();
    float *out = e->out[i] + ox * 64;
    uint64_t sw = 0, nw = 0;
    for (int i = 0; i < 4; i++) {
        __m512 t = _mm512_cvtepi32_ps(cnt[i]);
        t = _mm512_mul_ps(t, k->al[i]);
        t = _mm512_add_ps(t, k->pr[i]);
#ifndef EXP_NOPRELU
        t = _mm512_mask_mul_ps(t, _mm512_cmp_ps_mask(t, zero, _CMP_NGT_UQ), t, k->sl[i]);
#endif
        t = _mm512_add_ps(t, k->po[i]);
        if (res) t = _mm512_add_ps(t, _mm512_loadu_ps(res + 16 * i));
        if (e->leaky)
            t = _mm512_mask_mul_ps(t, _mm512_cmp_ps_mask(t, zero, _CMP_NGT_UQ), t, _mm512_set1_ps(e->act_slope));
        _mm512_storeu_ps(out + 16 * i, t);
        /* t + shift < 0 exactly when t < -shift, and == 0 exactly when t == -shift (a rounded sum
         * keeps the sign of the exact one and is zero only when that is; NaN compares alike) */
#ifndef EXP_NOBITS
        sw |= (uint64_t)_mm512_cmp_ps_mask(t, k->nsh[i], _CMP_LT_OQ) << (16 * i);
        nw |= (uint64_t)_mm512_cmp_ps_mask(t, k->nsh[i], _CMP_NEQ_UQ) << (16 * i);
#endif
    }
    if (e->na8[i]) {
        epi_store8(e->na8[i] + 64 * ox, sw, nw);
    } else if (e->na[i]) {
        e->na[i][2 * ox] = sw;
        e->na[i][2 * ox + 1] = nw;
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
    if (a->leaky)
        for (int c = 0; c < C; c++) v[c] = v[c] > 0.0f ? v[c] : v[c] * a->act_slope;
    if (a->out_nchw) {
        float *out = a->out + (size_t)n * C * Ho * Wo + oy * Wo + ox;
        for (int c = 0; c < C; c++) out[c * Ho * Wo] = v[c];
    } else {
        memcpy(a->out + ((n * Ho + oy) * Wo + ox) * C, v, sizeof(float) * (size_t)C);
    }
    if (!a->nshift) return;
    uint64_t *na = nact_at(a, n, oy, ox);
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


/* sign and nonzero bits of v[c] + shift[c] for one pixel of C channels into K word pairs */
#if BP_X86
T_AVX512 static void pack_px_avx512(const float *v, const float *shift, int C, uint64_t *o) {
    const __m512 zero = _mm512_setzero_ps();
    for (int k = 0; 64 * k < C; k++) {
        const int c0 = 64 * k, c1 = C < c0 + 64 ? C : c0 + 64;
        uint64_t sw = 0, nw = 0;
        for (int c = c0; c < c1; c += 16) {
            const __m512 q = _mm512_add_ps(_mm512_loadu_ps(v + c), _mm512_loadu_ps(shift + c));
            sw |= (uint64_t)_mm512_cmp_ps_mask(q, zero, _CMP_LT_OQ) << (c - c0);
            nw |= (uint64_t)_mm512_cmp_ps_mask(q, zero, _CMP_NEQ_UQ) << (c - c0);
        }
        o[2 * k] = sw;
        o[2 * k + 1] = nw;
    }
}
#endif

static inline void pack_px(const float *v, const float *shift, int C, uint64_t *o) {
#if BP_X86
    if (g_isa >= ISA_AVX512 && C % 16 == 0) {
        pack_px_avx512(v, shift, C, o);
        return;
    }
    const int vec = g_isa >= ISA_AVX2;
#endif
    for (int k = 0; 64 * k < C; k++) {
        const int c0 = 64 * k, c1 = C < c0 + 64 ? C : c0 + 64;
        uint64_t sw = 0, nw = 0;
        int c = c0;
#if BP_X86
        if (vec) c = pack8_avx2(v, shift, c0, c1, &sw, &nw); /* 8 channels at a time, the rest below */
#endif
        pack_bits_scalar(v + c, shift + c, c1 - c, &sw, &nw, c - c0);
        o[2 * k] = sw;
        o[2 * k + 1] = nw;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* one output row of one image: conv core + epilogue (or raw counts) for every pixel */

/* the 9 taps (padded input words) of output pixel x's 3x3 window, from the rows y, y+1, y+2 */
#define WINDOW_TAPS(taps, r0, r1, r2, x, pw)                                                         \
    const uint64_t *const taps[9] = {(r0) + (size_t)(x) * (pw), (r0) + ((size_t)(x) + 1) * (pw),      \
                                     (r0) + ((size_t)(x) + 2) * (pw), (r1) + (size_t)(x) * (pw),       \
                                     (r1) + ((size_t)(x) + 1) * (pw), (r1) + ((size_t)(x) + 2) * (pw), \
                                     (r2) + (size_t)(x) * (pw), (r2) + ((size_t)(x) + 1) * (pw),       \
                                     (r2) + ((size_t)(x) + 2) * (pw)}

#define DEFINE_ROW(NAME, ATTR, CORE, EPI)                                                          \
    ATTR static void NAME(const unit_args *a, int n, int y, int32_t *cnt) {                        \
        const size_t pw = (size_t)2 * a->K;                                                        \
        const uint64_t *r0 = act_row(a, n, y), *r1 = act_row(a, n, y + 1), *r2 = act_row(a, n, y + 2); \
        for (int x = 0; x < a->W; x++) {                                                           \
            WINDOW_TAPS(taps, r0, r1, r2, x, pw);                                                  \
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
DEFINE_ROW(row_avx2_any, T_AVX2, core_avx2, epilogue_avx2)

/* epilogue_avx2's fast path for C == 64 with the row's pointers worked out once: sub-pixel s of the
 * counts (an upsampling unit's are sub-pixel major) to output row i, column ox; the next unit's bits
 * from t < -shift, t != -shift (exact for a finite shift, see epi64_at) */
T_AVX2 static inline AI void epi64_px_avx2(const epi_row *e, const float *nsh, int s, int i, size_t ox,
                                           const float *res, const int32_t *cnt) {
    const size_t o = (size_t)64 * s;
    float *out = e->out[i] + ox * 64;
    uint64_t sw = 0, nw = 0;
    for (int c = 0; c < 64; c += 8) {
        const __m256 t = epi8_avx2(cnt + c, e->al + o + c, e->pr + o + c, e->sl + o + c, e->po + o + c,
                                   res ? res + c : NULL, e->leaky, e->act_slope);
        _mm256_storeu_ps(out + c, t);
        if (nsh) {
            const __m256 m = _mm256_loadu_ps(nsh + c);
            sw |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(t, m, _CMP_LT_OQ)) << c;
            nw |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(t, m, _CMP_NEQ_UQ)) << c;
        }
    }
    if (nsh) {
        e->na[i][2 * ox] = sw;
        e->na[i][2 * ox + 1] = nw;
    }
}

/* the AVX2 row: pixels in pairs where both windows are full and the lookup form applies (its weight
 * loads shared), the 64-channel epilogue (also per sub-pixel) where the layout allows (epi64_px_avx2) */
T_AVX2 static void row_avx2(const unit_args *a, int n, int y, int32_t *cnt) {
    epi_row e;
    const int r = a->r;
    const int fast = a->C == 64 && a->ng * GROUP == 64 * r * r && epi_row_init(a, n, y, &e) && !e.na8[0];
    if (!fast && !a->wlut) {
        row_avx2_any(a, n, y, cnt);
        return;
    }
    float nsh[64];
    const float *ns = NULL;
    if (fast && e.na[0]) {
        for (int c = 0; c < 64; c++) nsh[c] = -e.sh[c];
        ns = nsh;
    }
    const size_t stride = (size_t)a->ng * GROUP; /* counts a pixel */
    const int pairs = a->wlut && 2 * stride <= MAX_OUT + GROUP;
    const size_t pw = (size_t)2 * a->K;
    const uint64_t *r0 = act_row(a, n, y), *r1 = act_row(a, n, y + 1), *r2 = act_row(a, n, y + 2);
    for (int x = 0; x < a->W; x++) {
        WINDOW_TAPS(taps, r0, r1, r2, x, pw);
        int np = 1;
        if (pairs && x + 1 < a->W) {
            WINDOW_TAPS(right, r0, r1, r2, x + 1, pw);
            if (window_full(taps) && window_full(right)) {
                const uint64_t *const *tp[2] = {taps, right};
                for (int block = 0; block < a->ng / 4; block++) {
                    int32_t *const c[2] = {cnt + 64 * block, cnt + stride + 64 * block};
                    lut_px_avx2(a->wlut, block, tp, 2, c);
                }
                np = 2;
            }
        }
        if (np == 1) core_avx2(a, taps, cnt);
        for (int p = 0; p < np; p++) {
            const int32_t *c = cnt + p * stride;
            if (fast) {
                const float *res = e.res ? e.res + (size_t)(x + p) * 64 : NULL;
                if (r == 1)
                    epi64_px_avx2(&e, ns, 0, 0, (size_t)(x + p), res, c);
                else
                    for (int i = 0; i < r; i++)
                        for (int j = 0; j < r; j++)
                            epi64_px_avx2(&e, ns, i * r + j, i, (size_t)(x + p) * r + j, res, c + 64 * (i * r + j));
            } else if (a->counts)
                memcpy(a->counts + (((size_t)n * a->H + y) * a->W + x + p) * a->cout, c,
                       sizeof(int32_t) * (size_t)a->cout);
            else
                epilogue_avx2(a, n, y, x + p, c);
        }
        x += np - 1;
    }
}
/* the layouts epi_px does not take (NCHW, channels not a multiple of 16): the AVX2 epilogue */
DEFINE_ROW(row_avx512_any, T_AVX512, core_avx512, epilogue_avx2)
/* the AVX-512 row: as DEFINE_ROW, with the row's epilogue pointers worked out once where it can */
T_AVX512 static void row_avx512(const unit_args *a, int n, int y, int32_t *cnt) {
    epi_row e;
    if (!epi_row_init(a, n, y, &e)) {
        row_avx512_any(a, n, y, cnt);
        return;
    }
    const size_t pw = (size_t)2 * a->K;
    const uint64_t *r0 = act_row(a, n, y), *r1 = act_row(a, n, y + 1), *r2 = act_row(a, n, y + 2);
    if (e.C == 64 && e.r == 1 && a->K == 1 && a->ng == 4) {
        epi64_k k;
        epi64_load(&e, &k, 0);
        for (int x = 0; x < a->W; x++) {
            WINDOW_TAPS(taps, r0, r1, r2, x, pw);
            __m512i c[4];
            core64_avx512(a->wp, taps, c);
            epi64_px(&e, &k, x, c);
        }
        return;
    }
    if (e.C == 64 && a->K == 1 && a->ng == 4 * e.r * e.r) {
        /* sub-pixel-major outputs: each block of 64 counts is one output pixel of the r x r */
        const int rr = e.r * e.r;
        epi64_k ks[EPI_MAX_R * EPI_MAX_R];
        for (int s = 0; s < rr; s++) epi64_load(&e, &ks[s], s);
        for (int x = 0; x < a->W; x++) {
            WINDOW_TAPS(taps, r0, r1, r2, x, pw);
            const float *res = e.res ? e.res + (size_t)x * 64 : NULL;
            for (int s = 0; s < rr; s++) {
                __m512i c[4];
                core64_avx512(a->wp + (size_t)s * 4 * 9 * GROUP, taps, c);
                epi64_at(&e, &ks[s], s / e.r, (size_t)x * e.r + s % e.r, res, c);
            }
        }
        return;
    }
    for (int x = 0; x < a->W; x++) {
        WINDOW_TAPS(taps, r0, r1, r2, x, pw);
        core_avx512(a, taps, cnt);
        epi_px(&e, x, cnt);
    }
}
#endif

typedef void (*row_fn)(const unit_args *, int, int, int32_t *);

static row_fn pick_row(void) {
#if BP_X86
    if (g_isa >= ISA_AVX512) return row_avx512; /* also the AMX core's fallback */
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

/* The helpers are a pool of threads started on first use and kept: a call queues one task per
 * helper it wants (each holding a reference to its job) and the pool's threads take them. A task
 * taken late finds its job done and only drops its reference. After fork() (Celery's prefork
 * workers) the child has none of the parent's threads: it starts its own pool. */

typedef struct {
    void *(*run)(void *);
    void *arg;
} pool_task;

#define POOL_MAX 64   /* threads */
#define POOL_QUEUE 256

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static pool_task pool_q[POOL_QUEUE];
static int pool_head, pool_len, pool_threads;

static void *pool_main(void *unused) {
    (void)unused;
    pthread_mutex_lock(&pool_mu);
    for (;;) {
        while (pool_len == 0) pthread_cond_wait(&pool_cv, &pool_mu);
        const pool_task t = pool_q[pool_head];
        pool_head = (pool_head + 1) % POOL_QUEUE;
        pool_len--;
        pthread_mutex_unlock(&pool_mu);
        t.run(t.arg);
        pthread_mutex_lock(&pool_mu);
    }
    return NULL;
}

static void pool_after_fork(void) {
    pthread_mutex_init(&pool_mu, NULL);
    pthread_cond_init(&pool_cv, NULL);
    pool_head = pool_len = pool_threads = 0;
}

/* queue run(arg) `copies` times; returns how many were queued (the caller keeps the references of
 * the others). Threads are added up to `copies` (and POOL_MAX). */
static void pool_register_fork(void) { pthread_atfork(NULL, NULL, pool_after_fork); }

static int pool_submit(void *(*run)(void *), void *arg, int copies) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, pool_register_fork);
    int queued = 0;
    pthread_mutex_lock(&pool_mu);
    while (pool_threads < copies && pool_threads < POOL_MAX) {
        pthread_attr_t attr;
        pthread_t th;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int ok = pthread_create(&th, &attr, pool_main, NULL) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        pool_threads++;
    }
    for (; queued < copies && pool_len < POOL_QUEUE && pool_threads > 0; queued++) {
        pool_q[(pool_head + pool_len) % POOL_QUEUE] = (pool_task){run, arg};
        pool_len++;
    }
    pthread_cond_broadcast(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
    return queued;
}

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
    atomic_fetch_add(&j->refs, nthreads - 1);
    const int queued = pool_submit(job_thread, j, nthreads - 1);
    if (queued < nthreads - 1) atomic_fetch_sub(&j->refs, nthreads - 1 - queued);
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

/* ------------------------------------------------------------------------------------------ */
/* AMX core (Intel AMX-INT8): the same counts as int8 dot products of the {-1, 0, +1} signs.
 *
 * For 32 pixels of a row and 32 outputs at a time, four 16x16 int32 accumulator tiles take
 * 16 pixels x 64 input channels (A: the expanded signs of one tap) times 64 input channels x 16
 * outputs (B: the signs of the weights in the VNNI order the instruction wants). Integer sums of
 * products in {-1, 0, +1} are exact, so the counts equal the popcount cores' bit for bit; zero
 * activations (the border, sign(0), unused channels) are zero bytes and contribute nothing.
 * Each thread expands its input rows from the bit planes into int8 once (a rolling window of three
 * rows) and works through a run of consecutive output rows, so every row is expanded once. */

#if BP_AMX
#define T_AMX __attribute__((target("avx2,popcnt,fma,avx512f,avx512bw,avx512vl,avx512vpopcntdq,amx-tile,amx-int8")))
#define AMX_PX 32 /* pixels per block: two tiles of 16 rows */

typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

static int amx_permitted(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    if (!tile || !int8) return 0;
    /* Linux hands out the 8 KB tile state only to processes that ask for it */
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

/* weights [ng][9][K][16] of sign bits -> int8 [9][K][ng][16 rows][64]: row q, byte 4*o + j holds the
 * sign of weight (output g*16 + o, input channel 64*k + 4*q + j); unused channels and outputs are 0.
 * A row's 64 bytes come from one mask: nibble o of it is bits 4q..4q+3 of output o's word. */
T_AMX static int8_t *amx_weights(const unit_args *a) {
    const int K = a->K, ng = a->ng;
    int8_t *w = (int8_t *)aligned_alloc(64, (size_t)9 * K * ng * 1024);
    if (!w) return NULL;
    const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
    for (int t = 0; t < 9; t++)
        for (int k = 0; k < K; k++)
            for (int g = 0; g < ng; g++) {
                int8_t *tile = w + (((size_t)t * K + k) * ng + g) * 1024;
                const uint64_t *bits = a->wp + (((size_t)g * 9 + t) * K + k) * GROUP;
                for (int q = 0; q < 16; q++) {
                    uint64_t neg = 0, valid = 0, in = 0;
                    for (int j = 0; j < 4; j++)
                        if (64 * k + 4 * q + j < a->cin) in |= 1u << j;
                    for (int o = 0; o < 16; o++) {
                        neg |= ((bits[o] >> (4 * q)) & 0xF) << (4 * o);
                        if (g * GROUP + o < a->cout) valid |= in << (4 * o);
                    }
                    _mm512_store_si512((__m512i *)(tile + 64 * q),
                                       _mm512_maskz_mov_epi8(valid, _mm512_mask_blend_epi8(neg, plus, minus)));
                }
            }
    return w;
}

/* one padded input row (W + 2 pixels of K word pairs) -> int8 signs, 64 * K bytes per pixel */
T_AMX static void amx_expand_row(const uint64_t *src, int pixels, int K, int8_t *dst) {
    const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
    for (int i = 0; i < pixels * K; i++) {
        const __m512i v = _mm512_mask_blend_epi8((__mmask64)src[2 * i], plus, minus);
        _mm512_store_si512((__m512i *)(dst + (size_t)64 * i), _mm512_maskz_mov_epi8((__mmask64)src[2 * i + 1], v));
    }
}

typedef struct {
    const unit_args *a;
    int rows_per_chunk, chunks_per_image;
} amx_job;

/* a thread's AMX working memory: three expanded input rows and the counts of two blocks */
typedef struct {
    int8_t *buf;
    int32_t *cnt;
    size_t px_bytes, row_bytes;
    int blocks;
} amx_scratch;

/* allocate the scratch for rows of W pixels and configure this thread's tiles; 0 if out of memory */
/* bytes of an expanded row of W pixels of K words: room for the last block's taps to read 2 pixels
 * past its end (zero bytes, results discarded) */
static size_t amx_row_bytes(int W, int K) {
    return (size_t)64 * K * ((size_t)((W + AMX_PX - 1) / AMX_PX) * AMX_PX + 2);
}

/* allocate the scratch for rows of W pixels; 0 if out of memory */
static int amx_alloc(const unit_args *a, amx_scratch *sc) {
    sc->blocks = (a->W + AMX_PX - 1) / AMX_PX;
    sc->px_bytes = (size_t)64 * a->K;
    sc->row_bytes = amx_row_bytes(a->W, a->K);
    sc->buf = (int8_t *)aligned_alloc(64, 3 * sc->row_bytes + (size_t)2 * AMX_PX * a->ng * GROUP * 4);
    if (!sc->buf) return 0;
    memset(sc->buf, 0, 3 * sc->row_bytes);
    sc->cnt = (int32_t *)(sc->buf + 3 * sc->row_bytes);
    return 1;
}

/* this thread's tiles: eight of 16 rows x 64 bytes */
T_AMX static void amx_configure(void) {
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.rows[i] = 16;
        cfg.colsb[i] = 64;
    }
    /* not _tile_loadconfig: GCC 12's version tells the compiler it reads 8 bytes, so the stores to the
     * rest of the configuration may be dropped as dead */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

T_AMX static int amx_begin(const unit_args *a, amx_scratch *sc) {
    if (!amx_alloc(a, sc)) return 0;
    amx_configure();
    return 1;
}

/* sign(v + shift) of W pixels of 64 channels as int8 (-1, 0, +1), 64 bytes a pixel */
T_AMX static void amx_pack_row8(const float *v, const float *shift, int W, int8_t *dst) {
    for (int x = 0; x < W; x++) {
        uint64_t w[2];
        pack_px_avx512(v + (size_t)64 * x, shift, 64, w);
        epi_store8(dst + (size_t)64 * x, w[0], w[1]);
    }
}

T_AMX static void amx_release(void) { _tile_release(); }

T_AMX static void amx_end(amx_scratch *sc) {
    _tile_release();
    free(sc->buf);
}

/* expand padded input row p of image n into slot p % 3 of the scratch */
T_AMX static inline void amx_load_row(const unit_args *a, const amx_scratch *sc, int n, int p) {
    amx_expand_row(act_row(a, n, p), a->W + 2, a->K, sc->buf + (size_t)(p % 3) * sc->row_bytes);
}

/* the epilogue (or the raw counts) of output pixel x of row y from its counts c */
T_AMX static inline AI void amx_finish(const unit_args *a, const epi_row *e, const epi64_k *k64, int fast, int n,
                                       int y, int x, const int32_t *c) {
    if (fast == 2) {
        const __m512i cv[4] = {_mm512_loadu_si512(c), _mm512_loadu_si512(c + 16), _mm512_loadu_si512(c + 32),
                               _mm512_loadu_si512(c + 48)};
        epi64_px(e, k64, x, cv);
    } else if (fast)
        epi_px(e, x, c);
    else if (a->counts)
        memcpy(a->counts + (((size_t)n * a->H + y) * a->W + x) * a->cout, c, sizeof(int32_t) * (size_t)a->cout);
    else
        epilogue_avx2(a, n, y, x, c);
}

/* Output row y of image n from the expanded rows y, y+1, y+2 (padded) in the scratch. Blocks of 32
 * pixels: for 32 outputs at a time, four 16x16 int32 tiles accumulate 9 taps x K words of (two A
 * tiles: 16 pixels x 64 channels) x (two B tiles: 64 channels x 16 outputs). The tile unit works
 * on its own while the vector units are free, so the epilogue of the previous block is spread
 * between this block's tile products, a few pixels after each tap: its loads and stores (the
 * residual and the output, often from L3) then wait while the tiles compute. */
T_AMX static inline AI void amx_row_impl(const unit_args *a, const amx_scratch *sc, int n, int y, const epi_row *ep,
                                         const int fast) {
    const int K = a->K, ng = a->ng, W = a->W;
    const size_t pxb = sc->px_bytes, per_px = (size_t)ng * GROUP, cstride = per_px * 4;
    const epi_row e = *ep;
    epi64_k k64;
    if (fast == 2) epi64_load(&e, &k64, 0);
    const int8_t *rows[3];
    for (int d = 0; d < 3; d++)
        rows[d] = a->act8_rows ? a->act8_rows[y + d] : sc->buf + (size_t)((y + d) % 3) * sc->row_bytes;
    const int steps = (ng + 1) / 2 * 9 * K;
    int px0 = 0, px1 = 0, next = 0; /* pixels of the block whose epilogue is pending */
    const int32_t *pend = NULL;
    const int blocks = (W + AMX_PX - 1) / AMX_PX; /* the scratch may be wider (pipes) */
    for (int b = 0; b < blocks; b++) {
        int32_t *cnt = sc->cnt + (size_t)(b & 1) * AMX_PX * per_px;
        const int each = (px1 - px0 + steps - 1) / steps;
        /* the next block's input lines (34 pixels of each of the three rows) fetched into L2 while this
         * block's tiles compute, a few after each tile step: in a chain those rows were written a
         * whole wavefront diagonal earlier and come from L3, where the tile loads waited for them
         * (1080p deblock network: 810-882 -> 756-807 ms) */
        const size_t pf_at = (size_t)(b + 1) * AMX_PX * pxb;
        const int pf_row = b + 1 < blocks ? (int)((AMX_PX + 2) * pxb / 64) : 0, pf_total = 3 * pf_row;
        const int pf_step = (pf_total + steps - 1) / steps;
        int pf_next = 0;
        for (int g = 0; g < ng; g += 2) {
            const int two = g + 1 < ng;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int t = 0; t < 9; t++) {
                const int8_t *in = rows[t / 3] + ((size_t)b * AMX_PX + t % 3) * pxb;
                for (int k = 0; k < K; k++) {
                    const int8_t *wt = a->wamx + (((size_t)t * K + k) * ng + g) * 1024;
                    _tile_loadd(4, in + 64 * k, (long)pxb);
                    _tile_loadd(5, in + 16 * pxb + 64 * k, (long)pxb);
                    _tile_loadd(6, wt, 64);
                    _tile_dpbssd(0, 4, 6);
                    _tile_dpbssd(2, 5, 6);
                    if (two) {
                        _tile_loadd(7, wt + 1024, 64);
                        _tile_dpbssd(1, 4, 7);
                        _tile_dpbssd(3, 5, 7);
                    }
                    for (int q = 0; q < each && next < px1; q++, next++)
                        amx_finish(a, &e, &k64, fast, n, y, next, pend + (size_t)(next - px0) * per_px);
                    for (int l = 0; l < pf_step && pf_next < pf_total; l++, pf_next++)
                        _mm_prefetch((const char *)rows[pf_next / pf_row] + pf_at + 64 * (size_t)(pf_next % pf_row),
                                     _MM_HINT_T1);
                }
            }
            _tile_stored(0, cnt + g * GROUP, (long)cstride);
            _tile_stored(2, cnt + 16 * per_px + g * GROUP, (long)cstride);
            if (two) {
                _tile_stored(1, cnt + (g + 1) * GROUP, (long)cstride);
                _tile_stored(3, cnt + 16 * per_px + (g + 1) * GROUP, (long)cstride);
            }
        }
        for (; next < px1; next++) amx_finish(a, &e, &k64, fast, n, y, next, pend + (size_t)(next - px0) * per_px);
        px0 = next = b * AMX_PX;
        px1 = px0 + AMX_PX < W ? px0 + AMX_PX : W;
        pend = cnt;
    }
    for (; next < px1; next++) amx_finish(a, &e, &k64, fast, n, y, next, pend + (size_t)(next - px0) * per_px);
}

/* the row with its epilogue specialised: 64 channels (constants in registers), NHWC, or general */
T_AMX static void amx_row(const unit_args *a, const amx_scratch *sc, int n, int y) {
    epi_row e;
    const int fast = epi_row_init(a, n, y, &e);
    if (fast && a->C == 64 && a->r == 1)
        amx_row_impl(a, sc, n, y, &e, 2);
    else if (fast)
        amx_row_impl(a, sc, n, y, &e, 1);
    else
        amx_row_impl(a, sc, n, y, &e, 0);
}

/* a run of consecutive output rows of one image: each input row is expanded once */
T_AMX static void amx_chunk(const void *ctx, int chunk) {
    const amx_job *job = (const amx_job *)ctx;
    const unit_args *a = job->a;
    const int n = chunk / job->chunks_per_image;
    const int y0 = (chunk % job->chunks_per_image) * job->rows_per_chunk;
    const int y1 = y0 + job->rows_per_chunk < a->H ? y0 + job->rows_per_chunk : a->H;
    if (y0 >= y1) return;
    amx_scratch sc;
    if (!amx_begin(a, &sc)) abort(); /* a few hundred KB: out of memory here leaves no safe way back */
    for (int p = y0; p < y0 + 2; p++) amx_load_row(a, &sc, n, p);
    for (int y = y0; y < y1; y++) {
        amx_load_row(a, &sc, n, y + 2);
        amx_row(a, &sc, n, y);
    }
    amx_end(&sc);
}

/* the whole unit on the AMX core; 0 when memory for the weight tiles was not available */
static int run_unit_amx(const unit_args *a, int nthreads) {
    unit_args b = *a;
    int8_t *w = amx_weights(a);
    if (!w) return 0;
    b.wamx = w;
    /* runs of rows long enough to expand each input row about once (a run also sets up its scratch),
     * enough of them to balance the threads; one thread takes an image at once */
    int per = nthreads > 1 ? a->H / (4 * nthreads) : a->H;
    if (per < 1) per = 1;
    const amx_job job = {&b, per, (a->H + per - 1) / per};
    parallel_rows(amx_chunk, &job, a->N * job.chunks_per_image, nthreads);
    free(w);
    return 1;
}
#endif /* BP_AMX */

/* ------------------------------------------------------------------------------------------ */
/* Wavefronts (chains and pipes): stages of row tasks; task y of stage s runs once the owner's
 * ready(s, y) allows it. Threads take the ready task of the deepest stage first, which keeps the
 * stages close together and their rows in cache. */

typedef struct {
    int S;
    int *rows, *next, *done; /* per stage: tasks, the next to hand out, tasks 0..done-1 finished */
    size_t *off;             /* per stage: where its tasks' flags start in finished[] */
    unsigned char *finished;
    int remaining;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int isa; /* the conv core of every unit stage */
#if BP_AMX
    amx_scratch *scratch; /* AMX: one per thread, made before the threads start */
    atomic_int slots;     /* scratch handed out */
    int nscratch;
#endif
} wave;

/* what a thread works with: the popcount row function, or the AMX core and its scratch */
typedef struct {
    row_fn row;
    int amx;
#if BP_AMX
    amx_scratch *sc;
#endif
    int32_t cnt[MAX_OUT + GROUP];
} wave_worker;

typedef int (*wave_ready_fn)(const void *owner, int s, int y);
typedef void (*wave_task_fn)(void *owner, wave_worker *worker, int s, int y);

/* S stages of rows[s] tasks; 0 if out of memory */
/* zeroed memory on a cache line: vector rows carved from it must not straddle lines (calloc's
 * 16-byte alignment made the same network run at two speeds, by where the heap put its rings) */
static void *zalloc64(size_t bytes) {
    bytes = (bytes + 63) / 64 * 64;
    void *m = aligned_alloc(64, bytes ? bytes : 64);
    if (m) memset(m, 0, bytes);
    return m;
}

static int wave_init(wave *w, int S, const int *rows) {
    size_t total = 0;
    for (int s = 0; s < S; s++) total += (size_t)rows[s];
    char *m = (char *)calloc(1, (size_t)S * (3 * sizeof(int) + sizeof(size_t)) + total);
    if (!m) return 0;
    w->off = (size_t *)m;
    w->rows = (int *)(w->off + S);
    w->next = w->rows + S;
    w->done = w->next + S;
    w->finished = (unsigned char *)(w->done + S);
    w->S = S;
    w->remaining = 0;
    for (int s = 0; s < S; s++) {
        w->rows[s] = rows[s];
        w->off[s] = (size_t)w->remaining;
        w->remaining += rows[s];
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->isa = g_isa;
    return 1;
}

static void wave_destroy(wave *w) {
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
#if BP_AMX
    for (int i = 0; i < w->nscratch; i++) free(w->scratch[i].buf);
    free(w->scratch);
#endif
    free(w->off);
}

#if BP_AMX
/* the AMX scratch of nthreads threads, each fitting the rows and counts of `widest`; 0 if out of
 * memory (what was made is freed by wave_destroy) */
static int wave_scratch(wave *w, const unit_args *widest, int nthreads) {
    if (!(w->scratch = (amx_scratch *)calloc((size_t)nthreads, sizeof(amx_scratch)))) return 0;
    for (; w->nscratch < nthreads; w->nscratch++)
        if (!amx_alloc(widest, &w->scratch[w->nscratch])) return 0;
    return 1;
}
#endif

/* this thread's share: take and run ready tasks until none is left */
static void wave_work(wave *w, wave_ready_fn ready, wave_task_fn task, void *owner) {
    wave_worker m;
    m.row = pick_row();
    m.amx = 0;
#if BP_AMX
    if (w->isa == ISA_AMX) {
        m.sc = &w->scratch[atomic_fetch_add(&w->slots, 1)];
        amx_configure();
        m.amx = 1;
    }
#endif
    pthread_mutex_lock(&w->mu);
    while (w->remaining > 0) {
        int s = w->S - 1, y = -1;
        for (; s >= 0; s--)
            if (w->next[s] < w->rows[s] && ready(owner, s, w->next[s])) {
                y = w->next[s]++;
                break;
            }
        if (y < 0) {
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        pthread_mutex_unlock(&w->mu);
        task(owner, &m, s, y);
        pthread_mutex_lock(&w->mu);
        w->finished[w->off[s] + y] = 1;
        while (w->done[s] < w->rows[s] && w->finished[w->off[s] + w->done[s]]) w->done[s]++;
        w->remaining--;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
#if BP_AMX
    if (m.amx) amx_release();
#endif
}

/* output row y of unit a (N == 1) on this worker's core: AMX from int8 rows, or from bit rows it
 * expands first, else the popcount row */
static void wave_unit_row(wave_worker *m, const unit_args *a, int y) {
#if BP_AMX
    if (m->amx) {
        if (!a->act8_rows)
            for (int p = y; p < y + 3; p++) amx_load_row(a, m->sc, 0, p);
        amx_row(a, m->sc, 0, y);
        return;
    }
#endif
    m->row(a, 0, y, m->cnt);
}

/* wait until every task has finished (the caller's own loop may end before the others' tasks) */
static void wave_wait(wave *w) {
    pthread_mutex_lock(&w->mu);
    while (w->remaining > 0) pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

/* Run the wavefront on nthreads threads: the caller and nthreads - 1 pool threads running
 * thread(owner), each holding a reference in *refs that thread drops; returns when every task is
 * done (the owner's last reference stays the caller's). */
static void wave_run(wave *w, wave_ready_fn ready, wave_task_fn task, void *owner, atomic_int *refs,
                     void *(*thread)(void *), int nthreads) {
    atomic_fetch_add(refs, nthreads - 1);
    const int queued = pool_submit(thread, owner, nthreads - 1);
    if (queued < nthreads - 1) atomic_fetch_sub(refs, nthreads - 1 - queued);
    wave_work(w, ready, task, owner);
    wave_wait(w);
}

/* the row table of a ring of R rows of rb bytes for an image of H rows, by padded row index
 * (0 and H + 1 are the zero row, the border) */
static void ring_table(void **rows, int H, char *ring, size_t rb, int R, void *zero) {
    for (int p = 0; p < H + 2; p++) rows[p] = p >= 1 && p <= H ? ring + (size_t)(p % R) * rb : zero;
}

/* ------------------------------------------------------------------------------------------ */
/* Chains: consecutive 1x units (C -> C, each adding its input) run as one call, row by row in a
 * wavefront, so that a row's floats are still in cache when the next unit reads them instead of
 * streaming the whole image through memory once per unit.
 *
 * Stages: [pack] unit_0 ... unit_{U-1}. Stage s writes the bits of its output rows into a ring of R
 * rows that stage s+1 reads (the last writes the caller's next_act, if any). Stage s may compute
 * row y once stage s-1 has finished rows 0..y+1 (its three input rows) and stage s+1 has finished
 * rows 0..y-R+1 (the ring slot it overwrites is no longer read). The first unit reads x and writes
 * out; the others work in place on out: a row's residual is read before it is written, and stage
 * s+1 reads row y of out only after stage s finished it. Threads take the ready row of the deepest
 * stage first, which keeps the stages close together (and their rows in cache). Every row is
 * computed once, by the same row functions as a single unit: results are bitwise those of the
 * units called one by one. */

typedef struct {
    int S, pack, H, W, C, K, R;
    int Su;                       /* stages that are the pack or units; S - Su: the thin tail (0 or 1) */
    const void *tail;             /* a thin_job reading the last unit's output (out), or NULL */
    unit_args *ua;                /* per stage (the pack stage's geometry only) */
    const float *x, *shift0;      /* the pack stage's source and shift */
    wave w;                       /* a task: one row of one stage */
    atomic_int refs;
    void *mem;                    /* rings and row tables, freed with the state */
    int int8;                     /* the rings hold int8 signs (AMX, 64 channels), else bits */
    void *mem8;                   /* the int8 rings and their row tables */
} chain_state;

static void chain_release(chain_state *c) {
    if (atomic_fetch_sub(&c->refs, 1) == 1) {
        wave_destroy(&c->w);
        free(c->mem);
        free(c->mem8);
        free(c);
    }
}

static int chain_ready(const void *owner, int s, int y) {
    const chain_state *c = (const chain_state *)owner;
    const int need = y + 2 < c->H ? y + 2 : c->H;
    if (s > 0 && c->w.done[s - 1] < need) return 0;
    /* a ring between s and s + 1 (the tail reads out, which nothing writes after the last unit) */
    if (s + 1 < c->Su && c->w.done[s + 1] < y - c->R + 2) return 0;
    return 1;
}

/* pack sign(x + shift) of row y into the ring of stage 0 */
static void chain_pack_row(const chain_state *c, int y) {
    const unit_args *a = &c->ua[0];
    const float *src = c->x + (size_t)y * c->W * c->C;
#if BP_AMX
    if (c->int8) {
        amx_pack_row8(src, c->shift0, c->W, a->nact8_rows[y + 1] + 64);
        return;
    }
#endif
    uint64_t *o = a->nact_rows[y + 1] + 2 * c->K;
    for (int xx = 0; xx < c->W; xx++) pack_px(src + (size_t)xx * c->C, c->shift0, c->C, o + (size_t)xx * 2 * c->K);
}

static void thin_row(const void *ctx, int ry);

static void chain_task(void *owner, wave_worker *m, int s, int y) {
    chain_state *c = (chain_state *)owner;
    if (s == 0 && c->pack) {
        chain_pack_row(c, y);
        return;
    }
    if (s >= c->Su) {
        thin_row(c->tail, y);
        return;
    }
    wave_unit_row(m, &c->ua[s], y);
}

static void *chain_thread(void *p) {
    chain_state *c = (chain_state *)p;
    wave_work(&c->w, chain_ready, chain_task, c);
    chain_release(c);
    return NULL;
}

#if BP_AMX
/* Whether unit a's output signs can go to an int8 ring: only the fast epilogues write int8, and they
 * compare against -shift, exact for a finite shift alone; the general epilogue (any other shift)
 * writes bits, so the stages then pass bits. */
static int signs8_ok(const unit_args *a) {
    if (a->nshift)
        for (int c = 0; c < a->C; c++)
            if (!isfinite(a->nshift[c])) return 0;
    return 1;
}

/* AMX with 64 channels: the stages pass int8 signs to each other (the layout amx_row reads, so a
 * row is never expanded again), all but the caller's act and next_act, which stay bits. Nothing
 * changes when there is no memory for it, or when a unit's next shift is not finite (signs8_ok). */
static void chain_rings8(chain_state *c) {
    const int S = c->Su, H = c->H, R = c->R;
    for (int s = c->pack; s + 1 < S; s++)
        if (!signs8_ok(&c->ua[s])) return;
    const size_t rb = amx_row_bytes(c->W, 1);
    const size_t ring_bytes = ((size_t)(S - 1) * R + 1) * rb; /* the rings and one zero row */
    char *mem = (char *)aligned_alloc(64, ring_bytes + (size_t)(S - 1) * (H + 2) * sizeof(void *));
    if (!mem) return;
    memset(mem, 0, ring_bytes);
    int8_t **tables = (int8_t **)(mem + ring_bytes);
    for (int s = 0; s + 1 < S; s++) { /* ring s: stage s writes it, stage s + 1 reads it */
        int8_t **rows = tables + (size_t)s * (H + 2);
        ring_table((void **)rows, H, mem + (size_t)s * R * rb, rb, R, mem + (size_t)(S - 1) * R * rb);
        c->ua[s].nact8_rows = rows;
        c->ua[s + 1].act8_rows = (const int8_t *const *)rows;
    }
    c->mem8 = mem;
    c->int8 = 1;
}
#endif

/* run the stages over one image; units[] hold everything but the row tables, which are made here.
 * Returns 0 when out of memory (nothing was computed). */
static int run_chain(const unit_args *units, int U, int pack, const float *x, const float *shift0,
                     const uint64_t *act, uint64_t *next_act, const void *tail, int nthreads) {
    const int H = units[0].H, W = units[0].W, C = units[0].C, K = units[0].K, S = U + pack;
    const int St = S + (tail != NULL); /* with the thin tail, which reads out */
    if (St > MAX_STAGES) return 0;
    if (nthreads < 1) nthreads = 1;
    const int R = 2 * nthreads + 8;
    const size_t rs = (size_t)(W + 2) * 2 * K; /* words in a padded row */
    chain_state *c = (chain_state *)calloc(1, sizeof(chain_state));
    if (!c) return 0;
    /* rings (one per stage but the last), one zero row, row tables, stage states, counters */
    const size_t ring_words = (size_t)(S - 1) * R * rs + rs;
    const size_t tables = (size_t)S * 2 * (H + 2) * sizeof(void *);
    const size_t bytes = ring_words * 8 + tables + (size_t)St * sizeof(unit_args);
    int rows[MAX_STAGES];
    for (int s = 0; s < St; s++) rows[s] = H;
    c->mem = zalloc64(bytes);
    if (!c->mem || !wave_init(&c->w, St, rows)) {
        free(c->mem);
        free(c);
        return 0;
    }
    uint64_t *rings = (uint64_t *)c->mem, *zero_row = rings + (size_t)(S - 1) * R * rs;
    const uint64_t **in_rows = (const uint64_t **)(rings + ring_words);
    uint64_t **out_rows = (uint64_t **)(in_rows + (size_t)S * (H + 2));
    c->ua = (unit_args *)(out_rows + (size_t)S * (H + 2));
    for (int s = 0; s < S; s++) {
        c->ua[s] = units[s - pack < 0 ? 0 : s - pack];
        const uint64_t **in = in_rows + (size_t)s * (H + 2);
        uint64_t **out = out_rows + (size_t)s * (H + 2);
        for (int p = 0; p < H + 2; p++) {
            const int inner = p >= 1 && p <= H;
            if (s == 0)
                in[p] = act ? act + (size_t)p * rs : zero_row; /* the pack stage reads no bits */
            else
                in[p] = inner ? rings + ((size_t)(s - 1) * R + p % R) * rs : zero_row;
            if (s + 1 < S)
                out[p] = inner ? rings + ((size_t)s * R + p % R) * rs : zero_row;
            else
                out[p] = next_act ? next_act + (size_t)p * rs : NULL;
        }
        c->ua[s].act_rows = in;
        c->ua[s].nact_rows = s + 1 < S || next_act ? out : NULL;
        if (s + 1 == S && !next_act) c->ua[s].nshift = NULL;
    }
    c->S = St;
    c->Su = S;
    c->tail = tail;
    c->pack = pack;
    c->H = H;
    c->W = W;
    c->C = C;
    c->K = K;
    c->R = R;
    c->x = x;
    c->shift0 = shift0;
    atomic_init(&c->refs, 1);
    if (next_act) zero_border(next_act, 1, H, W, K);
#if BP_AMX
    int8_t *wamx[256];
    if (c->w.isa == ISA_AMX) {
        int ok = 1, made = pack;
        for (; ok && made < S; made++) {
            ok = (wamx[made] = amx_weights(&c->ua[made])) != NULL;
            c->ua[made].wamx = wamx[made];
        }
        if (!ok) made--;
        /* every thread's scratch now, so that a thread cannot find itself without one later */
        ok = ok && wave_scratch(&c->w, &c->ua[S - 1], nthreads);
        if (ok && C == 64 && K == 1) chain_rings8(c);
        if (!ok) { /* out of memory for the tiles' operands: the popcount core */
            for (int q = pack; q < made; q++) free(wamx[q]);
            c->w.isa = ISA_AVX512;
        }
    }
#endif
    uint8_t *lut[MAX_STAGES] = {NULL};
    if (c->w.isa == ISA_AVX2)
        for (int s = pack; s < S; s++) c->ua[s].wlut = lut[s] = lut_weights(&c->ua[s]);
    wave_run(&c->w, chain_ready, chain_task, c, &c->refs, chain_thread, nthreads);
    for (int s = pack; s < S; s++) free(lut[s]);
#if BP_AMX
    if (c->w.isa == ISA_AMX)
        for (int s = pack; s < S; s++) free(wamx[s]);
#endif
    chain_release(c);
    return 1;
}

static void run_unit(const unit_args *a, int nthreads) {
    if (a->nshift) zero_border(a->nact, a->N, a->H * a->r, a->W * a->r, (a->C + 63) / 64);
#if BP_AMX
    if (g_isa == ISA_AMX && run_unit_amx(a, nthreads)) return;
#endif
    unit_args b = *a;
    uint8_t *lut = g_isa == ISA_AVX2 ? lut_weights(a) : NULL;
    b.wlut = lut;
    const unit_job u = {&b, pick_row()};
    parallel_rows(unit_row, &u, a->N * a->H, nthreads);
    free(lut);
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
        pack_px(px, p->shift, C, p->o + (((size_t)n * (H + 2) + y + 1) * (W + 2) + xx + 1) * 2 * K);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Python interface: arrays come in through the buffer protocol (numpy views of torch tensors), and
 * every dtype, shape and size is checked against the others before any pointer is used, so a
 * wrong argument raises ValueError instead of reading or writing out of bounds. */

#define ANY (-1)

typedef enum { F32, I32, I64 } kind_t;

static const char *kind_name(kind_t k) { return k == F32 ? "float32" : k == I32 ? "int32" : "int64"; }

/* the dtype a buffer format string denotes, for messages */
static const char *format_name(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    while (*f == '@' || *f == '=' || *f == '<') f++;
    switch (*f) {
    case 'e': return "float16";
    case 'f': return "float32";
    case 'd': return "float64";
    case '?': return "bool";
    case 'b': return "int8";
    case 'B': return "uint8";
    case 'h': return "int16";
    case 'H': return "uint16";
    case 'i': case 'l': case 'q': return v->itemsize == 4 ? "int32" : v->itemsize == 8 ? "int64" : "int";
    case 'I': case 'L': case 'Q': return v->itemsize == 4 ? "uint32" : v->itemsize == 8 ? "uint64" : "uint";
    default: return f;
    }
}

static int format_is(const Py_buffer *v, kind_t k) {
    const char *f = v->format ? v->format : "B";
    while (*f == '@' || *f == '=' || *f == '<') f++;
    if (f[0] == '\0' || f[1] != '\0') return 0;
    if (k == F32) return f[0] == 'f' && v->itemsize == 4;
    if (f[0] != 'i' && f[0] != 'l' && f[0] != 'q') return 0;
    return v->itemsize == (k == I32 ? 4 : 8);
}

/* Take a C-contiguous buffer of `obj` holding `kind` elements with `ndim` dimensions of the given
 * sizes (ANY: not checked). On failure sets ValueError naming the argument and returns -1. */
static int take(PyObject *obj, const char *name, kind_t kind, int writable, int ndim,
                const Py_ssize_t *shape, Py_buffer *v) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *why = value ? PyObject_Str(value) : NULL;
        const char *text = why ? PyUnicode_AsUTF8(why) : NULL;
        if (!text) {
            PyErr_Clear();
            text = "no buffer";
        }
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous%s array of %s, got a %s (%s)", name,
                     writable ? " writable" : "", kind_name(kind), Py_TYPE(obj)->tp_name, text);
        Py_XDECREF(why);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    if (!format_is(v, kind)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %s, got %s", name, kind_name(kind), format_name(v));
        PyBuffer_Release(v);
        return -1;
    }
    int ok = v->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = shape[i] == ANY || v->shape[i] == shape[i];
    if (!ok) {
        char want[160] = "", got[160] = "";
        for (int i = 0; i < ndim; i++) {
            char part[32];
            if (shape[i] == ANY) snprintf(part, sizeof part, "%s*", i ? ", " : "");
            else snprintf(part, sizeof part, "%s%zd", i ? ", " : "", shape[i]);
            strncat(want, part, sizeof want - strlen(want) - 1);
        }
        for (int i = 0; i < v->ndim && i < 8; i++) {
            char part[32];
            snprintf(part, sizeof part, "%s%zd", i ? ", " : "", v->shape ? v->shape[i] : (Py_ssize_t)0);
            strncat(got, part, sizeof got - strlen(got) - 1);
        }
        PyErr_Format(PyExc_ValueError, "%s: expected shape (%s), got (%s)", name, want, got);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* the buffers of one call, released together */
typedef struct {
    Py_buffer v[12];
    int n;
} held_t;

static void release_all(held_t *h) {
    for (int i = 0; i < h->n; i++) PyBuffer_Release(&h->v[i]);
    h->n = 0;
}

/* take() into the next slot of `h`; NULL and an exception on failure, NULL and no exception for None */
static void *hold(held_t *h, PyObject *obj, const char *name, kind_t kind, int writable, int ndim,
                  const Py_ssize_t *shape) {
    if (obj == NULL || obj == Py_None) return NULL;
    if (h->n >= (int)(sizeof h->v / sizeof h->v[0])) {
        PyErr_Format(PyExc_RuntimeError, "%s: too many arrays held (internal limit)", name);
        return NULL;
    }
    Py_buffer *v = &h->v[h->n];
    if (take(obj, name, kind, writable, ndim, shape, v) < 0) return NULL;
    h->n++;
    return v->buf;
}

/* the end of an entry point whose work is rows: run them without the GIL, release the arrays */
static PyObject *rows_then_release(rowwork_fn fn, const void *job, int rows, int nthreads, held_t *h) {
    Py_BEGIN_ALLOW_THREADS
    parallel_rows(fn, job, rows, nthreads);
    Py_END_ALLOW_THREADS
    release_all(h);
    Py_RETURN_NONE;
}

/* the upscale argument of the float-glue entries: 1..8, else a ValueError */
static int upscale_ok(int r) {
    if (r >= 1 && r <= 8) return 1;
    PyErr_Format(PyExc_ValueError, "upscale: expected 1..8, got %d", r);
    return 0;
}

/* hold() for an array a call cannot do without: None is a ValueError naming it */
static void *hold_required(held_t *h, PyObject *obj, const char *name, kind_t kind, int writable, int ndim,
                           const Py_ssize_t *shape) {
    if (obj == Py_None) {
        PyErr_Format(PyExc_ValueError, "%s: expected an array, got None", name);
        return NULL;
    }
    return hold(h, obj, name, kind, writable, ndim, shape);
}

static int words(int channels) { return (channels + 63) / 64; }

/* hold() for the NHWC float32 input `x` of an entry point: every axis at least 1 and C at most
 * max_c, sizes into dims (N, H, W, C); NULL with ValueError otherwise */
static const float *hold_nhwc(held_t *h, PyObject *obj, int max_c, int dims[4]) {
    const Py_ssize_t any4[4] = {ANY, ANY, ANY, ANY};
    if (obj == Py_None) {
        PyErr_SetString(PyExc_ValueError, "x: expected an array, got None");
        return NULL;
    }
    const float *x = hold(h, obj, "x", F32, 0, 4, any4);
    if (!x) return NULL;
    const Py_ssize_t *shape = h->v[h->n - 1].shape;
    int ok = 1;
    for (int i = 0; i < 4; i++) {
        ok = ok && shape[i] >= 1 && shape[i] <= (i == 3 ? max_c : 1 << 30);
        dims[i] = (int)shape[i];
    }
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "x: sizes N=%zd H=%zd W=%zd C=%zd out of range (C at most %d)", shape[0],
                     shape[1], shape[2], shape[3], max_c);
        return NULL;
    }
    return x;
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = 0; i < N_ISA; i++) {
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

/* The clock this thread runs at now, in Hz: a chain of dependent integer adds (one cycle each on
 * every x86 core; register operands, as newer cores fold immediate adds) timed in thread CPU time, so that cycle counts in the benchmarks
 * use the turbo clock actually reached rather than the nominal one /proc/cpuinfo reports; 0 where
 * it cannot be measured. */
static PyObject *py_clock_hz(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
#if BP_X86
    const long rounds = 20000000;
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        struct timespec t0, t1;
        uint64_t v = 0, step = (uint64_t)rep + 1; /* a register operand: no core folds it at rename */
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
        for (long i = 0; i < rounds; i++)
            __asm__ volatile("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                             "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0" : "+r"(v) : "r"(step));
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
        const double dt = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (dt > 0 && 8.0 * rounds / dt > best) best = 8.0 * rounds / dt;
    }
    return PyFloat_FromDouble(best);
#else
    return PyFloat_FromDouble(0.0);
#endif
}

/* Seconds a pixel of the AVX-512 core's count loop alone (core64_avx512: 64 outputs, 72 XOR+POPCNT+ADD of
 * 512 bits, windows and weights in L1, no epilogue), best of 3 in thread CPU time: the ceiling the
 * instruction mix leaves a fused unit on this CPU; 0 without AVX-512 VPOPCNTDQ. */
#if BP_X86
T_AVX512 static double count_loop_seconds(void) {
    enum { WINDOWS = 64, PASSES = 20000 };
    /* on this thread's stack (14 KB, in L1), on 64-byte lines as torch allocates the packed weights */
    uint64_t act[WINDOWS][9][2] __attribute__((aligned(64))), wts[4 * 9 * GROUP] __attribute__((aligned(64)));
    uint64_t z = 0x9e3779b97f4a7c15ull; /* a linear congruential sequence: any bits will do */
#define NEXT_BITS (z = z * 6364136223846793005ull + 1442695040888963407ull)
    for (size_t i = 0; i < sizeof wts / sizeof wts[0]; i++) wts[i] = NEXT_BITS;
    for (int p = 0; p < WINDOWS; p++)
        for (int t = 0; t < 9; t++) {
            act[p][t][0] = NEXT_BITS;
            act[p][t][1] = ~(uint64_t)0;
        }
#undef NEXT_BITS
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        __m512i sink = _mm512_setzero_si512();
        struct timespec t0, t1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
        for (int i = 0; i < PASSES; i++)
            for (int p = 0; p < WINDOWS; p++) {
                const uint64_t *taps[9];
                for (int t = 0; t < 9; t++) taps[t] = act[p][t];
                __m512i c[4];
                core64_avx512(wts, taps, c);
                const __m512i c01 = _mm512_xor_si512(c[0], c[1]), c23 = _mm512_xor_si512(c[2], c[3]);
                sink = _mm512_xor_si512(sink, _mm512_xor_si512(c01, c23));
            }
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
        __asm__ volatile("" : : "v"(sink)); /* the counts are used */
        const double dt = ((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec)) /
                          ((double)PASSES * WINDOWS);
        if (rep == 0 || dt < best) best = dt;
    }
    return best;
}
#endif

static PyObject *py_count_loop_seconds(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
#if BP_X86
    if (g_best >= ISA_AVX512) return PyFloat_FromDouble(count_loop_seconds());
#endif
    return PyFloat_FromDouble(0.0);
}

static PyObject *py_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return Py_BuildValue("(ss)", ISA_NAMES[g_isa], ISA_NAMES[g_best]);
}

/* pack_weights(weights, out) -> number of zero weights (the packing is then invalid)
 * weights: float32 [cout][cin][3][3]; out: int64 [ceil(cout/16)][9][ceil(cin/64)][16] */
static PyObject *py_pack_weights(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"weights", "out", NULL};
    PyObject *wo, *oo;
    held_t h = {.n = 0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:pack_weights", names, &wo, &oo)) return NULL;
    const Py_ssize_t wshape[4] = {ANY, ANY, 3, 3};
    const float *w = hold(&h, wo, "weights", F32, 0, 4, wshape);
    if (!w) goto fail;
    const int cout = (int)h.v[0].shape[0], cin = (int)h.v[0].shape[1];
    if (cout < 1 || cin < 1 || cout > MAX_OUT || cin > MAX_OUT) {
        PyErr_Format(PyExc_ValueError, "weights: channel counts %d x %d out of range 1..%d", cout, cin, MAX_OUT);
        goto fail;
    }
    const int K = words(cin), ng = (cout + GROUP - 1) / GROUP;
    const Py_ssize_t oshape[4] = {ng, 9, K, GROUP};
    uint64_t *o = hold(&h, oo, "out", I64, 1, 4, oshape);
    if (!o) goto fail;
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
    release_all(&h);
    return PyLong_FromLong(zeros);
fail:
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "pack_weights: an array is missing");
    release_all(&h);
    return NULL;
}

/* pack_act(x, shift, out, *, nchw=False, threads=1)
 * x: float32 [N][H][W][C] (or [N][C][H][W] when nchw); shift: float32 [C];
 * out: int64 [N][H+2][W+2][2*ceil(C/64)] */
static PyObject *py_pack_act(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"x", "shift", "out", "nchw", "threads", NULL};
    PyObject *xo, *so, *oo;
    int nchw = 0, nthreads = 1;
    held_t h = {.n = 0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$pi:pack_act", names, &xo, &so, &oo, &nchw, &nthreads))
        return NULL;
    const Py_ssize_t xshape[4] = {ANY, ANY, ANY, ANY};
    const float *x = hold(&h, xo, "x", F32, 0, 4, xshape);
    if (!x) goto fail;
    const Py_ssize_t *xs = h.v[0].shape;
    const int N = (int)xs[0], H = (int)(nchw ? xs[2] : xs[1]), W = (int)(nchw ? xs[3] : xs[2]);
    const int C = (int)(nchw ? xs[1] : xs[3]);
    if (N < 1 || H < 1 || W < 1 || C < 1 || C > MAX_OUT) {
        PyErr_Format(PyExc_ValueError, "x: sizes N=%d H=%d W=%d C=%d out of range", N, H, W, C);
        goto fail;
    }
    const Py_ssize_t sshape[1] = {C};
    const float *shift = hold(&h, so, "shift", F32, 0, 1, sshape);
    if (!shift) goto fail;
    const int K = words(C);
    const Py_ssize_t oshape[4] = {N, H + 2, W + 2, 2 * K};
    uint64_t *o = hold(&h, oo, "out", I64, 1, 4, oshape);
    if (!o) goto fail;
    Py_BEGIN_ALLOW_THREADS
    zero_border(o, N, H, W, K);
    const pack_job job = {x, shift, o, H, W, C, nchw};
    parallel_rows(pack_row, &job, N * H, nthreads);
    Py_END_ALLOW_THREADS
    release_all(&h);
    Py_RETURN_NONE;
fail:
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "pack_act: an array is missing");
    release_all(&h);
    return NULL;
}

/* unit(act, weights, *, cin, cout, upscale=1, alpha=None, pre=None, slope=None, post=None,
 *      residual=None, residual_nchw=False, out=None, out_nchw=False, next_shift=None, next_act=None,
 *      counts=None, threads=1)
 * act: int64 [N][H+2][W+2][2*ceil(cin/64)]; weights: int64 [ceil(cout/16)][9][ceil(cin/64)][16];
 * alpha, pre, slope, post: float32 [cout]; with C = cout / upscale^2,
 * residual: float32 [N][H][W][C] (or [N][C][H][W]; an upsampling unit's own input, upsampled); out: float32 [N][H*r][W*r][C] (or [N][C][H*r][W*r]);
 * next_shift: float32 [C]; next_act: int64 [N][H*r+2][W*r+2][2*ceil(C/64)];
 * counts: int32 [N][H][W][cout] instead of the epilogue (upscale 1).
 * out may be the residual's own buffer (in place) when upscale == 1 and both have the same layout. */
static PyObject *py_unit(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"act", "weights", "cin", "cout", "upscale", "alpha", "pre", "slope", "post",
                            "residual", "residual_nchw", "out", "out_nchw", "next_shift", "next_act",
                            "counts", "threads", "leaky_slope", NULL};
    PyObject *ao, *wo, *alo = NULL, *pro = NULL, *slo = NULL, *poo = NULL, *reso = NULL, *outo = NULL;
    PyObject *nso = NULL, *nao = NULL, *cno = NULL, *lso = NULL;
    int cin = 0, cout = 0, r = 1, resid_nchw = 0, out_nchw = 0, nthreads = 1;
    held_t h = {.n = 0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$iiiOOOOOpOpOOOiO:unit", names, &ao, &wo, &cin, &cout, &r,
                                     &alo, &pro, &slo, &poo, &reso, &resid_nchw, &outo, &out_nchw, &nso,
                                     &nao, &cno, &nthreads, &lso))
        return NULL;
    float leaky = 0.0f;
    const int has_leaky = lso && lso != Py_None;
    if (has_leaky) {
        leaky = (float)PyFloat_AsDouble(lso);
        if (PyErr_Occurred()) return NULL;
    }
    if (cin == 0 || cout == 0) {
        PyErr_SetString(PyExc_TypeError, "unit: cin and cout are required keyword arguments");
        return NULL;
    }
    if (cin < 1 || cin > MAX_OUT || cout < 1 || cout > MAX_OUT || r < 1 || cout % (r * r)) {
        PyErr_Format(PyExc_ValueError, "unit: bad shape cin=%d cout=%d upscale=%d", cin, cout, r);
        return NULL;
    }
    const int K = words(cin), C = cout / (r * r), Kn = words(C);
    const Py_ssize_t ashape[4] = {ANY, ANY, ANY, 2 * K};
    const uint64_t *act = hold(&h, ao, "act", I64, 0, 4, ashape);
    if (!act) goto fail;
    const int N = (int)h.v[0].shape[0], H = (int)h.v[0].shape[1] - 2, W = (int)h.v[0].shape[2] - 2;
    if (N < 1 || H < 1 || W < 1) {
        PyErr_Format(PyExc_ValueError, "act: no pixels (N=%d H=%d W=%d)", N, H, W);
        goto fail;
    }
    const Py_ssize_t wshape[4] = {(cout + GROUP - 1) / GROUP, 9, K, GROUP};
    const uint64_t *wp = hold(&h, wo, "weights", I64, 0, 4, wshape);
    if (!wp) goto fail;
    unit_args a;
    memset(&a, 0, sizeof a);
    a.N = N;
    a.H = H;
    a.W = W;
    a.K = K;
    a.ng = (cout + GROUP - 1) / GROUP;
    a.cout = cout;
    a.r = r;
    a.C = C;
    a.cin = cin;
    a.leaky = has_leaky;
    a.act_slope = leaky;
    a.act = act;
    a.wp = wp;
    a.resid_nchw = resid_nchw;
    a.out_nchw = out_nchw;
    const Py_ssize_t vshape[1] = {cout};
    const Py_ssize_t cshape[4] = {N, H, W, cout};
    const Py_ssize_t rshape_nhwc[4] = {N, H, W, C}, rshape_nchw[4] = {N, C, H, W};
    const Py_ssize_t oshape_nhwc[4] = {N, H * r, W * r, C}, oshape_nchw[4] = {N, C, H * r, W * r};
    const Py_ssize_t nsshape[1] = {C}, nashape[4] = {N, H * r + 2, W * r + 2, 2 * Kn};
    a.counts = hold(&h, cno, "counts", I32, 1, 4, cshape);
    if (cno && cno != Py_None && !a.counts) goto fail;
    if (a.counts) {
        if (r != 1) {
            PyErr_SetString(PyExc_ValueError, "counts: only for units with upscale 1");
            goto fail;
        }
    } else {
        const char *vnames[4] = {"alpha", "pre", "slope", "post"};
        PyObject *vobjs[4] = {alo, pro, slo, poo};
        const float **vdst[4] = {&a.alpha, &a.pre, &a.slope, &a.post};
        for (int i = 0; i < 4; i++) {
            if (!vobjs[i] || vobjs[i] == Py_None) {
                PyErr_Format(PyExc_ValueError, "%s: required unless counts is given", vnames[i]);
                goto fail;
            }
            if (!(*vdst[i] = hold(&h, vobjs[i], vnames[i], F32, 0, 1, vshape))) goto fail;
        }
        if (!outo || outo == Py_None) {
            PyErr_SetString(PyExc_ValueError, "out: required unless counts is given");
            goto fail;
        }
        if (!(a.out = hold(&h, outo, "out", F32, 1, 4, out_nchw ? oshape_nchw : oshape_nhwc))) goto fail;
        if (reso && reso != Py_None) {
            if (!(a.resid = hold(&h, reso, "residual", F32, 0, 4, resid_nchw ? rshape_nchw : rshape_nhwc)))
                goto fail;
        }
        if ((nso && nso != Py_None) != (nao && nao != Py_None)) {
            PyErr_SetString(PyExc_ValueError, "next_shift and next_act: give both or neither");
            goto fail;
        }
        if (nso && nso != Py_None) {
            if (!(a.nshift = hold(&h, nso, "next_shift", F32, 0, 1, nsshape))) goto fail;
            if (!(a.nact = hold(&h, nao, "next_act", I64, 1, 4, nashape))) goto fail;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    run_unit(&a, nthreads);
    Py_END_ALLOW_THREADS
    release_all(&h);
    Py_RETURN_NONE;
fail:
    release_all(&h);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Thin float convolutions: 3x3, zero padding, at most 16 output channels (the networks' last
 * convolution, 64 -> 3), NHWC. oneDNN computes such a layer as if it had 16 outputs; this computes
 * the outputs it has. Every CPU inference path runs its thin convolutions here
 * (models.blocks.ThinConv2d), so they stay bitwise equal; the sums differ from torch's in rounding
 * only (order of additions).
 *
 * Order, for every output: 16 lane sums, lane j adding x[c] * w[c] (one fused multiply-add each)
 * for c = j, j + 16, ... over the taps inside the image in row-major order; then the lanes pairwise
 * (j + 8, j + 4, j + 2, j + 1), then the bias. The AVX-512 and the portable versions follow the same
 * order and give the same bits. */

typedef struct {
    const float *x, *wt, *bias; /* wt: [9][cout][cpad], zero past cin */
    float *out;
    int H, W, cin, cout, cpad;
    const float *const *x_rows; /* pipes (N == 1): input row y at x_rows[y] (a ring), else NULL */
} thin_job;

/* input pixel (yy, xx) of image n */
static inline const float *thin_at(const thin_job *j, int n, int yy, int xx) {
    if (j->x_rows) return j->x_rows[yy] + (size_t)xx * j->cin;
    return j->x + (((size_t)n * j->H + yy) * j->W + xx) * j->cin;
}

/* weight [cout][cin][3][3] -> [9][cout][cpad], zero past cin; NULL if out of memory */
static float *thin_prepare(const float *w, int cin, int cout, int cpad) {
    float *wt = (float *)calloc((size_t)9 * cout * cpad, sizeof(float));
    if (!wt) return NULL;
    for (int o = 0; o < cout; o++)
        for (int c = 0; c < cin; c++)
            for (int t = 0; t < 9; t++) wt[((size_t)t * cout + o) * cpad + c] = w[((size_t)o * cin + c) * 9 + t];
    return wt;
}

static inline float thin_reduce(const float lane[16]) {
    float a[8];
    for (int j = 0; j < 8; j++) a[j] = lane[j] + lane[j + 8];
    for (int j = 0; j < 4; j++) a[j] = a[j] + a[j + 4];
    for (int j = 0; j < 2; j++) a[j] = a[j] + a[j + 2];
    return a[0] + a[1];
}

static void thin_row_scalar(const thin_job *j, int n, int y) {
    const int W = j->W, cin = j->cin, cpad = j->cpad;
    for (int x = 0; x < W; x++) {
        for (int o = 0; o < j->cout; o++) {
            float lane[16] = {0};
            for (int t = 0; t < 9; t++) {
                const int yy = y + t / 3 - 1, xx = x + t % 3 - 1;
                if (yy < 0 || yy >= j->H || xx < 0 || xx >= W) continue;
                const float *px = thin_at(j, n, yy, xx);
                const float *w = j->wt + ((size_t)t * j->cout + o) * cpad;
                for (int c = 0; c < cpad; c++) lane[c % 16] = fmaf(c < cin ? px[c] : 0.0f, w[c], lane[c % 16]);
            }
            const float v = thin_reduce(lane);
            j->out[(((size_t)n * j->H + y) * W + x) * j->cout + o] = j->bias ? v + j->bias[o] : v;
        }
    }
}

#if BP_X86
/* thin_reduce in registers: the same pairs in the same order (j + 8, j + 4, j + 2, j + 1) */
T_AVX512 static inline float thin_reduce_avx512(__m512 a) {
    const __m256 t8 = _mm256_add_ps(_mm512_castps512_ps256(a),
                                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    const __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
    const __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    return _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)));
}

/* P interior pixels x .. x+P-1 of row y (every tap inside the image) for OUT outputs: P * OUT
 * independent lane sums in registers; each pixel's sums in exactly the order of the 1-pixel path */
T_AVX512 static inline AI void thin_px_avx512(const thin_job *j, int n, int y, int x, const int P, const int OUT) {
    const int W = j->W, cin = j->cin, cpad = j->cpad;
    __m512 acc[4][4];
    for (int p = 0; p < P; p++)
        for (int o = 0; o < OUT; o++) acc[p][o] = _mm512_setzero_ps();
    for (int t = 0; t < 9; t++) {
        const int yy = y + t / 3 - 1, xx = x + t % 3 - 1;
        const int inside = yy >= 0 && yy < j->H && xx >= 0 && xx + P - 1 < W;
        if (!inside) continue; /* P == 1 at the border: a tap outside is skipped */
        const float *px = thin_at(j, n, yy, xx);
        for (int c = 0; c < cpad; c += 16) {
            const int left = cin - c;
            const __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            const float *w = j->wt + (size_t)t * OUT * cpad + c;
            __m512 wv[4];
            for (int o = 0; o < OUT; o++) wv[o] = _mm512_loadu_ps(w + (size_t)o * cpad);
            for (int p = 0; p < P; p++) {
                const __m512 v = _mm512_maskz_loadu_ps(m, px + (size_t)p * cin + c);
                for (int o = 0; o < OUT; o++) acc[p][o] = _mm512_fmadd_ps(v, wv[o], acc[p][o]);
            }
        }
    }
    for (int p = 0; p < P; p++) {
        float *dst = j->out + (((size_t)n * j->H + y) * W + x + p) * OUT;
        for (int o = 0; o < OUT; o++) {
            const float v = thin_reduce_avx512(acc[p][o]);
            dst[o] = j->bias ? v + j->bias[o] : v;
        }
    }
}

T_AVX512 static inline AI void thin_row_avx512_k(const thin_job *j, int n, int y, const int OUT) {
    const int W = j->W;
    int x = 0;
    /* a block of 4 needs its taps inside: columns x-1 .. x+4 within the image */
    thin_px_avx512(j, n, y, 0, 1, OUT);
    x = 1;
    if (y > 0 && y < j->H - 1)
        for (; x + 4 <= W - 1; x += 4) thin_px_avx512(j, n, y, x, 4, OUT);
    for (; x < W; x++) thin_px_avx512(j, n, y, x, 1, OUT);
}

/* thin_reduce of 16 lanes held as two halves (lanes 0-7, 8-15): the same pairs in the same order */
T_AVX2 static inline float thin_reduce_avx2(__m256 lo, __m256 hi) {
    const __m256 t8 = _mm256_add_ps(lo, hi);
    const __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
    const __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    return _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)));
}

/* thin_px_avx512 with each 16-lane sum as two 8-lane halves: the same products in the same lanes
 * and order, so bitwise the same result */
T_AVX2 static inline AI void thin_px_avx2(const thin_job *j, int n, int y, int x, const int P, const int OUT,
                                          const int FULL) {
    const int W = j->W, cin = j->cin, cpad = j->cpad;
    __m256 acc[4][4][2];
    for (int p = 0; p < P; p++)
        for (int o = 0; o < OUT; o++) acc[p][o][0] = acc[p][o][1] = _mm256_setzero_ps();
    for (int t = 0; t < 9; t++) {
        const int yy = y + t / 3 - 1, xx = x + t % 3 - 1;
        const int inside = yy >= 0 && yy < j->H && xx >= 0 && xx + P - 1 < W;
        if (!inside) continue;
        const float *px = thin_at(j, n, yy, xx);
        /* 16 channels a step, halves h = 0 and 1 with constant indices: the accumulators stay in
         * registers (a runtime half index put them on the stack, 4x slower) */
        for (int c = 0; c < cpad; c += 16) {
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const int c8 = c + 8 * h, left = cin - c8;
                const float *w = j->wt + (size_t)t * OUT * cpad + c8;
                if (FULL || left >= 8) { /* FULL: cin == cpad, no masks (and no register for them) */
                    for (int p = 0; p < P; p++) {
                        const __m256 v = _mm256_loadu_ps(px + (size_t)p * cin + c8);
                        for (int o = 0; o < OUT; o++)
                            acc[p][o][h] = _mm256_fmadd_ps(v, _mm256_loadu_ps(w + (size_t)o * cpad), acc[p][o][h]);
                    }
                } else if (left > 0) {
                    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                    for (int p = 0; p < P; p++) {
                        const __m256 v = _mm256_maskload_ps(px + (size_t)p * cin + c8, m);
                        for (int o = 0; o < OUT; o++)
                            acc[p][o][h] = _mm256_fmadd_ps(v, _mm256_loadu_ps(w + (size_t)o * cpad), acc[p][o][h]);
                    }
                } else {
                    /* past cin: the 16-lane paths add 0 * w, which leaves an accumulator as it is
                     * except that -0 becomes +0 */
                    for (int p = 0; p < P; p++)
                        for (int o = 0; o < OUT; o++)
                            acc[p][o][h] = _mm256_fmadd_ps(_mm256_setzero_ps(), _mm256_loadu_ps(w + (size_t)o * cpad),
                                                           acc[p][o][h]);
                }
            }
        }
    }
    for (int p = 0; p < P; p++) {
        float *dst = j->out + (((size_t)n * j->H + y) * W + x + p) * OUT;
        for (int o = 0; o < OUT; o++) {
            const float v = thin_reduce_avx2(acc[p][o][0], acc[p][o][1]);
            dst[o] = j->bias ? v + j->bias[o] : v;
        }
    }
}

/* P interior pixels, cin == cpad, one 8-lane half of every 16-lane sum at a time: a half's lanes
 * never meet the other's before thin_reduce, so each lane adds the same products in the same order
 * as thin_px_avx2. With one half live, P * OUT accumulators and the OUT weights of a step fit the
 * 16 registers with 4 pixels sharing each weight load (3 outputs: 2 pixels at a time with both
 * halves, and the loads, two for each three multiply-adds, were the bound). */
T_AVX2 static inline AI void thin_px_halves_avx2(const thin_job *j, int n, int y, int x, const int P, const int OUT) {
    const int W = j->W, cin = j->cin, cpad = j->cpad;
    __m256 half[2][4][4];
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m256 acc[4][4];
        for (int p = 0; p < P; p++)
            for (int o = 0; o < OUT; o++) acc[p][o] = _mm256_setzero_ps();
        for (int t = 0; t < 9; t++) {
            const float *px = thin_at(j, n, y + t / 3 - 1, x + t % 3 - 1);
            const float *wt = j->wt + (size_t)t * OUT * cpad;
            for (int c8 = 8 * h; c8 < cpad; c8 += 16) {
                __m256 w[4];
                for (int o = 0; o < OUT; o++) w[o] = _mm256_loadu_ps(wt + (size_t)o * cpad + c8);
                for (int p = 0; p < P; p++) {
                    const __m256 v = _mm256_loadu_ps(px + (size_t)p * cin + c8);
                    for (int o = 0; o < OUT; o++) acc[p][o] = _mm256_fmadd_ps(v, w[o], acc[p][o]);
                }
            }
        }
        for (int p = 0; p < P; p++)
            for (int o = 0; o < OUT; o++) half[h][p][o] = acc[p][o];
    }
    for (int p = 0; p < P; p++) {
        float *dst = j->out + (((size_t)n * j->H + y) * W + x + p) * OUT;
        for (int o = 0; o < OUT; o++) {
            const float v = thin_reduce_avx2(half[0][p][o], half[1][p][o]);
            dst[o] = j->bias ? v + j->bias[o] : v;
        }
    }
}

T_AVX2 static inline AI void thin_row_avx2_k(const thin_job *j, int n, int y, const int OUT) {
    const int W = j->W;
    const int P = OUT <= 2 ? 4 : OUT == 3 ? 2 : 1; /* P * OUT * 2 accumulators within 16 registers */
    const int PH = OUT == 3 ? 4 : OUT == 4 ? 2 : 0; /* the same, one half at a time (0: not used) */
    int x = 0;
    thin_px_avx2(j, n, y, 0, 1, OUT, 0);
    x = 1;
    if (y > 0 && y < j->H - 1 && P > 1) {
        if (j->cin == j->cpad && PH)
            for (; x + PH <= W - 1; x += PH) thin_px_halves_avx2(j, n, y, x, PH, OUT);
        else if (j->cin == j->cpad)
            for (; x + P <= W - 1; x += P) thin_px_avx2(j, n, y, x, P, OUT, 1);
        else
            for (; x + P <= W - 1; x += P) thin_px_avx2(j, n, y, x, P, OUT, 0);
    }
    for (; x < W; x++) thin_px_avx2(j, n, y, x, 1, OUT, 0);
}

/* one row per core, its row kernel inlined with a constant number of outputs (1..4) */
#define DEFINE_THIN_ROW(NAME, ATTR, ROW_K)                                                          \
    ATTR static void NAME(const thin_job *j, int n, int y) {                                       \
        switch (j->cout) {                                                                         \
        case 1: ROW_K(j, n, y, 1); break;                                                          \
        case 2: ROW_K(j, n, y, 2); break;                                                          \
        case 3: ROW_K(j, n, y, 3); break;                                                          \
        case 4: ROW_K(j, n, y, 4); break;                                                          \
        default: thin_row_scalar(j, n, y);                                                         \
        }                                                                                          \
    }

DEFINE_THIN_ROW(thin_row_avx2, T_AVX2, thin_row_avx2_k)
DEFINE_THIN_ROW(thin_row_avx512, T_AVX512, thin_row_avx512_k)
#endif

static void thin_row(const void *ctx, int ry) {
    const thin_job *j = (const thin_job *)ctx;
#if BP_X86
    if (g_isa >= ISA_AVX512) {
        thin_row_avx512(j, ry / j->H, ry % j->H);
        return;
    }
    if (g_isa >= ISA_AVX2) {
        thin_row_avx2(j, ry / j->H, ry % j->H);
        return;
    }
#endif
    thin_row_scalar(j, ry / j->H, ry % j->H);
}

/* thin_conv(x, weight, out, *, bias=None, threads=1)
 * x: float32 [N][H][W][cin] (NHWC); weight: float32 [cout][cin][3][3] with cout <= 16;
 * out: float32 [N][H][W][cout]; bias: float32 [cout] */
static PyObject *py_thin_conv(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"x", "weight", "out", "bias", "threads", NULL};
    PyObject *xo, *wo, *oo, *bo = NULL;
    int nthreads = 1;
    held_t h = {.n = 0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$Oi:thin_conv", names, &xo, &wo, &oo, &bo, &nthreads))
        return NULL;
    int d[4];
    const float *x = hold_nhwc(&h, xo, MAX_OUT, d);
    if (!x) goto fail;
    const int N = d[0], H = d[1], W = d[2], cin = d[3];
    const Py_ssize_t wshape[4] = {ANY, cin, 3, 3};
    const float *w = hold(&h, wo, "weight", F32, 0, 4, wshape);
    if (!w) goto fail;
    const int cout = (int)h.v[1].shape[0];
    if (cout < 1 || cout > 16) {
        PyErr_Format(PyExc_ValueError, "weight: %d output channels, expected 1..16", cout);
        goto fail;
    }
    const Py_ssize_t oshape[4] = {N, H, W, cout}, bshape[1] = {cout};
    float *out = hold_required(&h, oo, "out", F32, 1, 4, oshape);
    if (!out) goto fail;
    const float *bias = NULL;
    if (bo && bo != Py_None && !(bias = hold(&h, bo, "bias", F32, 0, 1, bshape))) goto fail;
    const int cpad = (cin + 15) / 16 * 16;
    float *wt = thin_prepare(w, cin, cout, cpad);
    if (!wt) {
        PyErr_NoMemory();
        goto fail;
    }
    const thin_job job = {x, wt, bias, out, H, W, cin, cout, cpad, NULL};
    Py_BEGIN_ALLOW_THREADS
    parallel_rows(thin_row, &job, N * H, nthreads);
    Py_END_ALLOW_THREADS
    free(wt);
    release_all(&h);
    Py_RETURN_NONE;
fail:
    release_all(&h);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The super-resolution networks' output, (y + bilinear(x)) / k, where y is the last convolution's
 * result and x the network's (scaled) input. The bilinear upsampling by r is torch's generic CPU
 * kernel for F.interpolate(x, scale_factor=r, mode="bilinear", align_corners=False), the one it
 * takes for these images (2 or more threads, or more than 3 channels, and output sides summing to
 * more than 128): along each axis the source position fma(1/r, i + 0.5, -0.5), clamped at 0, its
 * floor i0 (at most n - 1), l1 = that minus i0 clamped to [0, 1], l0 = 1 - l1, i1 = i0 + 1 inside
 * the image; a row first, t = fma(x[i0], l0, x[i1] * l1), then the two rows alike; then the add
 * and the true division of torch's (y + base) / k. Bitwise torch's result in that case (the
 * compiler contracted torch's a * b + c * d into fma(a, b, c * d); tests/test_kernels.py checks it).
 * Two passes: base_rows interpolates every input row along its width once (r times fewer rows
 * than the output has), then base_add combines two of those rows for each output row, adds y and
 * divides, which a pipe does right after its thin convolution has written the row. */

typedef struct {
    int i0, i1;
    float l0, l1;
} lin_tap;

static lin_tap lin_tap_at(int i, int n, int r) {
    float src = fmaf((float)(1.0 / r), (float)i + 0.5f, -0.5f);
    if (src < 0.0f) src = 0.0f;
    int i0 = (int)src;
    if (i0 > n - 1) i0 = n - 1;
    float l1 = src - (float)i0;
    l1 = l1 < 0.0f ? 0.0f : l1 > 1.0f ? 1.0f : l1;
    return (lin_tap){i0, i0 + (i0 < n - 1), 1.0f - l1, l1};
}

typedef struct {
    const float *x; /* [N][H][W][C] */
    float *rows;    /* [N][H][W*r][C] */
    const lin_tap *tw;
    int H, W, C, r;
} base_rows_job;

/* the same loop with fma as one instruction where the core has it (fmaf is exact either way) */
#define DEFINE_BASE_ROW(NAME, ATTR)                                                                \
    ATTR static void NAME(const base_rows_job *j, int ry) {                                        \
        const int C = j->C, Wo = j->W * j->r;                                                      \
        const float *src = j->x + (size_t)ry * j->W * C;                                           \
        float *dst = j->rows + (size_t)ry * Wo * C;                                                \
        for (int x = 0; x < Wo; x++) {                                                             \
            const lin_tap t = j->tw[x];                                                            \
            const float *a = src + (size_t)t.i0 * C, *b = src + (size_t)t.i1 * C;                  \
            for (int c = 0; c < C; c++) dst[(size_t)x * C + c] = fmaf(a[c], t.l0, b[c] * t.l1);    \
        }                                                                                          \
    }

DEFINE_BASE_ROW(base_row_scalar, )
#if BP_X86
DEFINE_BASE_ROW(base_row_fma, T_AVX2)
#endif

static void base_row(const void *ctx, int ry) {
    const base_rows_job *j = (const base_rows_job *)ctx;
#if BP_X86
    if (g_isa >= ISA_AVX2) {
        base_row_fma(j, ry);
        return;
    }
#endif
    base_row_scalar(j, ry);
}

typedef struct {
    const float *rows; /* base_rows of one image: [H][n] */
    int H, r, n;       /* n = W * r * C floats an output row */
    float k;
} base_job;

/* output row yo: out[e] = (y[e] + fma(rows[i0][e], l0, rows[i1][e] * l1)) / k (out may be y) */
static void base_add_scalar(const float *a, const float *b, float l0, float l1, float k, const float *y,
                            float *out, int n) {
    for (int e = 0; e < n; e++) out[e] = (y[e] + fmaf(a[e], l0, b[e] * l1)) / k;
}

#if BP_X86
T_AVX2 static void base_add_avx2(const float *a, const float *b, float l0, float l1, float k, const float *y,
                                 float *out, int n) {
    const __m256 v0 = _mm256_set1_ps(l0), v1 = _mm256_set1_ps(l1), vk = _mm256_set1_ps(k);
    int e = 0;
    for (; e + 8 <= n; e += 8) {
        const __m256 t = _mm256_fmadd_ps(_mm256_loadu_ps(a + e), v0, _mm256_mul_ps(_mm256_loadu_ps(b + e), v1));
        _mm256_storeu_ps(out + e, _mm256_div_ps(_mm256_add_ps(_mm256_loadu_ps(y + e), t), vk));
    }
    base_add_scalar(a + e, b + e, l0, l1, k, y + e, out + e, n - e);
}

T_AVX512 static void base_add_avx512(const float *a, const float *b, float l0, float l1, float k, const float *y,
                                     float *out, int n) {
    const __m512 v0 = _mm512_set1_ps(l0), v1 = _mm512_set1_ps(l1), vk = _mm512_set1_ps(k);
    for (int e = 0; e < n; e += 16) {
        const __mmask16 m = n - e >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - e)) - 1);
        const __m512 t = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + e), v0,
                                         _mm512_mul_ps(_mm512_maskz_loadu_ps(m, b + e), v1));
        const __m512 s = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + e), t);
        _mm512_mask_storeu_ps(out + e, m, _mm512_div_ps(s, vk));
    }
}
#endif

static void base_add(const base_job *b, int yo, const float *y, float *out) {
    const lin_tap t = lin_tap_at(yo, b->H, b->r);
    const float *r0 = b->rows + (size_t)t.i0 * b->n, *r1 = b->rows + (size_t)t.i1 * b->n;
#if BP_X86
    if (g_isa >= ISA_AVX512) {
        base_add_avx512(r0, r1, t.l0, t.l1, b->k, y, out, b->n);
        return;
    }
    if (g_isa >= ISA_AVX2) {
        base_add_avx2(r0, r1, t.l0, t.l1, b->k, y, out, b->n);
        return;
    }
#endif
    base_add_scalar(r0, r1, t.l0, t.l1, b->k, y, out, b->n);
}

/* base_rows(x, out, *, upscale, threads=1)
 * x: float32 [N][H][W][C] (NHWC); out: float32 [N][H][W*r][C], every row of x interpolated along
 * its width (the first pass of the bilinear upsampling, above) */
static PyObject *py_base_rows(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"x", "out", "upscale", "threads", NULL};
    PyObject *xo, *oo;
    int r = 0, nthreads = 1;
    held_t h = {.n = 0};
    lin_tap *tw = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$ii:base_rows", names, &xo, &oo, &r, &nthreads)) return NULL;
    if (!upscale_ok(r)) return NULL;
    int d[4];
    const float *x = hold_nhwc(&h, xo, 1 << 20, d);
    if (!x) goto fail;
    const int N = d[0], H = d[1], W = d[2], C = d[3];
    const Py_ssize_t oshape[4] = {N, H, (Py_ssize_t)W * r, C};
    float *out = hold_required(&h, oo, "out", F32, 1, 4, oshape);
    if (!out) goto fail;
    if (!(tw = (lin_tap *)malloc((size_t)W * r * sizeof(lin_tap)))) {
        PyErr_NoMemory();
        goto fail;
    }
    for (int i = 0; i < W * r; i++) tw[i] = lin_tap_at(i, W, r);
    const base_rows_job job = {x, out, tw, H, W, C, r};
    Py_BEGIN_ALLOW_THREADS
    parallel_rows(base_row, &job, N * H, nthreads);
    Py_END_ALLOW_THREADS
    free(tw);
    release_all(&h);
    Py_RETURN_NONE;
fail:
    free(tw);
    release_all(&h);
    return NULL;
}

typedef struct {
    base_job b;
    const float *y;
    float *out;
    int rows, row0; /* y and out: `rows` output rows from row0, of each image */
    size_t img;     /* floats of one image of base_rows */
} base_add_job;

static void base_add_row(const void *ctx, int ry) {
    const base_add_job *j = (const base_add_job *)ctx;
    const int n = ry / j->rows, i = ry % j->rows;
    base_job b = j->b;
    b.rows += (size_t)n * j->img;
    const size_t at = (size_t)ry * j->b.n;
    base_add(&b, j->row0 + i, j->y + at, j->out + at);
}

/* add_base(y, rows, out, *, upscale, k, row0=0, threads=1)
 * rows: float32 [N][H][Wo][C], base_rows of the input; y, out: float32 [N][h][Wo][C], output rows
 * row0 .. row0+h-1 of the upsampled image (h <= H*r - row0); out = (y + bilinear) / k, and out may
 * be y */
static PyObject *py_add_base(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"y", "rows", "out", "upscale", "k", "row0", "threads", NULL};
    PyObject *yo, *ro, *oo;
    int r = 0, row0 = 0, nthreads = 1;
    float k = 1.0f;
    held_t h = {.n = 0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$ifii:add_base", names, &yo, &ro, &oo, &r, &k, &row0,
                                     &nthreads))
        return NULL;
    if (!upscale_ok(r)) return NULL;
    const Py_ssize_t any4[4] = {ANY, ANY, ANY, ANY};
    const float *rows = hold_required(&h, ro, "rows", F32, 0, 4, any4);
    if (!rows) goto fail;
    const Py_ssize_t *rs = h.v[h.n - 1].shape;
    const int N = (int)rs[0], H = (int)rs[1];
    if (N < 1 || H < 1 || rs[2] < 1 || rs[3] < 1 || rs[1] > (1 << 26) || rs[2] * rs[3] > (1 << 30)) {
        PyErr_SetString(PyExc_ValueError, "rows: sizes out of range");
        goto fail;
    }
    const Py_ssize_t yshape[4] = {N, ANY, rs[2], rs[3]};
    const float *y = hold_required(&h, yo, "y", F32, 0, 4, yshape);
    if (!y) goto fail;
    const int hy = (int)h.v[h.n - 1].shape[1];
    if (row0 < 0 || hy < 1 || (long long)row0 + hy > (long long)H * r) {
        PyErr_Format(PyExc_ValueError, "y: rows %d..%d outside the %d rows of the upsampled image", row0,
                     row0 + hy - 1, H * r);
        goto fail;
    }
    const Py_ssize_t oshape[4] = {N, hy, rs[2], rs[3]};
    float *out = hold_required(&h, oo, "out", F32, 1, 4, oshape);
    if (!out) goto fail;
    const int n = (int)(rs[2] * rs[3]);
    const base_add_job job = {{rows, H, r, n, k}, y, out, hy, row0, (size_t)H * n};
    return rows_then_release(base_add_row, &job, N * hy, nthreads, &h);
fail:
    release_all(&h);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* pixel_shuffle followed by leaky ReLU in one pass (the float upsampler of BBCU-L): NHWC in,
 * NHWC out, out[y*r + i][x*r + j][c] = lrelu(in[y][x][c*r*r + i*r + j]). A permutation and the
 * same one multiply as torch's leaky_relu (v > 0 ? v : v * slope): bitwise the same as
 * F.leaky_relu(F.pixel_shuffle(x, r), slope). */

typedef struct {
    const float *x;
    float *out;
    int H, W, C, r;
    float slope;
} shuffle_job;

#if BP_X86
/* r == 2 and C % 16 == 0: 16 channels of the four sub-pixels from four loads (de-interleaved by
 * lane permutes), then the same comparison and multiply as the scalar loop */
T_AVX512 static void shuffle_row2_avx512(const shuffle_job *j, int n, int y) {
    const int H = j->H, W = j->W, C = j->C;
    const __m512 zero = _mm512_setzero_ps(), slope = _mm512_set1_ps(j->slope);
    for (int i = 0; i < 2; i++) {
        float *dst = j->out + (((size_t)n * H * 2 + (size_t)y * 2 + i) * W * 2) * C;
        for (int x = 0; x < W; x++) {
            const float *src = j->x + (((size_t)n * H + y) * W + x) * (size_t)C * 4;
            for (int c = 0; c < C; c += 16) {
                const float *q = src + (size_t)c * 4;
                const __m512 v0 = _mm512_loadu_ps(q), v1 = _mm512_loadu_ps(q + 16);
                const __m512 v2 = _mm512_loadu_ps(q + 32), v3 = _mm512_loadu_ps(q + 48);
                for (int jj = 0; jj < 2; jj++) {
                    const int s = 2 * i + jj; /* input channel 4c + s */
                    const __m512i idx = _mm512_setr_epi32(s, 4 + s, 8 + s, 12 + s, 16 + s, 20 + s, 24 + s, 28 + s,
                                                          s, 4 + s, 8 + s, 12 + s, 16 + s, 20 + s, 24 + s, 28 + s);
                    const __m512 a = _mm512_permutex2var_ps(v0, idx, v1), b = _mm512_permutex2var_ps(v2, idx, v3);
                    const __m512 v = _mm512_shuffle_f32x4(a, b, 0x44);
                    const __m512 neg = _mm512_mul_ps(v, slope);
                    _mm512_storeu_ps(dst + ((size_t)x * 2 + jj) * C + c,
                                     _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), neg, v));
                }
            }
        }
    }
}
#endif

#if BP_X86
/* r == 2 and C % 8 == 0 on AVX2: 8 channels of the four sub-pixels from four loads, a 4 x 4
 * transpose in each 128-bit lane (channels c, c+2, c+4, c+6 | c+1, c+3, c+5, c+7) and one
 * permute back to channel order; both output rows in one pass. The leaky ReLU is the scalar one's
 * select (v > 0 ? v : v * slope). */
T_AVX2 static void shuffle_row2_avx2(const shuffle_job *j, int n, int y) {
    const int H = j->H, W = j->W, C = j->C;
    const __m256 zero = _mm256_setzero_ps(), slope = _mm256_set1_ps(j->slope);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    float *row[2];
    for (int i = 0; i < 2; i++) row[i] = j->out + (((size_t)n * H * 2 + (size_t)y * 2 + i) * W * 2) * C;
    for (int x = 0; x < W; x++) {
        const float *src = j->x + (((size_t)n * H + y) * W + x) * (size_t)C * 4;
        for (int c = 0; c < C; c += 8) {
            const float *q = src + (size_t)c * 4;
            const __m256 v0 = _mm256_loadu_ps(q), v1 = _mm256_loadu_ps(q + 8);
            const __m256 v2 = _mm256_loadu_ps(q + 16), v3 = _mm256_loadu_ps(q + 24);
            const __m256 t0 = _mm256_unpacklo_ps(v0, v1), t1 = _mm256_unpackhi_ps(v0, v1);
            const __m256 t2 = _mm256_unpacklo_ps(v2, v3), t3 = _mm256_unpackhi_ps(v2, v3);
            const __m256 sub[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xee),
                                   _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xee)};
            for (int s = 0; s < 4; s++) { /* sub-pixel s: output row s / 2, column 2x + s % 2 */
                const __m256 v = _mm256_permutevar8x32_ps(sub[s], order);
                const __m256 act = _mm256_blendv_ps(_mm256_mul_ps(v, slope), v, _mm256_cmp_ps(v, zero, _CMP_GT_OQ));
                _mm256_storeu_ps(row[s / 2] + ((size_t)x * 2 + s % 2) * C + c, act);
            }
        }
    }
}
#endif

static void shuffle_row(const void *ctx, int ry) {
    const shuffle_job *j = (const shuffle_job *)ctx;
#if BP_X86
    if (g_isa >= ISA_AVX512 && j->r == 2 && j->C % 16 == 0) {
        shuffle_row2_avx512(j, ry / j->H, ry % j->H);
        return;
    }
    if (g_isa >= ISA_AVX2 && j->r == 2 && j->C % 8 == 0) {
        shuffle_row2_avx2(j, ry / j->H, ry % j->H);
        return;
    }
#endif
    const int H = j->H, W = j->W, C = j->C, r = j->r, rr = r * r;
    const int n = ry / H, y = ry % H;
    const float slope = j->slope;
    for (int i = 0; i < r; i++) {
        float *dst = j->out + (((size_t)n * H * r + (size_t)y * r + i) * W * r) * C;
        for (int x = 0; x < W; x++) {
            const float *src = j->x + (((size_t)n * H + y) * W + x) * (size_t)C * rr + (size_t)i * r;
            for (int jj = 0; jj < r; jj++) {
                float *o = dst + ((size_t)x * r + jj) * C;
                const float *s = src + jj;
                for (int c = 0; c < C; c++) {
                    const float v = s[(size_t)c * rr];
                    o[c] = v > 0.0f ? v : v * slope;
                }
            }
        }
    }
}

/* shuffle_lrelu(x, out, *, upscale, slope, threads=1)
 * x: float32 [N][H][W][C*r*r] (NHWC); out: float32 [N][H*r][W*r][C] */
static PyObject *py_shuffle_lrelu(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"x", "out", "upscale", "slope", "threads", NULL};
    PyObject *xo, *oo;
    int r = 0, nthreads = 1;
    float slope = 0.0f;
    held_t h = {.n = 0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$ifi:shuffle_lrelu", names, &xo, &oo, &r, &slope, &nthreads))
        return NULL;
    if (!upscale_ok(r)) return NULL;
    int d[4];
    const float *x = hold_nhwc(&h, xo, 1 << 20, d);
    if (!x) goto fail;
    const int N = d[0], H = d[1], W = d[2], CR = d[3];
    if (CR % (r * r)) {
        PyErr_Format(PyExc_ValueError, "x: %d channels do not shuffle by %d", CR, r);
        goto fail;
    }
    const Py_ssize_t oshape[4] = {N, (Py_ssize_t)H * r, (Py_ssize_t)W * r, CR / (r * r)};
    float *out = hold_required(&h, oo, "out", F32, 1, 4, oshape);
    if (!out) goto fail;
    const shuffle_job job = {x, out, H, W, CR / (r * r), r, slope};
    return rows_then_release(shuffle_row, &job, N * H, nthreads, &h);
fail:
    release_all(&h);
    return NULL;
}

#include "color.inc"

/* Unit u of a chain or pipe from its tuple (weights, alpha, pre, slope, post, shift, ...): a C -> C*r*r
 * unit on an H x W image (N == 1), its arrays taken into ub[*nub...]; *shift gets its shift. -1 with an
 * exception if an array does not fit. */
static int take_unit(PyObject *t, Py_ssize_t u, int H, int W, int C, int r, Py_buffer *ub, int *nub,
                     unit_args *a, const float **shift) {
    static const char *fields[6] = {"weights", "alpha", "pre", "slope", "post", "shift"};
    const int K = words(C), cout = C * r * r, ng = (cout + GROUP - 1) / GROUP;
    const Py_ssize_t wshape[4] = {ng, 9, K, GROUP}, oshape[1] = {cout}, vshape[1] = {C};
    const void *ptr[6];
    for (int f = 0; f < 6; f++) {
        char name[48];
        snprintf(name, sizeof name, "units[%zd].%s", u, fields[f]);
        if (take(PyTuple_GET_ITEM(t, f), name, f == 0 ? I64 : F32, 0, f == 0 ? 4 : 1,
                 f == 0 ? wshape : f == 5 ? vshape : oshape, &ub[*nub]) < 0)
            return -1;
        ptr[f] = ub[(*nub)++].buf;
    }
    a->N = 1;
    a->H = H;
    a->W = W;
    a->K = K;
    a->ng = ng;
    a->cout = cout;
    a->r = r;
    a->C = C;
    a->cin = C;
    a->wp = (const uint64_t *)ptr[0];
    a->alpha = (const float *)ptr[1];
    a->pre = (const float *)ptr[2];
    a->slope = (const float *)ptr[3];
    a->post = (const float *)ptr[4];
    *shift = (const float *)ptr[5];
    return 0;
}

/* release what take_unit took and the sequence of tuples */
static void release_units(Py_buffer *ub, int nub, PyObject *seq) {
    for (int i = 0; i < nub; i++) PyBuffer_Release(&ub[i]);
    free(ub);
    Py_XDECREF(seq);
}

/* chain(x, out, units, *, act=None, next_shift=None, next_act=None, tail_weight=None, tail_bias=None,
 *       tail_out=None, threads=1)
 * Consecutive C -> C units that each add their input: out = unit_{U-1}(... unit_0(x)), computed as a
 * wavefront (see run_chain); bitwise equal to calling unit() U times.
 * x, out: float32 [N][H][W][C] (NHWC; out may be x); units: a sequence of (weights, alpha, pre, slope,
 * post, shift) with weights int64 [ceil(C/16)][9][ceil(C/64)][16] and the rest float32 [C];
 * act: int64 [N][H+2][W+2][2*ceil(C/64)], the first unit's input bits when already packed (else
 * sign(x + shift_0) is packed here); next_shift/next_act: the bits of the output for a linked unit;
 * tail_weight float32 [cout][C][3][3] (cout <= 16), tail_bias [cout], tail_out float32 [N][H][W][cout]:
 * thin_conv of the result as a last stage of the wavefront (rows read while still in cache). */
#define MAX_CHAIN 255
static PyObject *py_chain(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"x", "out", "units", "act", "next_shift", "next_act", "tail_weight", "tail_bias",
                            "tail_out", "threads", NULL};
    PyObject *xo, *oo, *uo, *ao = NULL, *nso = NULL, *nao = NULL, *two = NULL, *tbo = NULL, *too = NULL;
    PyObject *seq = NULL;
    int nthreads = 1;
    held_t h = {.n = 0};
    Py_buffer *ub = NULL;
    int nub = 0;
    unit_args *units = NULL;
    float *twt = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$OOOOOOi:chain", names, &xo, &oo, &uo, &ao, &nso, &nao,
                                     &two, &tbo, &too, &nthreads))
        return NULL;
    int d[4];
    const float *x = hold_nhwc(&h, xo, MAX_OUT, d);
    if (!x) goto fail;
    const int N = d[0], H = d[1], W = d[2], C = d[3], K = words(C);
    const Py_ssize_t xshape[4] = {N, H, W, C}, ashape[4] = {N, H + 2, W + 2, 2 * K};
    float *out = hold(&h, oo, "out", F32, 1, 4, xshape);
    if (!out) goto fail;
    const uint64_t *act = NULL;
    if (ao && ao != Py_None && !(act = hold(&h, ao, "act", I64, 0, 4, ashape))) goto fail;
    const Py_ssize_t vshape[1] = {C};
    const float *nshift = NULL;
    uint64_t *nact = NULL;
    if ((nso && nso != Py_None) != (nao && nao != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "next_shift and next_act: give both or neither");
        goto fail;
    }
    if (nso && nso != Py_None) {
        if (!(nshift = hold(&h, nso, "next_shift", F32, 0, 1, vshape))) goto fail;
        if (!(nact = hold(&h, nao, "next_act", I64, 1, 4, ashape))) goto fail;
    }
    /* the thin tail: a 3x3 convolution of the last unit's output to at most 16 channels */
    const int has_tail = two && two != Py_None;
    if (has_tail != (too && too != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "tail_weight and tail_out: give both or neither");
        goto fail;
    }
    int tcout = 0;
    const float *tbias = NULL;
    float *tout = NULL;
    if (has_tail) {
        const Py_ssize_t twshape[4] = {ANY, C, 3, 3};
        const float *tw = hold(&h, two, "tail_weight", F32, 0, 4, twshape);
        if (!tw) goto fail;
        tcout = (int)h.v[h.n - 1].shape[0];
        if (tcout < 1 || tcout > 16) {
            PyErr_Format(PyExc_ValueError, "tail_weight: %d output channels, expected 1..16", tcout);
            goto fail;
        }
        const Py_ssize_t toshape[4] = {N, H, W, tcout}, tbshape[1] = {tcout};
        if (!(tout = hold(&h, too, "tail_out", F32, 1, 4, toshape))) goto fail;
        if (tbo && tbo != Py_None && !(tbias = hold(&h, tbo, "tail_bias", F32, 0, 1, tbshape))) goto fail;
        if (!(twt = thin_prepare(tw, C, tcout, (C + 15) / 16 * 16))) {
            PyErr_NoMemory();
            goto fail;
        }
    }
    seq = PySequence_Fast(uo, "units: expected a sequence of (weights, alpha, pre, slope, post, shift)");
    if (!seq) goto fail;
    const Py_ssize_t U = PySequence_Fast_GET_SIZE(seq);
    if (U < 1 || U > MAX_CHAIN) {
        PyErr_Format(PyExc_ValueError, "units: expected 1..%d units, got %zd", MAX_CHAIN, U);
        goto fail;
    }
    ub = (Py_buffer *)calloc((size_t)U * 6, sizeof(Py_buffer));
    units = (unit_args *)calloc((size_t)U, sizeof(unit_args));
    if (!ub || !units) {
        PyErr_NoMemory();
        goto fail;
    }
    const float *shifts[MAX_CHAIN];
    for (Py_ssize_t u = 0; u < U; u++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, u);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 6) {
            PyErr_Format(PyExc_ValueError, "units[%zd]: expected a tuple (weights, alpha, pre, slope, post, shift)", u);
            goto fail;
        }
        if (take_unit(t, u, H, W, C, 1, ub, &nub, &units[u], &shifts[u]) < 0) goto fail;
    }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    const size_t img = (size_t)H * W * C, aimg = (size_t)(H + 2) * (W + 2) * 2 * K;
    for (int n = 0; ok && n < N; n++) {
        for (Py_ssize_t u = 0; u < U; u++) {
            units[u].resid = u == 0 ? x + n * img : out + n * img;
            units[u].out = out + n * img;
            units[u].nshift = u + 1 < U ? shifts[u + 1] : nshift;
        }
        const thin_job tail = {out + n * img, twt, tbias, tout ? tout + (size_t)n * H * W * tcout : NULL, H, W, C,
                               tcout, (C + 15) / 16 * 16, NULL};
        ok = run_chain(units, (int)U, act == NULL, x + n * img, shifts[0], act ? act + n * aimg : NULL,
                       nact ? nact + n * aimg : NULL, has_tail ? &tail : NULL, nthreads);
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
        goto fail;
    }
    free(twt);
    free(units);
    release_units(ub, nub, seq);
    release_all(&h);
    Py_RETURN_NONE;
fail:
    free(twt);
    free(units);
    release_units(ub, nub, seq);
    release_all(&h);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Pipes: upsampling units, then 1x units, then a thin convolution (BBCU-M's upconv1, upconv2,
 * conv_hr and conv_last) as one wavefront over rows, like chains, except that a stage may
 * upsample (one input row gives r output rows) and the floats pass through rings as well: no
 * intermediate of the output's size (64 channels at 4x the input's width and height) is ever
 * written to memory, allocated or faulted in. A unit stage takes its input row y (bits of rows
 * y-1..y+1 and the float residual of row y) once its producer has finished those rows, and writes
 * its r output rows into ring slots its consumer no longer reads. Every row is computed by the same
 * row functions as the units and the thin convolution called one by one: the same bits. */

typedef struct {
    int thin;        /* 0: a unit (u), 1: the thin convolution (t), always the last stage */
    int Hin, r;      /* rows of its input; output rows = r * Hin */
    unit_args u;
    thin_job t;
    base_job base; /* the thin stage's rows become (row + bilinear) / k where base.rows is set */
} pipe_stage;

typedef struct {
    int S, R;
    pipe_stage *st;
    wave w; /* a task: one input row of one stage */
    atomic_int refs;
    void *mem;  /* rings, tables, states */
    void *mem8; /* AMX, 64 channels: int8 rings between units, and their tables */
} pipe_state;

static void pipe_release(pipe_state *c) {
    if (atomic_fetch_sub(&c->refs, 1) == 1) {
        wave_destroy(&c->w);
#if BP_AMX
        for (int s = 0; s < c->S; s++) free((void *)c->st[s].u.wamx);
#endif
        free(c->mem);
        free(c->mem8);
        free(c);
    }
}

/* input row y of stage s: its producer has rows y-1..y+1, and its r output rows overwrite ring
 * slots that the consumer has finished reading */
static int pipe_ready(const void *owner, int s, int y) {
    const pipe_state *c = (const pipe_state *)owner;
    const pipe_stage *st = &c->st[s];
    const int need = y + 2 < st->Hin ? y + 2 : st->Hin;
    if (s > 0 && c->w.done[s - 1] * c->st[s - 1].r < need) return 0;
    if (s + 1 < c->S && c->w.done[s + 1] < st->r * y + st->r - 1 - c->R + 2) return 0;
    return 1;
}

static void pipe_task(void *owner, wave_worker *m, int s, int y) {
    const pipe_state *c = (const pipe_state *)owner;
    const pipe_stage *st = &c->st[s];
    if (st->thin) {
        thin_row(&st->t, y);
        if (st->base.rows) {
            float *row = st->t.out + (size_t)y * st->t.W * st->t.cout;
            base_add(&st->base, y, row, row);
        }
        return;
    }
    wave_unit_row(m, &st->u, y);
}

static void *pipe_thread(void *p) {
    pipe_state *c = (pipe_state *)p;
    wave_work(&c->w, pipe_ready, pipe_task, c);
    pipe_release(c);
    return NULL;
}

#if BP_AMX
/* AMX with 64 channels: units hand the next unit int8 signs (the layout amx_row reads) instead of
 * bits, so no row is expanded again; nothing changes when there is no memory for it, or when a
 * unit's next shift is not finite (signs8_ok) */
static void pipe_rings8(pipe_state *c) {
    if (c->st[0].u.C != 64) return;
    for (int s = 0; s + 1 < c->S; s++)
        if (!c->st[s + 1].thin && !signs8_ok(&c->st[s].u)) return;
    size_t bytes = 0;
    for (int s = 0; s + 1 < c->S; s++)
        if (!c->st[s + 1].thin) {
            const size_t Ho = (size_t)c->st[s].Hin * c->st[s].r;
            bytes += ((size_t)c->R + 1) * amx_row_bytes(c->st[s].u.W * c->st[s].r, 1)
                     + ((Ho + 2) * sizeof(void *) + 63) / 64 * 64; /* each ring 64-byte aligned */
        }
    char *m = bytes ? (char *)aligned_alloc(64, bytes) : NULL;
    if (!m) return;
    memset(m, 0, bytes);
    c->mem8 = m;
    for (int s = 0; s + 1 < c->S; s++) {
        if (c->st[s + 1].thin) continue;
        const int Ho = c->st[s].Hin * c->st[s].r;
        const size_t rb = amx_row_bytes(c->st[s].u.W * c->st[s].r, 1);
        int8_t *ring = (int8_t *)m, **rows = (int8_t **)(m + ((size_t)c->R + 1) * rb);
        m += ((size_t)c->R + 1) * rb + (((size_t)Ho + 2) * sizeof(void *) + 63) / 64 * 64;
        ring_table((void **)rows, Ho, (char *)ring, rb, c->R, ring + (size_t)c->R * rb);
        c->st[s].u.nact8_rows = rows;
        c->st[s + 1].u.act8_rows = (const int8_t *const *)rows;
    }
}
#endif

/* Run the stages (one image): st[0..S-2] units with their whole-image input (act, resid) set in
 * st[0].u and everything but the rows in the others, st[S-1] the thin convolution with its out.
 * Makes the rings and row tables. 0 when out of memory (nothing computed). */
static int run_pipe(const pipe_stage *stages, int S, int nthreads) {
    if (S > MAX_STAGES) return 0;
    if (nthreads < 1) nthreads = 1;
    const int R = 2 * nthreads + 8;
    pipe_state *c = (pipe_state *)calloc(1, sizeof(pipe_state));
    if (!c) return 0;
    /* sizes: per stage but the last, a float ring and (if a unit follows) a bit ring + zero row */
    size_t bytes = (size_t)S * sizeof(pipe_stage) + 64 * (size_t)S * 4;
    int rows[MAX_STAGES];
    for (int s = 0; s < S; s++) {
        const pipe_stage *st = &stages[s];
        rows[s] = st->Hin;
        if (s + 1 < S) {
            const size_t Ho = (size_t)st->Hin * st->r, Wo = (size_t)st->u.W * st->r, C = (size_t)st->u.C;
            const size_t K = (C + 63) / 64;
            bytes += (size_t)R * Wo * C * sizeof(float) + Ho * sizeof(float *);
            if (!stages[s + 1].thin) bytes += ((size_t)R + 1) * (Wo + 2) * 2 * K * 8 + (Ho + 2) * sizeof(void *);
        }
    }
    c->mem = zalloc64(bytes);
    if (!c->mem || !wave_init(&c->w, S, rows)) {
        free(c->mem);
        free(c);
        return 0;
    }
    char *m = (char *)c->mem;
#define PIPE_TAKE(ptr, type, count) do { ptr = (type *)m; m += ((size_t)(count) * sizeof(type) + 63) / 64 * 64; } while (0)
    PIPE_TAKE(c->st, pipe_stage, S);
    memcpy(c->st, stages, (size_t)S * sizeof(pipe_stage));
    for (int s = 0; s + 1 < S; s++) {
        pipe_stage *st = &c->st[s], *nx = &c->st[s + 1];
        const int Ho = st->Hin * st->r, Wo = st->u.W * st->r, C = st->u.C, K = (C + 63) / 64;
        float *ring;
        float **frows;
        PIPE_TAKE(ring, float, (size_t)R * Wo * C);
        PIPE_TAKE(frows, float *, Ho);
        for (int o = 0; o < Ho; o++) frows[o] = ring + (size_t)(o % R) * Wo * C;
        st->u.out_rows = frows;
        if (nx->thin) {
            nx->t.x_rows = (const float *const *)frows;
            st->u.nshift = NULL;
        } else {
            const size_t rs = (size_t)(Wo + 2) * 2 * K;
            uint64_t *bits, **brows;
            PIPE_TAKE(bits, uint64_t, ((size_t)R + 1) * rs);
            PIPE_TAKE(brows, uint64_t *, Ho + 2);
            ring_table((void **)brows, Ho, (char *)bits, rs * sizeof(uint64_t), R, bits + (size_t)R * rs);
            st->u.nact_rows = brows;
            nx->u.act_rows = (const uint64_t *const *)brows;
            nx->u.resid_rows = (const float *const *)frows;
        }
    }
#undef PIPE_TAKE
    c->S = S;
    c->R = R;
    atomic_init(&c->refs, 1);
#if BP_AMX
    if (c->w.isa == ISA_AMX) {
        int ok = 1;
        unit_args widest = c->st[0].u; /* the scratch fits every unit stage's rows and counts */
        for (int s = 0; ok && s + 1 < S; s++) {
            ok = (c->st[s].u.wamx = amx_weights(&c->st[s].u)) != NULL;
            if (c->st[s].u.W > widest.W) widest.W = c->st[s].u.W;
            if (c->st[s].u.ng > widest.ng) widest.ng = c->st[s].u.ng;
        }
        ok = ok && wave_scratch(&c->w, &widest, nthreads);
        if (ok) pipe_rings8(c);
        if (!ok) c->w.isa = ISA_AVX512; /* the popcount core; pipe_release frees what was made */
    }
#endif
    uint8_t *lut[MAX_STAGES] = {NULL};
    if (c->w.isa == ISA_AVX2)
        for (int s = 0; s + 1 < S; s++) c->st[s].u.wlut = lut[s] = lut_weights(&c->st[s].u);
    wave_run(&c->w, pipe_ready, pipe_task, c, &c->refs, pipe_thread, nthreads);
    for (int s = 0; s + 1 < S; s++) free(lut[s]);
    pipe_release(c);
    return 1;
}

/* pipe(x, act, out, units, weight, *, bias=None, base=None, k=1.0, threads=1)
 * x: float32 [1][H][W][C] (NHWC), the first unit's input; act: int64 [1][H+2][W+2][2*ceil(C/64)], its
 * bits; units: (weights, alpha, pre, slope, post, shift, upscale, leaky_slope or None) for C -> C
 * units (upscale r: C*r*r outputs, sub-pixel major), each taking the previous one's output;
 * weight: float32 [cout][C][3][3] (cout <= 16) and bias: float32 [cout] of the thin convolution
 * that follows; out: float32 [1][H*R][W*R][cout] with R the product of the upscales; base: float32
 * [1][H][W*R][cout], base_rows of an image by R: out becomes (thin convolution + bilinear) / k,
 * add_base's result. Needs the AVX2, AVX-512 or AMX core and C a multiple of 16. */
static PyObject *py_pipe(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"x", "act", "out", "units", "weight", "bias", "base", "k", "threads", NULL};
    PyObject *xo, *ao, *oo, *uo, *wo, *bo = NULL, *baseo = NULL, *seq = NULL;
    int nthreads = 1;
    float k = 1.0f;
    held_t h = {.n = 0};
    Py_buffer *ub = NULL;
    int nub = 0;
    pipe_stage *st = NULL;
    float *wt = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|$OOfi:pipe", names, &xo, &ao, &oo, &uo, &wo, &bo, &baseo, &k,
                                     &nthreads))
        return NULL;
    if (g_isa < ISA_AVX2) {
        PyErr_Format(PyExc_ValueError, "pipe: needs the avx2, avx512 or amx core, not %s", ISA_NAMES[g_isa]);
        return NULL;
    }
    int d[4];
    const float *x = hold_nhwc(&h, xo, MAX_OUT, d);
    if (!x) goto fail;
    const int H = d[1], W = d[2], C = d[3], K = words(C);
    if (d[0] != 1 || C % 16) {
        PyErr_Format(PyExc_ValueError, "x: expected one image of a multiple of 16 channels, got N=%d C=%d", d[0], C);
        goto fail;
    }
    const Py_ssize_t ashape[4] = {1, H + 2, W + 2, 2 * K};
    const uint64_t *act = hold(&h, ao, "act", I64, 0, 4, ashape);
    if (!act) goto fail;
    seq = PySequence_Fast(uo, "units: expected a sequence of (weights, alpha, pre, slope, post, shift, upscale, leaky)");
    if (!seq) goto fail;
    const Py_ssize_t U = PySequence_Fast_GET_SIZE(seq);
    if (U < 1 || U > MAX_CHAIN) {
        PyErr_Format(PyExc_ValueError, "units: expected 1..%d units, got %zd", MAX_CHAIN, U);
        goto fail;
    }
    ub = (Py_buffer *)calloc((size_t)U * 6, sizeof(Py_buffer));
    st = (pipe_stage *)calloc((size_t)U + 1, sizeof(pipe_stage));
    if (!ub || !st) {
        PyErr_NoMemory();
        goto fail;
    }
    int Hc = H, Wc = W;
    for (Py_ssize_t u = 0; u < U; u++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, u);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 8) {
            PyErr_Format(PyExc_ValueError, "units[%zd]: expected (weights, alpha, pre, slope, post, shift, upscale, leaky)", u);
            goto fail;
        }
        const long r = PyLong_AsLong(PyTuple_GET_ITEM(t, 6));
        if (r < 1 || r > EPI_MAX_R) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "units[%zd].upscale: expected 1..%d", u, EPI_MAX_R);
            goto fail;
        }
        double leaky = 0.0;
        PyObject *lo = PyTuple_GET_ITEM(t, 7);
        if (lo != Py_None && (leaky = PyFloat_AsDouble(lo)) == -1.0 && PyErr_Occurred()) goto fail;
        unit_args *a = &st[u].u;
        const float *shift;
        if (take_unit(t, u, Hc, Wc, C, (int)r, ub, &nub, a, &shift) < 0) goto fail;
        st[u].Hin = Hc;
        st[u].r = (int)r;
        a->leaky = lo != Py_None;
        a->act_slope = (float)leaky;
        if (u > 0) st[u - 1].u.nshift = shift; /* the consumer's shift */
        Hc *= (int)r;
        Wc *= (int)r;
    }
    const Py_ssize_t twshape[4] = {ANY, C, 3, 3};
    const float *w = hold(&h, wo, "weight", F32, 0, 4, twshape);
    if (!w) goto fail;
    const int cout = (int)h.v[h.n - 1].shape[0];
    if (cout < 1 || cout > 16) {
        PyErr_Format(PyExc_ValueError, "weight: %d output channels, expected 1..16", cout);
        goto fail;
    }
    const Py_ssize_t oshape[4] = {1, Hc, Wc, cout}, bshape[1] = {cout};
    float *out = hold_required(&h, oo, "out", F32, 1, 4, oshape);
    if (!out) goto fail;
    const float *bias = NULL;
    if (bo && bo != Py_None && !(bias = hold(&h, bo, "bias", F32, 0, 1, bshape))) goto fail;
    const Py_ssize_t baseshape[4] = {1, H, Wc, cout};
    const float *base = NULL;
    if (baseo && baseo != Py_None && !(base = hold(&h, baseo, "base", F32, 0, 4, baseshape))) goto fail;
    const int cpad = (C + 15) / 16 * 16;
    if (!(wt = thin_prepare(w, C, cout, cpad))) {
        PyErr_NoMemory();
        goto fail;
    }
    st[0].u.act = act;
    st[0].u.resid = x;
    st[U].thin = 1;
    st[U].Hin = Hc;
    st[U].r = 1;
    st[U].t = (thin_job){NULL, wt, bias, out, Hc, Wc, C, cout, cpad, NULL};
    if (base) st[U].base = (base_job){base, H, Hc / H, Wc * cout, k};
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = run_pipe(st, (int)U + 1, nthreads);
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
        goto fail;
    }
    free(wt);
    free(st);
    release_units(ub, nub, seq);
    release_all(&h);
    Py_RETURN_NONE;
fail:
    free(wt);
    free(st);
    release_units(ub, nub, seq);
    release_all(&h);
    return NULL;
}

static PyMethodDef methods[] = {
    {"set_isa", py_set_isa, METH_VARARGS, "Select the conv core: 'scalar', 'avx2', 'avx512' or 'amx'."},
    {"isa", py_isa, METH_NOARGS, "(selected ISA, best ISA this CPU supports)."},
    {"clock_hz", py_clock_hz, METH_NOARGS, "This thread's clock now in Hz, from a timed chain of adds (0: unknown)."},
    {"count_loop_seconds", py_count_loop_seconds, METH_NOARGS,
     "Seconds a pixel of the AVX-512 core's count loop alone (no epilogue; 0 without AVX-512 VPOPCNTDQ)."},
    {"pack_weights", (PyCFunction)(void (*)(void))py_pack_weights, METH_VARARGS | METH_KEYWORDS,
     "Pack the sign bits of a float32 (Cout, Cin, 3, 3) weight array; returns the number of zeros."},
    {"pack_act", (PyCFunction)(void (*)(void))py_pack_act, METH_VARARGS | METH_KEYWORDS,
     "Pack sign(x + shift) of a float32 NHWC (or NCHW) array."},
    {"unit", (PyCFunction)(void (*)(void))py_unit, METH_VARARGS | METH_KEYWORDS,
     "Binary conv + fused epilogue of one unit (or its raw counts)."},
    {"thin_conv", (PyCFunction)(void (*)(void))py_thin_conv, METH_VARARGS | METH_KEYWORDS,
     "3x3 float convolution to at most 16 channels, NHWC."},
    {"base_rows", (PyCFunction)(void (*)(void))py_base_rows, METH_VARARGS | METH_KEYWORDS,
     "Bilinear upsampling's first pass: every row interpolated along its width, NHWC."},
    {"add_base", (PyCFunction)(void (*)(void))py_add_base, METH_VARARGS | METH_KEYWORDS,
     "(y + bilinear upsampling) / k for rows of an upsampled image, from base_rows."},
    {"shuffle_lrelu", (PyCFunction)(void (*)(void))py_shuffle_lrelu, METH_VARARGS | METH_KEYWORDS,
     "pixel_shuffle then leaky ReLU, NHWC, in one pass."},
    {"ycc_rgb", (PyCFunction)(void (*)(void))py_ycc_rgb, METH_VARARGS | METH_KEYWORDS,
     "RGB of full-range YCbCr planes, clipped to 0..1 and blended with the input (numpy's bits)."},
    {"box_down", (PyCFunction)(void (*)(void))py_box_down, METH_VARARGS | METH_KEYWORDS,
     "s x s averages of an HWC image, edges repeated (torch's avg_pool2d bits)."},
    {"rgb_cbcr", (PyCFunction)(void (*)(void))py_rgb_cbcr, METH_VARARGS | METH_KEYWORDS,
     "The Cb and Cr planes of RGB pixels (numpy's bits)."},
    {"rgb_luma", (PyCFunction)(void (*)(void))py_rgb_luma, METH_VARARGS | METH_KEYWORDS,
     "The full-range BT.601 luma of RGB pixels (numpy's bits)."},
    {"chain", (PyCFunction)(void (*)(void))py_chain, METH_VARARGS | METH_KEYWORDS,
     "Consecutive C -> C units with residuals, as one wavefront over the rows."},
    {"pipe", (PyCFunction)(void (*)(void))py_pipe, METH_VARARGS | METH_KEYWORDS,
     "Upsampling and 1x units, then a thin convolution, as one wavefront over the rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_bitpacked",
                                    "Bit-packed XNOR/popcount BBCU kernels.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__bitpacked(void) {
#if BP_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("fma"))
        g_best = ISA_AVX2;
    if (g_best == ISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq"))
        g_best = ISA_AVX512;
#endif
#if BP_AMX
    if (g_best == ISA_AVX512 && amx_permitted()) g_best = ISA_AMX;
#endif
    /* the fastest core this CPU and OS allow: AMX where Linux grants the tiles (docs/kernels.md) */
    g_isa = g_best;
    return PyModule_Create(&module);
}
