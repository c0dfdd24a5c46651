/* Row norms.  CUDA: RMSNorm and LayerNorm; x, w, b, out, dy, dx F32 or BF16 (each its own),
 * dw, db F32; fp32 statistics, weight and bias gradients summed over rows in a fixed order.
 * The CPU: F32 throughout. */
#ifndef SD_NORM_H
#define SD_NORM_H

#include "kernels/context.h"

/* Over the last dim d: out = x / sqrt(mean(x^2) + eps) * w   (Llama RMSNorm, fp32 math). */
int sd_rmsnorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w, float eps);
/* out = (x - mean) / sqrt(var + eps) * w + b  (biased variance, as torch LayerNorm);
 * b may be NULL. */
int sd_layernorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
                 const sd_tensor *b, float eps);

/* Backward convention (all ops): every sd_*_backward ADDS into its gradient outputs
 * (dx += ..., dw += ...), as llm.c, so that residual branches and gradient accumulation sum
 * naturally; the caller zeroes them.  Any gradient output may be NULL to skip it. */

/* Gradients of sd_rmsnorm (x, w, eps as the forward): dx += ..., dw += sum over rows. */
int sd_rmsnorm_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, const sd_tensor *dy,
                        const sd_tensor *x, const sd_tensor *w, float eps);
/* Gradients of sd_layernorm: dx, dw, db (any NULL). */
int sd_layernorm_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *db,
                          const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w, float eps);

#endif
