/* Zero-padded, dtype-converting copies (cuda_internal.cuh): how the public SSD, attention and
 * stage-1 entries take shapes and dtypes their fused kernels do not (P, N, hd not a multiple
 * of 16 / not 64 or 128; F32 where the kernel reads bf16).  A tensor is viewed as [R, a, b]
 * (its last one or two dims padded); the padded copy is [R, ap, bp] with zeros in the new
 * rows and columns.  Zero columns are exact for those kernels: they only ever enter dot
 * products over the padded dim (x, B, C, q, k, v columns; state rows and columns), where a
 * zero adds nothing, so the unpadded part of every result is unchanged. */
#include "kernels/cuda/cuda_internal.cuh"

#define GS_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* dst[r, i, j] = src[r, i, j] for i < a, j < b; 0 elsewhere (i < ap, j < bp). */
__global__ void k_pad(void *dst, int dbf, const void *src, int sbf, int64_t R, int64_t a, int64_t b, int64_t ap,
                      int64_t bp) {
    GS_LOOP(x, R * ap * bp) {
        int64_t j = x % bp, i = (x / bp) % ap, r = x / (ap * bp);
        float v = i < a && j < b ? sd_ld(src, sbf, (r * a + i) * b + j) : 0.0f;
        sd_st(dst, dbf, x, v);
    }
}

/* dst[r, i, j] (+)= src[r, i, j] over dst's [R, a, b]; src is [R, ap, bp]. */
__global__ void k_unpad(void *dst, int dbf, const void *src, int sbf, int64_t R, int64_t a, int64_t b, int64_t ap,
                        int64_t bp, int add) {
    GS_LOOP(x, R * a * b) {
        int64_t j = x % b, i = (x / b) % a, r = x / (a * b);
        float v = sd_ld(src, sbf, (r * ap + i) * bp + j);
        sd_st(dst, dbf, x, add ? sd_ld(dst, dbf, x) + v : v);
    }
}

int sd_cuda_pad(sd_ctx *ctx, void *dst, int dst_bf16, const void *src, int src_bf16, int64_t R, int64_t a,
                int64_t b, int64_t ap, int64_t bp) {
    int64_t n = R * ap * bp;
    if (n == 0) return SD_OK;
    k_pad<<<sd_grid1d(n, 256), 256, 0, sd_cuda_stream(ctx)>>>(dst, dst_bf16, src, src_bf16, R, a, b, ap, bp);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_unpad(sd_ctx *ctx, void *dst, int dst_bf16, const void *src, int src_bf16, int64_t R, int64_t a,
                  int64_t b, int64_t ap, int64_t bp, int add) {
    int64_t n = R * a * b;
    if (n == 0) return SD_OK;
    k_unpad<<<sd_grid1d(n, 256), 256, 0, sd_cuda_stream(ctx)>>>(dst, dst_bf16, src, src_bf16, R, a, b, ap, bp, add);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}
