/* Training the standard Mamba-2 student (distill/student.h): a forward that keeps the
 * activations, the next-token cross-entropy, and the backward into a gradient set.
 *
 * The gradient set is itself an sd_student wired over zeroed copies of the weights (same
 * names and shapes), so every row view of in_proj / conv1d has its gradient twin for free;
 * its .w is the sd_weights that distill/optimizer.h takes as grads. */
#ifndef SD_STUDENT_TRAIN_H
#define SD_STUDENT_TRAIN_H

#include "distill/student.h"

#define SD_IGNORE_INDEX (-100)

/* What the backward of one block needs (all [B, T, ...]). */
typedef struct {
    int num_layers;
    int64_t batch, T;
    sd_student_layer_acts *layers;
    sd_tensor x_last;   /* [B, T, d] last block's output */
    sd_tensor xn_final; /* [B, T, d] after norm_f */
    sd_tensor logits;   /* [B, T, V] */
    sd_tensor targets;  /* [B, T] I32: ids shifted by one, SD_IGNORE_INDEX at the end */
    sd_tensor targets_host; /* the same on the host, where they are made */
    sd_tensor losses;   /* [B * T] per-token cross-entropy (F32) */
    int64_t count;      /* tokens counted in the mean */
} sd_student_acts;

/* On ctx's backend (sd_act_dtype, logits included: BF16 on CUDA; losses F32). */
int sd_student_acts_init(sd_ctx *ctx, sd_student_acts *a, const sd_model_config *cfg, int64_t batch, int64_t T);
void sd_student_acts_free(sd_student_acts *a);

/* A gradient student g: zeroed F32 copies of every tensor of s->w (on each tensor's device),
 * wired as s is. */
int sd_student_grads_init(const sd_student *s, sd_student *g);
/* The same, but a tensor named in views is that view (not owned; F32, the parameter's shape
 * and device): ZeRO-1 puts the trained parameters' gradients in one flat buffer. */
int sd_student_grads_init_in(const sd_student *s, sd_student *g, const sd_weights *views);
int sd_student_grads_zero(sd_ctx *ctx, sd_student *g);

/* A student with random weights under the HF names (tests and benchmarks): small normal
 * projections, norms near 1, A_log = log(1..16), dt_bias giving dt in about [1e-3, 1e-1]. */
int sd_student_init_random(sd_student *s, const sd_model_config *cfg, uint64_t seed);

/* ids [batch, T] I32 (the shape given to acts_init) -> *loss, the mean next-token
 * cross-entropy; the activations stay in a for sd_student_backward. */
int sd_student_train_forward(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a,
                             float *loss);

/* Gradients of the mean loss of the last train_forward (same ids, same a), ADDED into g. */
int sd_student_backward(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, const sd_student_acts *a,
                        sd_student *g);

/* The same forward up to a->logits only (stage 3 puts its own loss on them), and the backward
 * from the gradient at the logits (dlogits [batch, T, V]); gradients ADDED into g. */
int sd_student_train_logits(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a);
int sd_student_backward_logits(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, const sd_student_acts *a,
                               const sd_tensor *dlogits, sd_student *g);

/* One layer's mixer on its own (stages 1 and 2, DESIGN.md section 5).  The caller puts the
 * input (the teacher's hidden state entering layer l) in a->x of acts made for layer l.
 *   mixer_forward: a->xn = norm(a->x), a->mix = the mixer's output (attention in hybrid layers);
 *   ssm_inputs:    only as far as the SSD's inputs a->xs, bs, cs, loga (and dt): what the mixer
 *                  matrix M of stage 1 is made of;
 *   mixer_backward: from dmix [B, T, d], ADDS the gradients of layer l's mixer parameters into g
 *                  (the norm's and the input's gradients are not formed);
 *   ssm_inputs_backward: from the gradients at the SSD's inputs (dB, dC [B, T, G, N], dloga, ddt
 *                  [B, T, H]; NULL = zero; ddt ignored for the discrete mixer), ADDS the
 *                  gradients of in_proj, conv1d, dt_bias and A_log into g (dD is the caller's). */
int sd_student_mixer_forward(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a);
/* The whole block l in reverse after sd_student_layer_forward on a: from dout [B, T, d] (the
 * gradient at its output), ADDS every parameter gradient of the block into g (stage 2's
 * block-output target). */
int sd_student_layer_backward(sd_ctx *ctx, const sd_student *s, int l, const sd_student_layer_acts *a,
                              const sd_tensor *dout, sd_student *g);
int sd_student_ssm_inputs(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a);
int sd_student_mixer_backward(sd_ctx *ctx, const sd_student *s, int l, const sd_student_layer_acts *a,
                              const sd_tensor *dmix, sd_student *g);
int sd_student_ssm_inputs_backward(sd_ctx *ctx, const sd_student *s, int l, const sd_student_layer_acts *a,
                                   const sd_tensor *dB, const sd_tensor *dC, const sd_tensor *dloga,
                                   const sd_tensor *ddt, sd_student *g);

#endif
