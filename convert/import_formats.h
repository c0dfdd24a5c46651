/* Reading back what convert/export.c writes: a Llamba or a mamba_ssm folder (config.json +
 * model.safetensors) becomes our config and our tensor names, so that every command that
 * reads a model reads these folders (hf-mamba2 folders are plain HF Mamba-2 already). */
#ifndef SD_IMPORT_FORMATS_H
#define SD_IMPORT_FORMATS_H

#include "convert/model_config.h"
#include "convert/weights.h"

typedef enum { SD_IMPORT_NONE = 0, SD_IMPORT_LLAMBA, SD_IMPORT_MAMBA_SSM } sd_import_kind;

/* What the config.json text is: model_type "llamba" -> LLAMBA; no model_type, with d_model,
 * n_layer and an ssm_cfg object (MambaConfig) -> MAMBA_SSM; else NONE (an HF config). */
sd_import_kind sd_import_detect(const char *json_text);

/* The config as ours: Llamba -> SD_ARCH_STUDENT with the discrete mixer; mamba_ssm ->
 * SD_ARCH_STUDENT with the standard mixer (MLPs and/or attention layers), or SD_ARCH_MAMBA2
 * without either.  SD_ERR_INPUT naming src and the field for what cannot be read. */
int sd_import_config(sd_import_kind kind, const char *json_text, const char *src, sd_model_config *cfg);

/* Renames (and for mamba_ssm splits) the tensors in w to our names; may adjust
 * cfg->intermediate_size (a GatedMLP's rounded hidden size is dropped when its padding is
 * zero, kept otherwise).  src names the tensor file in messages. */
int sd_import_weights(sd_import_kind kind, sd_model_config *cfg, sd_weights *w, const char *src);

#endif
