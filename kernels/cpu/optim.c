/* Optimizer kernels of the CPU backend: fp32 elementwise updates (any thread order gives the
 * same result) and a sum of squares whose order is fixed by the size alone. */

#include <math.h>

#include "kernels/cpu/cpu_ops.h"

/* torch.lerp: two formulas, each exact at its own end. */
static inline float lerp(float a, float b, float w) {
    return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

/* torch's single-tensor AdamW, step by step in fp32:
 *   param.mul_(1 - lr * wd); exp_avg.lerp_(grad, 1 - beta1);
 *   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2);
 *   denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps); param.addcdiv_(exp_avg, denom, -step_size) */
void sd_cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, float beta1,
                  float beta2, float eps, float decay, float step_size, float bc2_sqrt) {
    const float one_m_b1 = 1.0f - beta1, one_m_b2 = 1.0f - beta2;
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = lerp(m[i], gi, one_m_b1);
        float vi = v[i] * beta2 + one_m_b2 * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * (mi / denom);
    }
}

/* The sum is cut into SUMSQ_CHUNKS pieces whose bounds depend only on n; each piece is summed
 * in index order in double and the pieces are added in order.  So the result is the same
 * whether one thread or many run it (DESIGN.md section 3: a resumed run continues bit for
 * bit), and the parallel threshold does not change it either. */
#define SUMSQ_CHUNKS 64

static double sumsq_range(const float *x, int64_t lo, int64_t hi) {
    double s = 0.0;
    for (int64_t i = lo; i < hi; i++) s += (double)x[i] * (double)x[i];
    return s;
}

double sd_cpu_sum_squares(const float *x, int64_t n) {
    double part[SUMSQ_CHUNKS];
    int64_t chunk = (n + SUMSQ_CHUNKS - 1) / SUMSQ_CHUNKS;
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int c = 0; c < SUMSQ_CHUNKS; c++) {
        int64_t lo = (int64_t)c * chunk, hi = lo + chunk;
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        part[c] = sumsq_range(x, lo, hi);
    }
    double s = 0.0;
    for (int c = 0; c < SUMSQ_CHUNKS; c++) s += part[c];
    return s;
}

void sd_cpu_scale(float *x, int64_t n, float s) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}
