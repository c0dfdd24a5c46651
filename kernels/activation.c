/* Public elementwise entries: argument checks, then dispatch on the backend. */
#include "kernels/activation.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

/* out and every input F32 (CUDA: F32 or BF16) on the context's device with one shape; b may be NULL. */
static int check_eltwise(const sd_ctx *ctx, const char *op, const sd_tensor *out,
                         const sd_tensor *a, const sd_tensor *b) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "out", out));
    SD_TRY(sd_op_check_act(ctx->backend, op, b ? "a" : "x", a));
    if (b) SD_TRY(sd_op_check_act(ctx->backend, op, "b", b));
    char s1[64], s2[64];
    if (!sd_same_shape(out, a))
        return sd_fail(SD_ERR_INTERNAL, "%s: %s %s vs out %s: expected the same shape", op,
                       b ? "a" : "x", sd_shape_str(a, s1, sizeof s1),
                       sd_shape_str(out, s2, sizeof s2));
    if (b && !sd_same_shape(a, b))
        return sd_fail(SD_ERR_INTERNAL, "%s: a %s vs b %s: expected the same shape", op,
                       sd_shape_str(a, s1, sizeof s1), sd_shape_str(b, s2, sizeof s2));
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    return SD_OK;
}

int sd_silu(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x) {
    SD_TRY(check_eltwise(ctx, "sd_silu", out, x, NULL));
    SD_CUDA_DISPATCH(ctx, sd_cuda_unary_fwd(ctx, SD_CUDA_SILU, out, x));
    sd_cpu_silu(out->data, x->data, sd_numel(x));
    return SD_OK;
}

int sd_gelu_tanh(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x) {
    SD_TRY(check_eltwise(ctx, "sd_gelu_tanh", out, x, NULL));
    SD_CUDA_DISPATCH(ctx, sd_cuda_unary_fwd(ctx, SD_CUDA_GELU_TANH, out, x));
    sd_cpu_gelu_tanh(out->data, x->data, sd_numel(x));
    return SD_OK;
}

int sd_swiglu(sd_ctx *ctx, sd_tensor *out, const sd_tensor *gate, const sd_tensor *up) {
    SD_TRY(check_eltwise(ctx, "sd_swiglu", out, gate, up));
    SD_CUDA_DISPATCH(ctx, sd_cuda_swiglu(ctx, out, gate, up));
    sd_cpu_swiglu(out->data, gate->data, up->data, sd_numel(gate));
    return SD_OK;
}

int sd_add(sd_ctx *ctx, sd_tensor *out, const sd_tensor *a, const sd_tensor *b) {
    SD_TRY(check_eltwise(ctx, "sd_add", out, a, b));
    SD_CUDA_DISPATCH(ctx, sd_cuda_add(ctx, out, a, b));
    sd_cpu_add(out->data, a->data, b->data, sd_numel(a));
    return SD_OK;
}

int sd_softplus(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x) {
    SD_TRY(check_eltwise(ctx, "sd_softplus", out, x, NULL));
    SD_CUDA_DISPATCH(ctx, sd_cuda_unary_fwd(ctx, SD_CUDA_SOFTPLUS, out, x));
    sd_cpu_softplus(out->data, x->data, sd_numel(x));
    return SD_OK;
}

/* ---- backward: dy and x as the forward's out and input; a NULL gradient is skipped ---- */

int sd_silu_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *x) {
    SD_TRY(check_eltwise(ctx, "sd_silu_backward", dy, x, NULL));
    SD_TRY(sd_op_check_like_act(ctx->backend, "sd_silu_backward", "dx", dx, x));
    SD_CUDA_DISPATCH(ctx, sd_cuda_unary_bwd(ctx, SD_CUDA_SILU, dx, dy, x));
    if (dx) sd_cpu_silu_backward(dx->data, dy->data, x->data, sd_numel(x));
    return SD_OK;
}

int sd_gelu_tanh_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *x) {
    SD_TRY(check_eltwise(ctx, "sd_gelu_tanh_backward", dy, x, NULL));
    SD_TRY(sd_op_check_like_act(ctx->backend, "sd_gelu_tanh_backward", "dx", dx, x));
    SD_CUDA_DISPATCH(ctx, sd_cuda_unary_bwd(ctx, SD_CUDA_GELU_TANH, dx, dy, x));
    if (dx) sd_cpu_gelu_tanh_backward(dx->data, dy->data, x->data, sd_numel(x));
    return SD_OK;
}

int sd_softplus_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *x) {
    SD_TRY(check_eltwise(ctx, "sd_softplus_backward", dy, x, NULL));
    SD_TRY(sd_op_check_like_act(ctx->backend, "sd_softplus_backward", "dx", dx, x));
    SD_CUDA_DISPATCH(ctx, sd_cuda_unary_bwd(ctx, SD_CUDA_SOFTPLUS, dx, dy, x));
    if (dx) sd_cpu_softplus_backward(dx->data, dy->data, x->data, sd_numel(x));
    return SD_OK;
}

int sd_swiglu_backward(sd_ctx *ctx, sd_tensor *dgate, sd_tensor *dup, const sd_tensor *dy,
                       const sd_tensor *gate, const sd_tensor *up) {
    static const char *op = "sd_swiglu_backward";
    SD_TRY(check_eltwise(ctx, op, dy, gate, up));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dgate", dgate, gate));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dup", dup, up));
    SD_CUDA_DISPATCH(ctx, sd_cuda_swiglu_backward(ctx, dgate, dup, dy, gate, up));
    sd_cpu_swiglu_backward(dgate ? dgate->data : NULL, dup ? dup->data : NULL, dy->data,
                           gate->data, up->data, sd_numel(gate));
    return SD_OK;
}
