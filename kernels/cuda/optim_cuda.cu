/* The optimizer on CUDA (kernels/optim.h): AdamW over fp32 params, grads and moments with the
 * CPU's per-element fp32 sequence (correctly rounded sqrt and division, so --use_fast_math's
 * approximations do not apply), and a sum of squares for global-norm clipping whose order is
 * fixed by the size alone: SUMSQ_BLOCKS blocks over contiguous ranges, each summed in double
 * in a fixed tree, then the blocks in order.  The same bits every run. */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

#define SUMSQ_BLOCKS 1024
#define SUMSQ_THREADS 256

__device__ __forceinline__ float lerpf_(float a, float b, float w) {
    return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

__global__ void k_adamw(float *p, const float *g, float *m, float *v, int64_t n, float beta1, float beta2, float eps,
                        float decay, float step_size, float bc2_sqrt) {
    const float one_m_b1 = 1.0f - beta1, one_m_b2 = 1.0f - beta2;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = lerpf_(m[i], gi, one_m_b1);
        float vi = v[i] * beta2 + one_m_b2 * gi * gi;
        float denom = __fdiv_rn(__fsqrt_rn(vi), bc2_sqrt) + eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * __fdiv_rn(mi, denom);
    }
}

__global__ void k_sumsq(double *part, const float *x, int64_t n) {
    __shared__ double sh[SUMSQ_THREADS];
    int64_t per = (n + gridDim.x - 1) / gridDim.x, lo = (int64_t)blockIdx.x * per, hi = min(n, lo + per);
    double s = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) s += (double)x[i] * (double)x[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int o = SUMSQ_THREADS / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

__global__ void k_sumsq_finish(double *out, const double *part, int nb) {
    double s = 0.0;
    for (int i = 0; i < nb; i++) s += part[i];
    *out = s;
}

__global__ void k_scale(float *x, int64_t n, float s) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

int sd_cuda_adamw(sd_ctx *ctx, sd_tensor *p, const sd_tensor *g, sd_tensor *m, sd_tensor *v,
                  float beta1, float beta2, float eps, float decay, float step_size,
                  float bc2_sqrt) {
    int64_t n = sd_numel(p);
    if (!n) return SD_OK;
    k_adamw<<<sd_grid1d(n, 256), 256, 0, sd_cuda_stream(ctx)>>>((float *)p->data, (const float *)g->data,
                                                                (float *)m->data, (float *)v->data, n, beta1, beta2,
                                                                eps, decay, step_size, bc2_sqrt);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_sum_squares(sd_ctx *ctx, const sd_tensor *x, double *out) {
    int64_t n = sd_numel(x);
    void *ws = NULL;
    SD_TRY(sd_cuda_scratch(ctx, (SUMSQ_BLOCKS + 1) * sizeof(double), &ws));
    double *part = (double *)ws, *res = part + SUMSQ_BLOCKS;
    cudaStream_t s = sd_cuda_stream(ctx);
    k_sumsq<<<SUMSQ_BLOCKS, SUMSQ_THREADS, 0, s>>>(part, (const float *)x->data, n);
    SD_CUDA_LAUNCHED();
    k_sumsq_finish<<<1, 1, 0, s>>>(res, part, SUMSQ_BLOCKS);
    SD_CUDA_LAUNCHED();
    SD_CUDA_TRY(cudaMemcpyAsync(out, res, sizeof(double), cudaMemcpyDeviceToHost, s));
    SD_CUDA_TRY(cudaStreamSynchronize(s));
    return SD_OK;
}

int sd_cuda_scale(sd_ctx *ctx, sd_tensor *x, float s) {
    int64_t n = sd_numel(x);
    if (!n) return SD_OK;
    k_scale<<<sd_grid1d(n, 256), 256, 0, sd_cuda_stream(ctx)>>>((float *)x->data, n, s);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}
