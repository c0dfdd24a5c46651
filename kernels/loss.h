/* Losses from logits with a fused, max-subtracted log-softmax (exp never overflows).
 *
 * Per-row losses, no reduction: loss_out is F32 [rows]; logits are [..., V] (rows = all
 * leading dims); targets I32 with the logits' leading shape.  A row whose target equals
 * ignore_index has loss 0 and gradient 0; any other target outside [0, V) is SD_ERR_INPUT.
 *
 * Backward convention: the gradient ADDS into dlogits (the caller zeroes it), scaled per
 * row by g_r = scale * dloss[r], or g_r = scale when dloss is NULL.  For a mean over the
 * counted tokens, pass scale = 1 / count and dloss = NULL.
 *
 * CUDA dtypes: logits and dlogits / dstudent F32 or BF16; loss_out and dloss F32; targets I32
 * on the device (copied to the host to be checked: the call synchronises). */
#ifndef SD_LOSS_H
#define SD_LOSS_H

#include "kernels/context.h"

/* loss[r] = logsumexp(logits[r]) - logits[r, targets[r]]  (torch cross_entropy, 'none'). */
int sd_cross_entropy(sd_ctx *ctx, sd_tensor *loss_out, const sd_tensor *logits,
                     const sd_tensor *targets, int32_t ignore_index);
/* dlogits[r] += g_r * (softmax(logits[r]) - onehot(targets[r])). */
int sd_cross_entropy_backward(sd_ctx *ctx, sd_tensor *dlogits, const sd_tensor *dloss,
                              float scale, const sd_tensor *logits, const sd_tensor *targets,
                              int32_t ignore_index);

/* loss[r] = KL(p_t || p_s) = sum_v p_t (log p_t - log p_s), p = softmax(logits / T).
 * targets may be NULL (every row counts); else rows with targets[r] == ignore_index get 0.
 * No T^2 factor (Hinton's): the caller multiplies if it wants one. */
int sd_kl_div(sd_ctx *ctx, sd_tensor *loss_out, const sd_tensor *teacher_logits,
              const sd_tensor *student_logits, float temperature, const sd_tensor *targets,
              int32_t ignore_index);
/* dstudent[r] += g_r * (p_s - p_t) / T; no gradient to the teacher. */
int sd_kl_div_backward(sd_ctx *ctx, sd_tensor *dstudent, const sd_tensor *dloss, float scale,
                       const sd_tensor *teacher_logits, const sd_tensor *student_logits,
                       float temperature, const sd_tensor *targets, int32_t ignore_index);

/* The stage-2 loss (MOHAWK hidden-state alignment, DESIGN.md section 5): the mean over rows
 * (all dims but the last) of the unsquared L2 distance between out and target,
 *
 *     loss = (1 / R) sum_r ||out_r - target_r||_2,
 *
 * and, when d is given, its gradient with respect to out
 *
 *     d_r = (out_r - target_r) / (||out_r - target_r||_2 R)     (0 for a zero-distance row:
 *                                                                the zero subgradient),
 *
 * WRITTEN into d (overwritten, not added: it is the loss's own gradient, the start of a
 * backward).  Row norms and the sum over rows in double, rows summed in order (CPU: the same
 * arithmetic as the former distill/stages.c row_l2_mean, bit for bit).  R = 0 gives loss 0.
 * out, target and d share one shape.  CUDA: out, target, d F32 or BF16 each; per-row norms in
 * double, then a fixed-order sum (deterministic); the call synchronises to return *loss. */
int sd_row_l2_mean(sd_ctx *ctx, float *loss, sd_tensor *d, const sd_tensor *out,
                   const sd_tensor *target);

#endif
