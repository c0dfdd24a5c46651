/* Optimizer ops: the AdamW update of one tensor, and the reductions that global-norm
 * gradient clipping needs.  DESIGN.md section 3: fp32 master weights and moments; on the CPU
 * every reduction has a fixed order, so a resumed run continues bit for bit.
 * CUDA dtypes: everything F32 (master weights, gradients, moments); the sum of squares is
 * deterministic there too (fixed blocks summed in double, then in order) and synchronises. */
#ifndef SD_OPTIM_H
#define SD_OPTIM_H

#include <stdint.h>

#include "kernels/context.h"

/* One AdamW step on one tensor, PyTorch torch.optim.AdamW semantics (decoupled decay):
 *     p *= 1 - lr * weight_decay
 *     m  = beta1 m + (1 - beta1) g
 *     v  = beta2 v + (1 - beta2) g^2
 *     p -= lr * mhat / (sqrt(vhat) + eps),  mhat = m / (1 - beta1^t), vhat = v / (1 - beta2^t)
 * param, grad, m, v: F32, one shape.  t is the 1-based step number (the bias correction);
 * t < 1 is SD_ERR_INTERNAL. */
int sd_adamw_step(sd_ctx *ctx, sd_tensor *param, const sd_tensor *grad, sd_tensor *m,
                  sd_tensor *v, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int64_t t);

/* *out = sum of x^2 over all elements, accumulated in double in an order that does not
 * depend on the thread count (identical run to run).  NaN or Inf anywhere makes *out
 * non-finite, which is how callers detect a bad gradient. */
int sd_sum_squares(sd_ctx *ctx, const sd_tensor *x, double *out);

/* x *= s in place. */
int sd_scale(sd_ctx *ctx, sd_tensor *x, float s);

#endif
