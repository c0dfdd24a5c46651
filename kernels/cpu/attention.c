/* Causal softmax attention with grouped-query heads on the CPU, as HF
 * eager_attention_forward: scores = (q . k) * scale, causal mask, fp32 softmax,
 * out = probs . v.  One task per query row (b, h, t); inside it, every sum runs
 * sequentially in key order, so results do not depend on the thread count. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Kept out of line: inlined into the row loop, GCC spills the accumulators. */
#if defined(__GNUC__)
#define SD_NOINLINE __attribute__((noinline))
#else
#define SD_NOINLINE
#endif

typedef struct {
    const float *q, *kt, *v; /* kt: keys transposed by transpose_keys */
    float *out, *probs, *lse;
    int64_t T, S, Hq, Hkv, hd;
    float scale;
} attn_args;

/* kt[(b, hk)][d][j] = k[b, j, hk, d]: with keys contiguous for each d, a block of keys
 * fills SIMD lanes in the score loop.  Built once per call, shared by the T queries and
 * the Hq / Hkv query heads of each kv head. */
static void transpose_keys(float *kt, const float *k, int64_t B, int64_t S, int64_t Hkv,
                           int64_t hd) {
#pragma omp parallel for schedule(static) if (B * Hkv * S * hd >= SD_CPU_PAR_MIN)
    for (int64_t bh = 0; bh < B * Hkv; bh++) {
        int64_t b = bh / Hkv, hk = bh % Hkv;
        float *dst = kt + bh * hd * S;
        for (int64_t j = 0; j < S; j++) {
            const float *src = k + ((b * S + j) * Hkv + hk) * hd;
            for (int64_t d = 0; d < hd; d++) dst[d * S + j] = src[d];
        }
    }
}

#define KEY_BLOCK 16

/* sc[j] = (q . k_j) * scale for j < nk, kt the transposed keys of one head (row stride S).
 * KEY_BLOCK keys at a time, one lane each; every dot product still sums over d in index
 * order, as a plain loop would, so the scores do not depend on the blocking. */
SD_NOINLINE static void scores(float *sc, const float *q, const float *kt, int64_t S,
                               int64_t nk, int64_t hd, float scale) {
    int64_t j = 0;
    for (; j + KEY_BLOCK <= nk; j += KEY_BLOCK) {
        float s[KEY_BLOCK] = {0};
        for (int64_t d = 0; d < hd; d++)
            for (int u = 0; u < KEY_BLOCK; u++) s[u] += q[d] * kt[d * S + j + u];
        for (int u = 0; u < KEY_BLOCK; u++) sc[j + u] = s[u] * scale;
    }
    for (; j < nk; j++) {
        float s = 0.0f;
        for (int64_t d = 0; d < hd; d++) s += q[d] * kt[d * S + j];
        sc[j] = s * scale;
    }
}

/* o[d0 .. d0+W) = sum_j p_j v_j[d0 ..], for a compile-time width W: the W partial sums
 * stay in registers across all keys instead of a load and a store of o per key. */
#define WEIGHTED_SUM_W(W)                                                                 \
    SD_NOINLINE static void weighted_sum_##W(float *o, const float *p, const float *v,   \
                                             int64_t nk, int64_t kv_row) {                \
        float acc[W] = {0};                                                               \
        for (int64_t j = 0; j < nk; j++)                                                  \
            for (int u = 0; u < W; u++) acc[u] += p[j] * v[j * kv_row + u];               \
        memcpy(o, acc, sizeof acc);                                                       \
    }
WEIGHTED_SUM_W(16)
WEIGHTED_SUM_W(8)
WEIGHTED_SUM_W(4)
WEIGHTED_SUM_W(1)

/* o = sum_j p_j v_j over nk keys: each o[d] sums in key order from 0, so the result is
 * the same whichever width handles d. */
static void weighted_sum(float *o, const float *p, const float *v, int64_t nk, int64_t kv_row,
                         int64_t hd) {
    int64_t d = 0;
    for (; d + 16 <= hd; d += 16) weighted_sum_16(o + d, p, v + d, nk, kv_row);
    for (; d + 8 <= hd; d += 8) weighted_sum_8(o + d, p, v + d, nk, kv_row);
    for (; d + 4 <= hd; d += 4) weighted_sum_4(o + d, p, v + d, nk, kv_row);
    for (; d < hd; d++) weighted_sum_1(o + d, p, v + d, nk, kv_row);
}

/* One query row: scores over keys 0 .. nk-1, max-subtracted softmax (sum in double,
 * key order), then out = sum_j p_j v_j accumulated in key order. */
static void attend_row(const attn_args *a, int64_t b, int64_t h, int64_t t, float *sc) {
    int64_t hk = h / (a->Hq / a->Hkv); /* GQA: query head h reads kv head h / group */
    int64_t nk = a->S - a->T + t + 1;  /* causal with the KV-cache offset S - T */
    int64_t kv_row = a->Hkv * a->hd;   /* elements between consecutive keys */
    const float *q = a->q + ((b * a->T + t) * a->Hq + h) * a->hd;
    const float *kt = a->kt + (b * a->Hkv + hk) * a->hd * a->S;
    const float *v = a->v + (b * a->S * a->Hkv + hk) * a->hd;

    scores(sc, q, kt, a->S, nk, a->hd, a->scale);
    float m = -INFINITY;
    for (int64_t j = 0; j < nk; j++) m = sc[j] > m ? sc[j] : m;
    /* exps first, then the sum: the expf calls pipeline instead of waiting on the sum */
    for (int64_t j = 0; j < nk; j++) sc[j] = expf(sc[j] - m);
    double sum = 0.0;
    for (int64_t j = 0; j < nk; j++) sum += sc[j];
    float inv = 1.0f / (float)sum;
    for (int64_t j = 0; j < nk; j++) sc[j] *= inv;

    float *o = a->out + ((b * a->T + t) * a->Hq + h) * a->hd;
    weighted_sum(o, sc, v, nk, kv_row, a->hd);

    int64_t row = (b * a->Hq + h) * a->T + t; /* index into [B, Hq, T] */
    if (a->probs) {
        float *pr = a->probs + row * a->S;
        memcpy(pr, sc, (size_t)nk * sizeof(float));
        memset(pr + nk, 0, (size_t)(a->S - nk) * sizeof(float)); /* masked: exact zeros */
    }
    if (a->lse) a->lse[row] = m + logf((float)sum);
}

int sd_cpu_attention(float *out, const float *q, const float *k, const float *v, int64_t B,
                     int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd, float scale,
                     float *probs, float *lse) {
    int64_t rows = B * Hq * T;
    if (rows == 0) return SD_OK;
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    /* transposed keys, then one score row of S floats per thread; allocated once per call */
    size_t nkt = (size_t)(B * S * Hkv * hd);
    float *scratch = sd_malloc((nkt + (size_t)nth * (size_t)S) * sizeof(float),
                               "attention keys and scores");
    if (!scratch) return SD_ERR_SYS;
    float *kt = scratch, *sc = scratch + nkt;
    transpose_keys(kt, k, B, S, Hkv, hd);
    attn_args a = {q, kt, v, out, probs, lse, T, S, Hq, Hkv, hd, scale};
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        int64_t t = r % T, bh = r / T;
        attend_row(&a, bh / Hq, bh % Hq, t, sc + (size_t)tid * (size_t)S);
    }
    free(scratch);
    return SD_OK;
}

/* ---- backward ------------------------------------------------------------------------ *
 * Per query row with probabilities p_j (recomputed, or read from the forward's probs):
 *   dp_j = dout . v_j,   ds_j = p_j (dp_j - sum_l p_l dp_l)       (softmax backward)
 *   dq  += scale sum_j ds_j k_j,  dk_j += scale ds_j q,  dv_j += p_j dout.
 * dk and dv of a kv head collect every query head of its group (GQA) and every query: one
 * task per (b, kv head) owns them and loops over its query heads and queries in order. */

/* p[j] for j < nk of one query row, as the forward computes it. */
static void row_probs(float *p, const float *q, const float *k, int64_t nk, int64_t kv_row,
                      int64_t hd, float scale) {
    float m = -INFINITY;
    for (int64_t j = 0; j < nk; j++) {
        float s = 0.0f;
        for (int64_t d = 0; d < hd; d++) s += q[d] * k[j * kv_row + d];
        p[j] = s * scale;
        m = p[j] > m ? p[j] : m;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < nk; j++) sum += p[j] = expf(p[j] - m);
    float inv = 1.0f / (float)sum;
    for (int64_t j = 0; j < nk; j++) p[j] *= inv;
}

typedef struct {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v, *probs;
    int64_t T, S, Hq, Hkv, hd;
    float scale;
} attn_bwd_args;

static void backward_row(const attn_bwd_args *a, int64_t b, int64_t h, int64_t hk, int64_t t,
                         float *p, float *dp) {
    int64_t nk = a->S - a->T + t + 1, kv_row = a->Hkv * a->hd, hd = a->hd;
    int64_t qo = ((b * a->T + t) * a->Hq + h) * hd, kvo = (b * a->S * a->Hkv + hk) * hd;
    const float *q = a->q + qo, *go = a->dout + qo, *k = a->k + kvo, *v = a->v + kvo;
    if (a->probs)
        memcpy(p, a->probs + ((b * a->Hq + h) * a->T + t) * a->S, (size_t)nk * sizeof(float));
    else
        row_probs(p, q, k, nk, kv_row, hd, a->scale);
    double pdp = 0.0;
    for (int64_t j = 0; j < nk; j++) {
        float s = 0.0f;
        for (int64_t d = 0; d < hd; d++) s += go[d] * v[j * kv_row + d];
        dp[j] = s;
        pdp += (double)p[j] * s;
    }
    for (int64_t j = 0; j < nk; j++) dp[j] = p[j] * (dp[j] - (float)pdp) * a->scale; /* scale ds */
    for (int64_t j = 0; j < nk; j++) {
        if (a->dq)
            for (int64_t d = 0; d < hd; d++) a->dq[qo + d] += dp[j] * k[j * kv_row + d];
        if (a->dk)
            for (int64_t d = 0; d < hd; d++) a->dk[kvo + j * kv_row + d] += dp[j] * q[d];
        if (a->dv)
            for (int64_t d = 0; d < hd; d++) a->dv[kvo + j * kv_row + d] += p[j] * go[d];
    }
}

int sd_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                              const float *q, const float *k, const float *v, int64_t B,
                              int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd,
                              float scale, const float *probs) {
    if (B * Hq * T == 0 || (!dq && !dk && !dv)) return SD_OK;
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    float *scratch = sd_malloc((size_t)nth * 2 * (size_t)S * sizeof(float), "attention backward rows");
    if (!scratch) return SD_ERR_SYS;
    attn_bwd_args a = {dq, dk, dv, dout, q, k, v, probs, T, S, Hq, Hkv, hd, scale};
    int64_t group = Hq / Hkv;
#pragma omp parallel for schedule(static)
    for (int64_t bk = 0; bk < B * Hkv; bk++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *p = scratch + (size_t)tid * 2 * (size_t)S;
        int64_t b = bk / Hkv, hk = bk % Hkv;
        for (int64_t h = hk * group; h < (hk + 1) * group; h++)
            for (int64_t t = 0; t < T; t++) backward_row(&a, b, h, hk, t, p, p + S);
    }
    free(scratch);
    return SD_OK;
}
