/* Shared by the op files of the CUDA backend (not a public header): the backend state behind
 * ctx->cuda, cuBLAS error checks, the scratch workspace, dtype-generic loads and stores, and
 * block reductions. */
#ifndef SD_CUDA_INTERNAL_CUH
#define SD_CUDA_INTERNAL_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "common/error.h"
#include "kernels/context.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_ctx.h"
#include "kernels/tensor.h"

typedef struct {
    int device;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_ws; /* cuBLASLt's own workspace (the heuristic is told its size) */
    size_t lt_ws_bytes;
    void *ws;    /* scratch for op temporaries; grows, never shrinks */
    size_t ws_bytes;
} sd_cuda_state;

int sd_cublas_fail(cublasStatus_t s, const char *call, const char *file, int line);

/* Checks a cuBLAS / cuBLASLt call; on failure returns SD_ERR_SYS naming the call and status. */
#define SD_CUBLAS_TRY(call)                                                                  \
    do {                                                                                     \
        cublasStatus_t sd_cs_ = (call);                                                      \
        if (sd_cs_ != CUBLAS_STATUS_SUCCESS) return sd_cublas_fail(sd_cs_, #call, __FILE__, __LINE__); \
    } while (0)

static inline sd_cuda_state *sd_cuda_st(const sd_ctx *ctx) { return (sd_cuda_state *)ctx->cuda; }
static inline cudaStream_t sd_cuda_stream(const sd_ctx *ctx) { return sd_cuda_st(ctx)->stream; }

/* *p = at least bytes of scratch (256-byte aligned), valid until the next call on this
 * context; grows the buffer (after a synchronise) when too small. */
int sd_cuda_scratch(sd_ctx *ctx, size_t bytes, void **p);

/* Elements are read and written through these so that one kernel serves F32 and BF16
 * tensors; the branch is uniform across the grid. */
__device__ __forceinline__ float sd_ld(const void *p, int bf16, int64_t i) {
    return bf16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
__device__ __forceinline__ void sd_st(void *p, int bf16, int64_t i, float v) {
    if (bf16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else ((float *)p)[i] = v;
}
static inline int sd_is_bf16(const sd_tensor *t) { return t && t->dtype == SD_BF16; }

/* Sum over a block (blockDim.x a multiple of 32, <= 1024), in a fixed order: every thread gets
 * the result.  sh: 32 floats of shared memory. */
__device__ __forceinline__ float sd_block_sum(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < nw; i++) t += sh[i];
    return t;
}
__device__ __forceinline__ float sd_block_max(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float t = -INFINITY;
    for (int i = 0; i < nw; i++) t = fmaxf(t, sh[i]);
    return t;
}

static inline unsigned sd_grid1d(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 65535LL * 16 ? 65535LL * 16 : b));
}

/* dst[c] += sum over rows r of a[r, c] * (scale ? scale[r] : 1) * (x ? x[r, c] : 1),
 * deterministic (no atomics): fixed chunks of rows summed in order into part (device, at least
 * sd_cuda_colsum_floats(rows, d) floats, carved from the scratch by the caller), then the
 * chunks in order.  a, x: F32 or BF16; dst F32. */
size_t sd_cuda_colsum_floats(int64_t rows, int64_t d);
int sd_cuda_colsum(sd_ctx *ctx, float *dst, const void *a, int a_bf16, const void *x, int x_bf16,
                   const float *scale, int64_t rows, int64_t d, float *part);

/* Zero-padded copies (pad_cuda.cu), for the fused kernels' shape limits: src viewed as
 * [R, a, b] is copied to dst [R, ap, bp] (ap >= a, bp >= b) with zeros in the new rows and
 * columns; each side in its own dtype (F32 or BF16: also a conversion).  sd_cuda_unpad is the
 * reverse: dst [R, a, b] = (or, add != 0, +=) the first a rows and b columns of src
 * [R, ap, bp].  Asynchronous on the context's stream. */
int sd_cuda_pad(sd_ctx *ctx, void *dst, int dst_bf16, const void *src, int src_bf16, int64_t R, int64_t a,
                int64_t b, int64_t ap, int64_t bp);
int sd_cuda_unpad(sd_ctx *ctx, void *dst, int dst_bf16, const void *src, int src_bf16, int64_t R, int64_t a,
                  int64_t b, int64_t ap, int64_t bp, int add);

#endif
