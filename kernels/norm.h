#ifndef SD_NORM_H
#define SD_NORM_H

#include "kernels/context.h"

/* Over the last dim d: out = x / sqrt(mean(x^2) + eps) * w   (Llama RMSNorm, fp32 math). */
int sd_rmsnorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w, float eps);
/* out = (x - mean) / sqrt(var + eps) * w + b  (biased variance, as torch LayerNorm);
 * b may be NULL. */
int sd_layernorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
                 const sd_tensor *b, float eps);

#endif
