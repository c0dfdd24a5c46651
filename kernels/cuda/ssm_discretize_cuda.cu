/* The Mamba-2 discretisation on CUDA (kernels/ssm_discretize.h has the math): grid-stride
 * elementwise kernels in fp32 with the CPU reference's formulas (dt_raw and ddt_raw F32 or
 * BF16; everything else F32), and da_log[h] += sum_r dloga[r, h] loga[r, h] as a fixed-order
 * column sum (sd_cuda_colsum: chunks of rows in order, then the chunks in order; no atomics). */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

#define GS_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* torch softplus (threshold 20), as the CPU; log1pf is exact under --use_fast_math. */
__device__ __forceinline__ float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* g softplus'(x) = g sigmoid(x) (g above the threshold), with a rounded division
 * (--use_fast_math would otherwise take an approximate reciprocal). */
__device__ __forceinline__ float softplus_grad_f(float g, float x) {
    return x > 20.0f ? g : g * __fdiv_rn(1.0f, 1.0f + expf(-x));
}

/* a_log NULL: loga = -softplus(dt_raw).  Else dt = clamp(softplus(dt_raw)), loga = -exp(a_log[h]) dt. */
__global__ void k_discretize(float *dt, float *loga, const void *raw, int rbf, const float *a_log, int64_t n,
                             int64_t H, float dt_min, float dt_max) {
    GS_LOOP(i, n) {
        float v = softplus_f(sd_ld(raw, rbf, i));
        if (!a_log) {
            loga[i] = -v;
            continue;
        }
        if (v < dt_min) v = dt_min; /* the CPU's two comparisons (NaN passes through) */
        if (v > dt_max) v = dt_max;
        dt[i] = v;
        loga[i] = -expf(a_log[i % H]) * v;
    }
}

/* ddt_raw += g softplus'(dt_raw) with g = -dloga (discrete), or g = 0 where the clamp bit and
 * ddt + dloga A_h elsewhere (standard; ddt NULL reads as 0). */
__global__ void k_discretize_bwd(void *ddt_raw, int dbf, const float *dloga, const float *ddt, const void *raw,
                                 int rbf, const float *a_log, int64_t n, int64_t H, float dt_min, float dt_max) {
    GS_LOOP(i, n) {
        float x = sd_ld(raw, rbf, i), g;
        if (!a_log) {
            g = -dloga[i];
        } else {
            float A = -expf(a_log[i % H]), sp = softplus_f(x);
            int clamped = sp < dt_min || sp > dt_max;
            g = clamped ? 0.0f : (ddt ? ddt[i] : 0.0f) + dloga[i] * A;
        }
        sd_st(ddt_raw, dbf, i, sd_ld(ddt_raw, dbf, i) + softplus_grad_f(g, x));
    }
}

#define LAUNCH(n) sd_grid1d((n), 256), 256, 0, sd_cuda_stream(ctx)

int sd_cuda_ssm_discretize(sd_ctx *ctx, sd_tensor *dt, sd_tensor *loga, const sd_tensor *dt_raw,
                           const sd_tensor *a_log, float dt_min, float dt_max) {
    int64_t n = sd_numel(dt_raw), H = dt_raw->shape[dt_raw->ndim - 1];
    if (!n) return SD_OK;
    k_discretize<<<LAUNCH(n)>>>(dt ? (float *)dt->data : NULL, (float *)loga->data, dt_raw->data,
                                sd_is_bf16(dt_raw), a_log ? (const float *)a_log->data : NULL, n, H, dt_min,
                                dt_max);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_ssm_discretize_backward(sd_ctx *ctx, sd_tensor *ddt_raw, sd_tensor *da_log,
                                    const sd_tensor *dloga, const sd_tensor *ddt,
                                    const sd_tensor *dt_raw, const sd_tensor *loga,
                                    const sd_tensor *a_log, float dt_min, float dt_max) {
    int64_t n = sd_numel(dt_raw), H = dt_raw->shape[dt_raw->ndim - 1], rows = sd_rows(dt_raw);
    if (!n) return SD_OK;
    if (ddt_raw) {
        k_discretize_bwd<<<LAUNCH(n)>>>(ddt_raw->data, sd_is_bf16(ddt_raw), (const float *)dloga->data,
                                        ddt ? (const float *)ddt->data : NULL, dt_raw->data, sd_is_bf16(dt_raw),
                                        a_log ? (const float *)a_log->data : NULL, n, H, dt_min, dt_max);
        SD_CUDA_LAUNCHED();
    }
    if (da_log && a_log) { /* da_log[h] += sum_r dloga[r, h] loga[r, h] */
        void *part = NULL;
        SD_TRY(sd_cuda_scratch(ctx, sd_cuda_colsum_floats(rows, H) * sizeof(float), &part));
        SD_TRY(sd_cuda_colsum(ctx, (float *)da_log->data, dloga->data, 0, loga->data, 0, NULL, rows, H,
                              (float *)part));
    }
    return SD_OK;
}
