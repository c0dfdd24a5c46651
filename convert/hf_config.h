/* HF config.json <-> sd_model_config. */
#ifndef SD_HF_CONFIG_H
#define SD_HF_CONFIG_H

#include "convert/model_config.h"

/* Parses config.json text; src names the file in error messages. Handles: model_type /
 * architectures (llama, mistral, qwen2 supported; phi, gpt2, mamba2 recognised; others:
 * "unknown architecture"), rope_theta at top level or under rope_parameters, rope_scaling
 * (type/rope_type "llama3" with factor, low_freq_factor, high_freq_factor,
 * original_max_position_embeddings; "default"/null: none; anything else refused),
 * head_dim, partial_rotary_factor, attention_bias, mlp_bias, rms_norm_eps,
 * tie_word_embeddings, bos/eos ids (null or list), {"__float__": "Infinity"} values.
 * A missing required field or a wrong type is SD_ERR_INPUT naming src and the field. */
int sd_hf_config_parse(const char *json_text, const char *src, sd_model_config *cfg);
int sd_hf_config_load(const char *path, sd_model_config *cfg);
/* The config as an HF-style config.json string that sd_hf_config_parse reads back into an
 * identical struct (caller frees). */
int sd_hf_config_to_json(const sd_model_config *cfg, char **json);

#endif
