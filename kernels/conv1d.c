/* Public conv1d entries: argument checks, then dispatch on the backend. */
#include "kernels/conv1d.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

/* W of a [C, W] or [C, 1, W] weight with 2 <= W <= 4, else 0. */
static int64_t conv_width(const sd_tensor *w, int64_t C) {
    int ok = (w->ndim == 2 || (w->ndim == 3 && w->shape[1] == 1)) && w->shape[0] == C;
    int64_t W = w->shape[w->ndim - 1];
    return ok && W >= 2 && W <= 4 ? W : 0;
}

/* x [.., C] (channels last) with w [C, W] / [C, 1, W] and bias [C] or NULL; *W out. */
static int check_conv(const sd_ctx *ctx, const char *op, const sd_tensor *x, const sd_tensor *w,
                      const sd_tensor *bias, int64_t *W) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "x", x));
    SD_TRY(sd_op_check_act(ctx->backend, op, "w", w));
    if (bias) SD_TRY(sd_op_check_act(ctx->backend, op, "bias", bias));
    char sx[64], sw[64], sb[64];
    int64_t C = x->shape[x->ndim - 1];
    *W = conv_width(w, C);
    if (!*W)
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s vs w %s: expected w [%lld, W] or [%lld, 1, W], W 2..4",
                       op, sd_shape_str(x, sx, sizeof sx), sd_shape_str(w, sw, sizeof sw),
                       (long long)C, (long long)C);
    if (bias && (bias->ndim != 1 || bias->shape[0] != C))
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s vs bias %s: expected bias [%lld]", op,
                       sd_shape_str(x, sx, sizeof sx), sd_shape_str(bias, sb, sizeof sb), (long long)C);
    return SD_OK;
}

static int check_seq(const char *op, const sd_tensor *x) {
    char sx[64];
    if (x->ndim != 3)
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s: expected [B, T, C]", op, sd_shape_str(x, sx, sizeof sx));
    return SD_OK;
}

int sd_conv1d(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
              const sd_tensor *bias, int silu) {
    static const char *op = "sd_conv1d";
    int64_t W = 0;
    if (x && x->ndim != 3) return check_seq(op, x);
    SD_TRY(check_conv(ctx, op, x, w, bias, &W));
    SD_TRY(sd_op_check_act(ctx->backend, op, "out", out));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "out", out, x));
    SD_CUDA_DISPATCH(ctx, sd_cuda_conv1d(ctx, out, x, w, bias, x->shape[0], x->shape[1], x->shape[2],
                                         W, silu));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_conv1d(out->data, x->data, w->data, bias ? bias->data : NULL, x->shape[0], x->shape[1],
                  x->shape[2], W, silu);
    return SD_OK;
}

int sd_conv1d_step(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, sd_tensor *state,
                   const sd_tensor *w, const sd_tensor *bias, int silu) {
    static const char *op = "sd_conv1d_step";
    int64_t W = 0;
    char sx[64], ss[64];
    if (x && x->ndim != 2)
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s: expected [B, C]", op, sd_shape_str(x, sx, sizeof sx));
    SD_TRY(check_conv(ctx, op, x, w, bias, &W));
    SD_TRY(sd_op_check_act(ctx->backend, op, "out", out));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "out", out, x));
    SD_TRY(sd_op_check_act(ctx->backend, op, "state", state));
    if (state->ndim != 3 || state->shape[0] != x->shape[0] || state->shape[1] != x->shape[1] ||
        state->shape[2] != W - 1)
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s, W %lld: state is %s, expected [B, C, W-1]", op,
                       sd_shape_str(x, sx, sizeof sx), (long long)W, sd_shape_str(state, ss, sizeof ss));
    SD_CUDA_DISPATCH(ctx, sd_cuda_conv1d_step(ctx, out, x, state, w, bias, x->shape[0], x->shape[1],
                                              W, silu));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_conv1d_step(out->data, x->data, state->data, w->data, bias ? bias->data : NULL,
                       x->shape[0], x->shape[1], W, silu);
    return SD_OK;
}

int sd_conv1d_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *dbias,
                       const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w,
                       const sd_tensor *bias, int silu) {
    static const char *op = "sd_conv1d_backward";
    int64_t W = 0;
    if (x && x->ndim != 3) return check_seq(op, x);
    SD_TRY(check_conv(ctx, op, x, w, bias, &W));
    SD_TRY(sd_op_check_act(ctx->backend, op, "dy", dy));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dy", dy, x));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dx", dx, x));
    SD_TRY(sd_op_check_grad(ctx->backend, op, "dw", dw, w));
    if (dbias) {
        char sb[64];
        SD_TRY(sd_op_check_f32(ctx->backend, op, "dbias", dbias));
        if (dbias->ndim != 1 || dbias->shape[0] != x->shape[2])
            return sd_fail(SD_ERR_INTERNAL, "%s: dbias %s, expected [%lld]", op,
                           sd_shape_str(dbias, sb, sizeof sb), (long long)x->shape[2]);
    }
    SD_CUDA_DISPATCH(ctx, sd_cuda_conv1d_backward(ctx, dx, dw, dbias, dy, x, w, bias, x->shape[0],
                                                  x->shape[1], x->shape[2], W, silu));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_conv1d_backward(dx ? dx->data : NULL, dw ? dw->data : NULL, dbias ? dbias->data : NULL,
                           dy->data, x->data, w->data, bias ? bias->data : NULL, x->shape[0],
                           x->shape[1], x->shape[2], W, silu);
    return SD_OK;
}
