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

typedef struct {
    const float *q, *k, *v;
    float *out, *probs, *lse;
    int64_t T, S, Hq, Hkv, hd;
    float scale;
} attn_args;

static float dot(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* One query row: scores over keys 0 .. nk-1, max-subtracted softmax (sum in double,
 * key order), then out = sum_j p_j v_j accumulated in key order over v rows. */
static void attend_row(const attn_args *a, int64_t b, int64_t h, int64_t t, float *sc) {
    int64_t hk = h / (a->Hq / a->Hkv); /* GQA: query head h reads kv head h / group */
    int64_t nk = a->S - a->T + t + 1;  /* causal with the KV-cache offset S - T */
    int64_t kv_row = a->Hkv * a->hd;   /* elements between consecutive keys */
    const float *q = a->q + ((b * a->T + t) * a->Hq + h) * a->hd;
    const float *k = a->k + (b * a->S * a->Hkv + hk) * a->hd;
    const float *v = a->v + (b * a->S * a->Hkv + hk) * a->hd;

    float m = -INFINITY;
    for (int64_t j = 0; j < nk; j++) {
        sc[j] = dot(q, k + j * kv_row, a->hd) * a->scale;
        m = sc[j] > m ? sc[j] : m;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < nk; j++) {
        sc[j] = expf(sc[j] - m);
        sum += sc[j];
    }
    float inv = 1.0f / (float)sum;
    for (int64_t j = 0; j < nk; j++) sc[j] *= inv;

    float *o = a->out + ((b * a->T + t) * a->Hq + h) * a->hd;
    memset(o, 0, (size_t)a->hd * sizeof(float));
    for (int64_t j = 0; j < nk; j++) {
        const float *vj = v + j * kv_row;
        float p = sc[j];
        for (int64_t d = 0; d < a->hd; d++) o[d] += p * vj[d];
    }

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
    /* one score row of S floats per thread, allocated once per call */
    float *scratch = sd_malloc((size_t)nth * (size_t)(S > 0 ? S : 1) * sizeof(float),
                               "attention scores");
    if (!scratch) return SD_ERR_SYS;
    attn_args a = {q, k, v, out, probs, lse, T, S, Hq, Hkv, hd, scale};
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        int64_t t = r % T, bh = r / T;
        attend_row(&a, bh / Hq, bh % Hq, t, scratch + (size_t)tid * (size_t)S);
    }
    free(scratch);
    return SD_OK;
}
