/* SSD chunked backward on the CPU (kernels/ssd.h).
 *
 * Per chunk [t0, t0 + L) with cs the cumulative loga inside the chunk, xs = dt x, S0 the
 * state entering the chunk, the forward of kernels/cpu/ssd.c is
 *     y_i = sum_{j<=i} (C_i . B_j) exp(cs_i - cs_j) xs_j + exp(cs_i) S0 C_i  (+ D x_i)
 *     S1  = exp(cs_last) S0 + sum_j exp(cs_last - cs_j) xs_j B_j^T
 * and its gradients, given dY and dS1 (the gradient of the state leaving the chunk), are
 *     dxs   = W^T dY + diag(e_dec) B dS1^T          W = (C B^T) o Lmask, e_dec_j = exp(cs_last - cs_j)
 *     dC    = (Lmask o dY xs^T) B + diag(exp(cs)) dY S0
 *     dB    = (Lmask o dY xs^T)^T C + diag(e_dec) xs dS1
 *     dS0   = exp(cs_last) dS1 + dY^T diag(exp(cs)) C
 *     dcs_i = sum_j Z[i, j] - sum_j Z[j, i] + C_i . dC_off_i - B_i . dB_state_i
 *             (+ sum_j B_j . dB_state_j + exp(cs_last) <dS1, S0> for i = last)
 * with Z = W o (dY xs^T); dloga_k = sum_{i >= k in the chunk} dcs_i.  The chunks run last to
 * first, carrying dS; the states entering each chunk are recomputed first (paper section 6,
 * steps 2 and 3).  The clamp of exp arguments at 0 is treated as the identity in the
 * derivative (it only removes rounding).
 *
 * OpenMP over (b, g): the heads of one group run in order inside one thread, so dB and dC,
 * shared by those heads, are summed in a fixed order.  When there are fewer (b, g) pairs than
 * threads, OpenMP over (b, h) into per-head dB, dC buffers summed afterwards in head order:
 * the same additions in the same order, so the result does not depend on the path or the
 * thread count.  dD sums over b after the loop. */
#include "kernels/cpu/ssd_cpu.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/error.h"

typedef struct {
    double *cs, *dcs;        /* [Q] */
    float *ecs, *edec;       /* [Q] exp(cs_i), exp(cs_last - cs_i) */
    float *xs, *dxs;         /* [Q, P] */
    float *W, *Gm;           /* [Q, Q] */
    float *tmp, *dBc, *dCc;  /* [Q, N] */
    float *dS;               /* [P, N] */
    float *states;           /* [chunks, P, N]: the state entering each chunk */
} bw_scratch;

static int bw_alloc(bw_scratch *w, const sd_ssd_dims *d, int64_t Q, int64_t nch) {
    size_t q = (size_t)Q, P = (size_t)d->P, N = (size_t)d->N;
    w->cs = malloc(q * sizeof(double)), w->dcs = malloc(q * sizeof(double));
    w->ecs = malloc(q * sizeof(float)), w->edec = malloc(q * sizeof(float));
    w->xs = malloc(q * P * sizeof(float)), w->dxs = malloc(q * P * sizeof(float));
    w->W = malloc(q * q * sizeof(float)), w->Gm = malloc(q * q * sizeof(float));
    w->tmp = malloc(q * N * sizeof(float)), w->dBc = malloc(q * N * sizeof(float));
    w->dCc = malloc(q * N * sizeof(float)), w->dS = malloc(P * N * sizeof(float));
    w->states = malloc((size_t)nch * P * N * sizeof(float));
    return w->cs && w->dcs && w->ecs && w->edec && w->xs && w->dxs && w->W && w->Gm && w->tmp &&
           w->dBc && w->dCc && w->dS && w->states;
}

static void bw_free(bw_scratch *w) {
    free(w->cs), free(w->dcs), free(w->ecs), free(w->edec), free(w->xs), free(w->dxs);
    free(w->W), free(w->Gm), free(w->tmp), free(w->dBc), free(w->dCc), free(w->dS);
    free(w->states);
}

/* cs, exp(cs), the decays to the chunk end and xs = dt x of chunk [t0, t0 + L). */
static void chunk_prep(bw_scratch *w, const head_view *v, const sd_ssd_dims *d, int64_t t0,
                       int64_t L) {
    sd_ssd_cumsum(w->cs, v->loga, d->H, t0, L);
    sd_ssd_scaled_x(w->xs, v->x, v->dt, d, t0, L);
    double last = w->cs[L - 1];
    for (int64_t i = 0; i < L; i++) {
        w->ecs[i] = sd_ssd_seg_exp(w->cs[i]);
        w->edec[i] = sd_ssd_seg_exp(last - w->cs[i]);
        w->dcs[i] = 0.0;
    }
}

/* Steps 2 and 3 of the forward only: S <- exp(cs_last) S + (e_dec o xs)^T B. */
static void chunk_state(float *S, bw_scratch *w, const head_view *v, const sd_ssd_dims *d,
                        int64_t t0, int64_t L) {
    int64_t P = d->P, N = d->N, ldbc = d->G * d->N;
    chunk_prep(w, v, d, t0, L);
    for (int64_t j = 0; j < L; j++)
        for (int64_t p = 0; p < P; p++) w->dxs[j * P + p] = w->edec[j] * w->xs[j * P + p];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)P, (int)N, (int)L, 1.0f, w->dxs,
                (int)P, v->B + t0 * ldbc, (int)ldbc, w->ecs[L - 1], S, (int)N);
}

/* W = (C B^T) o Lmask, Gm = Lmask o (dY xs^T); Z = W o (dY xs^T) goes into dcs. */
static void chunk_diag_grads(bw_scratch *w, const float *Bc, const float *Cc, const float *dyc,
                             const sd_ssd_dims *d, int64_t L) {
    int ldbc = (int)(d->G * d->N), ldx = (int)(d->H * d->P);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)L, (int)L, (int)d->N, 1.0f, Cc,
                ldbc, Bc, ldbc, 0.0f, w->W, (int)L);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)L, (int)L, (int)d->P, 1.0f, dyc,
                ldx, w->xs, (int)d->P, 0.0f, w->Gm, (int)L);
    for (int64_t i = 0; i < L; i++) {
        float *Wr = w->W + i * L, *Gr = w->Gm + i * L;
        for (int64_t j = 0; j <= i; j++) {
            float l = sd_ssd_seg_exp(w->cs[i] - w->cs[j]);
            Gr[j] *= l;
            double z = (double)Wr[j] * Gr[j];
            w->dcs[i] += z;
            w->dcs[j] -= z;
            Wr[j] *= l;
        }
        for (int64_t j = i + 1; j < L; j++) Wr[j] = Gr[j] = 0.0f;
    }
}

/* Gradient outputs of one (b, h) (rows as the inputs); any may be NULL. */
typedef struct {
    float *dx, *ddt, *dloga, *dB, *dC;
    int64_t ld_bc; /* row stride of dB and dC */
} head_grads;

/* Adds the chunk's dx, ddt, dloga, dB, dC; returns sum_i dy_i . x_i (for dD). */
static double chunk_scatter(const head_grads *o, bw_scratch *w, const head_view *v,
                            const float *dy_bh, const sd_ssd_dims *d, int64_t t0, int64_t L) {
    int64_t P = d->P, N = d->N, H = d->H, ldx = H * P, ldbc = o->ld_bc;
    double acc = 0.0, dD = 0.0;
    for (int64_t k = L - 1; k >= 0; k--) { /* dloga_k = sum_{i >= k} dcs_i */
        acc += w->dcs[k];
        if (o->dloga) o->dloga[(t0 + k) * H] += (float)acc;
    }
    for (int64_t j = 0; j < L; j++) {
        const float *xr = v->x + (t0 + j) * ldx, *dyr = dy_bh + (t0 + j) * ldx;
        const float *g = w->dxs + j * P;
        float dtj = v->dt ? v->dt[(t0 + j) * H] : 1.0f;
        double sdt = 0.0;
        for (int64_t p = 0; p < P; p++) {
            sdt += (double)xr[p] * g[p];
            dD += (double)xr[p] * dyr[p];
            if (o->dx) o->dx[(t0 + j) * ldx + p] += dtj * g[p] + v->D * dyr[p];
        }
        if (o->ddt) o->ddt[(t0 + j) * H] += (float)sdt;
        for (int64_t n = 0; n < N; n++) {
            if (o->dB) o->dB[(t0 + j) * ldbc + n] += w->dBc[j * N + n];
            if (o->dC) o->dC[(t0 + j) * ldbc + n] += w->dCc[j * N + n];
        }
    }
    return dD;
}

/* One chunk, last to first: S0 the state entering it; w->dS holds dS1 on entry, dS0 on exit. */
static double chunk_backward(const head_grads *o, bw_scratch *w, const head_view *v,
                             const float *dy_bh, const float *S0, const sd_ssd_dims *d,
                             int64_t t0, int64_t L) {
    int64_t P = d->P, N = d->N, ldbc = d->G * N, ldx = d->H * P;
    const float *Bc = v->B + t0 * ldbc, *Cc = v->C + t0 * ldbc, *dyc = dy_bh + t0 * ldx;
    chunk_prep(w, v, d, t0, L);
    chunk_diag_grads(w, Bc, Cc, dyc, d, L);
    /* dxs = W^T dY + diag(e_dec) B dS1^T */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)L, (int)P, (int)L, 1.0f, w->W,
                (int)L, dyc, (int)ldx, 0.0f, w->dxs, (int)P);
    for (int64_t j = 0; j < L; j++)
        for (int64_t n = 0; n < N; n++) w->tmp[j * N + n] = w->edec[j] * Bc[j * ldbc + n];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)L, (int)P, (int)N, 1.0f, w->tmp,
                (int)N, w->dS, (int)N, 1.0f, w->dxs, (int)P);
    /* dC = Gm B + diag(exp(cs)) dY S0; dcs_i += C_i . dC_off_i */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)L, (int)N, (int)L, 1.0f, w->Gm,
                (int)L, Bc, (int)ldbc, 0.0f, w->dCc, (int)N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)L, (int)N, (int)P, 1.0f, dyc,
                (int)ldx, S0, (int)N, 0.0f, w->tmp, (int)N);
    for (int64_t i = 0; i < L; i++) {
        double dot = 0.0;
        for (int64_t n = 0; n < N; n++) {
            float g = w->ecs[i] * w->tmp[i * N + n];
            dot += (double)Cc[i * ldbc + n] * g;
            w->dCc[i * N + n] += g;
        }
        w->dcs[i] += dot;
    }
    /* dB = Gm^T C + diag(e_dec) xs dS1; dcs_j -= B_j . dB_state_j, dcs_last += their sum */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)L, (int)N, (int)L, 1.0f, w->Gm,
                (int)L, Cc, (int)ldbc, 0.0f, w->dBc, (int)N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)L, (int)N, (int)P, 1.0f, w->xs,
                (int)P, w->dS, (int)N, 0.0f, w->tmp, (int)N);
    double q = 0.0, sS = 0.0;
    for (int64_t j = 0; j < L; j++) {
        double dot = 0.0;
        for (int64_t n = 0; n < N; n++) {
            float g = w->edec[j] * w->tmp[j * N + n];
            dot += (double)Bc[j * ldbc + n] * g;
            w->dBc[j * N + n] += g;
        }
        w->dcs[j] -= dot;
        q += dot;
    }
    for (int64_t i = 0; i < P * N; i++) sS += (double)w->dS[i] * S0[i];
    float elast = w->ecs[L - 1];
    w->dcs[L - 1] += q + elast * sS;
    /* dS0 = exp(cs_last) dS1 + dY^T diag(exp(cs)) C */
    for (int64_t i = 0; i < L; i++)
        for (int64_t n = 0; n < N; n++) w->tmp[i * N + n] = w->ecs[i] * Cc[i * ldbc + n];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)P, (int)N, (int)L, 1.0f, dyc,
                (int)ldx, w->tmp, (int)N, elast, w->dS, (int)N);
    return chunk_scatter(o, w, v, dy_bh, d, t0, L);
}

/* The whole backward of one (b, h): recompute the chunk states, then the chunks in reverse.
 * Returns sum_t dy_t . x_t; dinit (may be NULL) gets dS added. */
static double head_backward(const head_grads *o, bw_scratch *w, const head_view *v,
                            const float *dy_bh, const float *init, const float *dfinal,
                            float *dinit, const sd_ssd_dims *d, int64_t Q) {
    int64_t PN = d->P * d->N, nch = (d->T + Q - 1) / Q;
    float *S = w->dS; /* borrowed as the running state before the backward sweep */
    if (init) memcpy(S, init, (size_t)PN * sizeof *S);
    else memset(S, 0, (size_t)PN * sizeof *S);
    for (int64_t c = 0; c < nch; c++) {
        int64_t t0 = c * Q, L = d->T - t0 < Q ? d->T - t0 : Q;
        memcpy(w->states + c * PN, S, (size_t)PN * sizeof *S);
        if (c + 1 < nch) chunk_state(S, w, v, d, t0, L);
    }
    if (dfinal) memcpy(w->dS, dfinal, (size_t)PN * sizeof *S);
    else memset(w->dS, 0, (size_t)PN * sizeof *S);
    double dD = 0.0;
    for (int64_t c = nch - 1; c >= 0; c--) {
        int64_t t0 = c * Q, L = d->T - t0 < Q ? d->T - t0 : Q;
        dD += chunk_backward(o, w, v, dy_bh, w->states + c * PN, d, t0, L);
    }
    if (dinit)
        for (int64_t i = 0; i < PN; i++) dinit[i] += w->dS[i];
    return dD;
}

/* The gradient rows of (b, h); dB and dC go to the group's rows of g (hB, hC NULL) or to
 * per-head buffers hB, hC [B, H, T, N]. */
static head_grads grads_of_head(const sd_ssd_grads *g, float *hB, float *hC,
                                const sd_ssd_dims *d, int64_t b, int64_t h) {
    int64_t gi = h / (d->H / d->G), rx = (b * d->T * d->H + h) * d->P;
    int64_t rh = b * d->T * d->H + h, rb = (b * d->T * d->G + gi) * d->N;
    int64_t rp = (b * d->H + h) * d->T * d->N;
    head_grads o = {g->dx ? g->dx + rx : NULL, g->ddt ? g->ddt + rh : NULL,
                    g->dloga ? g->dloga + rh : NULL, g->dB ? g->dB + rb : NULL,
                    g->dC ? g->dC + rb : NULL, d->G * d->N};
    if (hB || hC) {
        o.dB = hB ? hB + rp : NULL, o.dC = hC ? hC + rp : NULL;
        o.ld_bc = d->N;
    }
    return o;
}

/* Everything the per-head loops need. */
typedef struct {
    const sd_ssd_grads *g;
    const float *dy, *init, *dfinal;
    const sd_ssd_in *in;
    const sd_ssd_dims *d;
    int64_t Q, nch;
    double *dDp; /* [B, H] */
    float *hB, *hC; /* per-head dB, dC or NULL */
} bw_job;

/* One (b, h) with its scratch. */
static void run_head(const bw_job *j, bw_scratch *w, int64_t b, int64_t h) {
    const sd_ssd_dims *d = j->d;
    int64_t bh = b * d->H + h, PN = d->P * d->N;
    head_view v = view_head(j->in, d, b, h);
    head_grads o = grads_of_head(j->g, j->hB, j->hC, d, b, h);
    j->dDp[bh] = head_backward(&o, w, &v, j->dy + (b * d->T * d->H + h) * d->P,
                               j->init ? j->init + bh * PN : NULL,
                               j->dfinal ? j->dfinal + bh * PN : NULL,
                               j->g->dinit ? j->g->dinit + bh * PN : NULL, d, j->Q);
}

/* OpenMP over (b, g); the heads of a group in order add into the group's dB, dC rows. */
static int by_group(const bw_job *j) {
    const sd_ssd_dims *d = j->d;
    int64_t pairs = d->B * d->G, hpg = d->H / d->G;
    int failed = 0;
#pragma omp parallel for schedule(static) if (pairs > 1)
    for (int64_t bg = 0; bg < pairs; bg++) {
        int64_t b = bg / d->G, gi = bg % d->G;
        bw_scratch w;
        if (!bw_alloc(&w, d, j->Q, j->nch)) {
#pragma omp atomic write
            failed = 1;
        } else {
            for (int64_t h = gi * hpg; h < (gi + 1) * hpg; h++) run_head(j, &w, b, h);
        }
        bw_free(&w);
    }
    return !failed;
}

/* OpenMP over (b, h) into per-head dB, dC buffers, then the sum over the heads of each group
 * in head order: the same additions in the same order as by_group, so the same bits. */
static int by_head(const bw_job *j) {
    const sd_ssd_dims *d = j->d;
    int64_t pairs = d->B * d->H, hpg = d->H / d->G, N = d->N, rows = d->B * d->T;
    int failed = 0;
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < pairs; bh++) {
        bw_scratch w;
        if (!bw_alloc(&w, d, j->Q, j->nch)) {
#pragma omp atomic write
            failed = 1;
        } else {
            run_head(j, &w, bh / d->H, bh % d->H);
        }
        bw_free(&w);
    }
    if (failed) return 0;
#pragma omp parallel for schedule(static)
    for (int64_t bt = 0; bt < rows; bt++) {
        int64_t b = bt / d->T, t = bt % d->T;
        for (int64_t h = 0; h < d->H; h++) {
            int64_t src = ((b * d->H + h) * d->T + t) * N, dst = (bt * d->G + h / hpg) * N;
            for (int64_t n = 0; n < N; n++) {
                if (j->hB) j->g->dB[dst + n] += j->hB[src + n];
                if (j->hC) j->g->dC[dst + n] += j->hC[src + n];
            }
        }
    }
    return 1;
}

int sd_cpu_ssd_chunked_backward(const sd_ssd_grads *g, const float *dy, const sd_ssd_in *in,
                                const sd_ssd_dims *d, int64_t chunk, const float *init_state,
                                const float *dfinal_state) {
    int64_t T = d->T, ns = d->B * d->H * d->P * d->N;
    if (T == 0 && g->dinit && dfinal_state) /* no steps: the final state is the initial one */
        for (int64_t i = 0; i < ns; i++) g->dinit[i] += dfinal_state[i];
    if (T == 0 || d->B * d->H == 0) return SD_OK;
    int64_t Q = chunk < T ? chunk : T;
    bw_job j = {g, dy, init_state, dfinal_state, in, d, Q, (T + Q - 1) / Q, NULL, NULL, NULL};
    j.dDp = calloc((size_t)(d->B * d->H), sizeof *j.dDp); /* per (b, h), summed after */
    if (!j.dDp) return sd_fail(SD_ERR_SYS, "sd_ssd_chunked_backward: out of memory");
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    int ok;
    if (d->B * d->G < nthreads && d->G < d->H) {
        /* Too few groups to fill the threads: per-head buffers (falls back when they do not fit). */
        size_t nb = (size_t)(d->B * d->H * T * d->N);
        j.hB = g->dB ? calloc(nb, sizeof(float)) : NULL;
        j.hC = g->dC ? calloc(nb, sizeof(float)) : NULL;
        if ((g->dB && !j.hB) || (g->dC && !j.hC)) {
            free(j.hB), free(j.hC);
            j.hB = j.hC = NULL;
            ok = by_group(&j);
        } else {
            ok = by_head(&j);
        }
        free(j.hB), free(j.hC);
    } else {
        ok = by_group(&j);
    }
    if (g->dD && ok)
        for (int64_t h = 0; h < d->H; h++) {
            double s = 0.0;
            for (int64_t b = 0; b < d->B; b++) s += j.dDp[b * d->H + h];
            g->dD[h] += (float)s;
        }
    free(j.dDp);
    if (!ok) return sd_fail(SD_ERR_SYS, "sd_ssd_chunked_backward: out of memory for scratch");
    return SD_OK;
}
