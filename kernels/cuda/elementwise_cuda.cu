/* Elementwise ops on CUDA: grid-stride loops, each tensor read and written in its own dtype
 * (F32 or BF16), math in fp32 with the CPU reference's formulas (kernels/cpu/activation.c). */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

typedef __nv_bfloat16 bf16_t;

#define GS_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* expf with accurate division: --use_fast_math would otherwise turn 1/(1+e) into an
 * approximate reciprocal, a few ulp off the CPU. */
__device__ __forceinline__ float sigm(float v) { return __fdiv_rn(1.0f, 1.0f + expf(-v)); }

/* tanh in double, rounded: --use_fast_math may map tanhf to the hardware approximation
 * (about 2^-11 relative), far from the CPU's tanhf.  Only GELU uses it. */
__device__ __forceinline__ float tanh_(float u) { return (float)tanh((double)u); }

__device__ __forceinline__ float unary_f(int f, float v) {
    if (f == SD_CUDA_SILU) return v * sigm(v);
    if (f == SD_CUDA_SOFTPLUS) return v > 20.0f ? v : log1pf(expf(v));
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * v * (1.0f + tanh_(k * (v + 0.044715f * v * v * v)));
}

__device__ __forceinline__ float unary_df(int f, float v) {
    if (f == SD_CUDA_SILU) {
        float s = sigm(v);
        return s * (1.0f + v * (1.0f - s));
    }
    if (f == SD_CUDA_SOFTPLUS) return v > 20.0f ? 1.0f : sigm(v);
    const float k = 0.7978845608028654f;
    float u = k * (v + 0.044715f * v * v * v), t = tanh_(u);
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * v * v);
}

__global__ void k_unary(int f, void *out, int obf, const void *x, int xbf, int64_t n) {
    GS_LOOP(i, n) sd_st(out, obf, i, unary_f(f, sd_ld(x, xbf, i)));
}

__global__ void k_unary_bwd(int f, void *dx, int dbf, const void *dy, int ybf, const void *x, int xbf, int64_t n) {
    GS_LOOP(i, n) sd_st(dx, dbf, i, sd_ld(dx, dbf, i) + sd_ld(dy, ybf, i) * unary_df(f, sd_ld(x, xbf, i)));
}

__global__ void k_swiglu(void *out, int obf, const void *g, int gbf, const void *u, int ubf, int64_t n) {
    GS_LOOP(i, n) {
        float a = sd_ld(g, gbf, i);
        sd_st(out, obf, i, a * sigm(a) * sd_ld(u, ubf, i));
    }
}

__global__ void k_swiglu_bwd(void *dg, int dgbf, void *du, int dubf, const void *dy, int ybf, const void *g,
                             int gbf, const void *u, int ubf, int64_t n) {
    GS_LOOP(i, n) {
        float a = sd_ld(g, gbf, i), s = sigm(a), d = sd_ld(dy, ybf, i);
        if (dg) sd_st(dg, dgbf, i, sd_ld(dg, dgbf, i) + d * sd_ld(u, ubf, i) * s * (1.0f + a * (1.0f - s)));
        if (du) sd_st(du, dubf, i, sd_ld(du, dubf, i) + d * a * s);
    }
}

__global__ void k_add(void *out, int obf, const void *a, int abf, const void *b, int bbf, int64_t n) {
    GS_LOOP(i, n) sd_st(out, obf, i, sd_ld(a, abf, i) + sd_ld(b, bbf, i));
}

/* ---- the same ops 8 elements at a time ----------------------------------------------------
 * When every tensor of a call is BF16, 16-byte aligned and n a multiple of 8, one thread moves
 * one uint4 (8 bf16) per tensor: the same arithmetic per element (same bits), an eighth of the
 * memory instructions.  The scalar kernels above reach ~30% of the H200's bandwidth on these
 * streaming ops; the loads, not the math, were the limit. */
__device__ __forceinline__ float bf(const uint4 &v, int k) { return __bfloat162float(reinterpret_cast<const bf16_t *>(&v)[k]); }
__device__ __forceinline__ void bf_set(uint4 &v, int k, float x) { reinterpret_cast<bf16_t *>(&v)[k] = __float2bfloat16_rn(x); }

__global__ void k_swiglu_v8(uint4 *out, const uint4 *g, const uint4 *u, int64_t n8) {
    GS_LOOP(i, n8) {
        uint4 a = g[i], b = u[i], o;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float x = bf(a, k);
            bf_set(o, k, x * sigm(x) * bf(b, k));
        }
        out[i] = o;
    }
}

__global__ void k_swiglu_bwd_v8(uint4 *dg, uint4 *du, const uint4 *dy, const uint4 *g, const uint4 *u, int64_t n8) {
    GS_LOOP(i, n8) {
        uint4 a = g[i], b = u[i], d = dy[i], og = dg[i], ou = du[i];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float x = bf(a, k), s = sigm(x), dv = bf(d, k);
            bf_set(og, k, bf(og, k) + dv * bf(b, k) * s * (1.0f + x * (1.0f - s)));
            bf_set(ou, k, bf(ou, k) + dv * x * s);
        }
        dg[i] = og;
        du[i] = ou;
    }
}

__global__ void k_add_v8(uint4 *out, const uint4 *a, const uint4 *b, int64_t n8) {
    GS_LOOP(i, n8) {
        uint4 x = a[i], y = b[i], o;
#pragma unroll
        for (int k = 0; k < 8; k++) bf_set(o, k, bf(x, k) + bf(y, k));
        out[i] = o;
    }
}

/* 1 when the vector kernels may run: n a multiple of 8 and every given tensor BF16 and
 * 16-byte aligned (NULL entries are skipped). */
static int vec8(int64_t n, const sd_tensor *const *t, int count) {
    if (n % 8) return 0;
    for (int i = 0; i < count; i++)
        if (t[i] && (t[i]->dtype != SD_BF16 || ((uintptr_t)t[i]->data & 15))) return 0;
    return 1;
}

#define LAUNCH(n) sd_grid1d((n), 256), 256, 0, sd_cuda_stream(ctx)

int sd_cuda_unary_fwd(sd_ctx *ctx, sd_cuda_unary f, sd_tensor *out, const sd_tensor *x) {
    int64_t n = sd_numel(x);
    if (!n) return SD_OK;
    k_unary<<<LAUNCH(n)>>>((int)f, out->data, sd_is_bf16(out), x->data, sd_is_bf16(x), n);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_unary_bwd(sd_ctx *ctx, sd_cuda_unary f, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *x) {
    int64_t n = sd_numel(x);
    if (!n || !dx) return SD_OK;
    k_unary_bwd<<<LAUNCH(n)>>>((int)f, dx->data, sd_is_bf16(dx), dy->data, sd_is_bf16(dy), x->data, sd_is_bf16(x), n);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_swiglu(sd_ctx *ctx, sd_tensor *out, const sd_tensor *gate, const sd_tensor *up) {
    int64_t n = sd_numel(gate);
    if (!n) return SD_OK;
    const sd_tensor *all[3] = {out, gate, up};
    if (vec8(n, all, 3)) {
        k_swiglu_v8<<<LAUNCH(n / 8)>>>((uint4 *)out->data, (const uint4 *)gate->data, (const uint4 *)up->data, n / 8);
        SD_CUDA_LAUNCHED();
        return SD_OK;
    }
    k_swiglu<<<LAUNCH(n)>>>(out->data, sd_is_bf16(out), gate->data, sd_is_bf16(gate), up->data, sd_is_bf16(up), n);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_swiglu_backward(sd_ctx *ctx, sd_tensor *dgate, sd_tensor *dup, const sd_tensor *dy,
                            const sd_tensor *gate, const sd_tensor *up) {
    int64_t n = sd_numel(gate);
    if (!n || (!dgate && !dup)) return SD_OK;
    const sd_tensor *all[5] = {dgate, dup, dy, gate, up};
    if (dgate && dup && vec8(n, all, 5)) {
        k_swiglu_bwd_v8<<<LAUNCH(n / 8)>>>((uint4 *)dgate->data, (uint4 *)dup->data, (const uint4 *)dy->data,
                                           (const uint4 *)gate->data, (const uint4 *)up->data, n / 8);
        SD_CUDA_LAUNCHED();
        return SD_OK;
    }
    k_swiglu_bwd<<<LAUNCH(n)>>>(dgate ? dgate->data : NULL, sd_is_bf16(dgate), dup ? dup->data : NULL,
                                sd_is_bf16(dup), dy->data, sd_is_bf16(dy), gate->data, sd_is_bf16(gate), up->data,
                                sd_is_bf16(up), n);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_add(sd_ctx *ctx, sd_tensor *out, const sd_tensor *a, const sd_tensor *b) {
    int64_t n = sd_numel(a);
    if (!n) return SD_OK;
    const sd_tensor *all[3] = {out, a, b};
    if (vec8(n, all, 3)) {
        k_add_v8<<<LAUNCH(n / 8)>>>((uint4 *)out->data, (const uint4 *)a->data, (const uint4 *)b->data, n / 8);
        SD_CUDA_LAUNCHED();
        return SD_OK;
    }
    k_add<<<LAUNCH(n)>>>(out->data, sd_is_bf16(out), a->data, sd_is_bf16(a), b->data, sd_is_bf16(b), n);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}
