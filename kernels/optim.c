/* Public optimizer entries: argument checks, then dispatch on the backend. */
#include "kernels/optim.h"

#include <math.h>

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

static int check_same_shape(const char *op, const char *name, const sd_tensor *t,
                            const sd_tensor *param) {
    char a[64], b[64];
    if (!sd_same_shape(t, param))
        return sd_fail(SD_ERR_INTERNAL, "%s: %s %s vs param %s: expected the same shape", op,
                       name, sd_shape_str(t, a, sizeof a), sd_shape_str(param, b, sizeof b));
    return SD_OK;
}

int sd_adamw_step(sd_ctx *ctx, sd_tensor *param, const sd_tensor *grad, sd_tensor *m,
                  sd_tensor *v, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int64_t t) {
    static const char *op = "sd_adamw_step";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_f32(ctx->backend, op, "param", param));
    SD_TRY(sd_op_check_f32(ctx->backend, op, "grad", grad));
    SD_TRY(sd_op_check_f32(ctx->backend, op, "m", m));
    SD_TRY(sd_op_check_f32(ctx->backend, op, "v", v));
    SD_TRY(check_same_shape(op, "grad", grad, param));
    SD_TRY(check_same_shape(op, "m", m, param));
    SD_TRY(check_same_shape(op, "v", v, param));
    if (t < 1) return sd_fail(SD_ERR_INTERNAL, "%s: step %lld, expected >= 1", op, (long long)t);
    if (!(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f))
        return sd_fail(SD_ERR_INTERNAL, "%s: betas (%g, %g), expected each in [0, 1)", op,
                       (double)beta1, (double)beta2);
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    /* The scalars in double, rounded once, as torch computes them in Python. */
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    double decay = 1.0 - (double)lr * (double)weight_decay;
    SD_CUDA_DISPATCH(ctx, sd_cuda_adamw(ctx, param, grad, m, v, beta1, beta2, eps, (float)decay,
                                        (float)((double)lr / bc1), (float)sqrt(bc2)));
    sd_cpu_adamw(param->data, grad->data, m->data, v->data, sd_numel(param), beta1, beta2, eps,
                 (float)decay, (float)((double)lr / bc1), (float)sqrt(bc2));
    return SD_OK;
}

int sd_sum_squares(sd_ctx *ctx, const sd_tensor *x, double *out) {
    static const char *op = "sd_sum_squares";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    if (!out) return sd_fail(SD_ERR_INTERNAL, "%s: NULL out", op);
    SD_TRY(sd_op_check_f32(ctx->backend, op, "x", x));
    SD_CUDA_DISPATCH(ctx, sd_cuda_sum_squares(ctx, x, out));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    *out = sd_cpu_sum_squares(x->data, sd_numel(x));
    return SD_OK;
}

int sd_scale(sd_ctx *ctx, sd_tensor *x, float s) {
    static const char *op = "sd_scale";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_f32(ctx->backend, op, "x", x));
    SD_CUDA_DISPATCH(ctx, sd_cuda_scale(ctx, x, s));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_scale(x->data, sd_numel(x), s);
    return SD_OK;
}
