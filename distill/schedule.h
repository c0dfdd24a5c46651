/* Learning-rate schedules (DESIGN.md section 5): constant, cosine and warmup-stable-decay,
 * each after a linear warmup from 0.
 *
 * step counts the optimizer steps already taken, so the first update uses lr(0); this is the
 * convention of Hugging Face's schedulers (get_cosine_schedule_with_warmup, get_wsd_schedule),
 * whose curves users compare against:
 *   warmup   step < warmup_steps:   lr * step / warmup_steps
 *   constant                        lr
 *   cosine   p = (step - warmup) / (total - warmup):  min_lr + (lr - min_lr) (1 + cos(pi p)) / 2
 *   wsd      D = round(decay_fraction * total) decay steps at the end, from S = total - D:
 *            lr until S, then min_lr + (lr - min_lr) f(p), p = (step - S) / D, with
 *            f = 1 - p (linear), 1 - sqrt(p) (1-sqrt) or (1 + cos(pi p)) / 2 (cosine)
 * and min_lr from step total on. */
#ifndef SD_SCHEDULE_H
#define SD_SCHEDULE_H

#include <stdint.h>

#include <cjson/cJSON.h>

typedef enum { SD_SCHED_CONSTANT = 0, SD_SCHED_COSINE, SD_SCHED_WSD } sd_sched_type;
typedef enum { SD_DECAY_LINEAR = 0, SD_DECAY_1_SQRT, SD_DECAY_COSINE } sd_decay_shape;

typedef struct {
    sd_sched_type type;
    double lr;              /* the peak */
    double min_lr;          /* cosine, wsd: the end value */
    int64_t warmup_steps;
    int64_t total_steps;    /* cosine, wsd */
    double decay_fraction;  /* wsd: the share of total_steps spent decaying, (0, 1] */
    sd_decay_shape decay_shape; /* wsd */
} sd_schedule;

/* The learning rate of the update after `step` steps (step < 0 counts as 0). */
double sd_schedule_lr(const sd_schedule *s, int64_t step);

/* Reads {"type": "constant" | "cosine" | "wsd", "lr": 1e-3, "warmup_steps": 100,
 * "total_steps": 1000, "min_lr": 1e-5, "decay_fraction": 0.2, "decay_shape": "linear" |
 * "1-sqrt" | "cosine"}.  Required: type, lr; total_steps for cosine and wsd unless
 * default_total_steps > 0 (the runner's figure from the token budget).  Defaults:
 * warmup_steps 0, min_lr 0, decay_fraction 0.2, decay_shape linear.  A missing, mistyped,
 * out-of-range, unknown or inapplicable field is SD_ERR_INPUT "WHERE: field 'NAME': ...". */
int sd_schedule_parse(const cJSON *obj, const char *where, int64_t default_total_steps,
                      sd_schedule *out);

const char *sd_sched_type_name(sd_sched_type t);

#endif
