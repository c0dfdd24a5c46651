/* What every CUDA file of the backend shares: checked CUDA calls whose errors name the call,
 * the file and the line (common/error.h discipline), device detection for the `gpu` tests,
 * and device buffers.  C interface; the kernels live in the .cu files beside this header. */
#ifndef SD_CUDA_COMMON_H
#define SD_CUDA_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>
#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Records "FILE:LINE: CALL: cuda error NAME (text)" and returns SD_ERR_SYS. */
int sd_cuda_fail(cudaError_t e, const char *call, const char *file, int line);

/* Checks a CUDA runtime call; on failure returns SD_ERR_SYS from the enclosing function. */
#define SD_CUDA_TRY(call)                                                              \
    do {                                                                               \
        cudaError_t sd_ce_ = (call);                                                   \
        if (sd_ce_ != cudaSuccess) return sd_cuda_fail(sd_ce_, #call, __FILE__, __LINE__); \
    } while (0)

/* Checks the last kernel launch (launch configuration errors). */
#define SD_CUDA_LAUNCHED() SD_CUDA_TRY(cudaGetLastError())

/* Number of usable CUDA devices; 0 when there is no driver or no device (never fails). */
int sd_cuda_device_count(void);

/* Device memory through a caching allocator (as PyTorch's): sd_cuda_free keeps a block for
 * the next sd_cuda_alloc of the same rounded size (512 B steps below 1 MiB, 2 MiB steps
 * above), so that a training loop that allocates the same tensors every step stops calling
 * cudaMalloc / cudaFree (and cudaFree's device-wide synchronisation) after its first step.
 * When cudaMalloc fails the cached blocks are released and it is tried once more; then
 * "out of device memory allocating N bytes for WHAT".  A block is reused only by the host
 * thread's next allocation, so work still queued on the one stream that used it stays ordered
 * before any new use (sd_tensor_alloc_cuda zeroes on that stream: sd_cuda_set_alloc_stream). */
int sd_cuda_alloc(void **p, size_t bytes, const char *what);
/* Device memory in use (all processes, as cudaMemGetInfo reports it) at its highest right
 * after one of our cudaMalloc calls since the last reset: the peak footprint of a run, cached
 * blocks included (memory the process holds). */
size_t sd_cuda_peak_used(void);
void sd_cuda_reset_peak(void);
/* Into the cache (pointers not from sd_cuda_alloc are cudaFree'd). */
void sd_cuda_free(void *p);
/* cudaFree at once, bypassing the cache (buffers that only grow, like a scratch workspace). */
void sd_cuda_free_now(void *p);
/* Releases every cached block (cudaFree). */
void sd_cuda_release_cached(void);
/* The stream device tensors are zeroed on (the CUDA context's; NULL: the legacy stream,
 * synchronised).  sd_ctx_init_cuda sets it, sd_ctx_free_cuda clears it. */
void sd_cuda_set_alloc_stream(cudaStream_t s);
cudaStream_t sd_cuda_alloc_stream(int *set);
int sd_cuda_upload(void *dst, const void *src, size_t bytes);
int sd_cuda_download(void *dst, const void *src, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
