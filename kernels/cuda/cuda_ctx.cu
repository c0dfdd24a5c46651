/* The CUDA context, the scratch workspace and device tensors (kernels/cuda/cuda_ctx.h). */
#include "kernels/cuda/cuda_internal.cuh"

#include <stdlib.h>
#include <string.h>

/* cuBLASLt's workspace: what NVIDIA recommends for Hopper (32 MiB) lets the heuristic pick
 * every split-K / stream-K kernel. */
#define SD_LT_WS_BYTES ((size_t)32 << 20)
/* The scratch starts here and grows on demand. */
#define SD_SCRATCH0_BYTES ((size_t)16 << 20)

int sd_cublas_fail(cublasStatus_t s, const char *call, const char *file, int line) {
    return sd_fail(SD_ERR_SYS, "%s:%d: %s: cublas error %d (%s)", file, line, call, (int)s,
                   cublasGetStatusName(s));
}

int sd_ctx_init_cuda(sd_ctx *ctx, int device_index) {
    memset(ctx, 0, sizeof *ctx);
    ctx->backend = SD_DEV_CUDA;
    ctx->nthreads = 1;
    sd_rng_seed(&ctx->rng_state, 1337);
    int n = sd_cuda_device_count();
    if (device_index < 0 || device_index >= n)
        return sd_fail(SD_ERR_SYS, "sd_ctx_init_cuda: device %d requested, %d CUDA device(s) present",
                       device_index, n);
    sd_cuda_state *st = (sd_cuda_state *)calloc(1, sizeof *st);
    if (!st) return sd_fail(SD_ERR_SYS, "out of memory allocating the CUDA context");
    ctx->cuda = st;
    st->device = device_index;
    SD_CUDA_TRY(cudaSetDevice(device_index));
    SD_CUDA_TRY(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
    sd_cuda_set_alloc_stream(st->stream); /* device tensors are zeroed on it from now on */
    SD_CUBLAS_TRY(cublasLtCreate(&st->lt));
    SD_TRY(sd_cuda_alloc(&st->lt_ws, SD_LT_WS_BYTES, "the cuBLASLt workspace"));
    st->lt_ws_bytes = SD_LT_WS_BYTES;
    SD_TRY(sd_cuda_alloc(&st->ws, SD_SCRATCH0_BYTES, "the CUDA scratch workspace"));
    st->ws_bytes = SD_SCRATCH0_BYTES;
    return SD_OK;
}

void sd_ctx_free_cuda(sd_ctx *ctx) {
    sd_cuda_state *st = (sd_cuda_state *)ctx->cuda;
    if (!st) return;
    if (st->stream) cudaStreamSynchronize(st->stream);
    int set;
    if (st->stream && sd_cuda_alloc_stream(&set) == st->stream) sd_cuda_set_alloc_stream(NULL);
    sd_cuda_free_now(st->ws);
    sd_cuda_free_now(st->lt_ws);
    if (st->lt) cublasLtDestroy(st->lt);
    if (st->stream) cudaStreamDestroy(st->stream);
    free(st);
    ctx->cuda = NULL;
}

int sd_cuda_sync(sd_ctx *ctx) {
    if (!ctx || !ctx->cuda) return sd_fail(SD_ERR_INTERNAL, "sd_cuda_sync: not a CUDA context");
    SD_CUDA_TRY(cudaStreamSynchronize(sd_cuda_stream(ctx)));
    return SD_OK;
}

int sd_cuda_scratch(sd_ctx *ctx, size_t bytes, void **p) {
    sd_cuda_state *st = sd_cuda_st(ctx);
    bytes = (bytes + 255) & ~(size_t)255;
    if (bytes > st->ws_bytes) {
        /* Queued kernels may still read the old buffer. */
        SD_CUDA_TRY(cudaStreamSynchronize(st->stream));
        sd_cuda_free_now(st->ws); /* it only grows: not worth caching */
        st->ws = NULL;
        st->ws_bytes = 0;
        size_t nb = bytes + bytes / 4;
        SD_TRY(sd_cuda_alloc(&st->ws, nb, "the CUDA scratch workspace"));
        st->ws_bytes = nb;
    }
    *p = st->ws;
    return SD_OK;
}

/* ---- device tensors ---------------------------------------------------------------------- */

int sd_tensor_alloc_cuda(sd_tensor *t, sd_dtype dt, int ndim, const int64_t *shape) {
    memset(t, 0, sizeof *t);
    if (ndim < 1 || ndim > SD_MAX_DIMS || (unsigned)dt >= SD_DTYPE_COUNT)
        return sd_fail(SD_ERR_INTERNAL, "sd_tensor_alloc_cuda: bad ndim %d or dtype %d", ndim, (int)dt);
    t->dtype = dt;
    t->device = SD_DEV_CUDA;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return sd_fail(SD_ERR_INTERNAL, "sd_tensor_alloc_cuda: negative dim %lld", (long long)shape[i]);
        t->shape[i] = shape[i];
    }
    char what[96], s[64];
    snprintf(what, sizeof what, "a %s %s device tensor", sd_dtype_name(dt), sd_shape_str(t, s, sizeof s));
    SD_TRY(sd_cuda_alloc(&t->data, sd_nbytes(t), what));
    t->owns = 1;
    int set;
    cudaStream_t zs = sd_cuda_alloc_stream(&set);
    cudaError_t e;
    if (set) {
        /* zeroed on the context's stream: ordered after the work that used a reused block
         * and before every op that will use this tensor, with no wait */
        e = cudaMemsetAsync(t->data, 0, sd_nbytes(t) ? sd_nbytes(t) : 1, zs);
    } else {
        /* no context: the legacy stream, waited for */
        e = cudaMemset(t->data, 0, sd_nbytes(t) ? sd_nbytes(t) : 1);
        if (e == cudaSuccess) e = cudaStreamSynchronize(0);
    }
    if (e != cudaSuccess) {
        sd_tensor_free(t);
        return sd_cuda_fail(e, "cudaMemset(a new device tensor)", __FILE__, __LINE__);
    }
    return SD_OK;
}

void sd_cuda_tensor_free_data(void *p) { sd_cuda_free(p); }

/* Host staging: the conversion runs on the host with the CPU's rounding, so an uploaded bf16
 * tensor holds exactly the values a CPU test rounds to. */
static int convert_host(void *dst, sd_dtype ddt, const void *src, sd_dtype sdt, int64_t n, const char *op) {
    if (ddt == sdt) {
        memcpy(dst, src, (size_t)n * sd_dtype_size(sdt));
    } else if (ddt == SD_BF16 && sdt == SD_F32) {
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = sd_f32_to_bf16(((const float *)src)[i]);
    } else if (ddt == SD_F32 && sdt == SD_BF16) {
        for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = sd_bf16_to_f32(((const uint16_t *)src)[i]);
    } else {
        return sd_fail(SD_ERR_INTERNAL, "%s: no conversion from %s to %s", op, sd_dtype_name(sdt),
                       sd_dtype_name(ddt));
    }
    return SD_OK;
}

static int check_pair(const char *op, const sd_tensor *dst, sd_device dd, const sd_tensor *src, sd_device sdv) {
    if (!dst || !src) return sd_fail(SD_ERR_INTERNAL, "%s: NULL tensor", op);
    if (dst->device != dd || src->device != sdv)
        return sd_fail(SD_ERR_INTERNAL, "%s: dst on device %d, src on %d, expected %d and %d", op,
                       (int)dst->device, (int)src->device, (int)dd, (int)sdv);
    if (sd_numel(dst) != sd_numel(src)) {
        char a[64], b[64];
        return sd_fail(SD_ERR_INTERNAL, "%s: dst %s vs src %s: element counts differ", op,
                       sd_shape_str(dst, a, sizeof a), sd_shape_str(src, b, sizeof b));
    }
    return SD_OK;
}

int sd_tensor_upload(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src) {
    static const char *op = "sd_tensor_upload";
    SD_TRY(check_pair(op, dst, SD_DEV_CUDA, src, SD_DEV_CPU));
    int64_t n = sd_numel(src);
    if (n == 0) return SD_OK;
    const void *h = src->data;
    void *tmp = NULL;
    if (dst->dtype != src->dtype) {
        tmp = malloc((size_t)n * sd_dtype_size(dst->dtype));
        if (!tmp) return sd_fail(SD_ERR_SYS, "%s: out of memory staging %lld elements", op, (long long)n);
        int rc = convert_host(tmp, dst->dtype, src->data, src->dtype, n, op);
        if (rc) { free(tmp); return rc; }
        h = tmp;
    }
    int set;
    cudaStream_t s = ctx && ctx->cuda ? sd_cuda_stream(ctx) : sd_cuda_alloc_stream(&set);
    cudaError_t e = cudaMemcpyAsync(dst->data, h, sd_nbytes(dst), cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    free(tmp);
    if (e != cudaSuccess) return sd_cuda_fail(e, "cudaMemcpyAsync(host to device)", __FILE__, __LINE__);
    return SD_OK;
}

int sd_tensor_download(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src) {
    static const char *op = "sd_tensor_download";
    SD_TRY(check_pair(op, dst, SD_DEV_CPU, src, SD_DEV_CUDA));
    int64_t n = sd_numel(src);
    if (n == 0) return SD_OK;
    void *h = dst->data, *tmp = NULL;
    if (dst->dtype != src->dtype) {
        tmp = malloc(sd_nbytes(src));
        if (!tmp) return sd_fail(SD_ERR_SYS, "%s: out of memory staging %lld elements", op, (long long)n);
        h = tmp;
    }
    int set;
    cudaStream_t s = ctx && ctx->cuda ? sd_cuda_stream(ctx) : sd_cuda_alloc_stream(&set);
    cudaError_t e = cudaMemcpyAsync(h, src->data, sd_nbytes(src), cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) {
        free(tmp);
        return sd_cuda_fail(e, "cudaMemcpyAsync(device to host)", __FILE__, __LINE__);
    }
    int rc = tmp ? convert_host(dst->data, dst->dtype, tmp, src->dtype, n, op) : SD_OK;
    free(tmp);
    return rc;
}

int sd_tensor_to_cuda(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src, sd_dtype dt) {
    SD_TRY(sd_tensor_alloc_cuda(dst, dt, src->ndim, src->shape));
    int rc = sd_tensor_upload(ctx, dst, src);
    if (rc) sd_tensor_free(dst);
    return rc;
}

int sd_tensor_to_host_f32(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src) {
    SD_TRY(sd_tensor_alloc(dst, SD_F32, src->ndim, src->shape));
    int rc = sd_tensor_download(ctx, dst, src);
    if (rc) sd_tensor_free(dst);
    return rc;
}

/* ---- deterministic column sums ----------------------------------------------------------- */

#define COLSUM_ROWS 128 /* rows per chunk */

__global__ void colsum_chunks(float *part, const void *a, int a_bf16, const void *x, int x_bf16,
                              const float *scale, int64_t rows, int64_t d) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    int64_t r0 = (int64_t)blockIdx.y * COLSUM_ROWS, r1 = min(rows, r0 + COLSUM_ROWS);
    float s = 0.0f;
    for (int64_t r = r0; r < r1; r++) {
        float v = sd_ld(a, a_bf16, r * d + c);
        if (x) v *= sd_ld(x, x_bf16, r * d + c);
        if (scale) v *= scale[r];
        s += v;
    }
    part[(int64_t)blockIdx.y * d + c] = s;
}

__global__ void colsum_finish(float *dst, const float *part, int64_t nchunks, int64_t d) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float s = 0.0f;
    for (int64_t k = 0; k < nchunks; k++) s += part[k * d + c];
    dst[c] += s;
}

size_t sd_cuda_colsum_floats(int64_t rows, int64_t d) {
    return (size_t)(((rows + COLSUM_ROWS - 1) / COLSUM_ROWS) * d);
}

int sd_cuda_colsum(sd_ctx *ctx, float *dst, const void *a, int a_bf16, const void *x, int x_bf16,
                   const float *scale, int64_t rows, int64_t d, float *part) {
    if (d == 0 || rows == 0) return SD_OK;
    int64_t nch = (rows + COLSUM_ROWS - 1) / COLSUM_ROWS;
    if (nch > 65535) return sd_fail(SD_ERR_INTERNAL, "sd_cuda_colsum: %lld rows is too many", (long long)rows);
    cudaStream_t s = sd_cuda_stream(ctx);
    dim3 g((unsigned)((d + 255) / 256), (unsigned)nch);
    colsum_chunks<<<g, 256, 0, s>>>((float *)part, a, a_bf16, x, x_bf16, scale, rows, d);
    SD_CUDA_LAUNCHED();
    colsum_finish<<<(unsigned)((d + 255) / 256), 256, 0, s>>>(dst, (const float *)part, nch, d);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}
