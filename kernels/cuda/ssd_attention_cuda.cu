/* The public SSD and attention entries on CUDA: dtype and limit checks, then the fused
 * kernels of ssd_chunked.cu and flash_attention.cu, with their workspace carved from the
 * context's scratch.  The SSD kernel's backward overwrites its outputs while the op layer's
 * convention is to add, so its gradients land in scratch temporaries first and are then
 * added (in fp32) into the caller's tensors. */
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/ssd_cuda.h"

static int want(const char *op, const char *name, const sd_tensor *t, sd_dtype dt) {
    if (t && t->dtype != dt)
        return sd_fail(SD_ERR_INTERNAL, "%s: on CUDA %s must be %s, got %s", op, name, sd_dtype_name(dt),
                       sd_dtype_name(t->dtype));
    return SD_OK;
}

static int ssd_dims(const char *op, const sd_tensor *x, const sd_tensor *Bm, int64_t chunk, sd_ssd_cuda_dims *d) {
    d->B = x->shape[0], d->T = x->shape[1], d->H = x->shape[2], d->P = x->shape[3];
    d->G = Bm->shape[2], d->N = Bm->shape[3], d->chunk = chunk;
    if (d->P % 16 || d->P > 128 || d->N % 16 || d->N > 128 || chunk % 16 || chunk < 16 || chunk > 256)
        return sd_fail(SD_ERR_INTERNAL,
                       "%s: the CUDA SSD needs P and N multiples of 16 up to 128 and chunk a multiple of 16 "
                       "in 16..256; got P %lld, N %lld, chunk %lld", op, (long long)d->P, (long long)d->N,
                       (long long)chunk);
    return SD_OK;
}

static const float *fp(const sd_tensor *t) { return t ? (const float *)t->data : NULL; }

int sd_cuda_ssd_chunked(sd_ctx *ctx, sd_tensor *y, const sd_tensor *x, const sd_tensor *dt,
                        const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                        const sd_tensor *D, int64_t chunk, const sd_tensor *init_state,
                        sd_tensor *final_state) {
    static const char *op = "sd_ssd_chunked";
    SD_TRY(want(op, "x", x, SD_BF16)); SD_TRY(want(op, "y", y, SD_BF16));
    SD_TRY(want(op, "Bm", Bm, SD_BF16)); SD_TRY(want(op, "Cm", Cm, SD_BF16));
    SD_TRY(want(op, "dt", dt, SD_F32)); SD_TRY(want(op, "loga", loga, SD_F32)); SD_TRY(want(op, "D", D, SD_F32));
    SD_TRY(want(op, "init_state", init_state, SD_F32)); SD_TRY(want(op, "final_state", final_state, SD_F32));
    sd_ssd_cuda_dims d;
    SD_TRY(ssd_dims(op, x, Bm, chunk, &d));
    size_t wsb = sd_ssd_cuda_workspace_bytes(&d);
    void *ws = NULL;
    SD_TRY(sd_cuda_scratch(ctx, wsb, &ws));
    return sd_ssd_cuda_forward(&d, (sd_cuda_bf16 *)y->data, (const sd_cuda_bf16 *)x->data, fp(dt), fp(loga),
                               (const sd_cuda_bf16 *)Bm->data, (const sd_cuda_bf16 *)Cm->data, fp(D), fp(init_state),
                               final_state ? (float *)final_state->data : NULL, ws, wsb, sd_cuda_stream(ctx));
}

/* dst += src, both of dtype bf16 (or both f32) */
__global__ void k_acc(void *dst, const void *src, int bf16, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        sd_st(dst, bf16, i, sd_ld(dst, bf16, i) + sd_ld(src, bf16, i));
}

/* Carves n bytes (256-aligned) from *cur; returns NULL for a skipped output. */
static void *carve(char **cur, const sd_tensor *t) {
    if (!t) return NULL;
    void *p = *cur;
    *cur += (sd_nbytes(t) + 255) & ~(size_t)255;
    return p;
}

static size_t span(const sd_tensor *t) { return t ? (sd_nbytes(t) + 255) & ~(size_t)255 : 0; }

int sd_cuda_ssd_chunked_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *ddt, sd_tensor *dloga,
                                 sd_tensor *dB, sd_tensor *dC, sd_tensor *dD,
                                 const sd_tensor *dy, const sd_tensor *x, const sd_tensor *dt,
                                 const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                                 const sd_tensor *D, int64_t chunk, const sd_tensor *init_state,
                                 const sd_tensor *dfinal_state, sd_tensor *dinit_state) {
    static const char *op = "sd_ssd_chunked_backward";
    SD_TRY(want(op, "x", x, SD_BF16)); SD_TRY(want(op, "dy", dy, SD_BF16)); SD_TRY(want(op, "dx", dx, SD_BF16));
    SD_TRY(want(op, "Bm", Bm, SD_BF16)); SD_TRY(want(op, "Cm", Cm, SD_BF16));
    SD_TRY(want(op, "dB", dB, SD_BF16)); SD_TRY(want(op, "dC", dC, SD_BF16));
    SD_TRY(want(op, "dt", dt, SD_F32)); SD_TRY(want(op, "loga", loga, SD_F32)); SD_TRY(want(op, "D", D, SD_F32));
    SD_TRY(want(op, "ddt", ddt, SD_F32)); SD_TRY(want(op, "dloga", dloga, SD_F32)); SD_TRY(want(op, "dD", dD, SD_F32));
    SD_TRY(want(op, "init_state", init_state, SD_F32)); SD_TRY(want(op, "dfinal_state", dfinal_state, SD_F32));
    SD_TRY(want(op, "dinit_state", dinit_state, SD_F32));
    sd_ssd_cuda_dims d;
    SD_TRY(ssd_dims(op, x, Bm, chunk, &d));
    size_t wsb = (sd_ssd_cuda_workspace_bytes(&d) + 255) & ~(size_t)255;
    size_t total = wsb + span(dx) + span(ddt) + span(dloga) + span(dB) + span(dC) + span(dD) + span(dinit_state);
    void *ws = NULL;
    SD_TRY(sd_cuda_scratch(ctx, total, &ws));
    char *cur = (char *)ws + wsb;
    void *tdx = carve(&cur, dx), *tddt = carve(&cur, ddt), *tdl = carve(&cur, dloga), *tdB = carve(&cur, dB);
    void *tdC = carve(&cur, dC), *tdD = carve(&cur, dD), *tdi = carve(&cur, dinit_state);
    cudaStream_t s = sd_cuda_stream(ctx);
    SD_TRY(sd_ssd_cuda_backward(&d, (sd_cuda_bf16 *)tdx, (float *)tddt, (float *)tdl, (sd_cuda_bf16 *)tdB,
                                (sd_cuda_bf16 *)tdC, (float *)tdD, (const sd_cuda_bf16 *)dy->data,
                                (const sd_cuda_bf16 *)x->data, fp(dt), fp(loga), (const sd_cuda_bf16 *)Bm->data,
                                (const sd_cuda_bf16 *)Cm->data, fp(D), fp(init_state), fp(dfinal_state),
                                (float *)tdi, ws, wsb, s));
    sd_tensor *outs[7] = {dx, ddt, dloga, dB, dC, dD, dinit_state};
    void *tmps[7] = {tdx, tddt, tdl, tdB, tdC, tdD, tdi};
    for (int i = 0; i < 7; i++) {
        if (!outs[i] || !sd_numel(outs[i])) continue;
        int64_t n = sd_numel(outs[i]);
        k_acc<<<sd_grid1d(n, 256), 256, 0, s>>>(outs[i]->data, tmps[i], sd_is_bf16(outs[i]), n);
        SD_CUDA_LAUNCHED();
    }
    return SD_OK;
}

int sd_cuda_attention(sd_ctx *ctx, sd_tensor *out, const sd_tensor *q, const sd_tensor *k,
                      const sd_tensor *v, float scale, sd_tensor *probs, sd_tensor *lse) {
    static const char *op = "sd_attention";
    if (probs) return sd_fail(SD_ERR_INTERNAL, "%s: the CUDA attention does not output probs", op);
    SD_TRY(want(op, "q", q, SD_BF16)); SD_TRY(want(op, "k", k, SD_BF16)); SD_TRY(want(op, "v", v, SD_BF16));
    SD_TRY(want(op, "out", out, SD_BF16)); SD_TRY(want(op, "lse", lse, SD_F32));
    int64_t hd = q->shape[3];
    if (hd != 64 && hd != 128) return sd_fail(SD_ERR_INTERNAL, "%s: the CUDA attention needs hd 64 or 128, got %lld", op, (long long)hd);
    if (q->shape[0] > 0x7fffffff || q->shape[1] > 0x7fffffff || k->shape[1] > 0x7fffffff)
        return sd_fail(SD_ERR_INTERNAL, "%s: sizes too large", op);
    return sd_cuda_flash_attention((uint16_t *)out->data, lse ? (float *)lse->data : NULL, (const uint16_t *)q->data,
                                   (const uint16_t *)k->data, (const uint16_t *)v->data, (int)q->shape[0],
                                   (int)q->shape[1], (int)k->shape[1], (int)q->shape[2], (int)k->shape[2], (int)hd,
                                   scale, sd_cuda_stream(ctx));
}
