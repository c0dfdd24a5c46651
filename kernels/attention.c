/* Public attention entry: shape checks, then dispatch on the backend. */
#include "kernels/attention.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

/* shape == {d0, d1, d2[, d3]} for an n-D tensor. */
static int has_shape(const sd_tensor *t, int n, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t want[4] = {d0, d1, d2, d3};
    if (t->ndim != n) return 0;
    for (int i = 0; i < n; i++)
        if (t->shape[i] != want[i]) return 0;
    return 1;
}

/* q [B, T, Hq, hd] and k [B, S >= T, Hkv, hd] with Hkv dividing Hq, and v shaped like k:
 * the checks the forward and the backward share. */
static int check_qkv(const char *op, const sd_tensor *q, const sd_tensor *k, const sd_tensor *v) {
    char sq[64], sk[64], sv[64];
    if (q->ndim != 4 || k->ndim != 4)
        return sd_fail(SD_ERR_INTERNAL, "%s: q %s, k %s: expected 4-D [B, T, H, hd]", op,
                       sd_shape_str(q, sq, sizeof sq), sd_shape_str(k, sk, sizeof sk));
    int64_t B = q->shape[0], T = q->shape[1], Hq = q->shape[2], hd = q->shape[3];
    int64_t S = k->shape[1], Hkv = k->shape[2];
    if (k->shape[0] != B || k->shape[3] != hd || S < T || Hkv <= 0 || Hq % Hkv)
        return sd_fail(SD_ERR_INTERNAL,
                       "%s: q %s vs k %s: expected k [B, S >= T, Hkv dividing Hq, hd]", op,
                       sd_shape_str(q, sq, sizeof sq), sd_shape_str(k, sk, sizeof sk));
    if (!sd_same_shape(v, k))
        return sd_fail(SD_ERR_INTERNAL, "%s: k %s vs v %s: expected the same shape", op,
                       sd_shape_str(k, sk, sizeof sk), sd_shape_str(v, sv, sizeof sv));
    return SD_OK;
}

int sd_attention(sd_ctx *ctx, sd_tensor *out, const sd_tensor *q, const sd_tensor *k,
                 const sd_tensor *v, float scale, sd_tensor *probs, sd_tensor *lse) {
    static const char *op = "sd_attention";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "out", out));
    SD_TRY(sd_op_check_act(ctx->backend, op, "q", q));
    SD_TRY(sd_op_check_act(ctx->backend, op, "k", k));
    SD_TRY(sd_op_check_act(ctx->backend, op, "v", v));
    if (probs) SD_TRY(sd_op_check_f32(ctx->backend, op, "probs", probs));
    if (lse) SD_TRY(sd_op_check_f32(ctx->backend, op, "lse", lse));
    SD_TRY(check_qkv(op, q, k, v));
    char sq[64], sk[64], s2[64];
    int64_t B = q->shape[0], T = q->shape[1], Hq = q->shape[2], hd = q->shape[3];
    int64_t S = k->shape[1], Hkv = k->shape[2];
    if (!sd_same_shape(out, q))
        return sd_fail(SD_ERR_INTERNAL, "%s: q %s vs out %s: expected the same shape", op,
                       sd_shape_str(q, sq, sizeof sq), sd_shape_str(out, s2, sizeof s2));
    if (probs && !has_shape(probs, 4, B, Hq, T, S))
        return sd_fail(SD_ERR_INTERNAL, "%s: q %s, k %s: probs is %s, expected [B, Hq, T, S]",
                       op, sd_shape_str(q, sq, sizeof sq), sd_shape_str(k, sk, sizeof sk),
                       sd_shape_str(probs, s2, sizeof s2));
    if (lse && !has_shape(lse, 3, B, Hq, T, 0))
        return sd_fail(SD_ERR_INTERNAL, "%s: q %s: lse is %s, expected [B, Hq, T]", op,
                       sd_shape_str(q, sq, sizeof sq), sd_shape_str(lse, s2, sizeof s2));
    SD_CUDA_DISPATCH(ctx, sd_cuda_attention(ctx, out, q, k, v, scale, probs, lse));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    return sd_cpu_attention(out->data, q->data, k->data, v->data, B, T, S, Hq, Hkv, hd, scale,
                            probs ? probs->data : NULL, lse ? lse->data : NULL);
}

int sd_attention_backward(sd_ctx *ctx, sd_tensor *dq, sd_tensor *dk, sd_tensor *dv,
                          const sd_tensor *dout, const sd_tensor *q, const sd_tensor *k,
                          const sd_tensor *v, float scale, const sd_tensor *probs) {
    static const char *op = "sd_attention_backward";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "dout", dout));
    SD_TRY(sd_op_check_act(ctx->backend, op, "q", q));
    SD_TRY(sd_op_check_act(ctx->backend, op, "k", k));
    SD_TRY(sd_op_check_act(ctx->backend, op, "v", v));
    if (probs) SD_TRY(sd_op_check_f32(ctx->backend, op, "probs", probs));
    SD_TRY(check_qkv(op, q, k, v));
    char sq[64], sk[64], s2[64];
    int64_t B = q->shape[0], T = q->shape[1], Hq = q->shape[2], hd = q->shape[3];
    int64_t S = k->shape[1], Hkv = k->shape[2];
    if (!sd_same_shape(dout, q))
        return sd_fail(SD_ERR_INTERNAL, "%s: q %s, k %s: expected dout like q", op,
                       sd_shape_str(q, sq, sizeof sq), sd_shape_str(k, sk, sizeof sk));
    if (probs && !has_shape(probs, 4, B, Hq, T, S))
        return sd_fail(SD_ERR_INTERNAL, "%s: q %s, k %s: probs is %s, expected [B, Hq, T, S]",
                       op, sd_shape_str(q, sq, sizeof sq), sd_shape_str(k, sk, sizeof sk),
                       sd_shape_str(probs, s2, sizeof s2));
    /* activation gradients: F32, or on CUDA also BF16 */
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dq", dq, q));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dk", dk, k));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dv", dv, v));
    SD_CUDA_DISPATCH(ctx, sd_cuda_attention_backward(ctx, dq, dk, dv, dout, q, k, v, scale, probs));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    return sd_cpu_attention_backward(dq ? dq->data : NULL, dk ? dk->data : NULL,
                                     dv ? dv->data : NULL, dout->data, q->data, k->data, v->data,
                                     B, T, S, Hq, Hkv, hd, scale, probs ? probs->data : NULL);
}
