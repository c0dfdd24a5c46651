/* Rotary position embedding on CUDA (kernels/rotary.h), in place.  The angle is
 * (float)pos * inv_freq[i] in fp32 as on the CPU; its cosine and sine are taken in double and
 * rounded, so the --use_fast_math approximations (poor for angles of thousands of radians)
 * never apply. */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

/* one thread per (b, t, h, i < nhalf): rotates the pair (lo, hi) */
__global__ void k_rotary(void *x, int xbf, const float *inv_freq, int64_t BT, int64_t T, int64_t H, int64_t hd,
                         int64_t nhalf, int interleaved, int64_t pos0, float sign) {
    int64_t n = BT * H * nhalf;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = k % nhalf, bth = k / nhalf, t = (bth / H) % T;
        float a = (float)(pos0 + t) * inv_freq[i];
        double sd, cd;
        sincos((double)a, &sd, &cd);
        float c = (float)cd, s = sign * (float)sd;
        int64_t base = bth * hd, lo = interleaved ? base + 2 * i : base + i, hi = interleaved ? lo + 1 : lo + nhalf;
        float u = sd_ld(x, xbf, lo), v = sd_ld(x, xbf, hi);
        sd_st(x, xbf, lo, u * c - v * s);
        sd_st(x, xbf, hi, v * c + u * s);
    }
}

int sd_cuda_rotary(sd_ctx *ctx, sd_tensor *x, int64_t B, int64_t T, int64_t H, int64_t head_dim,
                   int64_t nhalf, int interleaved, const float *inv_freq_host, int64_t pos0,
                   float sign) {
    if (B * T * H == 0 || nhalf == 0) return SD_OK;
    void *f = NULL;
    SD_TRY(sd_cuda_scratch(ctx, (size_t)nhalf * sizeof(float), &f));
    /* pageable source: returns once the data is staged, so the caller may free it */
    SD_CUDA_TRY(cudaMemcpyAsync(f, inv_freq_host, (size_t)nhalf * sizeof(float), cudaMemcpyHostToDevice,
                                sd_cuda_stream(ctx)));
    int64_t n = B * T * H * nhalf;
    k_rotary<<<sd_grid1d(n, 256), 256, 0, sd_cuda_stream(ctx)>>>(x->data, sd_is_bf16(x), (const float *)f, B * T, T,
                                                                  H, head_dim, nhalf, interleaved, pos0, sign);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}
