/* The CPU reference backend: fp32, CBLAS for GEMMs, OpenMP over independent rows.
 *
 * Plain pointers and sizes; the public entries (kernels/OP.c) check shapes, dtypes and
 * devices before they call in here.  Determinism (DESIGN.md section 3): every reduction
 * (a row sum, a dot product) runs in one thread in a fixed order, and loops are parallel
 * only over independent rows / heads / queries, so results are bit-identical run to run.
 * Elementwise ops allow out to alias an input (no restrict). */
#ifndef SD_CPU_OPS_H
#define SD_CPU_OPS_H

#include <stdint.h>

#include "common/error.h"
#include "kernels/tensor.h"

/* Loops over fewer elements than this run on one thread: forking costs more than the work.
 * Each row is computed the same way on any thread, so this does not change results. */
#define SD_CPU_PAR_MIN 32768

/* out[m, n] = x[m, k] . w[n, k]^T (+ bias[n]). */
void sd_cpu_linear(float *out, const float *x, const float *w, const float *bias, int64_t m,
                   int64_t n, int64_t k);
/* For each of batch: c = alpha * op(a) . op(b) + beta * c with op(a) [m, k], op(b) [k, n].
 * a_stride / b_stride: elements between batches (0 broadcasts one matrix to all). */
void sd_cpu_matmul(float *c, const float *a, const float *b, int64_t batch, int64_t m,
                   int64_t n, int64_t k, int trans_a, int trans_b, float alpha, float beta,
                   int64_t a_stride, int64_t b_stride);

/* out[i, :] = table[ids[i], :]; ids already checked to lie in [0, V). */
void sd_cpu_embedding(float *out, const int32_t *ids, const float *table, int64_t n, int64_t d);

void sd_cpu_rmsnorm(float *out, const float *x, const float *w, int64_t rows, int64_t d,
                    float eps);
/* b may be NULL. */
void sd_cpu_layernorm(float *out, const float *x, const float *w, const float *b, int64_t rows,
                      int64_t d, float eps);

/* x [B, T, H, head_dim] in place; the first rotary_dim dims of each head rotate by
 * (pos0 + t) * inv_freq[i], i < rotary_dim / 2.  SD_ERR_SYS if the cos/sin table
 * cannot be allocated. */
int sd_cpu_rotary(float *x, int64_t B, int64_t T, int64_t H, int64_t head_dim,
                  int64_t rotary_dim, int interleaved, const float *inv_freq, int64_t pos0);

/* q [B, T, Hq, hd]; k, v [B, S, Hkv, hd]; out [B, T, Hq, hd]; probs [B, Hq, T, S] and
 * lse [B, Hq, T] may be NULL.  Query t sees keys 0 .. S - T + t.  SD_ERR_SYS if the
 * score scratch cannot be allocated. */
int sd_cpu_attention(float *out, const float *q, const float *k, const float *v, int64_t B,
                     int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd, float scale,
                     float *probs, float *lse);

void sd_cpu_silu(float *out, const float *x, int64_t n);
void sd_cpu_gelu_tanh(float *out, const float *x, int64_t n);
void sd_cpu_swiglu(float *out, const float *gate, const float *up, int64_t n);
void sd_cpu_add(float *out, const float *a, const float *b, int64_t n);

/* Over the last dim d of rows x d; out may alias x. */
void sd_cpu_softmax(float *out, const float *x, int64_t rows, int64_t d);
void sd_cpu_log_softmax(float *out, const float *x, int64_t rows, int64_t d);

/* Optimizer (kernels/optim.h). decay = 1 - lr * weight_decay; step_size = lr / (1 - beta1^t);
 * bc2_sqrt = sqrt(1 - beta2^t):
 * the scalars torch computes in double on the host, so that the per-element arithmetic is
 * the same fp32 sequence as torch's. */
void sd_cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, float beta1,
                  float beta2, float eps, float decay, float step_size, float bc2_sqrt);
double sd_cpu_sum_squares(const float *x, int64_t n);
void sd_cpu_scale(float *x, int64_t n, float s);

/* --- backward passes ------------------------------------------------------------------------
 * Every backward ADDS into its gradient outputs (dx += ...), as llm.c, so that residual
 * branches and gradient accumulation sum naturally; the caller zeroes.  A NULL gradient
 * output is skipped.  Sums over rows (weight gradients) run per column in row order, so the
 * result does not depend on the thread count. */

/* dx[m, k] += dy . w; dw[n, k] += dy^T . x; db[n] += sum_rows dy. */
void sd_cpu_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, int64_t m, int64_t n, int64_t k);
/* Gradients of c = alpha op(a) op(b) (+ beta c): da += ..., db += ... (shapes as stored).
 * A broadcast operand (stride 0) sums its gradient over the batches in batch order. */
void sd_cpu_matmul_backward(float *da, float *db, const float *dc, const float *a,
                            const float *b, int64_t batch, int64_t m, int64_t n, int64_t k,
                            int trans_a, int trans_b, float alpha, int64_t a_stride,
                            int64_t b_stride);
/* dtable[ids[i], :] += dy[i, :], per column in i order (no atomics). */
void sd_cpu_embedding_backward(float *dtable, const float *dy, const int32_t *ids, int64_t n,
                               int64_t d);
/* dx, dw may be NULL; returns SD_ERR_SYS if the per-row scratch cannot be allocated. */
int sd_cpu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x,
                            const float *w, int64_t rows, int64_t d, float eps);
int sd_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                              const float *w, int64_t rows, int64_t d, float eps);
/* sum_r a[r, i] * f(r, i) for column blocks: dst[i] += sum over rows in row order, with
 * f = 1 when x is NULL, else (x[r, i] - shift[r]) * scale[r] (shift may be NULL). */
void sd_cpu_colsum(float *dst, const float *a, const float *x, const float *shift,
                   const float *scale, int64_t rows, int64_t d);

void sd_cpu_silu_backward(float *dx, const float *dy, const float *x, int64_t n);
void sd_cpu_gelu_tanh_backward(float *dx, const float *dy, const float *x, int64_t n);
void sd_cpu_swiglu_backward(float *dgate, float *dup, const float *dy, const float *gate,
                            const float *up, int64_t n);
/* softplus(x) = log1p(exp(x)), x for x > 20 (torch threshold). */
void sd_cpu_softplus(float *out, const float *x, int64_t n);
void sd_cpu_softplus_backward(float *dx, const float *dy, const float *x, int64_t n);

/* y: the forward's output (softmax or log_softmax) */
void sd_cpu_softmax_backward(float *dx, const float *dy, const float *y, int64_t rows, int64_t d);
void sd_cpu_log_softmax_backward(float *dx, const float *dy, const float *y, int64_t rows,
                                 int64_t d);

/* Rotates dx in place by minus the forward's angle (the transpose of a rotation). */
int sd_cpu_rotary_backward(float *dx, int64_t B, int64_t T, int64_t H, int64_t head_dim,
                           int64_t rotary_dim, int interleaved, const float *inv_freq,
                           int64_t pos0);

/* dq [B, T, Hq, hd], dk, dv [B, S, Hkv, hd] (each may be NULL); probs [B, Hq, T, S] from
 * the forward, or NULL to recompute.  One task per (b, kv head): it owns that head's dk and
 * dv and sums over its query heads and queries in order. */
int sd_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                              const float *q, const float *k, const float *v, int64_t B,
                              int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd,
                              float scale, const float *probs);

/* Causal depthwise conv1d: x [B, T, C], w [C, W], bias [C] or NULL. */
void sd_cpu_conv1d(float *out, const float *x, const float *w, const float *bias, int64_t B,
                   int64_t T, int64_t C, int64_t W, int silu);
void sd_cpu_conv1d_step(float *out, const float *x, float *state, const float *w,
                        const float *bias, int64_t B, int64_t C, int64_t W, int silu);
void sd_cpu_conv1d_backward(float *dx, float *dw, float *dbias, const float *dy, const float *x,
                            const float *w, const float *bias, int64_t B, int64_t T, int64_t C,
                            int64_t W, int silu);

/* Gated RMSNorm over groups of g of the last dim d: out = w * h / sqrt(mean_g(h^2) + eps),
 * h = y * silu(z) (z NULL: h = y). */
void sd_cpu_gated_rmsnorm(float *out, const float *y, const float *z, const float *w,
                          int64_t rows, int64_t d, int64_t g, float eps);
int sd_cpu_gated_rmsnorm_backward(float *dy, float *dz, float *dw, const float *dout,
                                  const float *y, const float *z, const float *w, int64_t rows,
                                  int64_t d, int64_t g, float eps);

/* Losses over rows of V logits; a row whose target (or, for KL, targets[r] when targets is
 * non-NULL) equals ignore_index gives loss 0 and gradient 0.  Targets already checked. */
void sd_cpu_cross_entropy(float *loss, const float *logits, const int32_t *targets,
                          int64_t rows, int64_t V, int32_t ignore_index);
/* dlogits += g_r (softmax(logits) - onehot(target)), g_r = scale * (dloss ? dloss[r] : 1). */
void sd_cpu_cross_entropy_backward(float *dlogits, const float *dloss, float scale,
                                   const float *logits, const int32_t *targets, int64_t rows,
                                   int64_t V, int32_t ignore_index);
void sd_cpu_kl_div(float *loss, const float *teacher, const float *student,
                   const int32_t *targets, int64_t rows, int64_t V, float temperature,
                   int32_t ignore_index);
/* dstudent += g_r (p_s - p_t) / T. */
void sd_cpu_kl_div_backward(float *dstudent, const float *dloss, float scale,
                            const float *teacher, const float *student, const int32_t *targets,
                            int64_t rows, int64_t V, float temperature, int32_t ignore_index);

/* Stage-2 loss (kernels/loss.h sd_row_l2_mean): *loss = mean_r ||out_r - target_r||, d (may be
 * NULL) written with the gradient.  SD_ERR_SYS if the per-row norms cannot be allocated. */
int sd_cpu_row_l2_mean(float *loss, float *d, const float *out, const float *target, int64_t rows,
                       int64_t n);

/* Mamba-2 discretisation (kernels/ssm_discretize.h) over rows x H; a_log NULL is the
 * discrete mixer (dt not written / ddt not read, da_log not written).  ddt and da_log may be
 * NULL in the backward, ddt_raw too (skipped). */
void sd_cpu_ssm_discretize(float *dt, float *loga, const float *dt_raw, const float *a_log,
                           int64_t rows, int64_t H, float dt_min, float dt_max);
void sd_cpu_ssm_discretize_backward(float *ddt_raw, float *da_log, const float *dloga,
                                    const float *ddt, const float *dt_raw, const float *loga,
                                    const float *a_log, int64_t rows, int64_t H, float dt_min,
                                    float dt_max);

/* --- argument checks shared by the public entries (kernels/OP.c) ---------------------------
 * They live here, beside the backend they guard, so that no other header changes. */

/* SD_OK if t is a non-NULL F32 tensor on the context's device with data. */
static inline int sd_op_check_f32(sd_device backend, const char *op, const char *name,
                                  const sd_tensor *t) {
    if (!t) return sd_fail(SD_ERR_INTERNAL, "%s: %s is NULL", op, name);
    if (t->dtype != SD_F32)
        return sd_fail(SD_ERR_INTERNAL, "%s: %s has dtype %s, expected F32", op, name,
                       sd_dtype_name(t->dtype));
    if (t->device != backend)
        return sd_fail(SD_ERR_INTERNAL, "%s: %s is on device %d, the context runs on %d", op,
                       name, (int)t->device, (int)backend);
    if (!t->data && sd_numel(t) > 0) return sd_fail(SD_ERR_INTERNAL, "%s: %s has no data", op, name);
    return SD_OK;
}

/* SD_OK if g is NULL (a skipped gradient) or an F32 tensor of like's shape. */
static inline int sd_op_check_grad(sd_device backend, const char *op, const char *name,
                                   const sd_tensor *g, const sd_tensor *like) {
    if (!g) return SD_OK;
    SD_TRY(sd_op_check_f32(backend, op, name, g));
    if (!sd_same_shape(g, like)) {
        char sg[64], sl[64];
        return sd_fail(SD_ERR_INTERNAL, "%s: %s is %s, expected %s", op, name,
                       sd_shape_str(g, sg, sizeof sg), sd_shape_str(like, sl, sizeof sl));
    }
    return SD_OK;
}

/* An activation, a weight or an activation gradient: F32, or on CUDA also BF16 (the precision
 * policy of kernels/cuda/cuda_ops.h).  Parameter gradients, losses and optimizer state keep
 * sd_op_check_f32. */
static inline int sd_op_check_act(sd_device backend, const char *op, const char *name,
                                  const sd_tensor *t) {
    if (t && backend == SD_DEV_CUDA && t->dtype == SD_BF16) {
        if (t->device != backend)
            return sd_fail(SD_ERR_INTERNAL, "%s: %s is on device %d, the context runs on %d", op,
                           name, (int)t->device, (int)backend);
        if (!t->data && sd_numel(t) > 0) return sd_fail(SD_ERR_INTERNAL, "%s: %s has no data", op, name);
        return SD_OK;
    }
    return sd_op_check_f32(backend, op, name, t);
}

/* SD_OK if g is NULL or an activation-like tensor (sd_op_check_act) of like's shape. */
static inline int sd_op_check_like_act(sd_device backend, const char *op, const char *name,
                                       const sd_tensor *g, const sd_tensor *like) {
    if (!g) return SD_OK;
    SD_TRY(sd_op_check_act(backend, op, name, g));
    if (!sd_same_shape(g, like)) {
        char sg[64], sl[64];
        return sd_fail(SD_ERR_INTERNAL, "%s: %s is %s, expected %s", op, name,
                       sd_shape_str(g, sg, sizeof sg), sd_shape_str(like, sl, sizeof sl));
    }
    return SD_OK;
}

/* In a public entry, after its checks: runs the CUDA backend for a CUDA context (returning
 * its status); compiles to nothing where the backend is not built, so the entry then reports
 * sd_op_no_backend.  A context marked CUDA without sd_ctx_init_cuda is refused, not run. */
#ifdef SD_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
static inline int sd_cuda_uninit(void) {
    return sd_fail(SD_ERR_INTERNAL, "CUDA context not initialised (sd_ctx_init_cuda)");
}
#define SD_CUDA_DISPATCH(ctx, call)                                          \
    do {                                                                     \
        if ((ctx)->backend == SD_DEV_CUDA) return (ctx)->cuda ? (call) : sd_cuda_uninit(); \
    } while (0)
#define SD_BACKEND_BUILT(b) ((b) == SD_DEV_CPU || (b) == SD_DEV_CUDA)
#else
#define SD_CUDA_DISPATCH(ctx, call) ((void)0)
#define SD_BACKEND_BUILT(b) ((b) == SD_DEV_CPU)
#endif

/* The message of a backend that is not compiled in, or of an op it lacks. */
static inline int sd_op_no_backend(const char *op, sd_device backend) {
#ifdef SD_HAVE_CUDA
    if (backend == SD_DEV_CUDA) return sd_fail(SD_ERR_INTERNAL, "%s: no CUDA implementation of this op", op);
#else
    if (backend == SD_DEV_CUDA) return sd_fail(SD_ERR_INTERNAL, "%s: CUDA backend not built", op);
#endif
    return sd_fail(SD_ERR_INTERNAL, "%s: unknown backend %d", op, (int)backend);
}

#endif
