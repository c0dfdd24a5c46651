#include "distill/stages.h"
#include "common/error.h"
#include "kernels/loss.h"
#include "kernels/stage1.h"
#include "kernels/tensor_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- stage 2 */

int sd_stage2_layer(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, const sd_tensor *u,
                    const sd_tensor *target, int block_out, float *loss, sd_student *g) {
    if (!sd_same_shape(u, &a->x) || !sd_same_shape(target, &a->x))
        return sd_fail(SD_ERR_INTERNAL, "stage 2, layer %d: input and target must be [B, T, d] as the activations", l);
    sd_tensor out = {0}, d = {0};
    int rc = sd_copy(ctx, &a->x, u);
    if (rc == SD_OK && block_out) {
        rc = sd_tensor_act(ctx, &out, 3, u->shape[0], u->shape[1], u->shape[2], 0);
        if (rc == SD_OK) rc = sd_student_layer_forward(ctx, s, l, a, &out);
    } else if (rc == SD_OK) {
        rc = sd_student_mixer_forward(ctx, s, l, a);
    }
    const sd_tensor *pred = block_out ? &out : &a->mix;
    if (rc == SD_OK && g) rc = sd_tensor_act(ctx, &d, 3, u->shape[0], u->shape[1], u->shape[2], 0);
    if (rc == SD_OK) rc = sd_row_l2_mean(ctx, loss, g ? &d : NULL, pred, target);
    if (rc == SD_OK && g)
        rc = block_out ? sd_student_layer_backward(ctx, s, l, a, &d, g) : sd_student_mixer_backward(ctx, s, l, a, &d, g);
    sd_tensor_free(&out);
    sd_tensor_free(&d);
    return rc;
}

/* ---------------------------------------------------------------- stage 1 */

/* Gradient buffers at the SSD's inputs, shaped as the activations, F32 (what the fused stage-1
 * kernel accumulates into). */
typedef struct {
    sd_tensor dB, dC, dloga, ddt;
} ssd_input_grads;

static void ssd_input_grads_free(ssd_input_grads *d) {
    sd_tensor_free(&d->dB);
    sd_tensor_free(&d->dC);
    sd_tensor_free(&d->dloga);
    sd_tensor_free(&d->ddt);
}

static int ssd_input_grads_alloc(sd_ctx *ctx, ssd_input_grads *d, const sd_student_layer_acts *a) {
    SD_TRY(sd_tensor_new(ctx, &d->dB, SD_F32, a->bs.ndim, a->bs.shape));
    SD_TRY(sd_tensor_new(ctx, &d->dC, SD_F32, a->cs.ndim, a->cs.shape));
    SD_TRY(sd_tensor_new(ctx, &d->dloga, SD_F32, a->loga.ndim, a->loga.shape));
    return a->dt.data ? sd_tensor_new(ctx, &d->ddt, SD_F32, a->dt.ndim, a->dt.shape) : SD_OK;
}

static int stage1_body(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, const sd_tensor *q,
                       const sd_tensor *k, float *loss, sd_student *g, ssd_input_grads *d) {
    const sd_tensor *dt = a->dt.data ? &a->dt : NULL;
    float scale = 1.0f / sqrtf((float)q->shape[3]);
    if (!g) return sd_stage1_loss(ctx, loss, NULL, q, k, scale, dt, &a->loga, &a->bs, &a->cs, s->layers[l].d_skip,
                                  NULL, NULL, NULL, NULL, NULL);
    SD_TRY(ssd_input_grads_alloc(ctx, d, a));
    SD_TRY(sd_stage1_loss(ctx, loss, NULL, q, k, scale, dt, &a->loga, &a->bs, &a->cs, s->layers[l].d_skip,
                          dt ? &d->ddt : NULL, &d->dloga, &d->dB, &d->dC, g->layers[l].d_skip));
    return sd_student_ssm_inputs_backward(ctx, s, l, a, &d->dB, &d->dC, &d->dloga, dt ? &d->ddt : NULL, g);
}

int sd_stage1_layer(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, const sd_tensor *u,
                    const sd_tensor *q, const sd_tensor *k, float *loss, sd_student *g) {
    if (s->layers[l].attn) return sd_fail(SD_ERR_INTERNAL, "stage 1, layer %d: an attention layer has no SSM", l);
    if (!sd_same_shape(u, &a->x))
        return sd_fail(SD_ERR_INTERNAL, "stage 1, layer %d: input must be [B, T, d] as the activations", l);
    if (q->ndim != 4 || q->shape[2] != s->cfg.ssm.num_heads)
        return sd_fail(SD_ERR_INPUT, "stage 1, layer %d: the student has %d heads, the teacher %lld query heads "
                       "(matrix orientation pairs them one to one)", l, s->cfg.ssm.num_heads,
                       (long long)(q->ndim == 4 ? q->shape[2] : -1));
    SD_TRY(sd_copy(ctx, &a->x, u));
    SD_TRY(sd_student_ssm_inputs(ctx, s, l, a));
    ssd_input_grads d;
    memset(&d, 0, sizeof d);
    int rc = stage1_body(ctx, s, l, a, q, k, loss, g, &d);
    ssd_input_grads_free(&d);
    return rc;
}

/* ---------------------------------------------------------------- stage 3 */


static int stage3_body(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a,
                       const sd_tensor *tl, float temp, float w, float *loss, sd_student *g, sd_tensor *dlogits) {
    int64_t rows = a->batch * a->T;
    SD_TRY(sd_student_train_forward(ctx, s, ids, a, loss)); /* logits, targets and the CE mean */
    double ce = *loss;
    /* KD on every position (the teacher has a distribution at the last one too) */
    SD_TRY(sd_kl_div(ctx, &a->losses, tl, &a->logits, temp, NULL, SD_IGNORE_INDEX));
    double t2 = (double)temp * temp, kl_sum;
    SD_TRY(sd_sum_host(ctx, &a->losses, &kl_sum)); /* in double, in a fixed order */
    double kd = rows ? t2 * kl_sum / (double)rows : 0.0;
    *loss = (float)((1.0 - w) * kd + w * ce);
    if (!g) return SD_OK;
    SD_TRY(sd_zero(ctx, dlogits));
    if (w < 1.0f)
        SD_TRY(sd_kl_div_backward(ctx, dlogits, NULL, (float)((1.0 - w) * t2 / (double)rows), tl, &a->logits, temp,
                                  NULL, SD_IGNORE_INDEX));
    if (w > 0.0f && a->count)
        SD_TRY(sd_cross_entropy_backward(ctx, dlogits, NULL, w / (float)a->count, &a->logits, &a->targets,
                                         SD_IGNORE_INDEX));
    return sd_student_backward_logits(ctx, s, ids, a, dlogits, g);
}

int sd_stage3(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a,
              const sd_tensor *teacher_logits, float temperature, float ce_weight, float *loss, sd_student *g) {
    if (!(temperature > 0) || !(ce_weight >= 0 && ce_weight <= 1))
        return sd_fail(SD_ERR_INPUT, "stage 3: temperature %g must be positive and ce_weight %g in [0, 1]",
                       temperature, ce_weight);
    if (!sd_same_shape(teacher_logits, &a->logits))
        return sd_fail(SD_ERR_INTERNAL, "stage 3: teacher logits must be [B, T, V] as the student's");
    sd_tensor dlogits = {0};
    int rc = g ? sd_tensor_act(ctx, &dlogits, 3, a->batch, a->T, s->cfg.vocab_size, 0) : SD_OK;
    if (rc == SD_OK) rc = stage3_body(ctx, s, ids, a, teacher_logits, temperature, ce_weight, loss, g, &dlogits);
    sd_tensor_free(&dlogits);
    return rc;
}
