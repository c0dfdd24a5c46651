#include "kernels/cuda/cuda_common.h"

int sd_cuda_fail(cudaError_t e, const char *call, const char *file, int line) {
    return sd_fail(SD_ERR_SYS, "%s:%d: %s: cuda error %s (%s)", file, line, call, cudaGetErrorName(e),
                   cudaGetErrorString(e));
}

int sd_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return 0;
    }
    return n;
}

/* The most device memory in use seen right after an allocation (peaks follow allocations). */
static size_t g_peak_used;

size_t sd_cuda_peak_used(void) { return g_peak_used; }
void sd_cuda_reset_peak(void) { g_peak_used = 0; }

int sd_cuda_alloc(void **p, size_t bytes, const char *what) {
    *p = NULL;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return sd_fail(SD_ERR_SYS, "out of device memory allocating %zu bytes for %s (%s)", bytes, what,
                       cudaGetErrorString(e));
    }
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess && total_b - free_b > g_peak_used) g_peak_used = total_b - free_b;
    return SD_OK;
}

void sd_cuda_free(void *p) {
    if (p) cudaFree(p);
}

int sd_cuda_upload(void *dst, const void *src, size_t bytes) {
    SD_CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return SD_OK;
}

int sd_cuda_download(void *dst, const void *src, size_t bytes) {
    SD_CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    return SD_OK;
}
