/* Public loss entries: argument and target checks, then dispatch on the backend. */
#include "kernels/loss.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

/* logits [.., V]; t (loss or dloss; NULL skips it) F32 with one element per row; targets
 * (NULL allowed when targets_optional) I32 with one per row, each in [0, V) or ignore_index
 * (SD_ERR_INPUT otherwise: targets come from data). */
static int check_loss(const sd_ctx *ctx, const char *op, const char *tname, const sd_tensor *t,
                      const sd_tensor *logits, const sd_tensor *targets, int targets_optional,
                      int32_t ignore_index) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "logits", logits));
    if (logits->ndim < 1) return sd_fail(SD_ERR_INTERNAL, "%s: logits is 0-D", op);
    int64_t rows = sd_rows(logits), V = logits->shape[logits->ndim - 1];
    char sl[64], st[64];
    if (t) {
        SD_TRY(sd_op_check_f32(ctx->backend, op, tname, t));
        if (sd_numel(t) != rows)
            return sd_fail(SD_ERR_INTERNAL, "%s: logits %s: %s is %s, expected %lld elements", op,
                           sd_shape_str(logits, sl, sizeof sl), tname, sd_shape_str(t, st, sizeof st),
                           (long long)rows);
    }
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    if (!targets)
        return targets_optional ? SD_OK : sd_fail(SD_ERR_INTERNAL, "%s: targets is NULL", op);
    if (targets->dtype != SD_I32 || targets->device != ctx->backend || sd_numel(targets) != rows)
        return sd_fail(SD_ERR_INTERNAL, "%s: logits %s: targets %s must be I32 with %lld elements",
                       op, sd_shape_str(logits, sl, sizeof sl),
                       sd_shape_str(targets, st, sizeof st), (long long)rows);
#ifdef SD_HAVE_CUDA
    if (ctx->backend == SD_DEV_CUDA) /* the targets live on the device: checked on a host copy */
        return ctx->cuda ? sd_cuda_check_targets((sd_ctx *)ctx, op, targets, rows, V, ignore_index)
                         : sd_cuda_uninit();
#endif
    const int32_t *tg = targets->data;
    for (int64_t r = 0; r < rows; r++)
        if (tg[r] != ignore_index && (tg[r] < 0 || tg[r] >= V))
            return sd_fail(SD_ERR_INPUT, "%s: target %d at row %lld is outside [0, %lld) and not "
                           "the ignore index %d", op, (int)tg[r], (long long)r, (long long)V,
                           (int)ignore_index);
    return SD_OK;
}

int sd_cross_entropy(sd_ctx *ctx, sd_tensor *loss_out, const sd_tensor *logits,
                     const sd_tensor *targets, int32_t ignore_index) {
    static const char *op = "sd_cross_entropy";
    if (!loss_out) return sd_fail(SD_ERR_INTERNAL, "%s: loss_out is NULL", op);
    SD_TRY(check_loss(ctx, op, "loss_out", loss_out, logits, targets, 0, ignore_index));
    SD_CUDA_DISPATCH(ctx, sd_cuda_cross_entropy(ctx, loss_out, logits, targets, ignore_index));
    sd_cpu_cross_entropy(loss_out->data, logits->data, targets->data, sd_rows(logits),
                         logits->shape[logits->ndim - 1], ignore_index);
    return SD_OK;
}

int sd_cross_entropy_backward(sd_ctx *ctx, sd_tensor *dlogits, const sd_tensor *dloss,
                              float scale, const sd_tensor *logits, const sd_tensor *targets,
                              int32_t ignore_index) {
    static const char *op = "sd_cross_entropy_backward";
    SD_TRY(check_loss(ctx, op, "dloss", dloss, logits, targets, 0, ignore_index));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dlogits", dlogits, logits));
    if (!dlogits) return SD_OK;
    SD_CUDA_DISPATCH(ctx, sd_cuda_cross_entropy_backward(ctx, dlogits, dloss, scale, logits, targets,
                                                         ignore_index));
    sd_cpu_cross_entropy_backward(dlogits->data, dloss ? dloss->data : NULL, scale, logits->data,
                                  targets->data, sd_rows(logits), logits->shape[logits->ndim - 1],
                                  ignore_index);
    return SD_OK;
}

static int check_kl(const sd_ctx *ctx, const char *op, const sd_tensor *teacher,
                    const sd_tensor *student, float temperature) {
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "teacher_logits", teacher));
    if (!student) return sd_fail(SD_ERR_INTERNAL, "%s: student_logits is NULL", op);
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "student_logits", student, teacher));
    if (!(temperature > 0))
        return sd_fail(SD_ERR_INTERNAL, "%s: temperature %g must be > 0", op, (double)temperature);
    return SD_OK;
}

int sd_kl_div(sd_ctx *ctx, sd_tensor *loss_out, const sd_tensor *teacher_logits,
              const sd_tensor *student_logits, float temperature, const sd_tensor *targets,
              int32_t ignore_index) {
    static const char *op = "sd_kl_div";
    SD_TRY(check_kl(ctx, op, teacher_logits, student_logits, temperature));
    if (!loss_out) return sd_fail(SD_ERR_INTERNAL, "%s: loss_out is NULL", op);
    SD_TRY(check_loss(ctx, op, "loss_out", loss_out, student_logits, targets, 1, ignore_index));
    SD_CUDA_DISPATCH(ctx, sd_cuda_kl_div(ctx, loss_out, teacher_logits, student_logits, temperature,
                                         targets, ignore_index));
    sd_cpu_kl_div(loss_out->data, teacher_logits->data, student_logits->data,
                  targets ? targets->data : NULL, sd_rows(student_logits),
                  student_logits->shape[student_logits->ndim - 1], temperature, ignore_index);
    return SD_OK;
}

int sd_kl_div_backward(sd_ctx *ctx, sd_tensor *dstudent, const sd_tensor *dloss, float scale,
                       const sd_tensor *teacher_logits, const sd_tensor *student_logits,
                       float temperature, const sd_tensor *targets, int32_t ignore_index) {
    static const char *op = "sd_kl_div_backward";
    SD_TRY(check_kl(ctx, op, teacher_logits, student_logits, temperature));
    SD_TRY(check_loss(ctx, op, "dloss", dloss, student_logits, targets, 1, ignore_index));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dstudent", dstudent, student_logits));
    if (!dstudent) return SD_OK;
    SD_CUDA_DISPATCH(ctx, sd_cuda_kl_div_backward(ctx, dstudent, dloss, scale, teacher_logits,
                                                  student_logits, temperature, targets,
                                                  ignore_index));
    sd_cpu_kl_div_backward(dstudent->data, dloss ? dloss->data : NULL, scale,
                           teacher_logits->data, student_logits->data,
                           targets ? targets->data : NULL, sd_rows(student_logits),
                           student_logits->shape[student_logits->ndim - 1], temperature,
                           ignore_index);
    return SD_OK;
}

int sd_row_l2_mean(sd_ctx *ctx, float *loss, sd_tensor *d, const sd_tensor *out,
                   const sd_tensor *target) {
    static const char *op = "sd_row_l2_mean";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    if (!loss) return sd_fail(SD_ERR_INTERNAL, "%s: loss is NULL", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "out", out));
    if (out->ndim < 1) return sd_fail(SD_ERR_INTERNAL, "%s: out is 0-D", op);
    if (!target) return sd_fail(SD_ERR_INTERNAL, "%s: target is NULL", op);
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "target", target, out));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "d", d, out));
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    SD_CUDA_DISPATCH(ctx, sd_cuda_row_l2_mean(ctx, loss, d, out, target));
    return sd_cpu_row_l2_mean(loss, d ? d->data : NULL, out->data, target->data, sd_rows(out),
                              out->shape[out->ndim - 1]);
}
