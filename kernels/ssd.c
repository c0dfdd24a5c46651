/* Public SSD entries: shape checks, then dispatch on the backend (kernels/ssd.h). */
#include "kernels/ssd.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/ssd_cpu.h"

/* t has exactly the n dims given (unused trailing ones ignored). */
static int has_dims(const sd_tensor *t, int n, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t want[4] = {d0, d1, d2, d3};
    if (t->ndim != n) return 0;
    for (int i = 0; i < n; i++)
        if (t->shape[i] != want[i]) return 0;
    return 1;
}

/* An optional F32 tensor (NULL passes) with the given shape. */
static int check_opt(const sd_ctx *ctx, const char *op, const char *name, const sd_tensor *t,
                     int n, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *want) {
    if (!t) return SD_OK;
    /* CUDA: BF16 or F32 here; sd_cuda_ssd_* then check which each tensor must be */
    SD_TRY(sd_op_check_act(ctx->backend, op, name, t));
    char s[64];
    if (!has_dims(t, n, d0, d1, d2, d3))
        return sd_fail(SD_ERR_INTERNAL, "%s: %s is %s, expected %s", op, name,
                       sd_shape_str(t, s, sizeof s), want);
    return SD_OK;
}

/* A required one. */
static int check_req(const sd_ctx *ctx, const char *op, const char *name, const sd_tensor *t,
                     int n, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *want) {
    if (!t) return sd_fail(SD_ERR_INTERNAL, "%s: %s is NULL", op, name);
    return check_opt(ctx, op, name, t, n, d0, d1, d2, d3, want);
}

/* Reads the dims from x ([B, T, H, P] or, for a step, [B, H, P]) and Bm, and checks every
 * input against them. */
static int check_inputs(const sd_ctx *ctx, const char *op, int step, const sd_tensor *x,
                        const sd_tensor *dt, const sd_tensor *loga, const sd_tensor *Bm,
                        const sd_tensor *Cm, const sd_tensor *D, sd_ssd_dims *d) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "x", x));
    SD_TRY(sd_op_check_act(ctx->backend, op, "Bm", Bm));
    char sx[64], sb[64];
    int nx = step ? 3 : 4;
    if (x->ndim != nx || Bm->ndim != nx)
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s, Bm %s: expected %s", op,
                       sd_shape_str(x, sx, sizeof sx), sd_shape_str(Bm, sb, sizeof sb),
                       step ? "x [B, H, P], Bm [B, G, N]" : "x [B, T, H, P], Bm [B, T, G, N]");
    d->B = x->shape[0];
    d->T = step ? 1 : x->shape[1];
    d->H = x->shape[nx - 2], d->P = x->shape[nx - 1];
    d->G = Bm->shape[nx - 2], d->N = Bm->shape[nx - 1];
    int bad_bt = Bm->shape[0] != d->B || (!step && Bm->shape[1] != d->T);
    if (d->B < 1 || d->T < 0 || d->H < 1 || d->P < 1 || d->G < 1 || d->N < 1 || d->H % d->G ||
        bad_bt)
        return sd_fail(SD_ERR_INTERNAL,
                       "%s: x %s, Bm %s: expected positive sizes, the same B (and T) and G "
                       "dividing H", op, sd_shape_str(x, sx, sizeof sx),
                       sd_shape_str(Bm, sb, sizeof sb));
    if (step) {
        SD_TRY(check_req(ctx, op, "Cm", Cm, 3, d->B, d->G, d->N, 0, "[B, G, N] as Bm"));
        SD_TRY(check_req(ctx, op, "loga", loga, 2, d->B, d->H, 0, 0, "[B, H]"));
        SD_TRY(check_opt(ctx, op, "dt", dt, 2, d->B, d->H, 0, 0, "[B, H]"));
    } else {
        SD_TRY(check_req(ctx, op, "Cm", Cm, 4, d->B, d->T, d->G, d->N, "[B, T, G, N] as Bm"));
        SD_TRY(check_req(ctx, op, "loga", loga, 3, d->B, d->T, d->H, 0, "[B, T, H]"));
        SD_TRY(check_opt(ctx, op, "dt", dt, 3, d->B, d->T, d->H, 0, "[B, T, H]"));
    }
    SD_TRY(check_opt(ctx, op, "D", D, 1, d->H, 0, 0, 0, "[H]"));
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    return SD_OK;
}

static sd_ssd_in inputs(const sd_tensor *x, const sd_tensor *dt, const sd_tensor *loga,
                        const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D) {
    sd_ssd_in in = {x->data, dt ? dt->data : NULL, loga->data, Bm->data, Cm->data,
                    D ? D->data : NULL};
    return in;
}

static int check_state(const sd_ctx *ctx, const char *op, const char *name, const sd_tensor *t,
                       const sd_ssd_dims *d) {
    return check_opt(ctx, op, name, t, 4, d->B, d->H, d->P, d->N, "[B, H, P, N]");
}

static int check_chunk(const char *op, int64_t chunk) {
    if (chunk < 1) return sd_fail(SD_ERR_INTERNAL, "%s: chunk %lld, expected >= 1", op, (long long)chunk);
    return SD_OK;
}

int sd_ssd_quadratic(sd_ctx *ctx, sd_tensor *y, const sd_tensor *x, const sd_tensor *dt,
                     const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                     const sd_tensor *D, sd_tensor *M_out) {
    static const char *op = "sd_ssd_quadratic";
    sd_ssd_dims d;
    SD_TRY(check_inputs(ctx, op, 0, x, dt, loga, Bm, Cm, D, &d));
    SD_TRY(check_req(ctx, op, "y", y, 4, d.B, d.T, d.H, d.P, "[B, T, H, P] as x"));
    SD_TRY(check_opt(ctx, op, "M_out", M_out, 4, d.B, d.H, d.T, d.T, "[B, H, T, T]"));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend); /* CPU only */
    sd_ssd_in in = inputs(x, dt, loga, Bm, Cm, D);
    return sd_cpu_ssd_quadratic(y->data, &in, &d, M_out ? M_out->data : NULL);
}

int sd_ssd_chunked(sd_ctx *ctx, sd_tensor *y, const sd_tensor *x, const sd_tensor *dt,
                   const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                   const sd_tensor *D, int64_t chunk, const sd_tensor *init_state,
                   sd_tensor *final_state) {
    static const char *op = "sd_ssd_chunked";
    sd_ssd_dims d;
    SD_TRY(check_inputs(ctx, op, 0, x, dt, loga, Bm, Cm, D, &d));
    SD_TRY(check_chunk(op, chunk));
    SD_TRY(check_req(ctx, op, "y", y, 4, d.B, d.T, d.H, d.P, "[B, T, H, P] as x"));
    SD_TRY(check_state(ctx, op, "init_state", init_state, &d));
    SD_TRY(check_state(ctx, op, "final_state", final_state, &d));
    SD_CUDA_DISPATCH(ctx, sd_cuda_ssd_chunked(ctx, y, x, dt, loga, Bm, Cm, D, chunk, init_state,
                                              final_state));
    sd_ssd_in in = inputs(x, dt, loga, Bm, Cm, D);
    return sd_cpu_ssd_chunked(y->data, &in, &d, chunk, init_state ? init_state->data : NULL,
                              final_state ? final_state->data : NULL);
}

int sd_ssd_step(sd_ctx *ctx, sd_tensor *y, const sd_tensor *x, const sd_tensor *dt,
                const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                const sd_tensor *D, sd_tensor *state) {
    static const char *op = "sd_ssd_step";
    sd_ssd_dims d;
    SD_TRY(check_inputs(ctx, op, 1, x, dt, loga, Bm, Cm, D, &d));
    SD_TRY(check_req(ctx, op, "y", y, 3, d.B, d.H, d.P, 0, "[B, H, P] as x"));
    SD_TRY(check_req(ctx, op, "state", state, 4, d.B, d.H, d.P, d.N, "[B, H, P, N]"));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend); /* CPU only */
    sd_ssd_in in = inputs(x, dt, loga, Bm, Cm, D);
    sd_cpu_ssd_step(y->data, &in, &d, state->data);
    return SD_OK;
}

int sd_ssd_chunked_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *ddt, sd_tensor *dloga,
                            sd_tensor *dB, sd_tensor *dC, sd_tensor *dD, const sd_tensor *dy,
                            const sd_tensor *x, const sd_tensor *dt, const sd_tensor *loga,
                            const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D,
                            int64_t chunk, const sd_tensor *init_state,
                            const sd_tensor *dfinal_state, sd_tensor *dinit_state) {
    static const char *op = "sd_ssd_chunked_backward";
    sd_ssd_dims d;
    SD_TRY(check_inputs(ctx, op, 0, x, dt, loga, Bm, Cm, D, &d));
    SD_TRY(check_chunk(op, chunk));
    SD_TRY(check_req(ctx, op, "dy", dy, 4, d.B, d.T, d.H, d.P, "[B, T, H, P] as x"));
    SD_TRY(check_opt(ctx, op, "dx", dx, 4, d.B, d.T, d.H, d.P, "[B, T, H, P] as x"));
    SD_TRY(check_opt(ctx, op, "ddt", ddt, 3, d.B, d.T, d.H, 0, "[B, T, H]"));
    SD_TRY(check_opt(ctx, op, "dloga", dloga, 3, d.B, d.T, d.H, 0, "[B, T, H]"));
    SD_TRY(check_opt(ctx, op, "dB", dB, 4, d.B, d.T, d.G, d.N, "[B, T, G, N]"));
    SD_TRY(check_opt(ctx, op, "dC", dC, 4, d.B, d.T, d.G, d.N, "[B, T, G, N]"));
    SD_TRY(check_opt(ctx, op, "dD", dD, 1, d.H, 0, 0, 0, "[H]"));
    SD_TRY(check_state(ctx, op, "init_state", init_state, &d));
    SD_TRY(check_state(ctx, op, "dfinal_state", dfinal_state, &d));
    SD_TRY(check_state(ctx, op, "dinit_state", dinit_state, &d));
    if (ddt && !dt) return sd_fail(SD_ERR_INTERNAL, "%s: ddt given but dt is NULL", op);
    if (dD && !D) return sd_fail(SD_ERR_INTERNAL, "%s: dD given but D is NULL", op);
    SD_CUDA_DISPATCH(ctx, sd_cuda_ssd_chunked_backward(ctx, dx, ddt, dloga, dB, dC, dD, dy, x, dt, loga,
                                                       Bm, Cm, D, chunk, init_state, dfinal_state,
                                                       dinit_state));
    sd_ssd_in in = inputs(x, dt, loga, Bm, Cm, D);
    sd_ssd_grads g = {dx ? dx->data : NULL, ddt ? ddt->data : NULL,
                      dloga ? dloga->data : NULL, dB ? dB->data : NULL, dC ? dC->data : NULL,
                      dD ? dD->data : NULL, dinit_state ? dinit_state->data : NULL};
    return sd_cpu_ssd_chunked_backward(&g, dy->data, &in, &d, chunk,
                                       init_state ? init_state->data : NULL,
                                       dfinal_state ? dfinal_state->data : NULL);
}

int sd_ssd_matrix_backward(sd_ctx *ctx, sd_tensor *ddt, sd_tensor *dloga, sd_tensor *dB,
                           sd_tensor *dC, const sd_tensor *dM, const sd_tensor *dt,
                           const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm) {
    static const char *op = "sd_ssd_matrix_backward";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_f32(ctx->backend, op, "loga", loga));
    SD_TRY(sd_op_check_f32(ctx->backend, op, "Bm", Bm));
    char sl[64], sb[64];
    if (loga->ndim != 3 || Bm->ndim != 4 || Bm->shape[0] != loga->shape[0] ||
        Bm->shape[1] != loga->shape[1] || Bm->shape[2] < 1 || loga->shape[2] % Bm->shape[2])
        return sd_fail(SD_ERR_INTERNAL,
                       "%s: loga %s, Bm %s: expected loga [B, T, H], Bm [B, T, G dividing H, N]",
                       op, sd_shape_str(loga, sl, sizeof sl), sd_shape_str(Bm, sb, sizeof sb));
    sd_ssd_dims d = {loga->shape[0], loga->shape[1], loga->shape[2], 1, Bm->shape[2],
                     Bm->shape[3]};
    SD_TRY(check_req(ctx, op, "Cm", Cm, 4, d.B, d.T, d.G, d.N, "[B, T, G, N] as Bm"));
    SD_TRY(check_opt(ctx, op, "dt", dt, 3, d.B, d.T, d.H, 0, "[B, T, H]"));
    SD_TRY(check_req(ctx, op, "dM", dM, 4, d.B, d.H, d.T, d.T, "[B, H, T, T]"));
    SD_TRY(check_opt(ctx, op, "ddt", ddt, 3, d.B, d.T, d.H, 0, "[B, T, H]"));
    SD_TRY(check_opt(ctx, op, "dloga", dloga, 3, d.B, d.T, d.H, 0, "[B, T, H]"));
    SD_TRY(check_opt(ctx, op, "dB", dB, 4, d.B, d.T, d.G, d.N, "[B, T, G, N]"));
    SD_TRY(check_opt(ctx, op, "dC", dC, 4, d.B, d.T, d.G, d.N, "[B, T, G, N]"));
    if (ddt && !dt) return sd_fail(SD_ERR_INTERNAL, "%s: ddt given but dt is NULL", op);
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    /* x and D play no part in M: x points at loga only to satisfy the head view. */
    sd_ssd_in in = {loga->data, dt ? dt->data : NULL, loga->data, Bm->data, Cm->data, NULL};
    sd_ssd_grads g = {NULL, ddt ? ddt->data : NULL, dloga ? dloga->data : NULL,
                      dB ? dB->data : NULL, dC ? dC->data : NULL, NULL, NULL};
    return sd_cpu_ssd_matrix_backward(&g, dM->data, &in, &d);
}
