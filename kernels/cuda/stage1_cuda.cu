/* The public stage-1 entry on CUDA (kernels/stage1.h): the fused loss and gradient of
 * stage1_fused.cu (sd_cuda_stage1_loss, kernels/cuda/attention_cuda.h) on the op layer's
 * tensors, with its workspace carved from the context's scratch.
 *
 * The fused kernel takes hd and N of 64 or 128, bf16 q, k, Bm, Cm (16-byte aligned), and G and
 * Hkv dividing H (as the CPU reference).  Other head dims and state sizes up to 128 are padded
 * with zero columns to 64 (up to 64) or 128 (sd_cuda_pad): a zero column of q and k leaves
 * every q . k, hence A and its lse, unchanged; a zero column of B and C leaves every C . B,
 * hence M and the gradients of dt, loga and D, unchanged, and the real columns of dB and dC
 * are sums of P times real columns of C and B, unchanged too.  The padded gradient columns
 * are dropped.  F32 or misaligned q, k, Bm, Cm go through the same copies (F32 rounded to
 * bf16).  The loss is written to the host (the call synchronises); per_head is written;
 * ddt, dloga, dB, dC, dD (F32) are added into, as on the CPU. */
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

static size_t al256(size_t n) { return (n + 255) & ~(size_t)255; }

/* 64 up to 64, else 128: the fused kernel's head dims and state sizes. */
static int64_t pad64(int64_t v) { return v <= 64 ? 64 : 128; }

/* Whether t ([R, b] for the kernel's [R, bp] bf16) must be copied: padded, F32, or not
 * 16-byte aligned (the kernel loads it with cp.async). */
static int needs_copy(const sd_tensor *t, int64_t b, int64_t bp) {
    return b != bp || !sd_is_bf16(t) || ((uintptr_t)t->data & 15);
}

int sd_cuda_stage1(sd_ctx *ctx, float *loss, sd_tensor *per_head, const sd_tensor *q,
                   const sd_tensor *k, float scale, const sd_tensor *dt, const sd_tensor *loga,
                   const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D, sd_tensor *ddt,
                   sd_tensor *dloga, sd_tensor *dB, sd_tensor *dC, sd_tensor *dD) {
    static const char *op = "sd_stage1_loss";
    int64_t B = q->shape[0], T = q->shape[1], H = q->shape[2], hd = q->shape[3];
    int64_t Hkv = k->shape[2], G = Bm->shape[2], N = Bm->shape[3];
    if (hd > 128 || N > 128)
        return sd_fail(SD_ERR_INTERNAL, "%s: the CUDA stage-1 loss needs hd and N up to 128; got hd %lld, N %lld",
                       op, (long long)hd, (long long)N);
    if (B * T * H > 0x7fffffffLL || B * T * G > 0x7fffffffLL)
        return sd_fail(SD_ERR_INTERNAL, "%s: sizes too large (B %lld, T %lld, H %lld)", op, (long long)B,
                       (long long)T, (long long)H);
    const int64_t hdp = pad64(hd), Np = pad64(N);

    /* scratch: the kernel's workspace, the loss, then the copies that are needed */
    const int cq = needs_copy(q, hd, hdp), ck = needs_copy(k, hd, hdp);
    const int cB = needs_copy(Bm, N, Np), cC = needs_copy(Cm, N, Np);
    const int pad_grad = N != Np; /* dB, dC through zeroed [B, T, G, Np] temporaries */
    const size_t wsb = al256(sd_cuda_stage1_workspace((int)B, (int)T, (int)H, (int)Np));
    const size_t nq = al256((size_t)(B * T * H * hdp) * 2), nk = al256((size_t)(B * T * Hkv * hdp) * 2);
    const size_t nbc = al256((size_t)(B * T * G * Np) * 2), ngrad = al256((size_t)(B * T * G * Np) * 4);
    size_t total = wsb + 256 + (cq ? nq : 0) + (ck ? nk : 0) + (cB ? nbc : 0) + (cC ? nbc : 0);
    if (pad_grad) total += (dB ? ngrad : 0) + (dC ? ngrad : 0);
    void *ws = NULL;
    SD_TRY(sd_cuda_scratch(ctx, total, &ws));
    char *cur = (char *)ws + wsb;
    float *dloss = (float *)cur;
    cur += 256;
    cudaStream_t s = sd_cuda_stream(ctx);

    /* inputs: [R, hd] -> [R, hdp] and [R, N] -> [R, Np] bf16, zero columns */
    const void *kq = q->data, *kk = k->data, *kB = Bm->data, *kC = Cm->data;
    if (cq) {
        SD_TRY(sd_cuda_pad(ctx, cur, 1, q->data, sd_is_bf16(q), B * T * H, 1, hd, 1, hdp));
        kq = cur, cur += nq;
    }
    if (ck) {
        SD_TRY(sd_cuda_pad(ctx, cur, 1, k->data, sd_is_bf16(k), B * T * Hkv, 1, hd, 1, hdp));
        kk = cur, cur += nk;
    }
    if (cB) {
        SD_TRY(sd_cuda_pad(ctx, cur, 1, Bm->data, sd_is_bf16(Bm), B * T * G, 1, N, 1, Np));
        kB = cur, cur += nbc;
    }
    if (cC) {
        SD_TRY(sd_cuda_pad(ctx, cur, 1, Cm->data, sd_is_bf16(Cm), B * T * G, 1, N, 1, Np));
        kC = cur, cur += nbc;
    }
    /* dB, dC: the kernel adds; padded, it adds into zeroed temporaries added back below */
    float *kdB = dB ? (float *)dB->data : NULL, *kdC = dC ? (float *)dC->data : NULL;
    if (pad_grad && dB) {
        kdB = (float *)cur, cur += ngrad;
        SD_CUDA_TRY(cudaMemsetAsync(kdB, 0, ngrad, s));
    }
    if (pad_grad && dC) {
        kdC = (float *)cur, cur += ngrad;
        SD_CUDA_TRY(cudaMemsetAsync(kdC, 0, ngrad, s));
    }

    sd_cuda_stage1_args a;
    a.B = (int)B, a.T = (int)T, a.H = (int)H, a.Hkv = (int)Hkv, a.hd = (int)hdp, a.G = (int)G, a.N = (int)Np;
    a.scale = scale; /* as given: not recomputed from the padded hd */
    a.q = (const uint16_t *)kq, a.k = (const uint16_t *)kk, a.Bm = (const uint16_t *)kB, a.Cm = (const uint16_t *)kC;
    a.dt = dt ? (const float *)dt->data : NULL, a.loga = (const float *)loga->data;
    a.D = D ? (const float *)D->data : NULL;
    a.loss = dloss, a.per_head = per_head ? (float *)per_head->data : NULL;
    a.ddt = ddt ? (float *)ddt->data : NULL, a.dloga = dloga ? (float *)dloga->data : NULL;
    a.dB = kdB, a.dC = kdC, a.dD = dD ? (float *)dD->data : NULL;
    SD_TRY(sd_cuda_stage1_loss(&a, ws, wsb, s));

    if (pad_grad && dB) SD_TRY(sd_cuda_unpad(ctx, dB->data, 0, kdB, 0, B * T * G, 1, N, 1, Np, 1));
    if (pad_grad && dC) SD_TRY(sd_cuda_unpad(ctx, dC->data, 0, kdC, 0, B * T * G, 1, N, 1, Np, 1));
    SD_CUDA_TRY(cudaMemcpyAsync(loss, dloss, sizeof(float), cudaMemcpyDeviceToHost, s));
    SD_CUDA_TRY(cudaStreamSynchronize(s));
    return SD_OK;
}
