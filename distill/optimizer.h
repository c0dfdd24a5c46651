/* AdamW over a named parameter set (DESIGN.md section 5): fp32 moments per parameter,
 * decoupled weight decay on all but norms, biases and the SSM's D, z_bias, A_log, dt_bias,
 * and global-norm gradient clipping.
 *
 * Parameters live in one sd_weights, gradients in a parallel sd_weights with the same names.
 * A parameter without a gradient in that set is skipped for the step (torch's grad None):
 * its value and moments stay as they are.  To train a subset, give the optimizer a set
 * holding only those parameters (non-owning views are fine). */
#ifndef SD_OPTIMIZER_H
#define SD_OPTIMIZER_H

#include <stdint.h>

#include "convert/weights.h"
#include "kernels/context.h"

#define SD_CLIP_NORM_DEFAULT 1.0f

typedef struct {
    float beta1, beta2, eps, weight_decay;
} sd_adamw_config;

typedef struct {
    sd_adamw_config cfg;
    int n;               /* parameters, in the order of the set given to init */
    char *decays;        /* [n]: 1 where weight decay applies */
    sd_weights m, v;     /* fp32 moments, same names and shapes as the parameters */
    int64_t step;        /* steps taken; the next one uses bias correction step + 1 */
} sd_optimizer;

/* betas 0.9 / 0.95, eps 1e-8, weight decay 0.1. */
sd_adamw_config sd_adamw_config_default(void);

/* 1 if weight decay applies to the parameter called name with tensor t, 0 if not: none on
 * biases, on norm weights (a name with "norm" in it, or a 1-D weight of an "ln*" module), and
 * on names ending in .D, .z_bias, .A_log, .dt_bias. */
int sd_param_decays(const char *name, const sd_tensor *t);

/* Zeroed moments for every F32 CPU parameter of params; cfg NULL takes the defaults.
 * SD_ERR_INTERNAL for a parameter that is not F32 or a bad cfg; SD_ERR_SYS for memory. */
int sd_optimizer_init(sd_optimizer *opt, const sd_weights *params, const sd_adamw_config *cfg);

/* One step at learning rate lr.  First the global gradient norm (the square root of the sum
 * of all gradients' squares, in parameter order) goes to *grad_norm (may be NULL); if clip_norm
 * > 0 and the norm exceeds it, the gradients are scaled in place by clip_norm / (norm + 1e-6)
 * (torch.nn.utils.clip_grad_norm_); clip_norm <= 0 disables clipping.  Then AdamW.
 * A NaN or Inf gradient is SD_ERR_CHECK naming the first such tensor, found before any
 * parameter, moment or gradient is touched, so training can stop with a clean state.
 * params must be the set given to init (same names, same order); a gradient whose name is
 * not a parameter, or of another shape, is SD_ERR_INTERNAL. */
int sd_optimizer_step(sd_optimizer *opt, sd_ctx *ctx, sd_weights *params, sd_weights *grads,
                      float lr, float clip_norm, double *grad_norm);

/* The two halves of a step, for a caller that sums the norm over processes (distill/run.c,
 * layers split over GPUs): *total = the sum of the gradients' squares in parameter order, *bad
 * = the first parameter whose gradient has NaN or Inf (NULL when none; *total is then not
 * finite); then AdamW with the gradients scaled by coef first (1: none). */
int sd_optimizer_grad_sum_squares(sd_optimizer *opt, sd_ctx *ctx, const sd_weights *params, sd_weights *grads,
                                  double *total, const char **bad);
int sd_optimizer_apply(sd_optimizer *opt, sd_ctx *ctx, sd_weights *params, sd_weights *grads, float lr,
                       float coef);

void sd_optimizer_free(sd_optimizer *opt);

/* The factor the gradients are scaled by for global norm `norm`: clip_norm / (norm + 1e-6)
 * when clip_norm > 0 and norm exceeds it, else 1 (torch.nn.utils.clip_grad_norm_). */
float sd_clip_coef(double norm, float clip_norm);

#endif
