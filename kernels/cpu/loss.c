/* Cross-entropy and KL divergence from logits on the CPU: a fused, max-subtracted
 * log-softmax per row (exp never overflows, the sum runs in double in index order), one
 * task per row. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>
#include <stdlib.h>

/* log sum_i exp(x_i * s) = m + log(sum_i exp(x_i s - m)), m = max_i x_i s. */
static float row_lse(const float *x, int64_t V, float s) {
    float m = -INFINITY;
    for (int64_t i = 0; i < V; i++) m = x[i] * s > m ? x[i] * s : m;
    double sum = 0.0;
    for (int64_t i = 0; i < V; i++) sum += expf(x[i] * s - m);
    return m + logf((float)sum);
}

/* loss_r = lse(x_r) - x_r[target]  (torch cross_entropy, reduction 'none'). */
void sd_cpu_cross_entropy(float *loss, const float *logits, const int32_t *targets,
                          int64_t rows, int64_t V, int32_t ignore_index) {
#pragma omp parallel for schedule(static) if (rows * V >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = logits + r * V;
        loss[r] = targets[r] == ignore_index ? 0.0f : row_lse(x, V, 1.0f) - x[targets[r]];
    }
}

/* d loss_r / d x_i = softmax(x)_i - [i == target]. */
void sd_cpu_cross_entropy_backward(float *dlogits, const float *dloss, float scale,
                                   const float *logits, const int32_t *targets, int64_t rows,
                                   int64_t V, int32_t ignore_index) {
#pragma omp parallel for schedule(static) if (rows * V >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        if (targets[r] == ignore_index) continue;
        const float *x = logits + r * V;
        float *dx = dlogits + r * V;
        float g = scale * (dloss ? dloss[r] : 1.0f), lse = row_lse(x, V, 1.0f);
        for (int64_t i = 0; i < V; i++) dx[i] += g * expf(x[i] - lse);
        dx[targets[r]] -= g;
    }
}

/* KL(p_t || p_s) = sum_i p_t,i (log p_t,i - log p_s,i), log p = x / T - lse(x / T).
 * Terms with p_t = 0 (underflow) contribute 0, the limit of p log p. */
static float kl_row(const float *t, const float *s, int64_t V, float inv_T) {
    float lt = row_lse(t, V, inv_T), ls = row_lse(s, V, inv_T);
    double kl = 0.0;
    for (int64_t i = 0; i < V; i++) {
        float lpt = t[i] * inv_T - lt, lps = s[i] * inv_T - ls;
        float pt = expf(lpt);
        if (pt > 0.0f) kl += (double)pt * (double)(lpt - lps);
    }
    return (float)kl;
}

void sd_cpu_kl_div(float *loss, const float *teacher, const float *student,
                   const int32_t *targets, int64_t rows, int64_t V, float temperature,
                   int32_t ignore_index) {
    float inv_T = 1.0f / temperature;
#pragma omp parallel for schedule(static) if (rows * V >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        loss[r] = targets && targets[r] == ignore_index
                      ? 0.0f
                      : kl_row(teacher + r * V, student + r * V, V, inv_T);
}

/* d KL / d s_i = (p_s,i - p_t,i) / T (sum_i p_t = 1). */
void sd_cpu_kl_div_backward(float *dstudent, const float *dloss, float scale,
                            const float *teacher, const float *student, const int32_t *targets,
                            int64_t rows, int64_t V, float temperature, int32_t ignore_index) {
    float inv_T = 1.0f / temperature;
#pragma omp parallel for schedule(static) if (rows * V >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        if (targets && targets[r] == ignore_index) continue;
        const float *t = teacher + r * V, *s = student + r * V;
        float *ds = dstudent + r * V;
        float g = scale * (dloss ? dloss[r] : 1.0f) * inv_T;
        float lt = row_lse(t, V, inv_T), ls = row_lse(s, V, inv_T);
        for (int64_t i = 0; i < V; i++)
            ds[i] += g * (expf(s[i] * inv_T - ls) - expf(t[i] * inv_T - lt));
    }
}

/* Stage 2: loss = (1/R) sum_r ||o_r - t_r||, d_r = (o_r - t_r) / (||o_r - t_r|| R).  The rows
 * run in parallel, each exactly as the former serial loop (distill/stages.c row_l2_mean) ran
 * it; their norms are then summed in row order, so the result is the serial one, bit for bit. */
int sd_cpu_row_l2_mean(float *loss, float *d, const float *out, const float *target, int64_t rows,
                       int64_t n) {
    if (rows == 0) {
        *loss = 0.0f;
        return SD_OK;
    }
    double *norms = malloc((size_t)rows * sizeof(double));
    if (!norms) return sd_fail(SD_ERR_SYS, "sd_row_l2_mean: out of memory for %lld row norms", (long long)rows);
#pragma omp parallel for schedule(static) if (rows * n >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *o = out + r * n, *t = target + r * n;
        double ss = 0;
        for (int64_t i = 0; i < n; i++) {
            double diff = (double)o[i] - t[i];
            ss += diff * diff;
        }
        double norm = sqrt(ss);
        norms[r] = norm;
        if (!d) continue;
        float *dr = d + r * n;
        double scale = norm > 0 ? 1.0 / (norm * (double)rows) : 0.0; /* 0: the zero subgradient */
        for (int64_t i = 0; i < n; i++) dr[i] = (float)(((double)o[i] - t[i]) * scale);
    }
    double sum = 0;
    for (int64_t r = 0; r < rows; r++) sum += norms[r];
    free(norms);
    *loss = (float)(sum / (double)rows);
    return SD_OK;
}
