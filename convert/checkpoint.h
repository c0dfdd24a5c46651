/* Our HDF5 checkpoint (DESIGN.md section 6): attribute "ssdistill_format" = 1 on the root,
 * /config (string attribute "json": HF-style config.json), /params/<name> datasets with HF
 * names, later /optim/m, /optim/v, /state, /recipe.  Written to NAME.tmp then renamed. */
#ifndef SD_CHECKPOINT_H
#define SD_CHECKPOINT_H

#include "convert/model_config.h"
#include "convert/weights.h"

int sd_checkpoint_write(const char *path, const sd_model_config *cfg, const sd_weights *w);
/* A file that is not HDF5, or HDF5 without our format attribute, is SD_ERR_INPUT. */
int sd_checkpoint_read(const char *path, sd_model_config *cfg, sd_weights *w);
/* 1 if PATH starts with the HDF5 signature. */
int sd_is_hdf5(const char *path);

#endif
