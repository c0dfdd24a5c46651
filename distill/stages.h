/* The stage losses of MOHAWK (DESIGN.md section 5; Bick et al. 2024, section 4) and their
 * gradients with respect to the student.  Each returns the loss and ADDS its gradient into
 * the gradient set g (NULL: loss only, for evaluation).
 *
 *   stage 1, matrix orientation (one layer):  || A - M ||_F, mean over (batch, head), A the
 *            teacher's attention probabilities, M the student mixer's matrix on the same input;
 *   stage 2, hidden-state alignment (one layer): mean over tokens of || mixer(u) - attn(u) ||_2
 *            (per-token L2 norm, not squared); or of || block(u) - block_t(u) ||_2;
 *   stage 3, knowledge distillation: mean over tokens of T^2 KL(p_t^T || p_s^T) at temperature
 *            T, mixed as (1 - w) KD + w CE with next-token cross-entropy of weight w. */
#ifndef SD_STAGES_H
#define SD_STAGES_H

#include "distill/student_train.h"

/* Stage 2 for layer l.  u: [B, T, d] the teacher's hidden state entering layer l; target:
 * the teacher's attention output of that layer (block_out 0) or its block output (hidden
 * state entering layer l + 1; block_out 1).  a: acts made for layer l with shape [B, T]. */
int sd_stage2_layer(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, const sd_tensor *u,
                    const sd_tensor *target, int block_out, float *loss, sd_student *g);

/* Stage 1 for layer l (an SSM layer): q [B, T, H, hd], k [B, T, Hkv, hd], the teacher's
 * queries and keys of that layer after rotary (its attention matrix is softmax(q k^T / sqrt(hd))
 * causal; H, the student's heads, must be the teacher's query heads).  The materialised
 * reference form (kernels/stage1.h); gradients reach in_proj, conv1d, D (and dt_bias, A_log). */
int sd_stage1_layer(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, const sd_tensor *u,
                    const sd_tensor *q, const sd_tensor *k, float *loss, sd_student *g);

/* Stage 3 on one batch: ids [B, T]; teacher_logits [B, T, V]; a: acts for [B, T]. */
int sd_stage3(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a,
              const sd_tensor *teacher_logits, float temperature, float ce_weight, float *loss, sd_student *g);

#endif
