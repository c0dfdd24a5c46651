/* Load any model the command line accepts: an HF directory (config.json + model.safetensors
 * or a sharded model.safetensors.index.json), a llama2.c .bin, or our HDF5 checkpoint (.h5).
 * Weights come back as F32 CPU tensors with HF names (llama2.c rotary already converted
 * to half-split; a tied LM head is NOT materialised: cfg->tie_word_embeddings says so). */
#ifndef SD_MODEL_IO_H
#define SD_MODEL_IO_H

#include "convert/model_config.h"
#include "convert/weights.h"

int sd_load_model(const char *path, sd_model_config *cfg, sd_weights *w);

/* The file whose tensors sd_load_model reads for PATH, to name in messages about a tensor:
 * DIR/model.safetensors.index.json or DIR/model.safetensors for a folder, PATH otherwise.
 * Caller frees; NULL (error set) when out of memory. */
char *sd_model_tensor_source(const char *path);

#endif
