/* Backward of the SSD matrix (kernels/ssd.h, sd_ssd_matrix_backward): the gradient of a loss
 * on M[t, s] = (C_t . B_s) exp(cs_t - cs_s) dt_s (s <= t) with respect to dt, loga, B and C,
 * given dM.  This is what the stage-1 loss (DESIGN.md section 5) needs.
 *
 * With E[t, s] = exp(cs_t - cs_s) (clamped at 0, below the diagonal), R = dM o E and
 * dCB = R diag(dt), Z = dM o M:
 *     dC = dCB B,  dB = dCB^T C,  ddt_s = sum_t R[t, s] (C_t . B_s),
 *     dcs_t = sum_s Z[t, s] - sum_s Z[s, t],  dloga_k = sum_{t >= k} dcs_t.
 * O(T^2 N) per (b, h) through sgemm.  OpenMP over (b, g) with the heads of a group in order
 * inside one thread: dB and dC, shared by those heads, sum in a fixed order. */
#include "kernels/cpu/ssd_cpu.h"

#include <cblas.h>
#include <stdlib.h>

#include "common/error.h"

/* One (b, h): CB and R are [T, T] scratch, cs and dcs [T]. */
static void matrix_head_backward(float *ddt, float *dloga, float *dB, float *dC,
                                 const float *dM, const head_view *v, const sd_ssd_dims *d,
                                 float *CB, float *R, double *cs, double *dcs) {
    int64_t T = d->T, H = d->H;
    int ldbc = (int)(d->G * d->N);
    sd_ssd_cumsum(cs, v->loga, H, 0, T);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)d->N, 1.0f, v->C,
                ldbc, v->B, ldbc, 0.0f, CB, (int)T);
    for (int64_t t = 0; t < T; t++) dcs[t] = 0.0;
    for (int64_t t = 0; t < T; t++) {
        const float *g = dM + t * T;
        float *r = R + t * T;
        for (int64_t s = 0; s <= t; s++) {
            float dts = v->dt ? v->dt[s * H] : 1.0f;
            r[s] = g[s] * sd_ssd_seg_exp(cs[t] - cs[s]);
            double z = (double)r[s] * CB[t * T + s] * dts; /* dM[t, s] M[t, s] */
            dcs[t] += z;
            dcs[s] -= z;
            if (ddt) ddt[s * H] += r[s] * CB[t * T + s];
            r[s] *= dts; /* now dCB */
        }
        for (int64_t s = t + 1; s < T; s++) r[s] = 0.0f;
    }
    double acc = 0.0;
    for (int64_t k = T - 1; k >= 0; k--) {
        acc += dcs[k];
        if (dloga) dloga[k * H] += (float)acc;
    }
    if (dC)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)d->N, (int)T, 1.0f, R,
                    (int)T, v->B, ldbc, 1.0f, dC, ldbc);
    if (dB)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)T, (int)d->N, (int)T, 1.0f, R,
                    (int)T, v->C, ldbc, 1.0f, dB, ldbc);
}

int sd_cpu_ssd_matrix_backward(const sd_ssd_grads *g, const float *dM, const sd_ssd_in *in,
                               const sd_ssd_dims *d) {
    int64_t T = d->T, pairs = d->B * d->G, hpg = d->H / d->G;
    if (T == 0 || pairs == 0) return SD_OK;
    int failed = 0;
#pragma omp parallel for schedule(static) if (pairs > 1)
    for (int64_t bg = 0; bg < pairs; bg++) {
        int64_t b = bg / d->G, gi = bg % d->G;
        float *CB = malloc((size_t)(T * T) * sizeof *CB), *R = malloc((size_t)(T * T) * sizeof *R);
        double *cs = malloc((size_t)T * sizeof *cs), *dcs = malloc((size_t)T * sizeof *dcs);
        if (!CB || !R || !cs || !dcs) {
#pragma omp atomic write
            failed = 1;
        } else {
            int64_t rb = (b * T * d->G + gi) * d->N;
            for (int64_t h = gi * hpg; h < (gi + 1) * hpg; h++) { /* heads of the group, in order */
                int64_t rh = b * T * d->H + h;
                head_view v = view_head(in, d, b, h);
                matrix_head_backward(g->ddt ? g->ddt + rh : NULL, g->dloga ? g->dloga + rh : NULL,
                                     g->dB ? g->dB + rb : NULL, g->dC ? g->dC + rb : NULL,
                                     dM + (b * d->H + h) * T * T, &v, d, CB, R, cs, dcs);
            }
        }
        free(CB), free(R), free(cs), free(dcs);
    }
    if (failed)
        return sd_fail(SD_ERR_SYS, "sd_ssd_matrix_backward: out of memory for %lld x %lld scratch",
                       (long long)T, (long long)T);
    return SD_OK;
}
