/* The loss and gradients of one optimizer step of a run, per stage (DESIGN.md section 5). */
#include "common/error.h"
#include "distill/run.h"
#include "distill/stages.h"
#include "kernels/tensor_ops.h"

#include <math.h>
#include <string.h>

/* Stages 1 and 2: the teacher's trace gives each layer's input (and target); every mixer
 * layer's loss is independent given them, and the stage's loss is their sum. */
static int layerwise(sd_run *run, const sd_recipe_stage *st, const sd_teacher_trace *tr, sd_student_layer_acts *a,
                     float *loss, float *layer_losses) {
    double sum = 0;
    for (int l = 0; l < run->s.cfg.num_layers; l++) {
        layer_losses[l] = 0;
        if (run->s.layers[l].attn || !sd_run_owns_layer(run, l)) continue;
        float ll;
        if (st->stage == 1) {
            SD_TRY(sd_stage1_layer(&run->ctx, &run->s, l, a, &tr->hidden[l], &tr->q[l], &tr->k[l], &ll, &run->g));
        } else {
            int block = st->target == SD_TARGET_BLOCK_OUT;
            SD_TRY(sd_stage2_layer(&run->ctx, &run->s, l, a, &tr->hidden[l], block ? &tr->hidden[l + 1] : &tr->attn_out[l],
                                   block, &ll, &run->g));
        }
        layer_losses[l] = ll;
        sum += ll;
    }
    *loss = (float)sum;
    return SD_OK;
}

static int stage_layerwise(sd_run *run, const sd_recipe_stage *st, const sd_tensor *ids, float *loss,
                           float *layer_losses) {
    sd_teacher_trace tr;
    memset(&tr, 0, sizeof tr);
    tr.want_hidden = 1;
    tr.want_qk = st->stage == 1;
    tr.want_attn_out = st->stage == 2 && st->target == SD_TARGET_ATTN_OUT;
    sd_student_layer_acts a;
    int rc = sd_teacher_forward(&run->ctx, &run->t, ids, NULL, NULL, &tr);
    if (rc != SD_OK) return rc;
    rc = sd_student_layer_acts_init(&run->ctx, &a, &run->s.cfg, -1, ids->shape[0], ids->shape[1]);
    if (rc == SD_OK) rc = layerwise(run, st, &tr, &a, loss, layer_losses);
    sd_student_layer_acts_free(&a);
    sd_teacher_trace_free(&tr);
    return rc;
}

/* Stage 3: the teacher's logits, then KD (and CE) through the whole student. */
static int stage_kd(sd_run *run, const sd_recipe_stage *st, const sd_tensor *ids, float *loss) {
    sd_tensor tl = {0};
    sd_student_acts a;
    memset(&a, 0, sizeof a);
    int rc = sd_tensor_act(&run->ctx, &tl, 3, ids->shape[0], ids->shape[1], run->t.cfg.vocab_size, 0);
    if (rc == SD_OK) rc = sd_teacher_forward(&run->ctx, &run->t, ids, NULL, &tl, NULL);
    if (rc == SD_OK) rc = sd_student_acts_init(&run->ctx, &a, &run->s.cfg, ids->shape[0], ids->shape[1]);
    if (rc == SD_OK)
        rc = sd_stage3(&run->ctx, &run->s, ids, &a, &tl, (float)st->temperature, (float)st->ce_weight, loss, &run->g);
    sd_student_acts_free(&a);
    sd_tensor_free(&tl);
    return rc;
}

int sd_run_stage_loss(sd_run *run, const sd_tensor *ids, float *loss, float *layer_losses) {
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    SD_TRY(sd_student_grads_zero(&run->ctx, &run->g));
    if (st->stage == 3) {
        for (int l = 0; l < run->s.cfg.num_layers; l++) layer_losses[l] = 0;
        SD_TRY(stage_kd(run, st, ids, loss));
    } else {
        SD_TRY(stage_layerwise(run, st, ids, loss, layer_losses));
    }
    /* several ranks check the loss once it is reduced (sd_run_check_loss), all together: a rank
     * that stopped alone would leave the others waiting in a collective */
    return run->dist.active ? SD_OK : sd_run_check_loss(run, *loss);
}

int sd_run_check_loss(const sd_run *run, float loss) {
    if (isfinite(loss)) return SD_OK;
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    return sd_fail(SD_ERR_CHECK, "stage %d, step %lld: the loss is %g (training diverged; the last checkpoint in "
                   "%s/ckpt is intact: lower the learning rate and resume)", st->stage, (long long)run->step + 1,
                   (double)loss, run->dir);
}
