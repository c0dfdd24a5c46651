/* Our HDF5 checkpoint (DESIGN.md section 6): attribute "ssdistill_format" = 1 on the root,
 * /config (string attribute "json": HF-style config.json), /params/<name> datasets with HF
 * names; a training checkpoint adds /optim/m/<name> and /optim/v/<name> (AdamW moments),
 * /state and /recipe (each a group with a string attribute "json").  Written to NAME.tmp,
 * synced, then renamed: a crash never leaves a half checkpoint under the real name. */
#ifndef SD_CHECKPOINT_H
#define SD_CHECKPOINT_H

#include "convert/model_config.h"
#include "convert/weights.h"

int sd_checkpoint_write(const char *path, const sd_model_config *cfg, const sd_weights *w);
/* A file that is not HDF5, or HDF5 without our format attribute, is SD_ERR_INPUT. */
int sd_checkpoint_read(const char *path, sd_model_config *cfg, sd_weights *w);

/* The training side: what a run needs to resume (any member may be NULL to leave it out). */
typedef struct {
    const sd_weights *m, *v;
    const char *state_json, *recipe_json;
} sd_train_state;

typedef struct {
    sd_weights m, v;                /* empty when the file has no /optim */
    char *state_json, *recipe_json; /* NULL when absent */
} sd_train_state_in;

int sd_checkpoint_write_train(const char *path, const sd_model_config *cfg, const sd_weights *w,
                              const sd_train_state *ts);
/* ts may be NULL (as sd_checkpoint_read); on failure everything is freed. */
int sd_checkpoint_read_train(const char *path, sd_model_config *cfg, sd_weights *w, sd_train_state_in *ts);
void sd_train_state_in_free(sd_train_state_in *ts);
/* 1 if PATH starts with the HDF5 signature. */
int sd_is_hdf5(const char *path);

#endif
