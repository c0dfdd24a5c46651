/* The Mamba-2 discretisation: from the raw time step (the in_proj slice, dt_bias already
 * added) to the SSD's dt and per-step log decay loga (kernels/ssd.h; DESIGN.md section 4).
 *
 * dt_raw is [..., H] (rows = all dims but the last, H = heads); dt and loga are shaped like it.
 * softplus(x) = log1p(exp(x)), and x above 20 (torch's threshold), as sd_softplus.
 *
 *   standard Mamba-2 (mamba_ssm Mamba2; a_log given, [H]):
 *       dt   = clamp(softplus(dt_raw), dt_min, dt_max)       (time_step_limit)
 *       loga = A_h dt,   A_h = -exp(a_log[h])
 *   discrete Mamba-2 (Phi-Mamba, Llamba; a_log NULL, no dt):
 *       loga = -softplus(dt_raw)
 *
 * Backward (adds into ddt_raw and da_log, as every backward; the caller zeroes them):
 *   standard: g = 0 where the clamp bit (softplus(dt_raw) < dt_min or > dt_max), else
 *             g = ddt + dloga A_h;   ddt_raw += g sigmoid(dt_raw)   (softplus' = sigmoid;
 *             1 above the threshold);   da_log[h] += sum over rows of dloga loga
 *             (d loga / d a_log = A_h dt = loga);
 *   discrete: ddt_raw += -dloga sigmoid(dt_raw).
 *
 * The CPU path is the same arithmetic, in the same order, as the host loops it replaces in
 * the student (fp32; the da_log sum in double, rows in order), so results are bit-identical
 * to them (dt_min / dt_max compare in fp32 here; they are exactly representable in the usual
 * cases 0 and infinity).
 *
 * Dtypes: dt, loga, a_log, dloga, ddt, da_log F32; dt_raw and ddt_raw F32, or on CUDA also
 * BF16.  CUDA: elementwise kernels in fp32; da_log is a fixed-order column sum (no atomics),
 * bit-reproducible run to run. */
#ifndef SD_SSM_DISCRETIZE_H
#define SD_SSM_DISCRETIZE_H

#include "kernels/context.h"

/* Standard (a_log and dt given): writes dt and loga.  Discrete (a_log NULL, dt NULL): writes
 * loga.  dt_min <= dt_max (either may be infinite); unused by the discrete mixer. */
int sd_ssm_discretize(sd_ctx *ctx, sd_tensor *dt, sd_tensor *loga, const sd_tensor *dt_raw,
                      const sd_tensor *a_log, float dt_min, float dt_max);

/* Gradients of sd_ssm_discretize given dloga (and, standard only, ddt; NULL: zero).
 * ddt_raw (like dt_raw) and da_log ([H], standard only) are added into; each may be NULL.
 * loga: the forward's output (needed for da_log).  dloga and ddt are only read. */
int sd_ssm_discretize_backward(sd_ctx *ctx, sd_tensor *ddt_raw, sd_tensor *da_log,
                               const sd_tensor *dloga, const sd_tensor *ddt,
                               const sd_tensor *dt_raw, const sd_tensor *loga,
                               const sd_tensor *a_log, float dt_min, float dt_max);

#endif
