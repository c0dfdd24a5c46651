/* Gated RMSNorm of Mamba-2 (mamba_ssm RMSNormGated with norm_before_gate=False; HF
 * MambaRMSNormGated):
 *
 *   h = y * silu(z)  (fp32),  out = w * h / sqrt(mean(h^2) + eps)
 *
 * with the mean over each group of group_size channels of the last dim d (group_size = d
 * when n_groups = 1).  y, z, out: [..., d]; w: [d]; z may be NULL (h = y: a grouped
 * RMSNorm).
 *
 * Backward convention: dy, dz, dw ADD into their outputs (the caller zeroes); any may be
 * NULL to skip it.
 *
 * CUDA dtypes: y, z, w, out, dout, dy, dz F32 or BF16; dw F32. */
#ifndef SD_GATED_NORM_H
#define SD_GATED_NORM_H

#include "kernels/context.h"

int sd_gated_rmsnorm(sd_ctx *ctx, sd_tensor *out, const sd_tensor *y, const sd_tensor *z,
                     const sd_tensor *w, int64_t group_size, float eps);

/* Gradients given dout: dy += ..., dz += ..., dw += sum over rows. */
int sd_gated_rmsnorm_backward(sd_ctx *ctx, sd_tensor *dy, sd_tensor *dz, sd_tensor *dw,
                              const sd_tensor *dout, const sd_tensor *y, const sd_tensor *z,
                              const sd_tensor *w, int64_t group_size, float eps);

#endif
