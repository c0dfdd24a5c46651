/* Public stage-1 entry (kernels/stage1.h): argument checks, then dispatch on the backend
 * (kernels/cpu/stage1_cpu.c the reference, kernels/cuda/stage1_cuda.cu the fused kernel). */
#include "kernels/stage1.h"

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/stage1_cpu.h"

/* t has exactly the n dims given. */
static int dims_are(const sd_tensor *t, int n, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t want[4] = {d0, d1, d2, d3};
    if (t->ndim != n) return 0;
    for (int i = 0; i < n; i++)
        if (t->shape[i] != want[i]) return 0;
    return 1;
}

/* An optional tensor (NULL passes) on the context's device, act: F32 (CUDA: or BF16), else
 * F32, with the given shape. */
static int check(const sd_ctx *ctx, const char *op, const char *name, const sd_tensor *t, int act, int n,
                 int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *want) {
    if (!t) return SD_OK;
    SD_TRY(act ? sd_op_check_act(ctx->backend, op, name, t) : sd_op_check_f32(ctx->backend, op, name, t));
    char s[64];
    if (!dims_are(t, n, d0, d1, d2, d3))
        return sd_fail(SD_ERR_INTERNAL, "%s: %s is %s, expected %s", op, name, sd_shape_str(t, s, sizeof s), want);
    return SD_OK;
}

int sd_stage1_loss(sd_ctx *ctx, float *loss, sd_tensor *per_head, const sd_tensor *q,
                   const sd_tensor *k, float scale, const sd_tensor *dt, const sd_tensor *loga,
                   const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D, sd_tensor *ddt,
                   sd_tensor *dloga, sd_tensor *dB, sd_tensor *dC, sd_tensor *dD) {
    static const char *op = "sd_stage1_loss";
    if (!ctx || !loss) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context or loss", op);
    if (!q || !k || !loga || !Bm || !Cm)
        return sd_fail(SD_ERR_INTERNAL, "%s: q, k, loga, Bm and Cm are required", op);
    char sq[64], sk[64], sb[64];
    if (q->ndim != 4 || k->ndim != 4 || Bm->ndim != 4)
        return sd_fail(SD_ERR_INTERNAL, "%s: q %s, k %s, Bm %s: expected 4-D [B, T, heads, dim]", op,
                       sd_shape_str(q, sq, sizeof sq), sd_shape_str(k, sk, sizeof sk), sd_shape_str(Bm, sb, sizeof sb));
    int64_t B = q->shape[0], T = q->shape[1], H = q->shape[2], hd = q->shape[3];
    int64_t Hkv = k->shape[2], G = Bm->shape[2], N = Bm->shape[3];
    if (B < 1 || T < 1 || H < 1 || hd < 1 || Hkv < 1 || H % Hkv || G < 1 || H % G || N < 1)
        return sd_fail(SD_ERR_INTERNAL,
                       "%s: q %s, k %s, Bm %s: expected positive sizes, kv heads and groups G dividing H", op,
                       sd_shape_str(q, sq, sizeof sq), sd_shape_str(k, sk, sizeof sk), sd_shape_str(Bm, sb, sizeof sb));
    SD_TRY(check(ctx, op, "q", q, 1, 4, B, T, H, hd, "[B, T, H, hd]"));
    SD_TRY(check(ctx, op, "k", k, 1, 4, B, T, Hkv, hd, "[B, T, Hkv, hd] (T and hd as q)"));
    SD_TRY(check(ctx, op, "dt", dt, 0, 3, B, T, H, 0, "[B, T, H]"));
    SD_TRY(check(ctx, op, "loga", loga, 0, 3, B, T, H, 0, "[B, T, H]"));
    SD_TRY(check(ctx, op, "Bm", Bm, 1, 4, B, T, G, N, "[B, T, G, N]"));
    SD_TRY(check(ctx, op, "Cm", Cm, 1, 4, B, T, G, N, "[B, T, G, N] as Bm"));
    SD_TRY(check(ctx, op, "D", D, 0, 1, H, 0, 0, 0, "[H]"));
    SD_TRY(check(ctx, op, "per_head", per_head, 0, 2, B, H, 0, 0, "[B, H]"));
    SD_TRY(check(ctx, op, "ddt", ddt, 0, 3, B, T, H, 0, "[B, T, H]"));
    SD_TRY(check(ctx, op, "dloga", dloga, 0, 3, B, T, H, 0, "[B, T, H]"));
    SD_TRY(check(ctx, op, "dB", dB, 0, 4, B, T, G, N, "[B, T, G, N]"));
    SD_TRY(check(ctx, op, "dC", dC, 0, 4, B, T, G, N, "[B, T, G, N]"));
    SD_TRY(check(ctx, op, "dD", dD, 0, 1, H, 0, 0, 0, "[H]"));
    if ((ddt && !dt) || (dD && !D))
        return sd_fail(SD_ERR_INTERNAL, "%s: %s given but %s is NULL", op, ddt && !dt ? "ddt" : "dD",
                       ddt && !dt ? "dt" : "D");
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    SD_CUDA_DISPATCH(ctx, sd_cuda_stage1(ctx, loss, per_head, q, k, scale, dt, loga, Bm, Cm, D, ddt, dloga, dB, dC,
                                         dD));
    return sd_cpu_stage1_loss(ctx, loss, per_head, q, k, scale, dt, loga, Bm, Cm, D, ddt, dloga, dB, dC, dD);
}
