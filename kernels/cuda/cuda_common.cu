#include "kernels/cuda/cuda_common.h"

#include <stdint.h>
#include <stdlib.h>

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

/* The most device memory in use seen right after a cudaMalloc (peaks follow allocations). */
static size_t g_peak_used;

size_t sd_cuda_peak_used(void) { return g_peak_used; }
void sd_cuda_reset_peak(void) { g_peak_used = 0; }

/* ---- the caching allocator (cuda_common.h) ------------------------------------------------
 * live: open-addressing table pointer -> rounded size of every block handed out;
 * cache:  blocks given back, reused by exact rounded size (a linear scan: a few hundred). */
typedef struct {
    void *p;
    size_t bytes;
} sd_block;

static sd_block *g_live, *g_cache;
static size_t g_live_cap, g_live_n, g_cache_n, g_cache_cap;
static cudaStream_t g_alloc_stream;
static int g_alloc_stream_set;

void sd_cuda_set_alloc_stream(cudaStream_t s) {
    g_alloc_stream = s;
    g_alloc_stream_set = s != NULL;
}

cudaStream_t sd_cuda_alloc_stream(int *set) {
    *set = g_alloc_stream_set;
    return g_alloc_stream;
}

static size_t round_bytes(size_t n) {
    const size_t small = 512, big = (size_t)2 << 20;
    if (n == 0) n = 1;
    return n < ((size_t)1 << 20) ? (n + small - 1) / small * small : (n + big - 1) / big * big;
}

static size_t slot_of(const void *p, size_t cap) { return (size_t)(((uintptr_t)p >> 8) * 0x9E3779B97F4A7C15ull) & (cap - 1); }

/* Inserts p (not present) into the live table, growing it at half load. */
static int live_put(void *p, size_t bytes) {
    if (2 * (g_live_n + 1) > g_live_cap) {
        size_t cap = g_live_cap ? 2 * g_live_cap : 1024;
        sd_block *t = (sd_block *)calloc(cap, sizeof *t);
        if (!t) return sd_fail(SD_ERR_SYS, "out of memory growing the device allocation table");
        for (size_t i = 0; i < g_live_cap; i++)
            if (g_live[i].p) {
                size_t k = slot_of(g_live[i].p, cap);
                while (t[k].p) k = (k + 1) & (cap - 1);
                t[k] = g_live[i];
            }
        free(g_live);
        g_live = t;
        g_live_cap = cap;
    }
    size_t k = slot_of(p, g_live_cap);
    while (g_live[k].p) k = (k + 1) & (g_live_cap - 1);
    g_live[k].p = p;
    g_live[k].bytes = bytes;
    g_live_n++;
    return SD_OK;
}

/* Removes p from the live table; its rounded size, or 0 when p is not there. */
static size_t live_take(void *p) {
    if (!g_live_cap) return 0;
    size_t k = slot_of(p, g_live_cap);
    while (g_live[k].p && g_live[k].p != p) k = (k + 1) & (g_live_cap - 1);
    if (!g_live[k].p) return 0;
    size_t bytes = g_live[k].bytes;
    g_live[k].p = NULL;
    g_live_n--;
    /* backward-shift deletion keeps every probe chain unbroken */
    for (size_t j = (k + 1) & (g_live_cap - 1); g_live[j].p; j = (j + 1) & (g_live_cap - 1)) {
        size_t home = slot_of(g_live[j].p, g_live_cap);
        int between = k <= j ? (home > k && home <= j) : (home > k || home <= j);
        if (between) continue;
        g_live[k] = g_live[j];
        g_live[j].p = NULL;
        k = j;
    }
    return bytes;
}

void sd_cuda_release_cached(void) {
    for (size_t i = 0; i < g_cache_n; i++) cudaFree(g_cache[i].p);
    g_cache_n = 0;
}

int sd_cuda_alloc(void **p, size_t bytes, const char *what) {
    *p = NULL;
    size_t nb = round_bytes(bytes);
    for (size_t i = g_cache_n; i-- > 0;)
        if (g_cache[i].bytes == nb) {
            *p = g_cache[i].p;
            g_cache[i] = g_cache[--g_cache_n];
            return live_put(*p, nb);
        }
    cudaError_t e = cudaMalloc(p, nb);
    if (e != cudaSuccess && g_cache_n) { /* what the cache holds may be what is missing */
        cudaGetLastError();
        sd_cuda_release_cached();
        e = cudaMalloc(p, nb);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        *p = NULL;
        return sd_fail(SD_ERR_SYS, "out of device memory allocating %zu bytes for %s (%s)", bytes, what,
                       cudaGetErrorString(e));
    }
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess && total_b - free_b > g_peak_used) g_peak_used = total_b - free_b;
    int rc = live_put(*p, nb);
    if (rc != SD_OK) {
        cudaFree(*p);
        *p = NULL;
    }
    return rc;
}

void sd_cuda_free(void *p) {
    if (!p) return;
    size_t nb = live_take(p);
    if (!nb) {
        cudaFree(p);
        return;
    }
    if (g_cache_n == g_cache_cap) {
        size_t cap = g_cache_cap ? 2 * g_cache_cap : 256;
        sd_block *c = (sd_block *)realloc(g_cache, cap * sizeof *c);
        if (!c) { /* cannot remember it: give it back */
            cudaFree(p);
            return;
        }
        g_cache = c;
        g_cache_cap = cap;
    }
    g_cache[g_cache_n].p = p;
    g_cache[g_cache_n++].bytes = nb;
}

void sd_cuda_free_now(void *p) {
    if (!p) return;
    live_take(p);
    cudaFree(p);
}

/* The raw copies below run on the legacy stream, which does not wait for the context's
 * non-blocking stream: let that stream's work finish first, since a block it still uses may
 * have been freed to the cache and handed out again. */
static int settle(void) {
    if (g_alloc_stream_set) SD_CUDA_TRY(cudaStreamSynchronize(g_alloc_stream));
    return SD_OK;
}

int sd_cuda_upload(void *dst, const void *src, size_t bytes) {
    SD_TRY(settle());
    SD_CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return SD_OK;
}

int sd_cuda_download(void *dst, const void *src, size_t bytes) {
    SD_TRY(settle());
    SD_CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    return SD_OK;
}
