/* Rotary position embedding on the CPU (RoFormer; HF apply_rotary_pos_emb). */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>
#include <stdlib.h>

/* cos/sin of angle = (float)pos * inv_freq[i] in fp32, as HF's rotary embedding
 * (freqs = inv_freq @ position_ids.float(), then emb.cos(), emb.sin()). */
static void fill_table(float *cs, float *sn, int64_t T, int64_t half, const float *inv_freq,
                       int64_t pos0) {
#pragma omp parallel for schedule(static) if (T * half >= SD_CPU_PAR_MIN / 16)
    for (int64_t t = 0; t < T; t++) {
        float pos = (float)(pos0 + t);
        for (int64_t i = 0; i < half; i++) {
            float a = pos * inv_freq[i];
            cs[t * half + i] = cosf(a);
            sn[t * half + i] = sinf(a);
        }
    }
}

/* Rotates pair (x[lo], x[hi]) by the angle with cosine c and sine s:
 * HF q * cos + rotate_half(q) * sin, i.e. lo' = lo c - hi s, hi' = hi c + lo s. */
static inline void rotate_pair(float *lo, float *hi, float c, float s) {
    float a = *lo, b = *hi;
    *lo = a * c - b * s;
    *hi = b * c + a * s;
}

static void rotate_head(float *x, int64_t half, int interleaved, const float *cs,
                        const float *sn) {
    if (interleaved) /* pairs (2i, 2i+1): llama2.c / GPT-J */
        for (int64_t i = 0; i < half; i++) rotate_pair(x + 2 * i, x + 2 * i + 1, cs[i], sn[i]);
    else /* pairs (i, i + rotary_dim/2): HF rotate_half */
        for (int64_t i = 0; i < half; i++) rotate_pair(x + i, x + i + half, cs[i], sn[i]);
    /* dims rotary_dim .. head_dim - 1 pass through (partial rotary) */
}

/* sign -1 rotates by minus the angle: the backward (a rotation's transpose is its inverse). */
static int rotary(float *x, int64_t B, int64_t T, int64_t H, int64_t head_dim,
                  int64_t rotary_dim, int interleaved, const float *inv_freq, int64_t pos0,
                  float sign) {
    int64_t half = rotary_dim / 2;
    if (B * T * H == 0 || half == 0) return SD_OK;
    float *cs = sd_malloc((size_t)(2 * T * half) * sizeof(float), "rotary cos/sin table");
    if (!cs) return SD_ERR_SYS;
    float *sn = cs + T * half;
    fill_table(cs, sn, T, half, inv_freq, pos0);
    if (sign < 0)
        for (int64_t i = 0; i < T * half; i++) sn[i] = -sn[i];
    /* one task per token row (b, t): its H heads share the row of the table */
#pragma omp parallel for schedule(static) if (B * T * H * head_dim >= SD_CPU_PAR_MIN)
    for (int64_t bt = 0; bt < B * T; bt++) {
        int64_t t = bt % T;
        for (int64_t h = 0; h < H; h++)
            rotate_head(x + (bt * H + h) * head_dim, half, interleaved, cs + t * half,
                        sn + t * half);
    }
    free(cs);
    return SD_OK;
}

int sd_cpu_rotary(float *x, int64_t B, int64_t T, int64_t H, int64_t head_dim,
                  int64_t rotary_dim, int interleaved, const float *inv_freq, int64_t pos0) {
    return rotary(x, B, T, H, head_dim, rotary_dim, interleaved, inv_freq, pos0, 1.0f);
}

int sd_cpu_rotary_backward(float *dx, int64_t B, int64_t T, int64_t H, int64_t head_dim,
                           int64_t rotary_dim, int interleaved, const float *inv_freq,
                           int64_t pos0) {
    return rotary(dx, B, T, H, head_dim, rotary_dim, interleaved, inv_freq, pos0, -1.0f);
}
