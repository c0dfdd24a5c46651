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

/* ---- backward ------------------------------------------------------------------------ */

#include <stdlib.h>

void sd_cpu_colsum(float *dst, const float *a, const float *x, const float *shift,
                   const float *scale, int64_t rows, int64_t d) {
    enum { COLS = 256 };
    int64_t nblk = (d + COLS - 1) / COLS;
    /* A block of columns per task, summed in double over rows in order: the same sums on
     * any thread count. */
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t lo = blk * COLS, nc = lo + COLS < d ? COLS : d - lo;
        double acc[COLS] = {0};
        for (int64_t r = 0; r < rows; r++) {
            const float *ar = a + r * d + lo;
            if (!x) {
                for (int64_t c = 0; c < nc; c++) acc[c] += ar[c];
            } else {
                const float *xr = x + r * d + lo;
                float sh = shift ? shift[r] : 0.0f, sc = scale[r];
                for (int64_t c = 0; c < nc; c++) acc[c] += (double)ar[c] * ((xr[c] - sh) * sc);
            }
        }
        for (int64_t c = 0; c < nc; c++) dst[lo + c] += (float)acc[c];
    }
}

/* y_i = w_i x_i r with r = (mean(x^2) + eps)^-1/2, dr/dx_i = -r^3 x_i / d:
 *   dx_i = r (w_i dy_i) - x_i r^3 / d * sum_j w_j dy_j x_j. */
static float rms_row_backward(float *dx, const float *dy, const float *x, const float *w,
                              int64_t d, float eps) {
    double ss = 0.0, dot = 0.0;
    for (int64_t i = 0; i < d; i++) ss += (double)x[i] * (double)x[i];
    float r = 1.0f / sqrtf((float)(ss / (double)d) + eps);
    if (dx) {
        for (int64_t i = 0; i < d; i++) dot += (double)w[i] * dy[i] * x[i];
        float c = (float)(dot / (double)d) * r * r * r;
        for (int64_t i = 0; i < d; i++) dx[i] += r * (w[i] * dy[i]) - c * x[i];
    }
    return r;
}

int sd_cpu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x,
                            const float *w, int64_t rows, int64_t d, float eps) {
    float *rs = dw ? sd_malloc((size_t)(rows ? rows : 1) * sizeof(float), "rmsnorm rstd") : NULL;
    if (dw && !rs) return SD_ERR_SYS;
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float rr = rms_row_backward(dx ? dx + r * d : NULL, dy + r * d, x + r * d, w, d, eps);
        if (rs) rs[r] = rr;
    }
    if (dw) sd_cpu_colsum(dw, dy, x, NULL, rs, rows, d); /* dw_i += sum_r dy x r */
    free(rs);
    return SD_OK;
}

/* xh = (x - mean) r, y = xh w + b; with g = dy w:
 *   dx_i = r (g_i - mean(g) - xh_i mean(g xh)). */
static void ln_row_backward(float *dx, float *mean_out, float *r_out, const float *dy,
                            const float *x, const float *w, int64_t d, float eps) {
    double s = 0.0;
    for (int64_t i = 0; i < d; i++) s += x[i];
    double mean = s / (double)d, ss = 0.0;
    for (int64_t i = 0; i < d; i++) ss += ((double)x[i] - mean) * ((double)x[i] - mean);
    float meanf = (float)mean, r = 1.0f / sqrtf((float)(ss / (double)d) + eps);
    *mean_out = meanf, *r_out = r;
    if (!dx) return;
    double sg = 0.0, sgx = 0.0;
    for (int64_t i = 0; i < d; i++) {
        float g = dy[i] * w[i];
        sg += g;
        sgx += (double)g * ((x[i] - meanf) * r);
    }
    float mg = (float)(sg / (double)d), mgx = (float)(sgx / (double)d);
    for (int64_t i = 0; i < d; i++)
        dx[i] += r * (dy[i] * w[i] - mg - (x[i] - meanf) * r * mgx);
}

int sd_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                              const float *w, int64_t rows, int64_t d, float eps) {
    float *st = dw ? sd_malloc((size_t)(2 * rows + 1) * sizeof(float), "layernorm stats") : NULL;
    if (dw && !st) return SD_ERR_SYS;
    if (dx || dw) {
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
        for (int64_t r = 0; r < rows; r++) {
            float mean, rr;
            ln_row_backward(dx ? dx + r * d : NULL, &mean, &rr, dy + r * d, x + r * d, w, d, eps);
            if (st) st[r] = mean, st[rows + r] = rr;
        }
    }
    if (dw) sd_cpu_colsum(dw, dy, x, st, st + rows, rows, d); /* dw_i += sum_r dy xh */
    if (db) sd_cpu_colsum(db, dy, NULL, NULL, NULL, rows, d);
    free(st);
    return SD_OK;
}
