/* The CUDA backend's context and device tensors (DESIGN.md section 3, issue 5).
 *
 * sd_ctx_init_cuda sets ctx->backend = SD_DEV_CUDA and ctx->cuda to the backend state: the
 * device, one stream every op queues on, a cuBLASLt handle with its own workspace, and a
 * growable scratch workspace the ops carve their temporaries from (it only grows, so after the
 * first steps no op calls cudaMalloc).  Ops are asynchronous on the stream; downloads and
 * sd_cuda_sync synchronise.
 *
 * Precision policy on CUDA: weights and activations bf16 (F32 accepted too, for tests and
 * small tensors), fp32 accumulation everywhere, fp32 master weights, parameter gradients and
 * AdamW moments.  Each op header says which dtypes each tensor may have on CUDA.
 *
 * This header needs no CUDA headers: C files (tensor.c, the op entries) include it. */
#ifndef SD_CUDA_CTX_H
#define SD_CUDA_CTX_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/context.h"
#include "kernels/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Also sets the RNG and nthreads (1) as sd_ctx_init_cpu does.  SD_ERR_SYS naming the call
 * when the device, the stream, cuBLASLt or the workspaces fail. */
int sd_ctx_init_cuda(sd_ctx *ctx, int device_index);
/* Synchronises, releases everything, leaves ctx->cuda NULL.  Safe on a CPU context. */
void sd_ctx_free_cuda(sd_ctx *ctx);
/* Waits for every op queued on the context's stream; reports a kernel's asynchronous error. */
int sd_cuda_sync(sd_ctx *ctx);

/* A zeroed device tensor of dtype dt (any dtype); sd_tensor_free releases it (to the caching
 * allocator, kernels/cuda/cuda_common.h).  While a context exists the zeroing is queued on its
 * stream (no wait); without one it runs on the legacy stream and is waited for. */
int sd_tensor_alloc_cuda(sd_tensor *t, sd_dtype dt, int ndim, const int64_t *shape);
/* Releases device memory (what sd_tensor_free calls for SD_DEV_CUDA tensors). */
void sd_cuda_tensor_free_data(void *p);

/* Copies a host tensor into an existing device tensor of the same element count, converting
 * F32 <-> BF16 on the host (round to nearest even, as sd_f32_to_bf16); other dtypes must
 * match.  Synchronous. */
int sd_tensor_upload(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src);
/* The reverse: device src into an existing host dst of the same element count. */
int sd_tensor_download(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src);
/* Allocates a device tensor of dtype dt shaped like the host src and uploads it. */
int sd_tensor_to_cuda(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src, sd_dtype dt);
/* Allocates a host F32 tensor shaped like the device src and downloads it. */
int sd_tensor_to_host_f32(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src);

#ifdef __cplusplus
}
#endif

#endif
