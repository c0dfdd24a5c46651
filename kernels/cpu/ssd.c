/* SSD forward on the CPU: the quadratic (materialised matrix), chunked (Mamba-2 paper
 * section 6) and recurrent-step forms.  kernels/ssd.h has the math.
 *
 * Every form works on one (b, h) pair at a time in one thread; OpenMP splits the (b, h)
 * pairs, so the result of a pair does not depend on the thread count.  The per-chunk matmuls
 * go through single-threaded CBLAS sgemm with strided rows (x row stride H*P, B/C row stride
 * G*N), so no input is copied. */
#include "kernels/cpu/ssd_cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* exp of a segment sum cs_t - cs_s (t >= s), a sum of loga <= 0.  Clamped at 0 before exp:
 * rounding in the cumulative sums can make the difference slightly positive. */
float sd_ssd_seg_exp(double diff) { return expf((float)(diff < 0.0 ? diff : 0.0)); }

/* Inclusive cumulative sum of loga over steps t0 .. t0 + L - 1 of head h (in double):
 * cs[i] = sum_{k=t0..t0+i} loga_k, the paper's A_cumsum within a chunk. */
void sd_ssd_cumsum(double *cs, const float *loga_bh, int64_t H, int64_t t0, int64_t L) {
    double acc = 0.0;
    for (int64_t i = 0; i < L; i++) {
        acc += loga_bh[(t0 + i) * H];
        cs[i] = acc;
    }
}

/* xs[i, :] = dt_{t0+i} x_{t0+i} (dt NULL: 1), packed [L, P]. */
void sd_ssd_scaled_x(float *xs, const float *x_bh, const float *dt_bh, const sd_ssd_dims *d,
                     int64_t t0, int64_t L) {
    for (int64_t i = 0; i < L; i++) {
        const float *xr = x_bh + (t0 + i) * d->H * d->P;
        float s = dt_bh ? dt_bh[(t0 + i) * d->H] : 1.0f;
        for (int64_t p = 0; p < d->P; p++) xs[i * d->P + p] = s * xr[p];
    }
}

/* y_t += D_h x_t over all T rows of one (b, h). */
static void add_skip(float *y_bh, const float *x_bh, float Dh, const sd_ssd_dims *d) {
    int64_t ld = d->H * d->P;
    for (int64_t t = 0; t < d->T; t++)
        for (int64_t p = 0; p < d->P; p++) y_bh[t * ld + p] += Dh * x_bh[t * ld + p];
}

/* ---- quadratic form ------------------------------------------------------------------ */

/* M = (C B^T) o L o dt (paper section 3: the semiseparable matrix, L[t, s] = exp(cs_t - cs_s)
 * below the diagonal), then y = M x. */
static void quadratic_head(float *y_bh, float *M, double *cs, const head_view *v,
                           const sd_ssd_dims *d) {
    int64_t T = d->T, ldbc = d->G * d->N, ldx = d->H * d->P;
    sd_ssd_cumsum(cs, v->loga, d->H, 0, T);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)d->N, 1.0f, v->C,
                (int)ldbc, v->B, (int)ldbc, 0.0f, M, (int)T);
    for (int64_t t = 0; t < T; t++) {
        float *row = M + t * T;
        for (int64_t s = 0; s <= t; s++) {
            float dts = v->dt ? v->dt[s * d->H] : 1.0f;
            row[s] *= sd_ssd_seg_exp(cs[t] - cs[s]) * dts;
        }
        for (int64_t s = t + 1; s < T; s++) row[s] = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)d->P, (int)T, 1.0f, M,
                (int)T, v->x, (int)ldx, 0.0f, y_bh, (int)ldx);
    if (v->D != 0.0f) add_skip(y_bh, v->x, v->D, d);
}

int sd_cpu_ssd_quadratic(float *y, const sd_ssd_in *in, const sd_ssd_dims *d, float *M_out) {
    int64_t T = d->T, pairs = d->B * d->H;
    if (T == 0 || pairs == 0) return SD_OK;
    int failed = 0;
#pragma omp parallel for schedule(static) if (pairs > 1)
    for (int64_t bh = 0; bh < pairs; bh++) {
        int64_t b = bh / d->H, h = bh % d->H;
        double *cs = malloc((size_t)T * sizeof *cs);
        float *M = M_out ? M_out + bh * T * T : malloc((size_t)(T * T) * sizeof *M);
        if (!cs || !M) {
#pragma omp atomic write
            failed = 1;
        } else {
            head_view v = view_head(in, d, b, h);
            quadratic_head(y + (b * T * d->H + h) * d->P, M, cs, &v, d);
        }
        free(cs);
        if (!M_out) free(M);
    }
    if (failed) return sd_fail(SD_ERR_SYS, "sd_ssd_quadratic: out of memory for a %lld x %lld matrix",
                               (long long)T, (long long)T);
    return SD_OK;
}

/* ---- chunked form ---------------------------------------------------------------------- */

/* Scratch of one (b, h) pair for chunks of up to Q steps. */
typedef struct {
    double *cs;      /* [Q] cumulative loga within the chunk */
    float *xs;       /* [Q, P] dt x */
    float *CB;       /* [Q, Q] */
    float *Cs;       /* [Q, N] */
} chunk_scratch;

static int scratch_alloc(chunk_scratch *s, const sd_ssd_dims *d, int64_t Q) {
    s->cs = malloc((size_t)Q * sizeof *s->cs);
    s->xs = malloc((size_t)(Q * d->P) * sizeof *s->xs);
    s->CB = malloc((size_t)(Q * Q) * sizeof *s->CB);
    s->Cs = malloc((size_t)(Q * d->N) * sizeof *s->Cs);
    return s->cs && s->xs && s->CB && s->Cs;
}

static void scratch_free(chunk_scratch *s) {
    free(s->cs), free(s->xs), free(s->CB), free(s->Cs);
}

/* One chunk [t0, t0 + L) of one (b, h); S [P, N] enters as the state before the chunk and
 * leaves as the state after it. */
static void chunk_forward(float *y_bh, float *S, const head_view *v, const sd_ssd_dims *d,
                          int64_t t0, int64_t L, chunk_scratch *w) {
    int64_t P = d->P, N = d->N, ldbc = d->G * d->N, ldx = d->H * d->P;
    const float *Bc = v->B + t0 * ldbc, *Cc = v->C + t0 * ldbc;
    float *yc = y_bh + t0 * ldx;
    sd_ssd_cumsum(w->cs, v->loga, d->H, t0, L);
    sd_ssd_scaled_x(w->xs, v->x, v->dt, d, t0, L);
    /* 1. Diagonal block: Y_diag = (L o C B^T) (dt x), L[i, j] = exp(cs_i - cs_j), j <= i. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)L, (int)L, (int)N, 1.0f, Cc,
                (int)ldbc, Bc, (int)ldbc, 0.0f, w->CB, (int)L);
    for (int64_t i = 0; i < L; i++) {
        for (int64_t j = 0; j <= i; j++) w->CB[i * L + j] *= sd_ssd_seg_exp(w->cs[i] - w->cs[j]);
        for (int64_t j = i + 1; j < L; j++) w->CB[i * L + j] = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)L, (int)P, (int)L, 1.0f, w->CB,
                (int)L, w->xs, (int)P, 0.0f, yc, (int)ldx);
    /* 4. State to output: Y_off[i] = exp(cs_i) S C_i, i.e. Y_off = (exp(cs) o C) S^T. */
    for (int64_t i = 0; i < L; i++) {
        float e = sd_ssd_seg_exp(w->cs[i]);
        for (int64_t n = 0; n < N; n++) w->Cs[i * N + n] = e * Cc[i * ldbc + n];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)L, (int)P, (int)N, 1.0f, w->Cs,
                (int)N, S, (int)N, 1.0f, yc, (int)ldx);
    /* 2 + 3. Chunk state and state passing: S <- exp(cs_last) S + (decay_states o xs)^T B,
     * decay_states[j] = exp(cs_last - cs_j). */
    double last = w->cs[L - 1];
    for (int64_t j = 0; j < L; j++) {
        float e = sd_ssd_seg_exp(last - w->cs[j]);
        for (int64_t p = 0; p < P; p++) w->xs[j * P + p] *= e;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)P, (int)N, (int)L, 1.0f, w->xs,
                (int)P, Bc, (int)ldbc, sd_ssd_seg_exp(last), S, (int)N);
}

/* All chunks of one (b, h) in order; S holds the initial state on entry, the final on exit. */
static void chunked_head(float *y_bh, float *S, const head_view *v, const sd_ssd_dims *d,
                         int64_t Q, chunk_scratch *w) {
    for (int64_t t0 = 0; t0 < d->T; t0 += Q) {
        int64_t L = d->T - t0 < Q ? d->T - t0 : Q;
        chunk_forward(y_bh, S, v, d, t0, L, w);
    }
    if (v->D != 0.0f) add_skip(y_bh, v->x, v->D, d);
}

int sd_cpu_ssd_chunked(float *y, const sd_ssd_in *in, const sd_ssd_dims *d, int64_t chunk,
                       const float *init_state, float *final_state) {
    int64_t pairs = d->B * d->H, PN = d->P * d->N;
    int64_t Q = chunk < d->T ? chunk : d->T;
    if (pairs == 0) return SD_OK;
    if (Q < 1) Q = 1;
    int failed = 0;
#pragma omp parallel for schedule(static) if (pairs > 1)
    for (int64_t bh = 0; bh < pairs; bh++) {
        int64_t b = bh / d->H, h = bh % d->H;
        chunk_scratch w;
        float *S = final_state ? final_state + bh * PN : malloc((size_t)PN * sizeof *S);
        if (!scratch_alloc(&w, d, Q) || !S) {
#pragma omp atomic write
            failed = 1;
        } else {
            if (init_state) memcpy(S, init_state + bh * PN, (size_t)PN * sizeof *S);
            else memset(S, 0, (size_t)PN * sizeof *S);
            head_view v = view_head(in, d, b, h);
            chunked_head(y + (b * d->T * d->H + h) * d->P, S, &v, d, Q, &w);
        }
        scratch_free(&w);
        if (!final_state) free(S);
    }
    if (failed) return sd_fail(SD_ERR_SYS, "sd_ssd_chunked: out of memory for chunk scratch");
    return SD_OK;
}

/* ---- recurrent step -------------------------------------------------------------------- */

/* S <- exp(loga) S + (dt x) B^T ; y = S C + D x, one (b, h). */
static void step_head(float *y, float *S, const float *x, float dt, float loga,
                      const float *B, const float *C, float Dh, int64_t P, int64_t N) {
    float a = sd_ssd_seg_exp(loga);
    for (int64_t p = 0; p < P; p++) {
        float *Sp = S + p * N, xp = dt * x[p], acc = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            Sp[n] = a * Sp[n] + xp * B[n];
            acc += Sp[n] * C[n];
        }
        y[p] = acc + Dh * x[p];
    }
}

void sd_cpu_ssd_step(float *y, const sd_ssd_in *in, const sd_ssd_dims *d, float *state) {
    int64_t pairs = d->B * d->H, P = d->P, N = d->N;
#pragma omp parallel for schedule(static) if (pairs * P * N >= 32768)
    for (int64_t bh = 0; bh < pairs; bh++) {
        int64_t b = bh / d->H, h = bh % d->H, g = h / (d->H / d->G);
        const float *Bv = in->Bm + (b * d->G + g) * N, *Cv = in->Cm + (b * d->G + g) * N;
        step_head(y + bh * P, state + bh * P * N, in->x + bh * P, in->dt ? in->dt[bh] : 1.0f,
                  in->loga[bh], Bv, Cv, in->D ? in->D[h] : 0.0f, P, N);
    }
}
