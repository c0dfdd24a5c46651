/* The CPU SSD (kernels/ssd.h has the math and the layouts).  Plain pointers; the public
 * entries in kernels/ssd.c check shapes first.  Functions returning int give SD_ERR_SYS when
 * scratch cannot be allocated. */
#ifndef SD_SSD_CPU_H
#define SD_SSD_CPU_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int64_t B, T, H, P, G, N;
} sd_ssd_dims;

/* The forward inputs; dt, D may be NULL. */
typedef struct {
    const float *x, *dt, *loga, *Bm, *Cm, *D;
} sd_ssd_in;

/* The gradient outputs of the backward (each may be NULL; all are added into). */
typedef struct {
    float *dx, *ddt, *dloga, *dB, *dC, *dD, *dinit;
} sd_ssd_grads;

int sd_cpu_ssd_quadratic(float *y, const sd_ssd_in *in, const sd_ssd_dims *d, float *M_out);
int sd_cpu_ssd_chunked(float *y, const sd_ssd_in *in, const sd_ssd_dims *d, int64_t chunk,
                       const float *init_state, float *final_state);
/* Here T is ignored: one step, x [B, H, P], dt / loga [B, H], Bm / Cm [B, G, N]. */
void sd_cpu_ssd_step(float *y, const sd_ssd_in *in, const sd_ssd_dims *d, float *state);
int sd_cpu_ssd_chunked_backward(const sd_ssd_grads *g, const float *dy, const sd_ssd_in *in,
                                const sd_ssd_dims *d, int64_t chunk, const float *init_state,
                                const float *dfinal_state);

/* g->ddt, dloga, dB, dC only; dM [B, H, T, T]. */
int sd_cpu_ssd_matrix_backward(const sd_ssd_grads *g, const float *dM, const sd_ssd_in *in,
                               const sd_ssd_dims *d);

/* Pointers to the (b, h) slice of every input: rows then step by H*P (x), H (dt, loga),
 * G*N (B, C). */
typedef struct {
    const float *x, *dt, *loga, *B, *C;
    float D;
} head_view;

static inline head_view view_head(const sd_ssd_in *in, const sd_ssd_dims *d, int64_t b,
                                  int64_t h) {
    int64_t g = h / (d->H / d->G);
    head_view v;
    v.x = in->x + (b * d->T * d->H + h) * d->P;
    v.dt = in->dt ? in->dt + b * d->T * d->H + h : NULL;
    v.loga = in->loga + b * d->T * d->H + h;
    v.B = in->Bm + (b * d->T * d->G + g) * d->N;
    v.C = in->Cm + (b * d->T * d->G + g) * d->N;
    v.D = in->D ? in->D[h] : 0.0f;
    return v;
}

/* Helpers shared by the forward and backward files. */
float sd_ssd_seg_exp(double diff); /* exp(min(diff, 0)) */
void sd_ssd_cumsum(double *cs, const float *loga_bh, int64_t H, int64_t t0, int64_t L);
void sd_ssd_scaled_x(float *xs, const float *x_bh, const float *dt_bh, const sd_ssd_dims *d,
                     int64_t t0, int64_t L);

#endif
