/* Row softmax / log-softmax over the last dim, max-subtracted so that exp never
 * overflows.  The denominator sums in double in index order (deterministic). */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

static float row_max(const float *x, int64_t d) {
    float m = -INFINITY;
    for (int64_t i = 0; i < d; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* p_i = exp(x_i - max) / sum_j exp(x_j - max).  Each element is read before it is written,
 * so y may alias x. */
static void softmax_row(float *y, const float *x, int64_t d) {
    float m = row_max(x, d);
    double sum = 0.0;
    for (int64_t i = 0; i < d; i++) {
        float e = expf(x[i] - m);
        y[i] = e;
        sum += e;
    }
    float inv = 1.0f / (float)sum;
    for (int64_t i = 0; i < d; i++) y[i] *= inv;
}

/* log p_i = x_i - lse with lse = max + log(sum_j exp(x_j - max)), as torch. */
static void log_softmax_row(float *y, const float *x, int64_t d) {
    float m = row_max(x, d);
    double sum = 0.0;
    for (int64_t i = 0; i < d; i++) sum += expf(x[i] - m);
    float lse = m + logf((float)sum);
    for (int64_t i = 0; i < d; i++) y[i] = x[i] - lse;
}

void sd_cpu_softmax(float *out, const float *x, int64_t rows, int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) softmax_row(out + r * d, x + r * d, d);
}

void sd_cpu_log_softmax(float *out, const float *x, int64_t rows, int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) log_softmax_row(out + r * d, x + r * d, d);
}

/* p = softmax(x): dx_i = p_i (dy_i - sum_j dy_j p_j). */
static void softmax_row_backward(float *dx, const float *dy, const float *p, int64_t d) {
    double s = 0.0;
    for (int64_t i = 0; i < d; i++) s += (double)dy[i] * p[i];
    float sf = (float)s;
    for (int64_t i = 0; i < d; i++) dx[i] += p[i] * (dy[i] - sf);
}

/* y = log_softmax(x): dx_i = dy_i - exp(y_i) sum_j dy_j. */
static void log_softmax_row_backward(float *dx, const float *dy, const float *y, int64_t d) {
    double s = 0.0;
    for (int64_t i = 0; i < d; i++) s += dy[i];
    float sf = (float)s;
    for (int64_t i = 0; i < d; i++) dx[i] += dy[i] - expf(y[i]) * sf;
}

void sd_cpu_softmax_backward(float *dx, const float *dy, const float *y, int64_t rows, int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) softmax_row_backward(dx + r * d, dy + r * d, y + r * d, d);
}

void sd_cpu_log_softmax_backward(float *dx, const float *dy, const float *y, int64_t rows,
                                 int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        log_softmax_row_backward(dx + r * d, dy + r * d, y + r * d, d);
}
