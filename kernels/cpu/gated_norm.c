/* Gated RMSNorm on the CPU (Mamba-2 RMSNormGated, norm_before_gate = False; HF
 * MambaRMSNormGated): h = y * silu(z) in fp32, then per group of g channels
 * out = w * h / sqrt(mean(h^2) + eps).  Sums in double, in index order. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>
#include <stdlib.h>

static inline float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

static inline float gate_of(const float *y, const float *z, int64_t i) {
    return z ? y[i] * (z[i] * sigmoidf(z[i])) : y[i];
}

/* 1 / sqrt(mean(h^2) + eps) over one group */
static float group_rstd(const float *y, const float *z, int64_t g, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < g; i++) {
        float h = gate_of(y, z, i);
        ss += (double)h * h;
    }
    return 1.0f / sqrtf((float)(ss / (double)g) + eps);
}

void sd_cpu_gated_rmsnorm(float *out, const float *y, const float *z, const float *w,
                          int64_t rows, int64_t d, int64_t g, float eps) {
    int64_t ng = rows * (d / g);
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t k = 0; k < ng; k++) {
        const float *yk = y + k * g, *zk = z ? z + k * g : NULL, *wk = w + (k % (d / g)) * g;
        float r = group_rstd(yk, zk, g, eps);
        for (int64_t i = 0; i < g; i++) out[k * g + i] = wk[i] * (gate_of(yk, zk, i) * r);
    }
}

/* As RMSNorm on h: dh_i = r (w_i do_i) - h_i r^3 / g * sum_j w_j do_j h_j; then
 * dy_i = dh_i silu(z_i), dz_i = dh_i y_i silu'(z_i). */
static void group_backward(float *dy, float *dz, const float *dout, const float *y,
                           const float *z, const float *w, int64_t g, float eps) {
    float r = group_rstd(y, z, g, eps);
    double dot = 0.0;
    for (int64_t i = 0; i < g; i++) dot += (double)w[i] * dout[i] * gate_of(y, z, i);
    float c = (float)(dot / (double)g) * r * r * r;
    for (int64_t i = 0; i < g; i++) {
        float h = gate_of(y, z, i);
        float dh = r * (w[i] * dout[i]) - c * h;
        float s = z ? sigmoidf(z[i]) : 1.0f;
        if (dy) dy[i] += z ? dh * (z[i] * s) : dh;
        if (dz) dz[i] += dh * y[i] * (s * (1.0f + z[i] * (1.0f - s)));
    }
}

int sd_cpu_gated_rmsnorm_backward(float *dy, float *dz, float *dw, const float *dout,
                                  const float *y, const float *z, const float *w, int64_t rows,
                                  int64_t d, int64_t g, float eps) {
    if (!z) dz = NULL;
    if (dy || dz) {
        int64_t ng = rows * (d / g);
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
        for (int64_t k = 0; k < ng; k++) {
            int64_t o = k * g;
            group_backward(dy ? dy + o : NULL, dz ? dz + o : NULL, dout + o, y + o,
                           z ? z + o : NULL, w + (k % (d / g)) * g, g, eps);
        }
    }
    if (!dw) return SD_OK;
    /* dw_i += sum_rows dout_i h_i r: one task per group position, rows in order. */
    int64_t gpr = d / g;
    double *acc = sd_calloc((size_t)(d ? d : 1), sizeof(double), "gated rmsnorm dw");
    if (!acc) return SD_ERR_SYS;
#pragma omp parallel for schedule(static) if (rows * d >= SD_CPU_PAR_MIN)
    for (int64_t q = 0; q < gpr; q++)
        for (int64_t r = 0; r < rows; r++) {
            int64_t o = r * d + q * g;
            float r_ = group_rstd(y + o, z ? z + o : NULL, g, eps);
            for (int64_t i = 0; i < g; i++)
                acc[q * g + i] += (double)dout[o + i] * (gate_of(y + o, z ? z + o : NULL, i) * r_);
        }
    for (int64_t i = 0; i < d; i++) dw[i] += (float)acc[i];
    free(acc);
    return SD_OK;
}
