/* Matrix products (CPU: CBLAS sgemm; CUDA: cuBLASLt, fp32 accumulation, no TF32).
 *
 * CUDA dtypes: the two operands of each product share a dtype, F32 or BF16 (x and w; a and
 * b; in the backward dy with w for dx, dy with x for dw); out / c / dx / da / db F32 or BF16;
 * bias F32 or BF16; the parameter gradients dw and db of sd_linear_backward F32. */
#ifndef SD_MATMUL_H
#define SD_MATMUL_H

#include "kernels/context.h"

/* nn.Linear: out[..., N] = x[..., K] . w[N, K]^T (+ bias[N] if bias != NULL).
 * x and out may have any leading dims (flattened to rows). out is preallocated. */
int sd_linear(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
              const sd_tensor *bias);

/* Batched GEMM: c[b] = alpha * op(a[b]) . op(b[b]) + beta * c[b]; op transposes when
 * trans_* is 1. Tensors are 2-D (one batch) or 3-D [batch, rows, cols]. */
int sd_matmul(sd_ctx *ctx, sd_tensor *c, const sd_tensor *a, const sd_tensor *b, int trans_a,
              int trans_b, float alpha, float beta);

/* Backward convention (all ops): every sd_*_backward ADDS into its gradient outputs
 * (dx += ..., dw += ...), as llm.c, so that residual branches and gradient accumulation sum
 * naturally; the caller zeroes them.  Any gradient output may be NULL to skip it. */

/* Gradients of sd_linear given dy (out's shape): dx += dy . w, dw += dy^T . x,
 * db += sum over rows of dy. */
int sd_linear_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *db,
                       const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w);

/* Gradients of sd_matmul given dc: da += alpha dC op(b)^T (as a is stored, transposed when
 * trans_a), db likewise.  A 2-D a or b shared by a 3-D c gets the sum over batches.  The
 * gradient of the beta * c input is beta * dc, left to the caller. */
int sd_matmul_backward(sd_ctx *ctx, sd_tensor *da, sd_tensor *db, const sd_tensor *dc,
                       const sd_tensor *a, const sd_tensor *b, int trans_a, int trans_b,
                       float alpha);

#endif
