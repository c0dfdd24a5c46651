#include "distill/stages.h"
#include "common/error.h"
#include "kernels/loss.h"
#include "kernels/stage1.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- stage 2 */

/* mean over rows of ||out_r - target_r||_2, and (d != NULL) its gradient
 * d_r = (out_r - target_r) / (||out_r - target_r|| rows); a row with zero difference has a
 * zero (sub)gradient. */
static float row_l2_mean(const sd_tensor *out, const sd_tensor *target, sd_tensor *d) {
    int64_t rows = sd_rows(out), n = out->shape[out->ndim - 1];
    const float *o = out->data, *t = target->data;
    double sum = 0;
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int64_t i = 0; i < n; i++) {
            double diff = (double)o[r * n + i] - t[r * n + i];
            ss += diff * diff;
        }
        double norm = sqrt(ss);
        sum += norm;
        if (!d) continue;
        float *dr = (float *)d->data + r * n;
        double scale = norm > 0 ? 1.0 / (norm * (double)rows) : 0.0;
        for (int64_t i = 0; i < n; i++) dr[i] = (float)(((double)o[r * n + i] - t[r * n + i]) * scale);
    }
    return (float)(sum / (double)rows);
}

int sd_stage2_layer(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, const sd_tensor *u,
                    const sd_tensor *target, int block_out, float *loss, sd_student *g) {
    if (!sd_same_shape(u, &a->x) || !sd_same_shape(target, &a->x))
        return sd_fail(SD_ERR_INTERNAL, "stage 2, layer %d: input and target must be [B, T, d] as the activations", l);
    memcpy(a->x.data, u->data, sd_nbytes(u));
    sd_tensor out = {0}, d = {0};
    int rc = SD_OK;
    if (block_out) {
        rc = sd_tensor_f32(&out, 3, u->shape[0], u->shape[1], u->shape[2], 0);
        if (rc == SD_OK) rc = sd_student_layer_forward(ctx, s, l, a, &out);
    } else {
        rc = sd_student_mixer_forward(ctx, s, l, a);
    }
    const sd_tensor *pred = block_out ? &out : &a->mix;
    if (rc == SD_OK && g) rc = sd_tensor_f32(&d, 3, u->shape[0], u->shape[1], u->shape[2], 0);
    if (rc == SD_OK) *loss = row_l2_mean(pred, target, g ? &d : NULL);
    if (rc == SD_OK && g)
        rc = block_out ? sd_student_layer_backward(ctx, s, l, a, &d, g) : sd_student_mixer_backward(ctx, s, l, a, &d, g);
    sd_tensor_free(&out);
    sd_tensor_free(&d);
    return rc;
}

/* ---------------------------------------------------------------- stage 1 */

/* Gradient buffers at the SSD's inputs, shaped as the activations. */
typedef struct {
    sd_tensor dB, dC, dloga, ddt;
} ssd_input_grads;

static void ssd_input_grads_free(ssd_input_grads *d) {
    sd_tensor_free(&d->dB);
    sd_tensor_free(&d->dC);
    sd_tensor_free(&d->dloga);
    sd_tensor_free(&d->ddt);
}

static int ssd_input_grads_alloc(ssd_input_grads *d, const sd_student_layer_acts *a) {
    memset(d, 0, sizeof *d);
    SD_TRY(sd_tensor_alloc(&d->dB, SD_F32, a->bs.ndim, a->bs.shape));
    SD_TRY(sd_tensor_alloc(&d->dC, SD_F32, a->cs.ndim, a->cs.shape));
    SD_TRY(sd_tensor_alloc(&d->dloga, SD_F32, a->loga.ndim, a->loga.shape));
    return a->dt.data ? sd_tensor_alloc(&d->ddt, SD_F32, a->dt.ndim, a->dt.shape) : SD_OK;
}

static int stage1_body(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, const sd_tensor *q,
                       const sd_tensor *k, float *loss, sd_student *g, ssd_input_grads *d) {
    const sd_tensor *dt = a->dt.data ? &a->dt : NULL;
    float scale = 1.0f / sqrtf((float)q->shape[3]);
    if (!g) return sd_stage1_loss(ctx, loss, NULL, q, k, scale, dt, &a->loga, &a->bs, &a->cs, s->layers[l].d_skip,
                                  NULL, NULL, NULL, NULL, NULL);
    SD_TRY(ssd_input_grads_alloc(d, a));
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
    memcpy(a->x.data, u->data, sd_nbytes(u));
    SD_TRY(sd_student_ssm_inputs(ctx, s, l, a));
    ssd_input_grads d;
    memset(&d, 0, sizeof d);
    int rc = stage1_body(ctx, s, l, a, q, k, loss, g, &d);
    ssd_input_grads_free(&d);
    return rc;
}

/* ---------------------------------------------------------------- stage 3 */

/* The mean of per-row losses over `count` rows, summed in double in a fixed order. */
static double mean_of(const sd_tensor *per_row, int64_t count) {
    double sum = 0;
    const float *p = per_row->data;
    for (int64_t i = 0; i < sd_numel(per_row); i++) sum += p[i];
    return count ? sum / (double)count : 0.0;
}

static int stage3_body(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a,
                       const sd_tensor *tl, float temp, float w, float *loss, sd_student *g, sd_tensor *dlogits) {
    int64_t rows = a->batch * a->T;
    SD_TRY(sd_student_train_forward(ctx, s, ids, a, loss)); /* logits, targets and the CE mean */
    double ce = *loss;
    /* KD on every position (the teacher has a distribution at the last one too) */
    SD_TRY(sd_kl_div(ctx, &a->losses, tl, &a->logits, temp, NULL, SD_IGNORE_INDEX));
    double t2 = (double)temp * temp, kd = t2 * mean_of(&a->losses, rows);
    *loss = (float)((1.0 - w) * kd + w * ce);
    if (!g) return SD_OK;
    memset(dlogits->data, 0, sd_nbytes(dlogits));
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
    int rc = g ? sd_tensor_f32(&dlogits, 3, a->batch, a->T, s->cfg.vocab_size, 0) : SD_OK;
    if (rc == SD_OK) rc = stage3_body(ctx, s, ids, a, teacher_logits, temperature, ce_weight, loss, g, &dlogits);
    sd_tensor_free(&dlogits);
    return rc;
}
