/* Matrix products (CPU: CBLAS sgemm). */
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

#endif
