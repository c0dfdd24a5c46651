/* Softmax and log-softmax over the last dim on CUDA (kernels/softmax.h): one block per row,
 * max-subtracted (block max, then a block sum of exp, both in fp32 in a fixed order), every
 * tensor F32 or BF16 in its own dtype.  The formulas are the CPU reference's
 * (kernels/cpu/softmax.c); its sums run in double, these in fp32.
 *
 * out may alias x (and dx dy): a thread reads an element and then writes the same element,
 * and every other read of the row happened before the block reduction's barrier. */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

/* Threads per row: 128 .. 1024, about 4 elements per thread (depends on d only, so the
 * reduction order, and the result, do not change from run to run). */
static int softmax_threads(int64_t d) {
    int t = 128;
    while (t < 1024 && (int64_t)t * 4 < d) t *= 2;
    return t;
}

/* softmax: out_i = exp(x_i - max) / sum_j exp(x_j - max);
 * log_softmax: out_i = x_i - (max + log sum_j exp(x_j - max)).
 * sd_block_max and sd_block_sum share sh: each begins with a __syncthreads, so the second
 * cannot overwrite sh before every thread has read the first's result. */
__global__ void k_softmax(void *out, int obf, const void *x, int xbf, int64_t d, int logsm) {
    __shared__ float sh[32];
    int64_t o = (int64_t)blockIdx.x * d;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) m = fmaxf(m, sd_ld(x, xbf, o + i));
    m = sd_block_max(m, sh);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) s += expf(sd_ld(x, xbf, o + i) - m);
    s = sd_block_sum(s, sh);
    if (logsm) {
        float lse = m + logf(s);
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x) sd_st(out, obf, o + i, sd_ld(x, xbf, o + i) - lse);
    } else {
        float inv = __fdiv_rn(1.0f, s);
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
            sd_st(out, obf, o + i, expf(sd_ld(x, xbf, o + i) - m) * inv);
    }
}

/* y: the forward's output.  softmax: dx_i += y_i (dy_i - sum_j dy_j y_j);
 * log_softmax: dx_i += dy_i - exp(y_i) sum_j dy_j. */
__global__ void k_softmax_bwd(void *dx, int dxbf, const void *dy, int dybf, const void *y, int ybf, int64_t d,
                              int logsm) {
    __shared__ float sh[32];
    int64_t o = (int64_t)blockIdx.x * d;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float g = sd_ld(dy, dybf, o + i);
        s += logsm ? g : g * sd_ld(y, ybf, o + i);
    }
    s = sd_block_sum(s, sh);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float g = sd_ld(dy, dybf, o + i), yv = sd_ld(y, ybf, o + i);
        float v = logsm ? g - expf(yv) * s : yv * (g - s);
        sd_st(dx, dxbf, o + i, sd_ld(dx, dxbf, o + i) + v);
    }
}

int sd_cuda_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, int logsm) {
    int64_t d = x->shape[x->ndim - 1], rows = sd_rows(x);
    if (rows == 0 || d == 0) return SD_OK;
    if (rows > 0x7fffffffLL)
        return sd_fail(SD_ERR_INTERNAL, "%s: %lld rows is too many", logsm ? "sd_log_softmax" : "sd_softmax",
                       (long long)rows);
    k_softmax<<<(unsigned)rows, softmax_threads(d), 0, sd_cuda_stream(ctx)>>>(out->data, sd_is_bf16(out), x->data,
                                                                             sd_is_bf16(x), d, logsm);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_softmax_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *y, int logsm) {
    int64_t d = y->shape[y->ndim - 1], rows = sd_rows(y);
    if (!dx || rows == 0 || d == 0) return SD_OK;
    if (rows > 0x7fffffffLL)
        return sd_fail(SD_ERR_INTERNAL, "%s: %lld rows is too many",
                       logsm ? "sd_log_softmax_backward" : "sd_softmax_backward", (long long)rows);
    k_softmax_bwd<<<(unsigned)rows, softmax_threads(d), 0, sd_cuda_stream(ctx)>>>(
        dx->data, sd_is_bf16(dx), dy->data, sd_is_bf16(dy), y->data, sd_is_bf16(y), d, logsm);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}
