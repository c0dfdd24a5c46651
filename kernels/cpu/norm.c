/* Row norms.  The row sums accumulate in double, sequentially in index order: one fixed
 * order (deterministic) and, once rounded to fp32, as close to torch's fp32 reduction as
 * the fp32 result can be.  Everything after the sum is fp32 as in HF. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

/* HF LlamaRMSNorm: var = mean(x^2); y = w * (x * rsqrt(var + eps)). */
static void rmsnorm_row(float *y, const float *x, const float *w, int64_t d, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++) ss += (double)x[i] * (double)x[i];
    float var = (float)(ss / (double)d);
    float r = 1.0f / sqrtf(var + eps);
    for (int64_t i = 0; i < d; i++) y[i] = w[i] * (x[i] * r);
}

void sd_cpu_rmsnorm(float *out, const float *x, const float *w, int64_t rows, int64_t d,
                    float eps) {
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) rmsnorm_row(out + r * d, x + r * d, w, d, eps);
}

/* torch LayerNorm: biased variance var = mean((x - mean)^2), two passes;
 * y = (x - mean) / sqrt(var + eps) * w + b. */
static void layernorm_row(float *y, const float *x, const float *w, const float *b, int64_t d,
                          float eps) {
    double s = 0.0;
    for (int64_t i = 0; i < d; i++) s += x[i];
    double mean = s / (double)d;
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++) ss += ((double)x[i] - mean) * ((double)x[i] - mean);
    float var = (float)(ss / (double)d), meanf = (float)mean;
    float r = 1.0f / sqrtf(var + eps);
    for (int64_t i = 0; i < d; i++) {
        float v = (x[i] - meanf) * r * w[i];
        y[i] = b ? v + b[i] : v;
    }
}

void sd_cpu_layernorm(float *out, const float *x, const float *w, const float *b, int64_t rows,
                      int64_t d, float eps) {
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) layernorm_row(out + r * d, x + r * d, w, b, d, eps);
}
