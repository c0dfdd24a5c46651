/* Stage-1 loss, CPU reference (kernels/stage1.h): materialise A with sd_attention's probs
 * output and M with sd_ssd_quadratic's M_out, take the per-(b, h) Frobenius norms in
 * double, then push dM = (M - A) / (||A - M||_F B H) through sd_ssd_matrix_backward. */
#include "kernels/stage1.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/attention.h"
#include "kernels/ssd.h"

static int dims_are(const sd_tensor *t, int n, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t want[4] = {d0, d1, d2, d3};
    if (!t || t->ndim != n || t->dtype != SD_F32 || t->device != SD_DEV_CPU || !t->data) return 0;
    for (int i = 0; i < n; i++)
        if (t->shape[i] != want[i]) return 0;
    return 1;
}

int sd_stage1_loss(sd_ctx *ctx, float *loss, sd_tensor *per_head, const sd_tensor *q,
                   const sd_tensor *k, float scale, const sd_tensor *dt, const sd_tensor *loga,
                   const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D, sd_tensor *ddt,
                   sd_tensor *dloga, sd_tensor *dB, sd_tensor *dC, sd_tensor *dD) {
    static const char *op = "sd_stage1_loss";
    if (!ctx || !loss) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context or loss", op);
    if (ctx->backend != SD_DEV_CPU)
        return sd_fail(SD_ERR_INTERNAL, "%s: CPU reference only (the fused CUDA version is "
                       "sd_cuda_stage1_loss)", op);
    if (!q || !k || !loga || !Bm || !Cm || q->ndim != 4 || k->ndim != 4 || Bm->ndim != 4)
        return sd_fail(SD_ERR_INTERNAL, "%s: q, k, loga, Bm, Cm required (q, k, Bm 4-D)", op);
    int64_t B = q->shape[0], T = q->shape[1], H = q->shape[2], hd = q->shape[3];
    int64_t Hkv = k->shape[2], G = Bm->shape[2], N = Bm->shape[3];
    if (B < 1 || T < 1 || H < 1 || hd < 1 || Hkv < 1 || H % Hkv || G < 1 || H % G ||
        !dims_are(q, 4, B, T, H, hd) || !dims_are(k, 4, B, T, Hkv, hd) ||
        !dims_are(loga, 3, B, T, H, 0) || !dims_are(Bm, 4, B, T, G, N) ||
        !dims_are(Cm, 4, B, T, G, N) || (dt && !dims_are(dt, 3, B, T, H, 0)) ||
        (D && !dims_are(D, 1, H, 0, 0, 0)))
        return sd_fail(SD_ERR_INTERNAL,
                       "%s: expected F32 CPU q [B, T, H, hd], k [B, T, Hkv | H, hd], dt, loga "
                       "[B, T, H], Bm, Cm [B, T, G | H, N], D [H]", op);
    if ((per_head && !dims_are(per_head, 2, B, H, 0, 0)) || (ddt && !dims_are(ddt, 3, B, T, H, 0)) ||
        (dloga && !dims_are(dloga, 3, B, T, H, 0)) || (dB && !dims_are(dB, 4, B, T, G, N)) ||
        (dC && !dims_are(dC, 4, B, T, G, N)) || (dD && !dims_are(dD, 1, H, 0, 0, 0)))
        return sd_fail(SD_ERR_INTERNAL, "%s: an output is not F32 CPU shaped like its input", op);
    if ((ddt && !dt) || (dD && !D))
        return sd_fail(SD_ERR_INTERNAL, "%s: ddt (dD) given but dt (D) is NULL", op);

    int rc = SD_OK;
    sd_tensor A = {0}, M = {0}, out = {0}, x = {0}, y = {0};
    int64_t sA[4] = {B, H, T, T}, so[4] = {B, T, H, hd}, sx[4] = {B, T, H, 1};
    if ((rc = sd_tensor_alloc(&A, SD_F32, 4, sA)) || (rc = sd_tensor_alloc(&M, SD_F32, 4, sA)) ||
        (rc = sd_tensor_alloc(&out, SD_F32, 4, so)) || (rc = sd_tensor_alloc(&x, SD_F32, 4, sx)) ||
        (rc = sd_tensor_alloc(&y, SD_F32, 4, sx)))
        goto done;
    /* v = k: only the probabilities are wanted, any [B, T, Hkv, hd] values do. */
    if ((rc = sd_attention(ctx, &out, q, k, k, scale, &A, NULL)) != SD_OK) goto done;
    if ((rc = sd_ssd_quadratic(ctx, &y, &x, dt, loga, Bm, Cm, D, &M)) != SD_OK) goto done;

    /* M <- M + diag(D) - A, then the norms; M becomes dM in place. */
    float *a = A.data, *m = M.data;
    double total = 0.0;
    for (int64_t bh = 0; bh < B * H; bh++) {
        float *mb = m + bh * T * T;
        const float *ab = a + bh * T * T;
        float dh = D ? ((const float *)D->data)[bh % H] : 0.0f;
        double ss = 0.0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t s = 0; s <= t; s++) {
                float v = mb[t * T + s] + (s == t ? dh : 0.0f) - ab[t * T + s];
                mb[t * T + s] = v;
                ss += (double)v * v;
            }
        double norm = sqrt(ss);
        total += norm;
        if (per_head) ((float *)per_head->data)[bh] = (float)norm;
        /* ||A - M|| = 0: the norm is not differentiable there; take the zero subgradient. */
        float w = norm > 0.0 ? (float)(1.0 / (norm * (double)(B * H))) : 0.0f;
        for (size_t i = 0; i < (size_t)(T * T); i++) mb[i] *= w;
        if (dD) {
            double acc = 0.0;
            for (int64_t t = 0; t < T; t++) acc += mb[t * T + t];
            ((float *)dD->data)[bh % H] += (float)acc;
        }
    }
    *loss = (float)(total / (double)(B * H));
    if (ddt || dloga || dB || dC)
        rc = sd_ssd_matrix_backward(ctx, ddt, dloga, dB, dC, &M, dt, loga, Bm, Cm);
done:
    sd_tensor_free(&A), sd_tensor_free(&M), sd_tensor_free(&out), sd_tensor_free(&x),
        sd_tensor_free(&y);
    return rc;
}
