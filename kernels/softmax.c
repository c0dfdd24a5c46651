/* Public softmax entries: argument checks, then dispatch on the backend. */
#include "kernels/softmax.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

/* a and b (the forward's out and x, or the backward's dy and y): activations of one shape. */
static int check_softmax(const sd_ctx *ctx, const char *op, const char *an, const sd_tensor *a,
                         const char *bn, const sd_tensor *b) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, an, a));
    SD_TRY(sd_op_check_act(ctx->backend, op, bn, b));
    char sb[64], sa[64];
    if (b->ndim < 1 || !sd_same_shape(a, b))
        return sd_fail(SD_ERR_INTERNAL, "%s: %s %s vs %s %s: expected the same shape", op, bn,
                       sd_shape_str(b, sb, sizeof sb), an, sd_shape_str(a, sa, sizeof sa));
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    return SD_OK;
}

int sd_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x) {
    SD_TRY(check_softmax(ctx, "sd_softmax", "out", out, "x", x));
    SD_CUDA_DISPATCH(ctx, sd_cuda_softmax(ctx, out, x, 0));
    sd_cpu_softmax(out->data, x->data, sd_rows(x), x->shape[x->ndim - 1]);
    return SD_OK;
}

int sd_log_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x) {
    SD_TRY(check_softmax(ctx, "sd_log_softmax", "out", out, "x", x));
    SD_CUDA_DISPATCH(ctx, sd_cuda_softmax(ctx, out, x, 1));
    sd_cpu_log_softmax(out->data, x->data, sd_rows(x), x->shape[x->ndim - 1]);
    return SD_OK;
}

int sd_softmax_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *y) {
    static const char *op = "sd_softmax_backward";
    SD_TRY(check_softmax(ctx, op, "dy", dy, "y", y));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dx", dx, y));
    if (!dx) return SD_OK;
    SD_CUDA_DISPATCH(ctx, sd_cuda_softmax_backward(ctx, dx, dy, y, 0));
    sd_cpu_softmax_backward(dx->data, dy->data, y->data, sd_rows(y), y->shape[y->ndim - 1]);
    return SD_OK;
}

int sd_log_softmax_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *y) {
    static const char *op = "sd_log_softmax_backward";
    SD_TRY(check_softmax(ctx, op, "dy", dy, "y", y));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dx", dx, y));
    if (!dx) return SD_OK;
    SD_CUDA_DISPATCH(ctx, sd_cuda_softmax_backward(ctx, dx, dy, y, 1));
    sd_cpu_log_softmax_backward(dx->data, dy->data, y->data, sd_rows(y), y->shape[y->ndim - 1]);
    return SD_OK;
}
