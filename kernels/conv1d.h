/* Causal depthwise conv1d over time (Mamba / Mamba-2 conv1d, mamba_ssm causal_conv1d).
 *
 *   out[b, t, c] = act(bias[c] + sum_{j=0..W-1} w[c, j] * x[b, t - (W-1) + j, c]),
 *
 * x = 0 at negative time, act = SiLU or identity: PyTorch Conv1d(groups=C, padding=W-1)
 * truncated to the first T outputs.  x, out: [B, T, C]; w: [C, W] or HF's [C, 1, W]
 * (W = 2..4); bias: [C] or NULL.
 *
 * Backward convention: dx, dw, dbias ADD into their outputs (the caller zeroes); any may be
 * NULL to skip it.
 *
 * CUDA dtypes: x, w, bias, out, state, dy, dx F32 or BF16; dw, dbias F32. */
#ifndef SD_CONV1D_H
#define SD_CONV1D_H

#include "kernels/context.h"

int sd_conv1d(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
              const sd_tensor *bias, int silu);

/* One generation step: x, out [B, C]; state [B, C, W-1] holds the previous W-1 inputs of
 * each channel, oldest first (zeros at the start), and is updated in place.  A sequence fed
 * token by token gives the full form's outputs. */
int sd_conv1d_step(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, sd_tensor *state,
                   const sd_tensor *w, const sd_tensor *bias, int silu);

/* Gradients given dy [B, T, C]: dx += ..., dw += ... (w's shape), dbias += .... */
int sd_conv1d_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *dbias,
                       const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w,
                       const sd_tensor *bias, int silu);

#endif
