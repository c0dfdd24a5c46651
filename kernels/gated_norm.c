/* Public gated RMSNorm entries: argument checks, then dispatch on the backend. */
#include "kernels/gated_norm.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

/* y [.., d], z like y or NULL, w [d], group_size dividing d; t (out or dout) like y. */
static int check_gated(const sd_ctx *ctx, const char *op, const char *tname, const sd_tensor *t,
                       const sd_tensor *y, const sd_tensor *z, const sd_tensor *w,
                       int64_t group_size) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, tname, t));
    SD_TRY(sd_op_check_act(ctx->backend, op, "y", y));
    SD_TRY(sd_op_check_act(ctx->backend, op, "w", w));
    if (z) SD_TRY(sd_op_check_like_act(ctx->backend, op, "z", z, y));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, tname, t, y));
    char sy[64], sw[64];
    if (y->ndim < 1) return sd_fail(SD_ERR_INTERNAL, "%s: y is 0-D", op);
    int64_t d = y->shape[y->ndim - 1];
    if (w->ndim != 1 || w->shape[0] != d)
        return sd_fail(SD_ERR_INTERNAL, "%s: y %s vs w %s: expected w [%lld]", op,
                       sd_shape_str(y, sy, sizeof sy), sd_shape_str(w, sw, sizeof sw), (long long)d);
    if (group_size <= 0 || d % group_size)
        return sd_fail(SD_ERR_INTERNAL, "%s: group_size %lld must divide d %lld", op,
                       (long long)group_size, (long long)d);
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    return SD_OK;
}

int sd_gated_rmsnorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *y, const sd_tensor *z,
                     const sd_tensor *w, int64_t group_size, float eps) {
    SD_TRY(check_gated(ctx, "sd_gated_rmsnorm", "out", out, y, z, w, group_size));
    SD_CUDA_DISPATCH(ctx, sd_cuda_gated_rmsnorm(ctx, out, y, z, w, group_size, eps));
    sd_cpu_gated_rmsnorm(out->data, y->data, z ? z->data : NULL, w->data, sd_rows(y),
                         y->shape[y->ndim - 1], group_size, eps);
    return SD_OK;
}

int sd_gated_rmsnorm_backward(sd_ctx *ctx, sd_tensor *dy, sd_tensor *dz, sd_tensor *dw,
                              const sd_tensor *dout, const sd_tensor *y, const sd_tensor *z,
                              const sd_tensor *w, int64_t group_size, float eps) {
    static const char *op = "sd_gated_rmsnorm_backward";
    SD_TRY(check_gated(ctx, op, "dout", dout, y, z, w, group_size));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dy", dy, y));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dz", dz, y));
    SD_TRY(sd_op_check_grad(ctx->backend, op, "dw", dw, w));
    SD_CUDA_DISPATCH(ctx, sd_cuda_gated_rmsnorm_backward(ctx, dy, dz, dw, dout, y, z, w, group_size, eps));
    return sd_cpu_gated_rmsnorm_backward(dy ? dy->data : NULL, dz ? dz->data : NULL,
                                         dw ? dw->data : NULL, dout->data, y->data,
                                         z ? z->data : NULL, w->data, sd_rows(y),
                                         y->shape[y->ndim - 1], group_size, eps);
}
