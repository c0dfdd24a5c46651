/* Copies and clears on the device (kernels/tensor_ops.h).  Same dtype: cudaMemcpyAsync;
 * F32 <-> BF16: one elementwise kernel (round to nearest even, as the host conversion). */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

__global__ void k_convert(void *dst, int dst_bf16, const void *src, int src_bf16, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        sd_st(dst, dst_bf16, i, sd_ld(src, src_bf16, i));
}

/* F32 -> BF16, 8 values per thread (two 16-byte loads, one 16-byte store): the refresh of a
 * student's BF16 matrices after every optimizer step runs through here. */
__global__ void k_f32_to_bf16_v8(uint4 *dst, const float4 *src, int64_t n8) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        float4 a = src[2 * i], b = src[2 * i + 1];
        uint4 o;
        __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&o);
        h[0] = __floats2bfloat162_rn(a.x, a.y);
        h[1] = __floats2bfloat162_rn(a.z, a.w);
        h[2] = __floats2bfloat162_rn(b.x, b.y);
        h[3] = __floats2bfloat162_rn(b.z, b.w);
        dst[i] = o;
    }
}

static int f32_or_bf16(sd_dtype d) { return d == SD_F32 || d == SD_BF16; }

int sd_cuda_copy(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src) {
    int64_t n = sd_numel(src);
    if (n == 0 || dst->data == src->data) return SD_OK;
    cudaStream_t s = sd_cuda_stream(ctx);
    if (dst->dtype == src->dtype) {
        SD_CUDA_TRY(cudaMemcpyAsync(dst->data, src->data, sd_nbytes(src), cudaMemcpyDeviceToDevice, s));
        return SD_OK;
    }
    if (!f32_or_bf16(dst->dtype) || !f32_or_bf16(src->dtype))
        return sd_fail(SD_ERR_INTERNAL, "sd_copy: no conversion from %s to %s", sd_dtype_name(src->dtype),
                       sd_dtype_name(dst->dtype));
    if (dst->dtype == SD_BF16 && src->dtype == SD_F32 && n % 8 == 0 && !((uintptr_t)dst->data & 15) &&
        !((uintptr_t)src->data & 15)) {
        k_f32_to_bf16_v8<<<sd_grid1d(n / 8, 256), 256, 0, s>>>((uint4 *)dst->data, (const float4 *)src->data, n / 8);
        SD_CUDA_LAUNCHED();
        return SD_OK;
    }
    k_convert<<<sd_grid1d(n, 256), 256, 0, s>>>(dst->data, sd_is_bf16(dst), src->data, sd_is_bf16(src), n);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_zero(sd_ctx *ctx, sd_tensor *t) {
    if (!t->data || sd_numel(t) == 0) return SD_OK;
    SD_CUDA_TRY(cudaMemsetAsync(t->data, 0, sd_nbytes(t), sd_cuda_stream(ctx)));
    return SD_OK;
}
