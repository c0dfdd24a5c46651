/* Stage-1 loss, CPU reference (kernels/stage1.h): materialise A with sd_attention's probs
 * output and M with sd_ssd_quadratic's M_out, take the per-(b, h) Frobenius norms in
 * double, then push dM = (M - A) / (||A - M||_F B H) through sd_ssd_matrix_backward.
 * The public entry (kernels/stage1.c) has checked the arguments. */
#include "kernels/cpu/stage1_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/attention.h"
#include "kernels/ssd.h"

int sd_cpu_stage1_loss(sd_ctx *ctx, float *loss, sd_tensor *per_head, const sd_tensor *q,
                       const sd_tensor *k, float scale, const sd_tensor *dt, const sd_tensor *loga,
                       const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D, sd_tensor *ddt,
                       sd_tensor *dloga, sd_tensor *dB, sd_tensor *dC, sd_tensor *dD) {
    int64_t B = q->shape[0], T = q->shape[1], H = q->shape[2], hd = q->shape[3];
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
