/* Public embedding entry: argument and id checks, then dispatch on the backend. */
#include "kernels/embedding.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

/* Ids come from files and users: a bad one is bad input.  Scan in order so that the first
 * bad id is the one reported. */
static int check_ids(const char *op, const sd_tensor *ids, int64_t V) {
    const int32_t *id = ids->data;
    int64_t n = sd_numel(ids);
    for (int64_t i = 0; i < n; i++)
        if (id[i] < 0 || id[i] >= V)
            return sd_fail(SD_ERR_INPUT, "%s: token id %d at position %lld is outside [0, %lld)",
                           op, (int)id[i], (long long)i, (long long)V);
    return SD_OK;
}

int sd_embedding(sd_ctx *ctx, sd_tensor *out, const sd_tensor *ids, const sd_tensor *table) {
    static const char *op = "sd_embedding";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "out", out));
    SD_TRY(sd_op_check_act(ctx->backend, op, "table", table));
    if (!ids || ids->dtype != SD_I32 || ids->device != ctx->backend)
        return sd_fail(SD_ERR_INTERNAL, "%s: ids must be an I32 tensor on the context's device", op);
    char si[64], st[64], so[64];
    int ok = table->ndim == 2 && out->ndim == ids->ndim + 1 &&
             out->shape[out->ndim - 1] == table->shape[1];
    for (int i = 0; ok && i < ids->ndim; i++) ok = out->shape[i] == ids->shape[i];
    if (!ok)
        return sd_fail(SD_ERR_INTERNAL, "%s: ids %s, table %s: out is %s, expected ids' shape and d",
                       op, sd_shape_str(ids, si, sizeof si), sd_shape_str(table, st, sizeof st),
                       sd_shape_str(out, so, sizeof so));
    SD_CUDA_DISPATCH(ctx, sd_cuda_embedding(ctx, op, out, ids, table));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    SD_TRY(check_ids(op, ids, table->shape[0]));
    sd_cpu_embedding(out->data, ids->data, table->data, sd_numel(ids), table->shape[1]);
    return SD_OK;
}

int sd_embedding_backward(sd_ctx *ctx, sd_tensor *dtable, const sd_tensor *dy,
                          const sd_tensor *ids) {
    static const char *op = "sd_embedding_backward";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "dy", dy));
    if (!ids || ids->dtype != SD_I32 || ids->device != ctx->backend)
        return sd_fail(SD_ERR_INTERNAL, "%s: ids must be an I32 tensor on the context's device", op);
    if (!dtable) return SD_OK;
    SD_TRY(sd_op_check_f32(ctx->backend, op, "dtable", dtable));
    char si[64], st[64], sy[64];
    int ok = dtable->ndim == 2 && dy->ndim == ids->ndim + 1 &&
             dy->shape[dy->ndim - 1] == dtable->shape[1];
    for (int i = 0; ok && i < ids->ndim; i++) ok = dy->shape[i] == ids->shape[i];
    if (!ok)
        return sd_fail(SD_ERR_INTERNAL, "%s: ids %s, dtable %s: dy is %s, expected ids' shape and d",
                       op, sd_shape_str(ids, si, sizeof si), sd_shape_str(dtable, st, sizeof st),
                       sd_shape_str(dy, sy, sizeof sy));
    SD_CUDA_DISPATCH(ctx, sd_cuda_embedding_backward(ctx, op, dtable, dy, ids));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    SD_TRY(check_ids(op, ids, dtable->shape[0]));
    sd_cpu_embedding_backward(dtable->data, dy->data, ids->data, sd_numel(ids), dtable->shape[1]);
    return SD_OK;
}
