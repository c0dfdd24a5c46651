/* Cross-entropy and KL from logits on CUDA (kernels/loss.h): one block per row, a fused
 * max-subtracted log-softmax (an online max and sum of exp, one pass) in fp32, logits F32 or BF16,
 * losses and dloss F32, dlogits F32 or BF16.  Targets are copied to the host and checked as
 * the CPU entry does (a synchronising copy of 4 bytes per row).
 * The stage-2 row L2 loss: one block per row (norm in double), then one block sums the row
 * norms in a fixed order; the total comes back to the host (synchronising). */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

#include <stdlib.h>

#define LOSS_THREADS 512

/* Rows are read 8 values at a time when V is a multiple of 8 and the tensors 16-byte aligned
 * (one 16-byte load of BF16, two of F32): the loss kernels stream B T V logits several times
 * (V = 128256 for Llama-3), so the load width, not the math, bounds them. */
__device__ __forceinline__ void ld8(const void *x, int xbf, int64_t i, float v[8]) {
    if (xbf) {
        uint4 u = *reinterpret_cast<const uint4 *>((const __nv_bfloat16 *)x + i);
        const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&u);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = __bfloat162float(h[k]);
    } else {
        float4 a = *reinterpret_cast<const float4 *>((const float *)x + i);
        float4 b = *reinterpret_cast<const float4 *>((const float *)x + i + 4);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
}

__device__ __forceinline__ void st8(void *x, int xbf, int64_t i, const float v[8]) {
    if (xbf) {
        uint4 u;
        __nv_bfloat16 *h = reinterpret_cast<__nv_bfloat16 *>(&u);
#pragma unroll
        for (int k = 0; k < 8; k++) h[k] = __float2bfloat16_rn(v[k]);
        *reinterpret_cast<uint4 *>((__nv_bfloat16 *)x + i) = u;
    } else {
        *reinterpret_cast<float4 *>((float *)x + i) = make_float4(v[0], v[1], v[2], v[3]);
        *reinterpret_cast<float4 *>((float *)x + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
    }
}

/* Adds a into the running (max m, sum of exp(. - m)) of one thread: the online softmax
 * normaliser (Milakov & Gimelshein 2018), one pass over the row instead of two. */
__device__ __forceinline__ void online(float a, float *m, float *sum) {
    if (a > *m) {
        *sum *= expf(*m - a);
        *m = a;
    }
    *sum += expf(a - *m);
}

/* log sum_i exp(x_i s) over the row (vec: 8-wide loads allowed) */
__device__ float row_lse(const void *x, int xbf, int64_t o, int64_t V, float s, float *sh, int vec) {
    float m = -INFINITY, sum = 0.0f;
    if (vec) {
        for (int64_t i = threadIdx.x * 8; i < V; i += blockDim.x * 8) {
            float v[8];
            ld8(x, xbf, o + i, v);
#pragma unroll
            for (int k = 0; k < 8; k++) online(v[k] * s, &m, &sum);
        }
    } else {
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x) online(sd_ld(x, xbf, o + i) * s, &m, &sum);
    }
    float M = sd_block_max(m, sh);
    sum = m == -INFINITY ? 0.0f : sum * expf(m - M);
    sum = sd_block_sum(sum, sh);
    return M + logf(sum);
}

__global__ void k_ce(float *loss, const void *x, int xbf, const int32_t *tg, int64_t V, int32_t ign, int vec) {
    __shared__ float sh[32];
    int64_t r = blockIdx.x, o = r * V;
    if (tg[r] == ign) {
        if (threadIdx.x == 0) loss[r] = 0.0f;
        return;
    }
    float lse = row_lse(x, xbf, o, V, 1.0f, sh, vec);
    if (threadIdx.x == 0) loss[r] = lse - sd_ld(x, xbf, o + tg[r]);
}

__global__ void k_ce_bwd(void *dx, int dbf, const float *dloss, float scale, const void *x, int xbf,
                         const int32_t *tg, int64_t V, int32_t ign, int vec) {
    __shared__ float sh[32];
    int64_t r = blockIdx.x, o = r * V;
    if (tg[r] == ign) return;
    float g = scale * (dloss ? dloss[r] : 1.0f), lse = row_lse(x, xbf, o, V, 1.0f, sh, vec);
    int64_t target = tg[r];
    if (vec) {
        for (int64_t i = threadIdx.x * 8; i < V; i += blockDim.x * 8) {
            float xv[8], d[8];
            ld8(x, xbf, o + i, xv);
            ld8(dx, dbf, o + i, d);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float v = g * expf(xv[k] - lse);
                if (i + k == target) v -= g;
                d[k] += v;
            }
            st8(dx, dbf, o + i, d);
        }
        return;
    }
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        float v = g * expf(sd_ld(x, xbf, o + i) - lse);
        if (i == target) v -= g;
        sd_st(dx, dbf, o + i, sd_ld(dx, dbf, o + i) + v);
    }
}

__global__ void k_kl(float *loss, const void *t, int tbf, const void *s, int sbf, const int32_t *tg, int64_t V,
                     float inv_T, int32_t ign, int vec) {
    __shared__ float sh[32];
    int64_t r = blockIdx.x, o = r * V;
    if (tg && tg[r] == ign) {
        if (threadIdx.x == 0) loss[r] = 0.0f;
        return;
    }
    float lt = row_lse(t, tbf, o, V, inv_T, sh, vec), ls = row_lse(s, sbf, o, V, inv_T, sh, vec);
    float kl = 0.0f;
    if (vec) {
        for (int64_t i = threadIdx.x * 8; i < V; i += blockDim.x * 8) {
            float tv[8], sv[8];
            ld8(t, tbf, o + i, tv);
            ld8(s, sbf, o + i, sv);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float lpt = tv[k] * inv_T - lt, lps = sv[k] * inv_T - ls, pt = expf(lpt);
                if (pt > 0.0f) kl += pt * (lpt - lps);
            }
        }
    } else {
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
            float lpt = sd_ld(t, tbf, o + i) * inv_T - lt, lps = sd_ld(s, sbf, o + i) * inv_T - ls;
            float pt = expf(lpt);
            if (pt > 0.0f) kl += pt * (lpt - lps);
        }
    }
    kl = sd_block_sum(kl, sh);
    if (threadIdx.x == 0) loss[r] = kl;
}

__global__ void k_kl_bwd(void *ds, int dbf, const float *dloss, float scale, const void *t, int tbf, const void *s,
                         int sbf, const int32_t *tg, int64_t V, float inv_T, int32_t ign, int vec) {
    __shared__ float sh[32];
    int64_t r = blockIdx.x, o = r * V;
    if (tg && tg[r] == ign) return;
    float g = scale * (dloss ? dloss[r] : 1.0f) * inv_T;
    float lt = row_lse(t, tbf, o, V, inv_T, sh, vec), ls = row_lse(s, sbf, o, V, inv_T, sh, vec);
    if (vec) {
        for (int64_t i = threadIdx.x * 8; i < V; i += blockDim.x * 8) {
            float tv[8], sv[8], d[8];
            ld8(t, tbf, o + i, tv);
            ld8(s, sbf, o + i, sv);
            ld8(ds, dbf, o + i, d);
#pragma unroll
            for (int k = 0; k < 8; k++) d[k] += g * (expf(sv[k] * inv_T - ls) - expf(tv[k] * inv_T - lt));
            st8(ds, dbf, o + i, d);
        }
        return;
    }
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        float v = g * (expf(sd_ld(s, sbf, o + i) * inv_T - ls) - expf(sd_ld(t, tbf, o + i) * inv_T - lt));
        sd_st(ds, dbf, o + i, sd_ld(ds, dbf, o + i) + v);
    }
}

/* 1 when rows of V elements of every given tensor can be read 8 at a time. */
static int vec_rows(int64_t V, const sd_tensor *a, const sd_tensor *b, const sd_tensor *c) {
    const sd_tensor *all[3] = {a, b, c};
    if (V % 8) return 0;
    for (int i = 0; i < 3; i++)
        if (all[i] && ((uintptr_t)all[i]->data & 15)) return 0;
    return 1;
}

int sd_cuda_check_targets(sd_ctx *ctx, const char *op, const sd_tensor *targets, int64_t rows,
                          int64_t V, int32_t ignore_index) {
    if (!targets || rows == 0) return SD_OK;
    int32_t *h = (int32_t *)malloc((size_t)rows * sizeof(int32_t));
    if (!h) return sd_fail(SD_ERR_SYS, "%s: out of memory copying %lld targets", op, (long long)rows);
    cudaError_t e = cudaMemcpyAsync(h, targets->data, (size_t)rows * 4, cudaMemcpyDeviceToHost, sd_cuda_stream(ctx));
    if (e == cudaSuccess) e = cudaStreamSynchronize(sd_cuda_stream(ctx));
    if (e != cudaSuccess) {
        free(h);
        return sd_cuda_fail(e, "cudaMemcpyAsync(targets to host)", __FILE__, __LINE__);
    }
    int rc = SD_OK;
    for (int64_t r = 0; r < rows && rc == SD_OK; r++)
        if (h[r] != ignore_index && (h[r] < 0 || h[r] >= V))
            rc = sd_fail(SD_ERR_INPUT, "%s: target %d at row %lld is outside [0, %lld) and not the ignore index %d",
                         op, (int)h[r], (long long)r, (long long)V, (int)ignore_index);
    free(h);
    return rc;
}

static int rows_ok(const char *op, int64_t rows) {
    if (rows > 0x7fffffffLL) return sd_fail(SD_ERR_INTERNAL, "%s: %lld rows is too many", op, (long long)rows);
    return SD_OK;
}

#define ROWS_LAUNCH(rows) (unsigned)(rows), LOSS_THREADS, 0, sd_cuda_stream(ctx)

int sd_cuda_cross_entropy(sd_ctx *ctx, sd_tensor *loss, const sd_tensor *logits,
                          const sd_tensor *targets, int32_t ignore_index) {
    int64_t rows = sd_rows(logits), V = logits->shape[logits->ndim - 1];
    SD_TRY(rows_ok("sd_cross_entropy", rows));
    if (rows == 0) return SD_OK;
    k_ce<<<ROWS_LAUNCH(rows)>>>((float *)loss->data, logits->data, sd_is_bf16(logits), (const int32_t *)targets->data,
                                V, ignore_index, vec_rows(V, logits, NULL, NULL));
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_cross_entropy_backward(sd_ctx *ctx, sd_tensor *dlogits, const sd_tensor *dloss,
                                   float scale, const sd_tensor *logits,
                                   const sd_tensor *targets, int32_t ignore_index) {
    int64_t rows = sd_rows(logits), V = logits->shape[logits->ndim - 1];
    SD_TRY(rows_ok("sd_cross_entropy_backward", rows));
    if (rows == 0 || !dlogits) return SD_OK;
    k_ce_bwd<<<ROWS_LAUNCH(rows)>>>(dlogits->data, sd_is_bf16(dlogits), dloss ? (const float *)dloss->data : NULL,
                                    scale, logits->data, sd_is_bf16(logits), (const int32_t *)targets->data, V,
                                    ignore_index, vec_rows(V, logits, dlogits, NULL));
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_kl_div(sd_ctx *ctx, sd_tensor *loss, const sd_tensor *teacher,
                   const sd_tensor *student, float temperature, const sd_tensor *targets,
                   int32_t ignore_index) {
    int64_t rows = sd_rows(student), V = student->shape[student->ndim - 1];
    SD_TRY(rows_ok("sd_kl_div", rows));
    if (rows == 0) return SD_OK;
    k_kl<<<ROWS_LAUNCH(rows)>>>((float *)loss->data, teacher->data, sd_is_bf16(teacher), student->data,
                                sd_is_bf16(student), targets ? (const int32_t *)targets->data : NULL, V,
                                1.0f / temperature, ignore_index, vec_rows(V, teacher, student, NULL));
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_kl_div_backward(sd_ctx *ctx, sd_tensor *dstudent, const sd_tensor *dloss,
                            float scale, const sd_tensor *teacher, const sd_tensor *student,
                            float temperature, const sd_tensor *targets, int32_t ignore_index) {
    int64_t rows = sd_rows(student), V = student->shape[student->ndim - 1];
    SD_TRY(rows_ok("sd_kl_div_backward", rows));
    if (rows == 0 || !dstudent) return SD_OK;
    k_kl_bwd<<<ROWS_LAUNCH(rows)>>>(dstudent->data, sd_is_bf16(dstudent), dloss ? (const float *)dloss->data : NULL,
                                    scale, teacher->data, sd_is_bf16(teacher), student->data, sd_is_bf16(student),
                                    targets ? (const int32_t *)targets->data : NULL, V, 1.0f / temperature,
                                    ignore_index, vec_rows(V, teacher, student, dstudent));
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

/* ---- stage 2: loss = (1/R) sum_r ||o_r - t_r||, d_r = (o_r - t_r) / (||o_r - t_r|| R) ---- */

#define L2_THREADS 256

/* sd_block_sum in double: every thread gets the block's sum, always added in the same order. */
__device__ double block_sum_d(double v, double *sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    double t = 0.0;
    for (int i = 0; i < nw; i++) t += sh[i];
    return t;
}

/* One block per row r: norms[r] = ||o_r - t_r|| (sum of squares in double), and d_r written
 * (the CPU's expression: the difference in double times 1 / (norm R), then rounded). */
__global__ void k_row_l2(double *norms, void *d, int dbf, const void *o, int obf, const void *t, int tbf,
                         int64_t n, int64_t rows) {
    __shared__ double sh[32];
    int64_t base = (int64_t)blockIdx.x * n;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        double diff = (double)sd_ld(o, obf, base + i) - (double)sd_ld(t, tbf, base + i);
        ss += diff * diff;
    }
    double norm = sqrt(block_sum_d(ss, sh));
    if (threadIdx.x == 0) norms[blockIdx.x] = norm;
    if (!d) return;
    double scale = norm > 0.0 ? 1.0 / (norm * (double)rows) : 0.0; /* 0: the zero subgradient */
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        sd_st(d, dbf, base + i, (float)(((double)sd_ld(o, obf, base + i) - (double)sd_ld(t, tbf, base + i)) * scale));
}

/* One block: *total = sum_r norms[r]; thread j takes rows j, j + blockDim, ... in order, then
 * the fixed-order block sum. */
__global__ void k_sum_norms(double *total, const double *norms, int64_t rows) {
    __shared__ double sh[32];
    double s = 0.0;
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += norms[r];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) *total = s;
}

int sd_cuda_row_l2_mean(sd_ctx *ctx, float *loss, sd_tensor *d, const sd_tensor *out,
                        const sd_tensor *target) {
    int64_t rows = sd_rows(out), n = out->shape[out->ndim - 1];
    SD_TRY(rows_ok("sd_row_l2_mean", rows));
    if (rows == 0) {
        *loss = 0.0f;
        return SD_OK;
    }
    void *ws = NULL;
    SD_TRY(sd_cuda_scratch(ctx, ((size_t)rows + 1) * sizeof(double), &ws));
    double *norms = (double *)ws, *total = norms + rows;
    cudaStream_t s = sd_cuda_stream(ctx);
    k_row_l2<<<(unsigned)rows, L2_THREADS, 0, s>>>(norms, d ? d->data : NULL, sd_is_bf16(d), out->data,
                                                   sd_is_bf16(out), target->data, sd_is_bf16(target), n, rows);
    SD_CUDA_LAUNCHED();
    k_sum_norms<<<1, 1024, 0, s>>>(total, norms, rows);
    SD_CUDA_LAUNCHED();
    double sum = 0.0;
    SD_CUDA_TRY(cudaMemcpyAsync(&sum, total, sizeof sum, cudaMemcpyDeviceToHost, s));
    SD_CUDA_TRY(cudaStreamSynchronize(s));
    *loss = (float)(sum / (double)rows);
    return SD_OK;
}
