#ifndef SD_SOFTMAX_H
#define SD_SOFTMAX_H

#include "kernels/context.h"

/* Over the last dim, max-subtracted, fp32 math.  out may alias x.
 * CPU: F32 tensors.  CUDA: every tensor (x, out, dy, y, dx) F32 or BF16, each its own dtype;
 * one block per row, the row max and sum reduced in fp32 in a fixed order (deterministic). */
int sd_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x);
int sd_log_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x);

/* Backward convention (all ops): every sd_*_backward ADDS into its gradient outputs
 * (dx += ..., dw += ...), as llm.c, so that residual branches and gradient accumulation sum
 * naturally; the caller zeroes them.  Any gradient output may be NULL to skip it. */

/* y is the forward's OUTPUT.  softmax: dx += y * (dy - sum(dy * y));
 * log_softmax: dx += dy - exp(y) * sum(dy). */
int sd_softmax_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *y);
int sd_log_softmax_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *y);

#endif
