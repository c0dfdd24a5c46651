/* Public norm entries: argument checks, then dispatch on the backend. */
#include "kernels/norm.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

/* x and out the same shape; a 1-D parameter p of x's last dim. */
static int check_norm(const char *op, const sd_tensor *out, const sd_tensor *x,
                      const char *pname, const sd_tensor *p) {
    char sx[64], so[64], sp[64];
    if (x->ndim < 1 || !sd_same_shape(out, x))
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s vs out %s: expected the same shape", op,
                       sd_shape_str(x, sx, sizeof sx), sd_shape_str(out, so, sizeof so));
    if (p->ndim != 1 || p->shape[0] != x->shape[x->ndim - 1])
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s vs %s %s: expected %s [%lld]", op,
                       sd_shape_str(x, sx, sizeof sx), pname, sd_shape_str(p, sp, sizeof sp),
                       pname, (long long)x->shape[x->ndim - 1]);
    return SD_OK;
}

int sd_rmsnorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w, float eps) {
    static const char *op = "sd_rmsnorm";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "out", out));
    SD_TRY(sd_op_check_act(ctx->backend, op, "x", x));
    SD_TRY(sd_op_check_act(ctx->backend, op, "w", w));
    SD_TRY(check_norm(op, out, x, "w", w));
    SD_CUDA_DISPATCH(ctx, sd_cuda_rmsnorm(ctx, out, x, w, eps));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_rmsnorm(out->data, x->data, w->data, sd_rows(x), x->shape[x->ndim - 1], eps);
    return SD_OK;
}

int sd_layernorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
                 const sd_tensor *b, float eps) {
    static const char *op = "sd_layernorm";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "out", out));
    SD_TRY(sd_op_check_act(ctx->backend, op, "x", x));
    SD_TRY(sd_op_check_act(ctx->backend, op, "w", w));
    SD_TRY(check_norm(op, out, x, "w", w));
    if (b) {
        SD_TRY(sd_op_check_act(ctx->backend, op, "b", b));
        SD_TRY(check_norm(op, out, x, "b", b));
    }
    SD_CUDA_DISPATCH(ctx, sd_cuda_layernorm(ctx, out, x, w, b, eps));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_layernorm(out->data, x->data, w->data, b ? b->data : NULL, sd_rows(x),
                     x->shape[x->ndim - 1], eps);
    return SD_OK;
}

/* ---- backward ------------------------------------------------------------------------ */

/* x, w, dy as the forward's x, w, out; gradients NULL or shaped like their input. */
static int check_norm_backward(const sd_ctx *ctx, const char *op, const sd_tensor *dy,
                               const sd_tensor *x, const sd_tensor *w, const sd_tensor *dx,
                               const sd_tensor *dw) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "dy", dy));
    SD_TRY(sd_op_check_act(ctx->backend, op, "x", x));
    SD_TRY(sd_op_check_act(ctx->backend, op, "w", w));
    SD_TRY(check_norm(op, dy, x, "w", w));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dx", dx, x));
    SD_TRY(sd_op_check_grad(ctx->backend, op, "dw", dw, w));
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    return SD_OK;
}

int sd_rmsnorm_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, const sd_tensor *dy,
                        const sd_tensor *x, const sd_tensor *w, float eps) {
    SD_TRY(check_norm_backward(ctx, "sd_rmsnorm_backward", dy, x, w, dx, dw));
    SD_CUDA_DISPATCH(ctx, sd_cuda_rmsnorm_backward(ctx, dx, dw, dy, x, w, eps));
    return sd_cpu_rmsnorm_backward(dx ? dx->data : NULL, dw ? dw->data : NULL, dy->data, x->data,
                                   w->data, sd_rows(x), x->shape[x->ndim - 1], eps);
}

int sd_layernorm_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *db,
                          const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w, float eps) {
    static const char *op = "sd_layernorm_backward";
    SD_TRY(check_norm_backward(ctx, op, dy, x, w, dx, dw));
    SD_TRY(sd_op_check_grad(ctx->backend, op, "db", db, w));
    SD_CUDA_DISPATCH(ctx, sd_cuda_layernorm_backward(ctx, dx, dw, db, dy, x, w, eps));
    return sd_cpu_layernorm_backward(dx ? dx->data : NULL, dw ? dw->data : NULL,
                                     db ? db->data : NULL, dy->data, x->data, w->data, sd_rows(x),
                                     x->shape[x->ndim - 1], eps);
}
