/* Elementwise ops. out may alias an input. */
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

#endif
