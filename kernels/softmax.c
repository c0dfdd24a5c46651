/* Public softmax entries: argument checks, then dispatch on the backend. */
#include "kernels/softmax.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

static int check_softmax(const sd_ctx *ctx, const char *op, const sd_tensor *out,
                         const sd_tensor *x) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_f32(ctx->backend, op, "out", out));
    SD_TRY(sd_op_check_f32(ctx->backend, op, "x", x));
    char sx[64], so[64];
    if (x->ndim < 1 || !sd_same_shape(out, x))
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s vs out %s: expected the same shape", op,
                       sd_shape_str(x, sx, sizeof sx), sd_shape_str(out, so, sizeof so));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    return SD_OK;
}

int sd_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x) {
    SD_TRY(check_softmax(ctx, "sd_softmax", out, x));
    sd_cpu_softmax(out->data, x->data, sd_rows(x), x->shape[x->ndim - 1]);
    return SD_OK;
}

int sd_log_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x) {
    SD_TRY(check_softmax(ctx, "sd_log_softmax", out, x));
    sd_cpu_log_softmax(out->data, x->data, sd_rows(x), x->shape[x->ndim - 1]);
    return SD_OK;
}

int sd_softmax_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *y) {
    SD_TRY(check_softmax(ctx, "sd_softmax_backward", dy, y));
    SD_TRY(sd_op_check_grad(ctx->backend, "sd_softmax_backward", "dx", dx, y));
    if (dx) sd_cpu_softmax_backward(dx->data, dy->data, y->data, sd_rows(y), y->shape[y->ndim - 1]);
    return SD_OK;
}

int sd_log_softmax_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *y) {
    SD_TRY(check_softmax(ctx, "sd_log_softmax_backward", dy, y));
    SD_TRY(sd_op_check_grad(ctx->backend, "sd_log_softmax_backward", "dx", dx, y));
    if (dx)
        sd_cpu_log_softmax_backward(dx->data, dy->data, y->data, sd_rows(y), y->shape[y->ndim - 1]);
    return SD_OK;
}
