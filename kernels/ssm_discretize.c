/* Public entries of the Mamba-2 discretisation (kernels/ssm_discretize.h): argument checks,
 * then dispatch on the backend. */
#include "kernels/ssm_discretize.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

/* A required F32 tensor shaped like `like`. */
static int check_req_like(sd_device b, const char *op, const char *name, const sd_tensor *t,
                          const sd_tensor *like) {
    if (!t) return sd_fail(SD_ERR_INTERNAL, "%s: %s is NULL", op, name);
    return sd_op_check_grad(b, op, name, t, like);
}

/* dt_raw [..., H] (act dtype) and, when given, a_log F32 [H]. */
static int check_raw(const sd_ctx *ctx, const char *op, const sd_tensor *dt_raw,
                     const sd_tensor *a_log) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "dt_raw", dt_raw));
    if (dt_raw->ndim < 1) return sd_fail(SD_ERR_INTERNAL, "%s: dt_raw is 0-D, expected [..., H]", op);
    int64_t H = dt_raw->shape[dt_raw->ndim - 1];
    if (a_log) {
        SD_TRY(sd_op_check_f32(ctx->backend, op, "a_log", a_log));
        char sa[64], sr[64];
        if (a_log->ndim != 1 || a_log->shape[0] != H)
            return sd_fail(SD_ERR_INTERNAL, "%s: a_log is %s, expected [H] = [%lld] (the last dim of dt_raw %s)",
                           op, sd_shape_str(a_log, sa, sizeof sa), (long long)H,
                           sd_shape_str(dt_raw, sr, sizeof sr));
    }
    return SD_OK;
}

static int check_limits(const char *op, float dt_min, float dt_max) {
    if (!(dt_min <= dt_max))
        return sd_fail(SD_ERR_INTERNAL, "%s: dt_min %g and dt_max %g: expected dt_min <= dt_max", op,
                       (double)dt_min, (double)dt_max);
    return SD_OK;
}

int sd_ssm_discretize(sd_ctx *ctx, sd_tensor *dt, sd_tensor *loga, const sd_tensor *dt_raw,
                      const sd_tensor *a_log, float dt_min, float dt_max) {
    static const char *op = "sd_ssm_discretize";
    SD_TRY(check_raw(ctx, op, dt_raw, a_log));
    SD_TRY(check_req_like(ctx->backend, op, "loga", loga, dt_raw));
    if (a_log) {
        SD_TRY(check_req_like(ctx->backend, op, "dt", dt, dt_raw));
        SD_TRY(check_limits(op, dt_min, dt_max));
    } else if (dt) {
        return sd_fail(SD_ERR_INTERNAL, "%s: dt given but a_log is NULL (the discrete mixer has no dt)", op);
    }
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    SD_CUDA_DISPATCH(ctx, sd_cuda_ssm_discretize(ctx, dt, loga, dt_raw, a_log, dt_min, dt_max));
    int64_t H = dt_raw->shape[dt_raw->ndim - 1];
    sd_cpu_ssm_discretize(dt ? dt->data : NULL, loga->data, dt_raw->data, a_log ? a_log->data : NULL,
                          sd_rows(dt_raw), H, dt_min, dt_max);
    return SD_OK;
}

int sd_ssm_discretize_backward(sd_ctx *ctx, sd_tensor *ddt_raw, sd_tensor *da_log,
                               const sd_tensor *dloga, const sd_tensor *ddt,
                               const sd_tensor *dt_raw, const sd_tensor *loga,
                               const sd_tensor *a_log, float dt_min, float dt_max) {
    static const char *op = "sd_ssm_discretize_backward";
    SD_TRY(check_raw(ctx, op, dt_raw, a_log));
    SD_TRY(check_req_like(ctx->backend, op, "dloga", dloga, dt_raw));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "ddt_raw", ddt_raw, dt_raw));
    if (a_log) {
        SD_TRY(sd_op_check_grad(ctx->backend, op, "ddt", ddt, dt_raw));
        SD_TRY(sd_op_check_grad(ctx->backend, op, "da_log", da_log, a_log));
        if (da_log) SD_TRY(check_req_like(ctx->backend, op, "loga", loga, dt_raw));
        SD_TRY(check_limits(op, dt_min, dt_max));
    } else if (ddt || da_log) {
        return sd_fail(SD_ERR_INTERNAL, "%s: %s given but a_log is NULL (the discrete mixer has no dt and no "
                       "A_log)", op, ddt ? "ddt" : "da_log");
    }
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    if (!ddt_raw && !da_log) return SD_OK;
    SD_CUDA_DISPATCH(ctx, sd_cuda_ssm_discretize_backward(ctx, ddt_raw, da_log, dloga, ddt, dt_raw, loga, a_log,
                                                          dt_min, dt_max));
    int64_t H = dt_raw->shape[dt_raw->ndim - 1];
    sd_cpu_ssm_discretize_backward(ddt_raw ? ddt_raw->data : NULL, da_log ? da_log->data : NULL, dloga->data,
                                   ddt ? ddt->data : NULL, dt_raw->data, loga ? loga->data : NULL,
                                   a_log ? a_log->data : NULL, sd_rows(dt_raw), H, dt_min, dt_max);
    return SD_OK;
}
