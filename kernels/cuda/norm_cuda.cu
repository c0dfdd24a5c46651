/* RMSNorm, gated RMSNorm and LayerNorm on CUDA.  RMSNorm is the gated norm with no gate and
 * one group (g = d), so one pair of kernels serves both: a block per group, the sum of squares
 * reduced in fp32 in a fixed order (block_sum), everything after it as the CPU reference
 * (kernels/cpu/gated_norm.c).  The weight gradient sums over rows without atomics: fixed
 * chunks of rows, then the chunks in order (deterministic).  LayerNorm (at the end) has its
 * own kernels in the same pattern. */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

#define NORM_THREADS 256
#define DW_ROWS 128

__device__ __forceinline__ float sigm(float v) { return __fdiv_rn(1.0f, 1.0f + expf(-v)); }

__device__ __forceinline__ float gate_h(const void *y, int ybf, const void *z, int zbf, int64_t i) {
    float v = sd_ld(y, ybf, i);
    if (!z) return v;
    float zv = sd_ld(z, zbf, i);
    return v * (zv * sigm(zv));
}

__device__ __forceinline__ float group_rstd(const void *y, int ybf, const void *z, int zbf, int64_t o, int64_t g,
                                            float eps, float *sh) {
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < g; i += blockDim.x) {
        float h = gate_h(y, ybf, z, zbf, o + i);
        ss += h * h;
    }
    ss = sd_block_sum(ss, sh);
    return __fdiv_rn(1.0f, __fsqrt_rn(__fdiv_rn(ss, (float)g) + eps));
}

/* grid: one block per group k of rows * (d / g) */
__global__ void k_gnorm(void *out, int obf, const void *y, int ybf, const void *z, int zbf, const void *w, int wbf,
                        int64_t d, int64_t g, float eps) {
    __shared__ float sh[32];
    int64_t k = blockIdx.x, o = k * g, wo = (k % (d / g)) * g;
    float r = group_rstd(y, ybf, z, zbf, o, g, eps, sh);
    for (int64_t i = threadIdx.x; i < g; i += blockDim.x)
        sd_st(out, obf, o + i, sd_ld(w, wbf, wo + i) * (gate_h(y, ybf, z, zbf, o + i) * r));
}

/* Plain RMSNorm of BF16 rows (d a multiple of 8, 16-byte aligned): the same per-element
 * arithmetic as k_gnorm with one 16-byte load per 8 values (the scalar loads held k_gnorm to
 * ~27% of the H200's bandwidth).  The sum of squares is reduced in another (fixed) order. */
__global__ void k_rmsnorm_v8(uint4 *out, const uint4 *x, const void *w, int wbf, int64_t d8, float eps) {
    __shared__ float sh[32];
    const uint4 *row = x + (int64_t)blockIdx.x * d8;
    uint4 *orow = out + (int64_t)blockIdx.x * d8;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < d8; i += blockDim.x) {
        uint4 v = row[i];
        const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&v);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float f = __bfloat162float(h[k]);
            ss += f * f;
        }
    }
    ss = sd_block_sum(ss, sh);
    float r = __fdiv_rn(1.0f, __fsqrt_rn(__fdiv_rn(ss, (float)(d8 * 8)) + eps));
    for (int64_t i = threadIdx.x; i < d8; i += blockDim.x) {
        uint4 v = row[i], o;
        const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&v);
        __nv_bfloat16 *oh = reinterpret_cast<__nv_bfloat16 *>(&o);
#pragma unroll
        for (int k = 0; k < 8; k++) oh[k] = __float2bfloat16_rn(sd_ld(w, wbf, i * 8 + k) * (__bfloat162float(h[k]) * r));
        orow[i] = o;
    }
}

/* dh_i = r w_i do_i - h_i r^3 / g sum_j w_j do_j h_j; dy += dh silu(z), dz += dh y silu'(z).
 * Also stores r per group for the weight gradient. */
__global__ void k_gnorm_bwd(void *dy, int dybf, void *dz, int dzbf, float *rstd, const void *dout, int dobf,
                            const void *y, int ybf, const void *z, int zbf, const void *w, int wbf, int64_t d,
                            int64_t g, float eps) {
    __shared__ float sh[32];
    int64_t k = blockIdx.x, o = k * g, wo = (k % (d / g)) * g;
    float r = group_rstd(y, ybf, z, zbf, o, g, eps, sh);
    if (rstd && threadIdx.x == 0) rstd[k] = r;
    if (!dy && !dz) return;
    float dot = 0.0f;
    for (int64_t i = threadIdx.x; i < g; i += blockDim.x)
        dot += sd_ld(w, wbf, wo + i) * sd_ld(dout, dobf, o + i) * gate_h(y, ybf, z, zbf, o + i);
    dot = sd_block_sum(dot, sh);
    float c = __fdiv_rn(dot, (float)g) * r * r * r;
    for (int64_t i = threadIdx.x; i < g; i += blockDim.x) {
        float h = gate_h(y, ybf, z, zbf, o + i);
        float dh = r * (sd_ld(w, wbf, wo + i) * sd_ld(dout, dobf, o + i)) - c * h;
        if (!z) {
            if (dy) sd_st(dy, dybf, o + i, sd_ld(dy, dybf, o + i) + dh);
            continue;
        }
        float zv = sd_ld(z, zbf, o + i), s = sigm(zv);
        if (dy) sd_st(dy, dybf, o + i, sd_ld(dy, dybf, o + i) + dh * (zv * s));
        if (dz) sd_st(dz, dzbf, o + i, sd_ld(dz, dzbf, o + i) + dh * sd_ld(y, ybf, o + i) * (s * (1.0f + zv * (1.0f - s))));
    }
}

/* part[chunk, c] = sum over the chunk's rows of dout h r (group of c). */
__global__ void k_gnorm_dw(float *part, const float *rstd, const void *dout, int dobf, const void *y, int ybf,
                           const void *z, int zbf, int64_t rows, int64_t d, int64_t g) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    int64_t r0 = (int64_t)blockIdx.y * DW_ROWS, r1 = min(rows, r0 + DW_ROWS), gpr = d / g;
    float s = 0.0f;
    for (int64_t r = r0; r < r1; r++)
        s += sd_ld(dout, dobf, r * d + c) * (gate_h(y, ybf, z, zbf, r * d + c) * rstd[r * gpr + c / g]);
    part[(int64_t)blockIdx.y * d + c] = s;
}

__global__ void k_chunks_finish(float *dst, const float *part, int64_t nch, int64_t d) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float s = 0.0f;
    for (int64_t k = 0; k < nch; k++) s += part[k * d + c];
    dst[c] += s;
}

int sd_cuda_gated_rmsnorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *y, const sd_tensor *z,
                          const sd_tensor *w, int64_t g, float eps) {
    int64_t d = y->shape[y->ndim - 1], ng = sd_rows(y) * (d / g);
    if (ng == 0 || g == 0) return SD_OK;
    if (ng > 0x7fffffffLL) return sd_fail(SD_ERR_INTERNAL, "sd_gated_rmsnorm: %lld groups is too many", (long long)ng);
    if (!z && g == d && d % 8 == 0 && sd_is_bf16(out) && sd_is_bf16(y) && !((uintptr_t)out->data & 15) &&
        !((uintptr_t)y->data & 15)) {
        k_rmsnorm_v8<<<(unsigned)ng, NORM_THREADS, 0, sd_cuda_stream(ctx)>>>((uint4 *)out->data, (const uint4 *)y->data,
                                                                          w->data, sd_is_bf16(w), d / 8, eps);
        SD_CUDA_LAUNCHED();
        return SD_OK;
    }
    k_gnorm<<<(unsigned)ng, NORM_THREADS, 0, sd_cuda_stream(ctx)>>>(out->data, sd_is_bf16(out), y->data, sd_is_bf16(y),
                                                                   z ? z->data : NULL, sd_is_bf16(z), w->data,
                                                                   sd_is_bf16(w), d, g, eps);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_gated_rmsnorm_backward(sd_ctx *ctx, sd_tensor *dy, sd_tensor *dz, sd_tensor *dw,
                                   const sd_tensor *dout, const sd_tensor *y, const sd_tensor *z,
                                   const sd_tensor *w, int64_t g, float eps) {
    int64_t d = y->shape[y->ndim - 1], rows = sd_rows(y), ng = rows * (d / g);
    if (!z) dz = NULL;
    if (ng == 0 || g == 0 || (!dy && !dz && !dw)) return SD_OK;
    if (ng > 0x7fffffffLL) return sd_fail(SD_ERR_INTERNAL, "sd_gated_rmsnorm_backward: %lld groups is too many", (long long)ng);
    int64_t nch = (rows + DW_ROWS - 1) / DW_ROWS;
    if (nch > 65535) return sd_fail(SD_ERR_INTERNAL, "sd_gated_rmsnorm_backward: %lld rows is too many", (long long)rows);
    void *ws = NULL;
    size_t rbytes = ((size_t)ng * sizeof(float) + 255) & ~(size_t)255;
    SD_TRY(sd_cuda_scratch(ctx, rbytes + (size_t)(nch * d) * sizeof(float), &ws));
    float *rstd = (float *)ws, *part = (float *)((char *)ws + rbytes);
    cudaStream_t s = sd_cuda_stream(ctx);
    k_gnorm_bwd<<<(unsigned)ng, NORM_THREADS, 0, s>>>(dy ? dy->data : NULL, sd_is_bf16(dy), dz ? dz->data : NULL,
                                                     sd_is_bf16(dz), rstd, dout->data, sd_is_bf16(dout), y->data,
                                                     sd_is_bf16(y), z ? z->data : NULL, sd_is_bf16(z), w->data,
                                                     sd_is_bf16(w), d, g, eps);
    SD_CUDA_LAUNCHED();
    if (dw) {
        dim3 grid((unsigned)((d + 255) / 256), (unsigned)nch);
        k_gnorm_dw<<<grid, 256, 0, s>>>(part, rstd, dout->data, sd_is_bf16(dout), y->data, sd_is_bf16(y),
                                        z ? z->data : NULL, sd_is_bf16(z), rows, d, g);
        SD_CUDA_LAUNCHED();
        k_chunks_finish<<<(unsigned)((d + 255) / 256), 256, 0, s>>>((float *)dw->data, part, nch, d);
        SD_CUDA_LAUNCHED();
    }
    return SD_OK;
}

int sd_cuda_rmsnorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w, float eps) {
    return sd_cuda_gated_rmsnorm(ctx, out, x, NULL, w, x->shape[x->ndim - 1], eps);
}

int sd_cuda_rmsnorm_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, const sd_tensor *dy,
                             const sd_tensor *x, const sd_tensor *w, float eps) {
    return sd_cuda_gated_rmsnorm_backward(ctx, dx, NULL, dw, dy, x, NULL, w, x->shape[x->ndim - 1], eps);
}

/* ---- LayerNorm ------------------------------------------------------------------------
 * As the CPU reference (kernels/cpu/norm.c): mean, then the biased variance in a second pass
 * over (x - mean) (both reduced in fp32 in a fixed order, block_sum), r = 1 / sqrt(var + eps),
 * out = (x - mean) r w (+ b).  The backward stores mean and r per row for the weight and bias
 * gradients, which sum over rows as dw above: fixed chunks of rows, then the chunks in order.
 * sd_block_sum begins with a __syncthreads, so back-to-back calls may share one shared
 * array: every thread has read the previous result before the next one is written. */

__device__ __forceinline__ void ln_stats(const void *x, int xbf, int64_t o, int64_t d, float eps, float *sh,
                                         float *mean, float *rstd) {
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) s += sd_ld(x, xbf, o + i);
    float m = __fdiv_rn(sd_block_sum(s, sh), (float)d);
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float v = sd_ld(x, xbf, o + i) - m;
        ss += v * v;
    }
    ss = sd_block_sum(ss, sh);
    *mean = m;
    *rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fdiv_rn(ss, (float)d) + eps));
}

/* grid: one block per row; b may be NULL */
__global__ void k_layernorm(void *out, int obf, const void *x, int xbf, const void *w, int wbf, const void *b,
                            int bbf, int64_t d, float eps) {
    __shared__ float sh[32];
    int64_t o = (int64_t)blockIdx.x * d;
    float m, r;
    ln_stats(x, xbf, o, d, eps, sh, &m, &r);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float v = (sd_ld(x, xbf, o + i) - m) * r * sd_ld(w, wbf, i);
        sd_st(out, obf, o + i, b ? v + sd_ld(b, bbf, i) : v);
    }
}

/* xh = (x - mean) r, g = dy w:  dx_i += r (g_i - mean(g) - xh_i mean(g xh)).
 * Also stores mean and r per row (stats [2, rows], or NULL) for dw. */
__global__ void k_layernorm_bwd(void *dx, int dxbf, float *stats, const void *dy, int dybf, const void *x, int xbf,
                                const void *w, int wbf, int64_t rows, int64_t d, float eps) {
    __shared__ float sh[32];
    int64_t row = blockIdx.x, o = row * d;
    float m, r;
    ln_stats(x, xbf, o, d, eps, sh, &m, &r);
    if (stats && threadIdx.x == 0) stats[row] = m, stats[rows + row] = r;
    if (!dx) return;
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float g = sd_ld(dy, dybf, o + i) * sd_ld(w, wbf, i);
        sg += g;
        sgx += g * ((sd_ld(x, xbf, o + i) - m) * r);
    }
    sg = sd_block_sum(sg, sh);
    sgx = sd_block_sum(sgx, sh);
    float mg = __fdiv_rn(sg, (float)d), mgx = __fdiv_rn(sgx, (float)d);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float g = sd_ld(dy, dybf, o + i) * sd_ld(w, wbf, i);
        float v = r * (g - mg - (sd_ld(x, xbf, o + i) - m) * r * mgx);
        sd_st(dx, dxbf, o + i, sd_ld(dx, dxbf, o + i) + v);
    }
}

/* pw[chunk, c] = sum over the chunk's rows of dy (x - mean) r; pb[chunk, c] = sum of dy
 * (either NULL to skip; stats unused when pw is NULL). */
__global__ void k_layernorm_dwdb(float *pw, float *pb, const float *stats, const void *dy, int dybf, const void *x,
                                 int xbf, int64_t rows, int64_t d) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    int64_t r0 = (int64_t)blockIdx.y * DW_ROWS, r1 = min(rows, r0 + DW_ROWS);
    float sw = 0.0f, sb = 0.0f;
    for (int64_t r = r0; r < r1; r++) {
        float g = sd_ld(dy, dybf, r * d + c);
        if (pw) sw += g * ((sd_ld(x, xbf, r * d + c) - stats[r]) * stats[rows + r]);
        sb += g;
    }
    if (pw) pw[(int64_t)blockIdx.y * d + c] = sw;
    if (pb) pb[(int64_t)blockIdx.y * d + c] = sb;
}

int sd_cuda_layernorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w, const sd_tensor *b,
                      float eps) {
    int64_t d = x->shape[x->ndim - 1], rows = sd_rows(x);
    if (rows == 0 || d == 0) return SD_OK;
    if (rows > 0x7fffffffLL) return sd_fail(SD_ERR_INTERNAL, "sd_layernorm: %lld rows is too many", (long long)rows);
    k_layernorm<<<(unsigned)rows, NORM_THREADS, 0, sd_cuda_stream(ctx)>>>(out->data, sd_is_bf16(out), x->data,
                                                                         sd_is_bf16(x), w->data, sd_is_bf16(w),
                                                                         b ? b->data : NULL, sd_is_bf16(b), d, eps);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_layernorm_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *db, const sd_tensor *dy,
                               const sd_tensor *x, const sd_tensor *w, float eps) {
    static const char *op = "sd_layernorm_backward";
    int64_t d = x->shape[x->ndim - 1], rows = sd_rows(x);
    if (rows == 0 || d == 0 || (!dx && !dw && !db)) return SD_OK;
    if (rows > 0x7fffffffLL) return sd_fail(SD_ERR_INTERNAL, "%s: %lld rows is too many", op, (long long)rows);
    int64_t nch = (rows + DW_ROWS - 1) / DW_ROWS;
    if (nch > 65535) return sd_fail(SD_ERR_INTERNAL, "%s: %lld rows is too many", op, (long long)rows);
    /* scratch: stats [2, rows] (dw only), then the chunk sums of dw and of db */
    size_t sbytes = dw ? ((size_t)(2 * rows) * sizeof(float) + 255) & ~(size_t)255 : 0;
    size_t pbytes = ((size_t)(nch * d) * sizeof(float) + 255) & ~(size_t)255;
    void *ws = NULL;
    if (dw || db) SD_TRY(sd_cuda_scratch(ctx, sbytes + (dw ? pbytes : 0) + (db ? pbytes : 0), &ws));
    float *stats = dw ? (float *)ws : NULL;
    float *pw = dw ? (float *)((char *)ws + sbytes) : NULL;
    float *pb = db ? (float *)((char *)ws + sbytes + (dw ? pbytes : 0)) : NULL;
    cudaStream_t s = sd_cuda_stream(ctx);
    if (dx || dw) {
        k_layernorm_bwd<<<(unsigned)rows, NORM_THREADS, 0, s>>>(dx ? dx->data : NULL, sd_is_bf16(dx), stats,
                                                               dy->data, sd_is_bf16(dy), x->data, sd_is_bf16(x),
                                                               w->data, sd_is_bf16(w), rows, d, eps);
        SD_CUDA_LAUNCHED();
    }
    if (dw || db) {
        unsigned cb = (unsigned)((d + 255) / 256);
        k_layernorm_dwdb<<<dim3(cb, (unsigned)nch), 256, 0, s>>>(pw, pb, stats, dy->data, sd_is_bf16(dy), x->data,
                                                                 sd_is_bf16(x), rows, d);
        SD_CUDA_LAUNCHED();
        if (dw) {
            k_chunks_finish<<<cb, 256, 0, s>>>((float *)dw->data, pw, nch, d);
            SD_CUDA_LAUNCHED();
        }
        if (db) {
            k_chunks_finish<<<cb, 256, 0, s>>>((float *)db->data, pb, nch, d);
            SD_CUDA_LAUNCHED();
        }
    }
    return SD_OK;
}
