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

/* The message of a backend that is not compiled in. */
static inline int sd_op_no_backend(const char *op, sd_device backend) {
    if (backend == SD_DEV_CUDA) return sd_fail(SD_ERR_INTERNAL, "%s: CUDA backend not built", op);
    return sd_fail(SD_ERR_INTERNAL, "%s: unknown backend %d", op, (int)backend);
}

#endif
