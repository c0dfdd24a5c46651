/* Elementwise ops. out may alias an input.
 * CUDA dtypes: every tensor (inputs, out, dy, dx) F32 or BF16, each read and written in its own
 * dtype with fp32 math. */
#ifndef SD_ACTIVATION_H
#define SD_ACTIVATION_H

#include "kernels/context.h"

int sd_silu(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x);      /* x * sigmoid(x) */
/* GELU, tanh approximation (gelu_new / gelu_pytorch_tanh):
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
int sd_gelu_tanh(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x);
/* SwiGLU: out = silu(gate) * up */
int sd_swiglu(sd_ctx *ctx, sd_tensor *out, const sd_tensor *gate, const sd_tensor *up);
/* out = a + b (same shape), the residual add. */
int sd_add(sd_ctx *ctx, sd_tensor *out, const sd_tensor *a, const sd_tensor *b);

/* softplus(x) = log1p(exp(x)), and x for x > 20 (torch's threshold, beta 1). */
int sd_softplus(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x);

/* Backward convention (all ops): every sd_*_backward ADDS into its gradient outputs
 * (dx += ..., dw += ...), as llm.c, so that residual branches and gradient accumulation sum
 * naturally; the caller zeroes them.  Any gradient output may be NULL to skip it.
 * dx += dy * f'(x), with x the forward's input. */
int sd_silu_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *x);
int sd_gelu_tanh_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *x);
/* softplus' = sigmoid(x) (1 above the threshold) */
int sd_softplus_backward(sd_ctx *ctx, sd_tensor *dx, const sd_tensor *dy, const sd_tensor *x);
/* dgate += dy * up * silu'(gate), dup += dy * silu(gate). */
int sd_swiglu_backward(sd_ctx *ctx, sd_tensor *dgate, sd_tensor *dup, const sd_tensor *dy,
                       const sd_tensor *gate, const sd_tensor *up);
/* sd_add needs no backward: da += dy and db += dy (an sd_add into the gradients). */

#endif
