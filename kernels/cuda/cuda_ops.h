/* The CUDA backend of the op layer: what the public entries (kernels/OP.c) call when
 * ctx->backend == SD_DEV_CUDA, after their argument checks.  Tensor-level C interface (the
 * dtype travels with the tensor); every call is asynchronous on the context's stream, except
 * those that must read ids / targets on the host to check them (embedding, losses) and the
 * reductions that return a host value (sum of squares).
 *
 * Dtypes on CUDA (the per-op headers repeat this):
 *   "act"  activations, weights and their gradients dx: F32 or BF16, mixed freely (each
 *          tensor is read and written in its own dtype, math in fp32);
 *   "f32"  parameter gradients (dw, db, dbias), losses, AdamW params / grads / moments: F32;
 *   GEMM operands of one product (x and w, dy and w, dy and x) share a dtype.
 * Backward convention as on the CPU: gradients ADD, NULL skips. */
#ifndef SD_CUDA_OPS_H
#define SD_CUDA_OPS_H

#include <stdint.h>

#include "kernels/context.h"
#include "kernels/rotary.h"
#include "kernels/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* copy_cuda.cu (kernels/tensor_ops.h): dst = src with F32 <-> BF16 conversion; t = 0 */
int sd_cuda_copy(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src);
int sd_cuda_zero(sd_ctx *ctx, sd_tensor *t);

/* matmul_cuda.cu (cuBLASLt, fp32 accumulation) */
int sd_cuda_linear(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
                   const sd_tensor *bias);
int sd_cuda_linear_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *db,
                            const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w);
int sd_cuda_matmul(sd_ctx *ctx, sd_tensor *c, const sd_tensor *a, const sd_tensor *b,
                   int64_t batch, int64_t M, int64_t N, int64_t K, int trans_a, int trans_b,
                   float alpha, float beta, int64_t a_stride, int64_t b_stride);
int sd_cuda_matmul_backward(sd_ctx *ctx, sd_tensor *da, sd_tensor *db, const sd_tensor *dc,
                            const sd_tensor *a, const sd_tensor *b, int64_t batch, int64_t M,
                            int64_t N, int64_t K, int trans_a, int trans_b, float alpha,
                            int64_t a_stride, int64_t b_stride);
/* Raw row-major GEMM for benchmarks and other backends: c[M,N] (F32 or BF16) = alpha a.op(b)
 * + beta c with a, b in dtype ab (F32 or BF16), as sd_matmul with one batch. */
int sd_cuda_gemm(sd_ctx *ctx, void *c, sd_dtype c_dt, const void *a, const void *b, sd_dtype ab,
                 int64_t batch, int64_t M, int64_t N, int64_t K, int trans_a, int trans_b,
                 float alpha, float beta, int64_t a_stride, int64_t b_stride, int64_t c_stride);

/* elementwise_cuda.cu */
typedef enum { SD_CUDA_SILU, SD_CUDA_GELU_TANH, SD_CUDA_SOFTPLUS } sd_cuda_unary;
int sd_cuda_unary_fwd(sd_ctx *ctx, sd_cuda_unary f, sd_tensor *out, const sd_tensor *x);
int sd_cuda_unary_bwd(sd_ctx *ctx, sd_cuda_unary f, sd_tensor *dx, const sd_tensor *dy,
                      const sd_tensor *x);
int sd_cuda_swiglu(sd_ctx *ctx, sd_tensor *out, const sd_tensor *gate, const sd_tensor *up);
int sd_cuda_swiglu_backward(sd_ctx *ctx, sd_tensor *dgate, sd_tensor *dup, const sd_tensor *dy,
                            const sd_tensor *gate, const sd_tensor *up);
int sd_cuda_add(sd_ctx *ctx, sd_tensor *out, const sd_tensor *a, const sd_tensor *b);

/* norm_cuda.cu: one block per row (per group for the gated norm), fp32 statistics */
int sd_cuda_rmsnorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w, float eps);
int sd_cuda_rmsnorm_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, const sd_tensor *dy,
                             const sd_tensor *x, const sd_tensor *w, float eps);
int sd_cuda_gated_rmsnorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *y, const sd_tensor *z,
                          const sd_tensor *w, int64_t g, float eps);
int sd_cuda_gated_rmsnorm_backward(sd_ctx *ctx, sd_tensor *dy, sd_tensor *dz, sd_tensor *dw,
                                   const sd_tensor *dout, const sd_tensor *y, const sd_tensor *z,
                                   const sd_tensor *w, int64_t g, float eps);
/* LayerNorm (kernels/norm.h): b NULL for none; dx act, dw and db F32 (row sums in a fixed
 * order, no atomics) */
int sd_cuda_layernorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
                      const sd_tensor *b, float eps);
int sd_cuda_layernorm_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *db,
                               const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w, float eps);

/* softmax_cuda.cu (kernels/softmax.h): over the last dim, one block per row, max-subtracted,
 * fp32 math; every tensor F32 or BF16; logsm != 0 for log_softmax.  y is the forward's output;
 * dx (NULL skips) adds. */
int sd_cuda_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, int logsm);
int sd_cuda_softmax_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *y,
                             int logsm);

/* conv1d_cuda.cu (B, T, C, W as kernels/conv1d.h) */
int sd_cuda_conv1d(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
                   const sd_tensor *bias, int64_t B, int64_t T, int64_t C, int64_t W, int silu);
int sd_cuda_conv1d_step(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, sd_tensor *state,
                        const sd_tensor *w, const sd_tensor *bias, int64_t B, int64_t C,
                        int64_t W, int silu);
int sd_cuda_conv1d_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *dbias,
                            const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w,
                            const sd_tensor *bias, int64_t B, int64_t T, int64_t C, int64_t W,
                            int silu);

/* rotary_cuda.cu: x [B, T, H, head_dim] in place, F32 or BF16; sign -1 is the backward */
int sd_cuda_rotary(sd_ctx *ctx, sd_tensor *x, int64_t B, int64_t T, int64_t H, int64_t head_dim,
                   int64_t half, int interleaved, const float *inv_freq_host, int64_t pos0,
                   float sign);

/* embedding_cuda.cu, loss_cuda.cu, optim_cuda.cu */
int sd_cuda_embedding(sd_ctx *ctx, const char *op, sd_tensor *out, const sd_tensor *ids,
                      const sd_tensor *table);
int sd_cuda_embedding_backward(sd_ctx *ctx, const char *op, sd_tensor *dtable,
                               const sd_tensor *dy, const sd_tensor *ids);
/* targets (device I32, or NULL) copied to the host and checked as the CPU entry does. */
int sd_cuda_check_targets(sd_ctx *ctx, const char *op, const sd_tensor *targets, int64_t rows,
                          int64_t V, int32_t ignore_index);
int sd_cuda_cross_entropy(sd_ctx *ctx, sd_tensor *loss, const sd_tensor *logits,
                          const sd_tensor *targets, int32_t ignore_index);
int sd_cuda_cross_entropy_backward(sd_ctx *ctx, sd_tensor *dlogits, const sd_tensor *dloss,
                                   float scale, const sd_tensor *logits,
                                   const sd_tensor *targets, int32_t ignore_index);
int sd_cuda_kl_div(sd_ctx *ctx, sd_tensor *loss, const sd_tensor *teacher,
                   const sd_tensor *student, float temperature, const sd_tensor *targets,
                   int32_t ignore_index);
int sd_cuda_kl_div_backward(sd_ctx *ctx, sd_tensor *dstudent, const sd_tensor *dloss,
                            float scale, const sd_tensor *teacher, const sd_tensor *student,
                            float temperature, const sd_tensor *targets, int32_t ignore_index);
/* The stage-2 loss (kernels/loss.h): synchronises to return *loss; d written, not added. */
int sd_cuda_row_l2_mean(sd_ctx *ctx, float *loss, sd_tensor *d, const sd_tensor *out,
                        const sd_tensor *target);
int sd_cuda_adamw(sd_ctx *ctx, sd_tensor *p, const sd_tensor *g, sd_tensor *m, sd_tensor *v,
                  float beta1, float beta2, float eps, float decay, float step_size,
                  float bc2_sqrt);
int sd_cuda_sum_squares(sd_ctx *ctx, const sd_tensor *x, double *out);
int sd_cuda_scale(sd_ctx *ctx, sd_tensor *x, float s);

/* ssm_discretize_cuda.cu (kernels/ssm_discretize.h): dt_raw, ddt_raw F32 or BF16, the rest
 * F32; da_log by a fixed-order column sum. */
int sd_cuda_ssm_discretize(sd_ctx *ctx, sd_tensor *dt, sd_tensor *loga, const sd_tensor *dt_raw,
                           const sd_tensor *a_log, float dt_min, float dt_max);
int sd_cuda_ssm_discretize_backward(sd_ctx *ctx, sd_tensor *ddt_raw, sd_tensor *da_log,
                                    const sd_tensor *dloga, const sd_tensor *ddt,
                                    const sd_tensor *dt_raw, const sd_tensor *loga,
                                    const sd_tensor *a_log, float dt_min, float dt_max);

/* ssd_attention_cuda.cu: the existing fused kernels (ssd_cuda.h, attention_cuda.h) behind
 * the public entries.  SSD: x, y, dy, dx, Bm, Cm, dB, dC F32 or BF16 (the kernels run bf16;
 * F32 ones are converted through scratch copies); dt, loga, D, states and their gradients
 * F32; P, N up to 128 (padded inside with zero columns to multiples of 16 when they are not);
 * any chunk >= 1 (the kernels run the nearest multiple of 16 in 16..128: the result does not
 * depend on it but for rounding).  The backward adds (through scratch temporaries), as the
 * CPU entry.  Attention: q, k, v, out F32 or BF16 (run as bf16), hd up to 128 (padded inside
 * with zero columns to 64 or 128), lse F32 or NULL, no probs. */
int sd_cuda_ssd_chunked(sd_ctx *ctx, sd_tensor *y, const sd_tensor *x, const sd_tensor *dt,
                        const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                        const sd_tensor *D, int64_t chunk, const sd_tensor *init_state,
                        sd_tensor *final_state);
int sd_cuda_ssd_chunked_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *ddt, sd_tensor *dloga,
                                 sd_tensor *dB, sd_tensor *dC, sd_tensor *dD,
                                 const sd_tensor *dy, const sd_tensor *x, const sd_tensor *dt,
                                 const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                                 const sd_tensor *D, int64_t chunk, const sd_tensor *init_state,
                                 const sd_tensor *dfinal_state, sd_tensor *dinit_state);
int sd_cuda_attention(sd_ctx *ctx, sd_tensor *out, const sd_tensor *q, const sd_tensor *k,
                      const sd_tensor *v, float scale, sd_tensor *probs, sd_tensor *lse);

/* attention_bwd_cuda.cu: the backward of sd_attention (kernels/attention.h), recomputing the
 * probabilities (probs must be NULL).  q, k, v, dout, dq, dk, dv F32 or BF16 each, hd up to
 * 256, fp32 math; two deterministic passes (no atomics) on CUDA cores; gradients add. */
int sd_cuda_attention_backward(sd_ctx *ctx, sd_tensor *dq, sd_tensor *dk, sd_tensor *dv,
                               const sd_tensor *dout, const sd_tensor *q, const sd_tensor *k,
                               const sd_tensor *v, float scale, const sd_tensor *probs);

/* stage1_cuda.cu: sd_stage1_loss (kernels/stage1.h) on the fused kernel of stage1_fused.cu.
 * q, k, Bm, Cm F32 or BF16 (run as bf16), hd and N up to 128 (padded inside to 64 or 128);
 * dt, loga, D, per_head and the gradients F32.  Synchronises to return *loss. */
int sd_cuda_stage1(sd_ctx *ctx, float *loss, sd_tensor *per_head, const sd_tensor *q,
                   const sd_tensor *k, float scale, const sd_tensor *dt, const sd_tensor *loga,
                   const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D, sd_tensor *ddt,
                   sd_tensor *dloga, sd_tensor *dB, sd_tensor *dC, sd_tensor *dD);

#ifdef __cplusplus
}
#endif

#endif
