/* Distillation recipes (DESIGN.md sections 5-7): the JSON file that `ssdistill distill` runs,
 * parsed and validated into a struct with every default filled.  recipes/README.md documents
 * each key.
 *
 * Every failure is SD_ERR_INPUT with one message "FILE: JSON.PATH: what was expected", e.g.
 *     recipe.json: stages[1].shedule: unknown key (did you mean 'schedule'?)
 * so that a typo never trains silently with a default.  What needs the teacher (its layer
 * count, heads, width) is checked by sd_recipe_fill_student once the runner has loaded it. */
#ifndef SD_RECIPE_H
#define SD_RECIPE_H

#include <stdint.h>

#include "distill/schedule.h"

#define SD_RECIPE_MAX_STAGES 3

typedef enum { SD_RECIPE_MIXER_DISCRETE = 0, SD_RECIPE_MIXER_STANDARD } sd_recipe_mixer;
/* random: no weight transfer at all (the from-scratch baseline of the ablation) */
typedef enum { SD_RECIPE_INIT_MOHAWK = 0, SD_RECIPE_INIT_ATTENTION, SD_RECIPE_INIT_RANDOM } sd_recipe_init;
typedef enum { SD_DEVICE_CPU = 0, SD_DEVICE_CUDA } sd_recipe_device;
typedef enum { SD_TARGET_ATTN_OUT = 0, SD_TARGET_BLOCK_OUT } sd_recipe_target;
/* How several GPUs share a stage (issue 6): "data" (each rank a slice of every batch, the
 * gradients averaged, AdamW sharded), or "layers" (stages 1 and 2: each rank the whole batch
 * and every world-th mixer layer, their losses being independent given the teacher). */
typedef enum { SD_PARALLEL_DATA = 0, SD_PARALLEL_LAYERS } sd_recipe_parallel;

/* data.sample: a training corpus drawn from the teacher before stage 1. */
typedef struct {
    int present;
    int64_t tokens;
    int seq_len;
    double temperature, top_p;
    int64_t seed;
    char *out; /* resolved path of the shard to write */
} sd_recipe_sample;

typedef struct {
    sd_recipe_mixer mixer;
    sd_recipe_init init;
    int num_heads;   /* 0 until filled: the teacher's query heads */
    int head_dim;    /* 0 until filled: d_model * expand / num_heads */
    int n_groups;    /* 0 until filled: num_heads (discrete) or 1 (standard) */
    int state_size, conv_kernel, chunk_size, expand;
    int *attn_layers; /* sorted ascending, no duplicates */
    int n_attn_layers;
} sd_recipe_student;

typedef struct {
    int stage;                 /* 1, 2 or 3 */
    int64_t tokens;            /* the token budget */
    int batch, seq_len;
    int64_t steps;             /* ceil(tokens / (batch * seq_len)) */
    sd_schedule schedule;      /* total_steps defaults to steps */
    double weight_decay, beta1, beta2, clip;
    char **trainable;          /* glob patterns over parameter names */
    int n_trainable;
    int64_t log_every, eval_every, checkpoint_every;
    sd_recipe_target target;   /* stage 2 */
    sd_recipe_parallel parallel;
    double temperature, ce_weight; /* stage 3 */
} sd_recipe_stage;

typedef struct {
    char *file;       /* the recipe file as given (for messages) */
    char *name;
    char *teacher;    /* resolved, absolute */
    char *tokenizer;  /* resolved; default TEACHER_DIR/tokenizer.json */
    char **train;     /* resolved shard or text paths; default [sample.out] */
    int n_train;
    char *eval_data;  /* data.eval, NULL when absent */
    sd_recipe_sample sample;
    sd_recipe_student student;
    int64_t seed;
    sd_recipe_device device;
    int threads;      /* 0: all cores */
    int has_eval;     /* the top-level "eval" object */
    int64_t eval_tokens;
    int eval_seq_len, eval_batch;
    int n_stages;
    sd_recipe_stage stages[SD_RECIPE_MAX_STAGES];
} sd_recipe;

/* Parses recipe text; file names the recipe in messages and its folder anchors relative
 * paths.  On failure *out is left zeroed (nothing to free). */
int sd_recipe_parse(const char *text, const char *file, sd_recipe *out);
/* Reads and parses the file at path. */
int sd_recipe_load(const char *path, sd_recipe *out);

/* The teacher's shape fills the student defaults and checks what the recipe alone cannot:
 * num_heads divides d_model * expand, n_groups divides num_heads, attention init needs
 * state_size == head_dim, every attn_layers entry < n_layers and at least one layer left
 * to distil.  SD_ERR_INPUT naming the recipe file and the student key. */
int sd_recipe_fill_student(sd_recipe *r, int d_model, int n_heads, int n_layers);

/* The recipe as run: every default filled, paths resolved; *json is malloc'd text (pretty,
 * ends in a newline) that sd_recipe_parse reads back to the same recipe.  Student fields
 * that sd_recipe_fill_student has not filled yet are left out. */
int sd_recipe_to_json(const sd_recipe *r, char **json);

void sd_recipe_free(sd_recipe *r);

/* fnmatch-like: '*' matches any run of characters (dots and slashes included), '?' any one
 * character, everything else itself.  1 on a match, 0 otherwise. */
int sd_glob_match(const char *pattern, const char *name);
/* 1 if the parameter name matches one of the stage's trainable patterns. */
int sd_recipe_trainable(const sd_recipe_stage *st, const char *param_name);

/* Edit distance (insertions, deletions, substitutions), for "did you mean" suggestions. */
int sd_levenshtein(const char *a, const char *b);

const char *sd_recipe_mixer_name(sd_recipe_mixer m);
const char *sd_recipe_init_name(sd_recipe_init i);
const char *sd_recipe_device_name(sd_recipe_device d);
const char *sd_recipe_target_name(sd_recipe_target t);
const char *sd_recipe_parallel_name(sd_recipe_parallel p);

#endif
