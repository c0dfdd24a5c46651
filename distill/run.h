/* A distillation run (DESIGN.md sections 5 and 6): the recipe's stages one after the other on
 * one student, with the run directory
 *     recipe.json    the recipe as run (defaults filled, paths resolved)
 *     metrics.jsonl  one JSON object per logged step, and {"event": "eval", ...} lines
 *     ckpt/latest.h5 the newest training checkpoint; ckpt/stageN.h5 at the end of stage N
 *     student.h5     the final student (model only), eval.json, report.html
 * Checkpoints hold the parameters, the AdamW moments of the stage in progress and the run's
 * position (stage, step, data cursor), so that --resume continues bit for bit as if the run
 * had never stopped (same thread count). */
#ifndef SD_RUN_H
#define SD_RUN_H

#include <stdint.h>
#include <stdio.h>

#include "convert/checkpoint.h"
#include "distill/dist.h"
#include "distill/optimizer.h"
#include "distill/recipe.h"
#include "distill/student_train.h"
#include "distill/teacher.h"
#include "distill/zero.h"

typedef struct {
    sd_recipe r;
    char *dir;
    sd_ctx ctx;
    sd_teacher t;
    sd_student s, g;          /* the student and its gradient set */
    sd_dist dist;             /* data-parallel ranks (distill/dist.h); rank 0 writes the run directory */
    sd_weights master;        /* on a GPU: the F32 master weights AdamW updates (s reads BF16 copies
                                 of the matrices, refreshed after each step); empty on the CPU */
    int32_t *data;            /* the training token stream */
    int64_t n_data;
    int32_t *eval_data;       /* data.eval's tokens (NULL without) */
    int64_t n_eval;
    /* where the run stands */
    int stage_i;              /* index into r.stages */
    int64_t step;             /* optimizer steps done in that stage */
    int64_t cursor;           /* next position in data */
    /* the stage in progress */
    sd_optimizer opt;         /* one process: AdamW over params */
    int opt_ready;
    sd_zero_opt zero;         /* data parallel: ZeRO-1 (distill/zero.h); the trained gradients are views of
                                 its flat buffer, reduced bucket by bucket during the backward */
    int zero_ready;
    sd_weights params, grads; /* non-owning views of the trainable parameters and their gradients */
    sd_train_state_in resume; /* moments read from a checkpoint, used when the stage starts */
    FILE *metrics;
    int64_t stop_after;       /* stop (checkpoint, exit 0) after this many steps in this process; 0: never */
    int64_t steps_here;
    int quiet;                /* no progress line */
} sd_run;

/* Loads the recipe, the teacher, the data and the student (fresh from the teacher, or from
 * DIR/ckpt/latest.h5 with resume). */
int sd_run_open(sd_run *run, const char *recipe_path, const char *dir, int resume);
/* The same on device "cpu" or "cuda" whatever the recipe says (NULL: the recipe's). */
int sd_run_open_on(sd_run *run, const char *recipe_path, const char *dir, int resume, const char *device);
/* Runs what remains; *stopped is 1 when a signal or stop_after ended it early (after a
 * checkpoint: the run can be resumed). */
int sd_run_all(sd_run *run, int *stopped);
void sd_run_close(sd_run *run);

/* One optimizer step's loss and gradients for the current stage on ids [B, T] (run_step.c):
 * stage 1 and 2 sum their per-layer losses (layer_losses[l], 0 for attention layers). */
int sd_run_stage_loss(sd_run *run, const sd_tensor *ids, float *loss, float *layer_losses);
/* SD_ERR_CHECK naming the stage, the step and the run's checkpoint when loss is not finite. */
int sd_run_check_loss(const sd_run *run, float loss);

/* 1 when this rank trains layer l in the stage in progress: always, unless the stage splits its
 * layers over the ranks ("parallel": "layers"), where rank r trains the layers l with
 * l mod world = r. */
int sd_run_owns_layer(const sd_run *run, int l);

#endif
