/* Embedding lookup and its deterministic backward on CUDA (kernels/embedding.h).
 * The ids are copied to the host and checked as on the CPU (a synchronising copy of 4 bytes
 * per token).  The backward sorts the positions by id on the host (stable: positions keep
 * their order), and one thread per (distinct id, column) adds that id's rows in position
 * order: no atomics, the same bits every run. */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

#include <stdlib.h>

__global__ void k_embed(void *out, int obf, const int32_t *ids, const void *table, int tbf, int64_t n, int64_t d) {
    int64_t total = n * d;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (int64_t)gridDim.x * blockDim.x)
        sd_st(out, obf, k, sd_ld(table, tbf, (int64_t)ids[k / d] * d + k % d));
}

/* grid (distinct ids, column blocks): seg u covers perm[start[u] .. start[u+1]) */
__global__ void k_embed_bwd(float *dtable, const void *dy, int ybf, const int32_t *perm, const int32_t *start,
                            const int32_t *uid, int64_t d) {
    int64_t c = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    int u = blockIdx.x;
    float s = 0.0f;
    for (int32_t k = start[u]; k < start[u + 1]; k++) s += sd_ld(dy, ybf, (int64_t)perm[k] * d + c);
    dtable[(int64_t)uid[u] * d + c] += s;
}

/* Downloads the ids and checks them in order, so that the first bad one is reported. */
static int host_ids(sd_ctx *ctx, const char *op, const sd_tensor *ids, int64_t V, int32_t **out) {
    int64_t n = sd_numel(ids);
    int32_t *h = (int32_t *)malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!h) return sd_fail(SD_ERR_SYS, "%s: out of memory copying %lld ids", op, (long long)n);
    cudaError_t e = cudaMemcpyAsync(h, ids->data, (size_t)n * 4, cudaMemcpyDeviceToHost, sd_cuda_stream(ctx));
    if (e == cudaSuccess) e = cudaStreamSynchronize(sd_cuda_stream(ctx));
    if (e != cudaSuccess) {
        free(h);
        return sd_cuda_fail(e, "cudaMemcpyAsync(ids to host)", __FILE__, __LINE__);
    }
    for (int64_t i = 0; i < n; i++)
        if (h[i] < 0 || h[i] >= V) {
            int rc = sd_fail(SD_ERR_INPUT, "%s: token id %d at position %lld is outside [0, %lld)", op, (int)h[i],
                             (long long)i, (long long)V);
            free(h);
            return rc;
        }
    *out = h;
    return SD_OK;
}

int sd_cuda_embedding(sd_ctx *ctx, const char *op, sd_tensor *out, const sd_tensor *ids,
                      const sd_tensor *table) {
    int32_t *h = NULL;
    SD_TRY(host_ids(ctx, op, ids, table->shape[0], &h));
    free(h);
    int64_t n = sd_numel(ids), d = table->shape[1];
    if (n * d == 0) return SD_OK;
    k_embed<<<sd_grid1d(n * d, 256), 256, 0, sd_cuda_stream(ctx)>>>(out->data, sd_is_bf16(out),
                                                                     (const int32_t *)ids->data, table->data,
                                                                     sd_is_bf16(table), n, d);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

static const int32_t *g_sort_ids; /* qsort has no context argument; the caller holds no lock */

static int by_id_then_pos(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    int32_t x = g_sort_ids[i], y = g_sort_ids[j];
    return x != y ? (x < y ? -1 : 1) : (i < j ? -1 : i > j);
}

int sd_cuda_embedding_backward(sd_ctx *ctx, const char *op, sd_tensor *dtable,
                               const sd_tensor *dy, const sd_tensor *ids) {
    int32_t *h = NULL;
    SD_TRY(host_ids(ctx, op, ids, dtable->shape[0], &h));
    int64_t n = sd_numel(ids), d = dtable->shape[1];
    if (n == 0 || d == 0) {
        free(h);
        return SD_OK;
    }
    if (n > 0x7fffffffLL) {
        free(h);
        return sd_fail(SD_ERR_INTERNAL, "%s: %lld ids is too many", op, (long long)n);
    }
    /* one host buffer: perm [n], start [n + 1], uid [n] */
    int32_t *buf = (int32_t *)malloc((size_t)(3 * n + 1) * sizeof(int32_t));
    if (!buf) {
        free(h);
        return sd_fail(SD_ERR_SYS, "%s: out of memory sorting %lld ids", op, (long long)n);
    }
    int32_t *perm = buf, *start = buf + n, *uid = buf + 2 * n + 1;
    for (int64_t i = 0; i < n; i++) perm[i] = (int32_t)i;
    g_sort_ids = h;
    qsort(perm, (size_t)n, sizeof(int32_t), by_id_then_pos);
    int32_t U = 0;
    for (int64_t k = 0; k < n; k++)
        if (k == 0 || h[perm[k]] != h[perm[k - 1]]) {
            start[U] = (int32_t)k;
            uid[U] = h[perm[k]];
            U++;
        }
    start[U] = (int32_t)n;
    /* device copy: perm [n], start [U + 1], uid [U], packed */
    void *ws = NULL;
    int rc = sd_cuda_scratch(ctx, (size_t)(n + 2 * U + 1) * sizeof(int32_t), &ws);
    cudaStream_t s = sd_cuda_stream(ctx);
    int32_t *dperm = (int32_t *)ws, *dstart = dperm + n, *duid = dstart + U + 1;
    cudaError_t e = cudaSuccess;
    if (rc == SD_OK) {
        e = cudaMemcpyAsync(dperm, perm, (size_t)n * 4, cudaMemcpyHostToDevice, s);
        if (e == cudaSuccess) e = cudaMemcpyAsync(dstart, start, (size_t)(U + 1) * 4, cudaMemcpyHostToDevice, s);
        if (e == cudaSuccess) e = cudaMemcpyAsync(duid, uid, (size_t)U * 4, cudaMemcpyHostToDevice, s);
        /* the host buffers are freed below: wait until the copies have read them */
        if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    }
    free(buf);
    free(h);
    SD_TRY(rc);
    if (e != cudaSuccess) return sd_cuda_fail(e, "cudaMemcpyAsync(sorted ids to device)", __FILE__, __LINE__);
    dim3 grid((unsigned)U, (unsigned)((d + 255) / 256));
    k_embed_bwd<<<grid, 256, 0, s>>>((float *)dtable->data, dy->data, sd_is_bf16(dy), dperm, dstart, duid, d);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}
