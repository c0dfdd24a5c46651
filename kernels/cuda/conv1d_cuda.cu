/* Causal depthwise conv1d on CUDA (kernels/conv1d.h), same tap order as the CPU reference
 * (8 channels per thread with 16-byte loads for BF16 tensors whose C is a multiple of 8).
 * The backward first writes dp = dy * act'(pre) (fp32, scratch), then dx gathers its W taps
 * from dp, and dw / dbias sum over (b, t) in fixed chunks then chunks in order: no atomics. */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

#define CONV_ROWS 128 /* (b, t) rows per weight-gradient chunk */

__device__ __forceinline__ float sigm(float v) { return __fdiv_rn(1.0f, 1.0f + expf(-v)); }

/* pre for (b, t, c): bias + sum_j w[c, j] x[b, t - (W-1) + j, c] */
__device__ __forceinline__ float conv_pre(const void *x, int xbf, const void *w, int wbf, const void *bias, int bbf,
                                          int64_t b, int64_t t, int64_t c, int64_t T, int64_t C, int64_t W) {
    float s = bias ? sd_ld(bias, bbf, c) : 0.0f;
    for (int64_t j = 0; j < W; j++) {
        int64_t ts = t - (W - 1) + j;
        if (ts >= 0) s += sd_ld(w, wbf, c * W + j) * sd_ld(x, xbf, (b * T + ts) * C + c);
    }
    return s;
}

__global__ void k_conv(void *out, int obf, const void *x, int xbf, const void *w, int wbf, const void *bias, int bbf,
                       int64_t B, int64_t T, int64_t C, int64_t W, int silu) {
    int64_t n = B * T * C;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t c = i % C, bt = i / C, t = bt % T, b = bt / T;
        float p = conv_pre(x, xbf, w, wbf, bias, bbf, b, t, c, T, C, W);
        sd_st(out, obf, i, silu ? p * sigm(p) : p);
    }
}

__global__ void k_conv_step(void *out, int obf, const void *x, int xbf, void *state, int sbf, const void *w, int wbf,
                            const void *bias, int bbf, int64_t B, int64_t C, int64_t W, int silu) {
    int64_t n = B * C;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t c = i % C, so = i * (W - 1);
        float p = bias ? sd_ld(bias, bbf, c) : 0.0f;
        for (int64_t j = 0; j < W - 1; j++) p += sd_ld(w, wbf, c * W + j) * sd_ld(state, sbf, so + j);
        float xv = sd_ld(x, xbf, i);
        p += sd_ld(w, wbf, c * W + W - 1) * xv;
        for (int64_t j = 0; j + 1 < W - 1; j++) sd_st(state, sbf, so + j, sd_ld(state, sbf, so + j + 1));
        if (W > 1) sd_st(state, sbf, so + W - 2, xv);
        sd_st(out, obf, i, silu ? p * sigm(p) : p);
    }
}

__global__ void k_conv_dp(float *dp, const void *dy, int ybf, const void *x, int xbf, const void *w, int wbf,
                          const void *bias, int bbf, int64_t B, int64_t T, int64_t C, int64_t W, int silu) {
    int64_t n = B * T * C;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = sd_ld(dy, ybf, i);
        if (silu) {
            int64_t c = i % C, bt = i / C, t = bt % T, b = bt / T;
            float p = conv_pre(x, xbf, w, wbf, bias, bbf, b, t, c, T, C, W), s = sigm(p);
            g *= s * (1.0f + p * (1.0f - s));
        }
        dp[i] = g;
    }
}

/* dx[b, ts, c] += sum_j w[c, j] dp[b, ts + (W-1) - j, c] */
__global__ void k_conv_dx(void *dx, int dbf, const float *dp, const void *w, int wbf, int64_t B, int64_t T, int64_t C,
                          int64_t W) {
    int64_t n = B * T * C;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t c = i % C, bt = i / C, ts = bt % T, b = bt / T;
        float s = 0.0f;
        for (int64_t j = 0; j < W; j++) {
            int64_t t = ts + (W - 1) - j;
            if (t < T) s += sd_ld(w, wbf, c * W + j) * dp[(b * T + t) * C + c];
        }
        sd_st(dx, dbf, i, sd_ld(dx, dbf, i) + s);
    }
}

/* part[chunk, c, 0..W-1] (dw taps) and part[chunk, c, W] (dbias) over the chunk's rows */
__global__ void k_conv_dw(float *part, const float *dp, const void *x, int xbf, int64_t B, int64_t T, int64_t C,
                          int64_t W) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int64_t r0 = (int64_t)blockIdx.y * CONV_ROWS, r1 = min(B * T, r0 + CONV_ROWS);
    float gw[4] = {0.0f, 0.0f, 0.0f, 0.0f}, gb = 0.0f;
    for (int64_t r = r0; r < r1; r++) {
        int64_t t = r % T;
        float g = dp[r * C + c];
        gb += g;
        for (int64_t j = 0; j < W; j++) {
            int64_t ts = t - (W - 1) + j;
            if (ts >= 0) gw[j] += g * sd_ld(x, xbf, (r - (W - 1) + j) * C + c);
        }
    }
    float *o = part + ((int64_t)blockIdx.y * C + c) * (W + 1);
    for (int64_t j = 0; j < W; j++) o[j] = gw[j];
    o[W] = gb;
}

__global__ void k_conv_dw_finish(float *dw, float *dbias, const float *part, int64_t nch, int64_t C, int64_t W) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int64_t j = 0; j <= W; j++) {
        float s = 0.0f;
        for (int64_t k = 0; k < nch; k++) s += part[(k * C + c) * (W + 1) + j];
        if (j < W && dw) dw[c * W + j] += s;
        if (j == W && dbias) dbias[c] += s;
    }
}

/* ---- 8 channels per thread -----------------------------------------------------------------
 * BF16 x and out (dx), C a multiple of 8, 16-byte aligned: one 16-byte load per tap and one
 * index computation per 8 outputs, the same arithmetic per element (same tap order). */
__global__ void k_conv_v8(uint4 *out, const uint4 *x, const void *w, int wbf, const void *bias, int bbf, int64_t BT,
                          int64_t T, int64_t C, int64_t W, int silu) {
    int64_t C8 = C / 8, n = BT * C8;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t c0 = (i % C8) * 8, bt = i / C8, t = bt % T;
        float acc[8];
#pragma unroll
        for (int k = 0; k < 8; k++) acc[k] = bias ? sd_ld(bias, bbf, c0 + k) : 0.0f;
        for (int64_t j = 0; j < W; j++) {
            int64_t ts = t - (W - 1) + j;
            if (ts < 0) continue;
            uint4 v = x[(bt - (W - 1) + j) * C8 + c0 / 8];
            const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&v);
#pragma unroll
            for (int k = 0; k < 8; k++) acc[k] += sd_ld(w, wbf, (c0 + k) * W + j) * __bfloat162float(h[k]);
        }
        uint4 o;
        __nv_bfloat16 *oh = reinterpret_cast<__nv_bfloat16 *>(&o);
#pragma unroll
        for (int k = 0; k < 8; k++) oh[k] = __float2bfloat16_rn(silu ? acc[k] * sigm(acc[k]) : acc[k]);
        out[i] = o;
    }
}

/* dx (BF16) += sum_j w[c, j] dp[b, ts + (W-1) - j, c], 8 channels per thread */
__global__ void k_conv_dx_v8(uint4 *dx, const float4 *dp, const void *w, int wbf, int64_t BT, int64_t T, int64_t C,
                             int64_t W) {
    int64_t C8 = C / 8, n = BT * C8;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t c0 = (i % C8) * 8, bt = i / C8, ts = bt % T;
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t j = 0; j < W; j++) {
            int64_t t = ts + (W - 1) - j;
            if (t >= T) continue;
            int64_t r = bt + (W - 1) - j;
            float4 a = dp[(r * C + c0) / 4], b = dp[(r * C + c0) / 4 + 1];
            float g[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
            for (int k = 0; k < 8; k++) s[k] += sd_ld(w, wbf, (c0 + k) * W + j) * g[k];
        }
        uint4 d = dx[i];
        __nv_bfloat16 *dh = reinterpret_cast<__nv_bfloat16 *>(&d);
#pragma unroll
        for (int k = 0; k < 8; k++) dh[k] = __float2bfloat16_rn(__bfloat162float(dh[k]) + s[k]);
        dx[i] = d;
    }
}

static int bf16_v8(const sd_tensor *t, int64_t C) {
    return t && t->dtype == SD_BF16 && C % 8 == 0 && !((uintptr_t)t->data & 15);
}

#define LAUNCH(n) sd_grid1d((n), 256), 256, 0, sd_cuda_stream(ctx)

int sd_cuda_conv1d(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
                   const sd_tensor *bias, int64_t B, int64_t T, int64_t C, int64_t W, int silu) {
    if (B * T * C == 0) return SD_OK;
    if (bf16_v8(out, C) && bf16_v8(x, C)) {
        k_conv_v8<<<LAUNCH(B * T * C / 8)>>>((uint4 *)out->data, (const uint4 *)x->data, w->data, sd_is_bf16(w),
                                             bias ? bias->data : NULL, sd_is_bf16(bias), B * T, T, C, W, silu);
        SD_CUDA_LAUNCHED();
        return SD_OK;
    }
    k_conv<<<LAUNCH(B * T * C)>>>(out->data, sd_is_bf16(out), x->data, sd_is_bf16(x), w->data, sd_is_bf16(w),
                                  bias ? bias->data : NULL, sd_is_bf16(bias), B, T, C, W, silu);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_conv1d_step(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, sd_tensor *state,
                        const sd_tensor *w, const sd_tensor *bias, int64_t B, int64_t C,
                        int64_t W, int silu) {
    if (B * C == 0) return SD_OK;
    k_conv_step<<<LAUNCH(B * C)>>>(out->data, sd_is_bf16(out), x->data, sd_is_bf16(x), state->data,
                                   sd_is_bf16(state), w->data, sd_is_bf16(w), bias ? bias->data : NULL,
                                   sd_is_bf16(bias), B, C, W, silu);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_conv1d_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *dbias,
                            const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w,
                            const sd_tensor *bias, int64_t B, int64_t T, int64_t C, int64_t W,
                            int silu) {
    int64_t n = B * T * C;
    if (n == 0 || (!dx && !dw && !dbias)) return SD_OK;
    int64_t nch = (B * T + CONV_ROWS - 1) / CONV_ROWS;
    if (nch > 65535) return sd_fail(SD_ERR_INTERNAL, "sd_conv1d_backward: %lld rows is too many", (long long)(B * T));
    size_t dpb = ((size_t)n * sizeof(float) + 255) & ~(size_t)255;
    void *ws = NULL;
    SD_TRY(sd_cuda_scratch(ctx, dpb + (size_t)(nch * C * (W + 1)) * sizeof(float), &ws));
    float *dp = (float *)ws, *part = (float *)((char *)ws + dpb);
    k_conv_dp<<<LAUNCH(n)>>>(dp, dy->data, sd_is_bf16(dy), x->data, sd_is_bf16(x), w->data, sd_is_bf16(w),
                             bias ? bias->data : NULL, sd_is_bf16(bias), B, T, C, W, silu);
    SD_CUDA_LAUNCHED();
    if (dx && bf16_v8(dx, C)) { /* dp is scratch: 256-byte aligned, C % 8 == 0 keeps rows 32-byte aligned */
        k_conv_dx_v8<<<LAUNCH(n / 8)>>>((uint4 *)dx->data, (const float4 *)dp, w->data, sd_is_bf16(w), B * T, T, C, W);
        SD_CUDA_LAUNCHED();
    } else if (dx) {
        k_conv_dx<<<LAUNCH(n)>>>(dx->data, sd_is_bf16(dx), dp, w->data, sd_is_bf16(w), B, T, C, W);
        SD_CUDA_LAUNCHED();
    }
    if (dw || dbias) {
        dim3 grid((unsigned)((C + 255) / 256), (unsigned)nch);
        k_conv_dw<<<grid, 256, 0, sd_cuda_stream(ctx)>>>(part, dp, x->data, sd_is_bf16(x), B, T, C, W);
        SD_CUDA_LAUNCHED();
        k_conv_dw_finish<<<(unsigned)((C + 255) / 256), 256, 0, sd_cuda_stream(ctx)>>>(
            dw ? (float *)dw->data : NULL, dbias ? (float *)dbias->data : NULL, part, nch, C, W);
        SD_CUDA_LAUNCHED();
    }
    return SD_OK;
}
