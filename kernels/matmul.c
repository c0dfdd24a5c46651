/* Public matmul entries: argument checks, then dispatch on the backend. */
#include "kernels/matmul.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

int sd_linear(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
              const sd_tensor *bias) {
    static const char *op = "sd_linear";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "out", out));
    SD_TRY(sd_op_check_act(ctx->backend, op, "x", x));
    SD_TRY(sd_op_check_act(ctx->backend, op, "w", w));
    if (bias) SD_TRY(sd_op_check_act(ctx->backend, op, "bias", bias));
    char sx[64], sw[64], so[64], sb[64];
    if (x->ndim < 1) return sd_fail(SD_ERR_INTERNAL, "%s: x is 0-D", op);
    int64_t K = x->shape[x->ndim - 1];
    if (w->ndim != 2 || w->shape[1] != K)
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s vs w %s: expected w [N, %lld]", op,
                       sd_shape_str(x, sx, sizeof sx), sd_shape_str(w, sw, sizeof sw), (long long)K);
    int64_t N = w->shape[0];
    int ok = out->ndim == x->ndim && out->shape[out->ndim - 1] == N;
    for (int i = 0; ok && i < x->ndim - 1; i++) ok = out->shape[i] == x->shape[i];
    if (!ok)
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s, w %s: out is %s, expected x's leading dims and %lld",
                       op, sd_shape_str(x, sx, sizeof sx), sd_shape_str(w, sw, sizeof sw),
                       sd_shape_str(out, so, sizeof so), (long long)N);
    if (bias && (bias->ndim != 1 || bias->shape[0] != N))
        return sd_fail(SD_ERR_INTERNAL, "%s: w %s vs bias %s: expected bias [%lld]", op,
                       sd_shape_str(w, sw, sizeof sw), sd_shape_str(bias, sb, sizeof sb), (long long)N);
    SD_CUDA_DISPATCH(ctx, sd_cuda_linear(ctx, out, x, w, bias));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_linear(out->data, x->data, w->data, bias ? bias->data : NULL, sd_rows(x), N, K);
    return SD_OK;
}

/* Batch count and per-batch element stride of a 2-D or 3-D operand (2-D: stride 0). */
static void batch_of(const sd_tensor *t, int64_t *batch, int64_t *rows, int64_t *cols) {
    *batch = t->ndim == 3 ? t->shape[0] : 1;
    *rows = t->shape[t->ndim - 2];
    *cols = t->shape[t->ndim - 1];
}

/* The sizes of c[batch] = op(a) [M, K] . op(b) [K, N], and the per-batch strides of a and b
 * (0: a 2-D operand shared by every batch). */
typedef struct {
    int64_t batch, M, N, K, a_stride, b_stride;
} mm_dims;

/* The shape rules the forward and the backward share; cname names c (or dc) in messages. */
static int check_matmul(const sd_ctx *ctx, const char *op, const char *cname, const sd_tensor *c,
                        const sd_tensor *a, const sd_tensor *b, int trans_a, int trans_b, mm_dims *k) {
    SD_TRY(sd_op_check_act(ctx->backend, op, cname, c));
    SD_TRY(sd_op_check_act(ctx->backend, op, "a", a));
    SD_TRY(sd_op_check_act(ctx->backend, op, "b", b));
    char sa[64], sb[64], sc[64];
    if (a->ndim < 2 || a->ndim > 3 || b->ndim < 2 || b->ndim > 3 || c->ndim < 2 || c->ndim > 3)
        return sd_fail(SD_ERR_INTERNAL, "%s: a %s, b %s, %s %s: expected 2-D or 3-D tensors", op,
                       sd_shape_str(a, sa, sizeof sa), sd_shape_str(b, sb, sizeof sb), cname,
                       sd_shape_str(c, sc, sizeof sc));
    int64_t ba, ar, ac, bb, br, bc, bcn, cr, cc;
    batch_of(a, &ba, &ar, &ac);
    batch_of(b, &bb, &br, &bc);
    batch_of(c, &bcn, &cr, &cc);
    int64_t M = trans_a ? ac : ar, Ka = trans_a ? ar : ac;
    int64_t Kb = trans_b ? bc : br, N = trans_b ? br : bc;
    /* A 2-D a or b is shared by every batch of a 3-D c; a 3-D one must match c's batch. */
    int batch_ok = (a->ndim == 2 || ba == bcn) && (b->ndim == 2 || bb == bcn) &&
                   (c->ndim == 3 || (a->ndim == 2 && b->ndim == 2));
    if (Ka != Kb || cr != M || cc != N || !batch_ok)
        return sd_fail(SD_ERR_INTERNAL,
                       "%s: a %s (trans %d) vs b %s (trans %d) with %s %s: inner dims or batch differ",
                       op, sd_shape_str(a, sa, sizeof sa), trans_a, sd_shape_str(b, sb, sizeof sb),
                       trans_b, cname, sd_shape_str(c, sc, sizeof sc));
    *k = (mm_dims){bcn, M, N, Ka, a->ndim == 3 ? ar * ac : 0, b->ndim == 3 ? br * bc : 0};
    return SD_OK;
}

int sd_matmul(sd_ctx *ctx, sd_tensor *c, const sd_tensor *a, const sd_tensor *b, int trans_a,
              int trans_b, float alpha, float beta) {
    static const char *op = "sd_matmul";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    mm_dims k = {0};
    SD_TRY(check_matmul(ctx, op, "c", c, a, b, trans_a, trans_b, &k));
    SD_CUDA_DISPATCH(ctx, sd_cuda_matmul(ctx, c, a, b, k.batch, k.M, k.N, k.K, trans_a, trans_b,
                                         alpha, beta, k.a_stride, k.b_stride));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_matmul(c->data, a->data, b->data, k.batch, k.M, k.N, k.K, trans_a, trans_b, alpha, beta,
                  k.a_stride, k.b_stride);
    return SD_OK;
}

/* ---- backward ------------------------------------------------------------------------ */

int sd_linear_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *db,
                       const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w) {
    static const char *op = "sd_linear_backward";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "x", x));
    SD_TRY(sd_op_check_act(ctx->backend, op, "w", w));
    SD_TRY(sd_op_check_act(ctx->backend, op, "dy", dy));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "dx", dx, x));
    SD_TRY(sd_op_check_grad(ctx->backend, op, "dw", dw, w));
    char sx[64], sw[64], sy[64];
    if (x->ndim < 1 || w->ndim != 2 || w->shape[1] != x->shape[x->ndim - 1] ||
        dy->ndim != x->ndim || dy->shape[dy->ndim - 1] != w->shape[0] || sd_rows(dy) != sd_rows(x))
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s, w %s, dy %s: expected w [N, K], dy [.., N]",
                       op, sd_shape_str(x, sx, sizeof sx), sd_shape_str(w, sw, sizeof sw),
                       sd_shape_str(dy, sy, sizeof sy));
    int64_t N = w->shape[0], K = w->shape[1];
    if (db) {
        SD_TRY(sd_op_check_f32(ctx->backend, op, "db", db));
        if (db->ndim != 1 || db->shape[0] != N)
            return sd_fail(SD_ERR_INTERNAL, "%s: db %s, expected [%lld]", op,
                           sd_shape_str(db, sy, sizeof sy), (long long)N);
    }
    SD_CUDA_DISPATCH(ctx, sd_cuda_linear_backward(ctx, dx, dw, db, dy, x, w));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_linear_backward(dx ? dx->data : NULL, dw ? dw->data : NULL, db ? db->data : NULL,
                           dy->data, x->data, w->data, sd_rows(x), N, K);
    return SD_OK;
}

int sd_matmul_backward(sd_ctx *ctx, sd_tensor *da, sd_tensor *db, const sd_tensor *dc,
                       const sd_tensor *a, const sd_tensor *b, int trans_a, int trans_b,
                       float alpha) {
    static const char *op = "sd_matmul_backward";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "da", da, a));
    SD_TRY(sd_op_check_like_act(ctx->backend, op, "db", db, b));
    mm_dims k = {0}; /* the forward's shape rules, with dc in place of c */
    SD_TRY(check_matmul(ctx, op, "dc", dc, a, b, trans_a, trans_b, &k));
    SD_CUDA_DISPATCH(ctx, sd_cuda_matmul_backward(ctx, da, db, dc, a, b, k.batch, k.M, k.N, k.K,
                                                  trans_a, trans_b, alpha, k.a_stride, k.b_stride));
    if (ctx->backend != SD_DEV_CPU) return sd_op_no_backend(op, ctx->backend);
    sd_cpu_matmul_backward(da ? da->data : NULL, db ? db->data : NULL, dc->data, a->data,
                           b->data, k.batch, k.M, k.N, k.K, trans_a, trans_b, alpha, k.a_stride,
                           k.b_stride);
    return SD_OK;
}
