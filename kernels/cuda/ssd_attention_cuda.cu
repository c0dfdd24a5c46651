/* The public SSD and attention entries on CUDA: dtype and limit checks, then the fused
 * kernels of ssd_chunked.cu and flash_attention.cu, with their workspace carved from the
 * context's scratch.  The SSD kernel's backward overwrites its outputs while the op layer's
 * convention is to add, so its gradients land in scratch temporaries first and are then
 * added (in fp32) into the caller's tensors.
 *
 * Shapes and dtypes the kernels do not take go through copies in the same scratch
 * (sd_cuda_pad / sd_cuda_unpad, pad_cuda.cu), so that any model shape runs:
 *   - SSD: P and N are padded with zero columns to the next multiple of 16 (x, y, dy, dx to
 *     Pp; Bm, Cm, dB, dC to Np; the states [B, H, P, N] to [B, H, Pp, Np]).  Exact: a zero
 *     column of x gives a zero row of every state and of y, a zero column of B or C a zero
 *     state column that C (zero there too) never reads, and the padded rows / columns add
 *     nothing to C B^T, to the state products or to the gradients of the real entries; the
 *     padded parts of the outputs are dropped.
 *   - SSD chunk: the kernels take multiples of 16 in 16..256; any other chunk runs as the
 *     nearest of those, and chunks above 128 run as 128, which the H200 runs faster (standard
 *     mixer B 8, T 2048, H 64, N 128, G 1: fwd 1.51 / fwd+bwd 5.79 ms at 128 against 1.74 /
 *     6.57 at 256 and 1.65 / 6.29 at 64; bench_cuda_ssd with SD_SSD_BENCH_CHUNKS).  The chunk
 *     only splits the same sums differently (kernels/ssd.h: the chunked form equals the
 *     quadratic one for every chunk), so the result is the same up to rounding; the forward
 *     and the backward pick the same one.
 *   - Attention: hd up to 128 other than 64 or 128 is padded with zero columns to 64 (hd < 64)
 *     or 128: q . k and the softmax are unchanged (scale is passed as given, not recomputed
 *     from the padded hd), the padded output columns are dropped; lse is unaffected.
 *   - F32 where a kernel reads or writes bf16 (x, y, dy, dx, Bm, Cm, dB, dC, q, k, v, out) is
 *     converted through the same copies (rounded to bf16 on the way in).
 * Where nothing needs a copy, the kernels read and write the caller's tensors directly. */
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

static size_t al256(size_t n) { return (n + 255) & ~(size_t)255; }

/* ---- operands: a caller's tensor as a kernel sees it ------------------------------------
 * The tensor is viewed as [R, a, b] (its last one or two dims), the kernel wants [R, ap, bp]
 * in bf16 (kbf 1) or fp32 (kbf 0).  It is staged (copied through scratch, padded, converted)
 * when either differs; otherwise the kernel gets the caller's memory (k = t->data). */
typedef struct {
    const sd_tensor *t; /* NULL: absent */
    int64_t R, a, b, ap, bp;
    int kbf;
    void *k; /* what the kernel reads or writes */
} operand;

static operand opnd(const sd_tensor *t, int64_t R, int64_t a, int64_t b, int64_t ap, int64_t bp, int kbf) {
    operand o = {t, R, a, b, ap, bp, kbf, t ? t->data : NULL};
    return o;
}

static int staged(const operand *o) {
    return o->t && (o->a != o->ap || o->b != o->bp || sd_is_bf16(o->t) != o->kbf);
}

/* Bytes of the kernel-side copy (256-aligned). */
static size_t kbytes(const operand *o) {
    return o->t ? al256((size_t)(o->R * o->ap * o->bp) * (o->kbf ? 2 : 4)) : 0;
}

/* Points o->k at the next kbytes of *cur (always, or only when staged). */
static void place(operand *o, char **cur, int always) {
    if (!o->t || !(always || staged(o))) return;
    o->k = *cur;
    *cur += kbytes(o);
}

/* An input: the caller's values into the kernel-side copy. */
static int stage_in(sd_ctx *ctx, const operand *o) {
    if (!staged(o)) return SD_OK;
    return sd_cuda_pad(ctx, o->k, o->kbf, o->t->data, sd_is_bf16(o->t), o->R, o->a, o->b, o->ap, o->bp);
}

/* An output: the kernel-side copy back into the caller's tensor (add: += instead of =). */
static int stage_out(sd_ctx *ctx, const operand *o, int add) {
    if (!o->t || o->k == o->t->data) return SD_OK;
    return sd_cuda_unpad(ctx, o->t->data, sd_is_bf16(o->t), o->k, o->kbf, o->R, o->a, o->b, o->ap, o->bp, add);
}

/* ---- SSD -------------------------------------------------------------------------------- */

static int64_t up16(int64_t v) { return (v + 15) / 16 * 16; }

/* The chunk the kernels run: the nearest multiple of 16 in 16..128 (ties round up). */
static int64_t kernel_chunk(int64_t chunk) {
    int64_t c = (chunk + 8) / 16 * 16;
    return c < 16 ? 16 : c > 128 ? 128 : c;
}

/* The kernel's dims: P and N padded to multiples of 16, the chunk made allowed.  *P, *N: the
 * caller's. */
static int ssd_dims(const char *op, const sd_tensor *x, const sd_tensor *Bm, int64_t chunk, sd_ssd_cuda_dims *d,
                    int64_t *P, int64_t *N) {
    *P = x->shape[3], *N = Bm->shape[3];
    d->B = x->shape[0], d->T = x->shape[1], d->H = x->shape[2], d->P = up16(*P);
    d->G = Bm->shape[2], d->N = up16(*N), d->chunk = kernel_chunk(chunk);
    if (d->P > 128 || d->N > 128)
        return sd_fail(SD_ERR_INTERNAL, "%s: the CUDA SSD needs P and N up to 128; got P %lld, N %lld", op,
                       (long long)*P, (long long)*N);
    return SD_OK;
}

static const float *fp(const sd_tensor *t) { return t ? (const float *)t->data : NULL; }

/* The operands of the SSD by their layouts (kernels/ssd.h): [B, T, H, P] padded along P,
 * [B, T, G, N] along N, states [B, H, P, N] along both.  kbf: the kernel's dtype. */
static operand op_x(const sd_tensor *t, const sd_ssd_cuda_dims *d, int64_t P) {
    return opnd(t, d->B * d->T * d->H, 1, P, 1, d->P, 1);
}
static operand op_bc(const sd_tensor *t, const sd_ssd_cuda_dims *d, int64_t N) {
    return opnd(t, d->B * d->T * d->G, 1, N, 1, d->N, 1);
}
static operand op_state(const sd_tensor *t, const sd_ssd_cuda_dims *d, int64_t P, int64_t N) {
    return opnd(t, d->B * d->H, P, N, d->P, d->N, 0);
}

int sd_cuda_ssd_chunked(sd_ctx *ctx, sd_tensor *y, const sd_tensor *x, const sd_tensor *dt,
                        const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                        const sd_tensor *D, int64_t chunk, const sd_tensor *init_state,
                        sd_tensor *final_state) {
    static const char *op = "sd_ssd_chunked";
    SD_TRY(want(op, "dt", dt, SD_F32)); SD_TRY(want(op, "loga", loga, SD_F32)); SD_TRY(want(op, "D", D, SD_F32));
    SD_TRY(want(op, "init_state", init_state, SD_F32)); SD_TRY(want(op, "final_state", final_state, SD_F32));
    sd_ssd_cuda_dims d;
    int64_t P, N;
    SD_TRY(ssd_dims(op, x, Bm, chunk, &d, &P, &N));
    operand ins[4] = {op_x(x, &d, P), op_bc(Bm, &d, N), op_bc(Cm, &d, N), op_state(init_state, &d, P, N)};
    operand outs[2] = {op_x(y, &d, P), op_state(final_state, &d, P, N)};
    size_t wsb = al256(sd_ssd_cuda_workspace_bytes(&d)), total = wsb;
    for (int i = 0; i < 4; i++) total += staged(&ins[i]) ? kbytes(&ins[i]) : 0;
    for (int i = 0; i < 2; i++) total += staged(&outs[i]) ? kbytes(&outs[i]) : 0;
    void *ws = NULL;
    SD_TRY(sd_cuda_scratch(ctx, total, &ws));
    char *cur = (char *)ws + wsb;
    for (int i = 0; i < 4; i++) {
        place(&ins[i], &cur, 0);
        SD_TRY(stage_in(ctx, &ins[i]));
    }
    for (int i = 0; i < 2; i++) place(&outs[i], &cur, 0);
    SD_TRY(sd_ssd_cuda_forward(&d, (sd_cuda_bf16 *)outs[0].k, (const sd_cuda_bf16 *)ins[0].k, fp(dt), fp(loga),
                               (const sd_cuda_bf16 *)ins[1].k, (const sd_cuda_bf16 *)ins[2].k, fp(D),
                               (const float *)ins[3].k, (float *)outs[1].k, ws, wsb, sd_cuda_stream(ctx)));
    for (int i = 0; i < 2; i++) SD_TRY(stage_out(ctx, &outs[i], 0));
    return SD_OK;
}

/* dst += src, both of dtype bf16 (or both f32) */
__global__ void k_acc(void *dst, const void *src, int bf16, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        sd_st(dst, bf16, i, sd_ld(dst, bf16, i) + sd_ld(src, bf16, i));
}

/* The same for bf16, 8 values per thread (n a multiple of 8, 16-byte aligned). */
__global__ void k_acc_v8(uint4 *dst, const uint4 *src, int64_t n8) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        uint4 d = dst[i], v = src[i];
        __nv_bfloat16 *dh = reinterpret_cast<__nv_bfloat16 *>(&d);
        const __nv_bfloat16 *vh = reinterpret_cast<const __nv_bfloat16 *>(&v);
#pragma unroll
        for (int k = 0; k < 8; k++) dh[k] = __float2bfloat16_rn(__bfloat162float(dh[k]) + __bfloat162float(vh[k]));
        dst[i] = d;
    }
}

int sd_cuda_ssd_chunked_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *ddt, sd_tensor *dloga,
                                 sd_tensor *dB, sd_tensor *dC, sd_tensor *dD,
                                 const sd_tensor *dy, const sd_tensor *x, const sd_tensor *dt,
                                 const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                                 const sd_tensor *D, int64_t chunk, const sd_tensor *init_state,
                                 const sd_tensor *dfinal_state, sd_tensor *dinit_state) {
    static const char *op = "sd_ssd_chunked_backward";
    SD_TRY(want(op, "dt", dt, SD_F32)); SD_TRY(want(op, "loga", loga, SD_F32)); SD_TRY(want(op, "D", D, SD_F32));
    SD_TRY(want(op, "ddt", ddt, SD_F32)); SD_TRY(want(op, "dloga", dloga, SD_F32)); SD_TRY(want(op, "dD", dD, SD_F32));
    SD_TRY(want(op, "init_state", init_state, SD_F32)); SD_TRY(want(op, "dfinal_state", dfinal_state, SD_F32));
    SD_TRY(want(op, "dinit_state", dinit_state, SD_F32));
    sd_ssd_cuda_dims d;
    int64_t P, N;
    SD_TRY(ssd_dims(op, x, Bm, chunk, &d, &P, &N));
    /* inputs: staged only when their shape or dtype differs from the kernel's */
    operand ins[6] = {op_x(dy, &d, P), op_x(x, &d, P), op_bc(Bm, &d, N), op_bc(Cm, &d, N),
                      op_state(init_state, &d, P, N), op_state(dfinal_state, &d, P, N)};
    /* outputs: always a scratch temporary in the kernel's shape (the kernel overwrites; the
     * caller's tensors are added into); ddt, dloga, dD [n] as [n, 1, 1] f32 */
    int64_t nh = d.B * d.T * d.H;
    operand outs[7] = {op_x(dx, &d, P), opnd(ddt, nh, 1, 1, 1, 1, 0), opnd(dloga, nh, 1, 1, 1, 1, 0),
                       op_bc(dB, &d, N), op_bc(dC, &d, N), opnd(dD, d.H, 1, 1, 1, 1, 0),
                       op_state(dinit_state, &d, P, N)};
    size_t wsb = al256(sd_ssd_cuda_workspace_bytes(&d)), total = wsb;
    for (int i = 0; i < 6; i++) total += staged(&ins[i]) ? kbytes(&ins[i]) : 0;
    for (int i = 0; i < 7; i++) total += kbytes(&outs[i]);
    void *ws = NULL;
    SD_TRY(sd_cuda_scratch(ctx, total, &ws));
    char *cur = (char *)ws + wsb;
    for (int i = 0; i < 6; i++) {
        place(&ins[i], &cur, 0);
        SD_TRY(stage_in(ctx, &ins[i]));
    }
    for (int i = 0; i < 7; i++) place(&outs[i], &cur, 1);
    cudaStream_t s = sd_cuda_stream(ctx);
    SD_TRY(sd_ssd_cuda_backward(&d, (sd_cuda_bf16 *)outs[0].k, (float *)outs[1].k, (float *)outs[2].k,
                                (sd_cuda_bf16 *)outs[3].k, (sd_cuda_bf16 *)outs[4].k, (float *)outs[5].k,
                                (const sd_cuda_bf16 *)ins[0].k, (const sd_cuda_bf16 *)ins[1].k, fp(dt), fp(loga),
                                (const sd_cuda_bf16 *)ins[2].k, (const sd_cuda_bf16 *)ins[3].k, fp(D),
                                (const float *)ins[4].k, (const float *)ins[5].k, (float *)outs[6].k, ws, wsb, s));
    for (int i = 0; i < 7; i++) {
        const operand *o = &outs[i];
        if (!o->t || !sd_numel(o->t)) continue;
        if (staged(o)) { /* padded or converted: the caller's part, added */
            SD_TRY(stage_out(ctx, o, 1));
            continue;
        }
        int64_t n = sd_numel(o->t); /* same shape and dtype: a plain add */
        if (o->kbf && n % 8 == 0 && !((uintptr_t)o->t->data & 15) && !((uintptr_t)o->k & 15))
            k_acc_v8<<<sd_grid1d(n / 8, 256), 256, 0, s>>>((uint4 *)o->t->data, (const uint4 *)o->k, n / 8);
        else
            k_acc<<<sd_grid1d(n, 256), 256, 0, s>>>(o->t->data, o->k, o->kbf, n);
        SD_CUDA_LAUNCHED();
    }
    return SD_OK;
}

/* ---- attention -------------------------------------------------------------------------- */

int sd_cuda_attention(sd_ctx *ctx, sd_tensor *out, const sd_tensor *q, const sd_tensor *k,
                      const sd_tensor *v, float scale, sd_tensor *probs, sd_tensor *lse) {
    static const char *op = "sd_attention";
    if (probs) return sd_fail(SD_ERR_INTERNAL, "%s: the CUDA attention does not output probs", op);
    SD_TRY(want(op, "lse", lse, SD_F32));
    int64_t B = q->shape[0], T = q->shape[1], H = q->shape[2], hd = q->shape[3], S = k->shape[1];
    int64_t Hkv = k->shape[2], hdp = hd <= 64 ? 64 : 128;
    if (hd > 128) return sd_fail(SD_ERR_INTERNAL, "%s: the CUDA attention needs hd up to 128, got %lld", op, (long long)hd);
    if (B > 0x7fffffff || T > 0x7fffffff || S > 0x7fffffff)
        return sd_fail(SD_ERR_INTERNAL, "%s: sizes too large", op);
    if (B * T * H == 0) return SD_OK; /* no queries */
    /* q, k, v, out padded along hd to 64 or 128 when needed (and to bf16) */
    operand ins[3] = {opnd(q, B * T * H, 1, hd, 1, hdp, 1), opnd(k, B * S * Hkv, 1, hd, 1, hdp, 1),
                      opnd(v, B * S * Hkv, 1, hd, 1, hdp, 1)};
    operand o = opnd(out, B * T * H, 1, hd, 1, hdp, 1);
    size_t total = staged(&o) ? kbytes(&o) : 0;
    for (int i = 0; i < 3; i++) total += staged(&ins[i]) ? kbytes(&ins[i]) : 0;
    char *cur = NULL;
    if (total) {
        void *ws = NULL;
        SD_TRY(sd_cuda_scratch(ctx, total, &ws));
        cur = (char *)ws;
    }
    for (int i = 0; i < 3; i++) {
        place(&ins[i], &cur, 0);
        SD_TRY(stage_in(ctx, &ins[i]));
    }
    place(&o, &cur, 0);
    SD_TRY(sd_cuda_flash_attention((uint16_t *)o.k, lse ? (float *)lse->data : NULL, (const uint16_t *)ins[0].k,
                                   (const uint16_t *)ins[1].k, (const uint16_t *)ins[2].k, (int)B, (int)T, (int)S,
                                   (int)H, (int)Hkv, (int)hdp, scale, sd_cuda_stream(ctx)));
    return stage_out(ctx, &o, 0);
}
