/* Export of a student for other libraries (DESIGN.md section 6): DIR/model.safetensors,
 * DIR/config.json and the teacher's tokenizer files, in one of three layouts:
 *
 *  - llamba (cartesia-ai Llamba / MOHAWK): discrete-mixer students with MLPs and no attention
 *    layers; our names are Llamba's, config.json as Llamba's (model_type "llamba", d_model,
 *    n_layer, norm_epsilon, mlp_cfg, ssm_cfg {d_state, n_v_heads, n_qk_heads, expand, ...});
 *  - mamba_ssm (state-spaces/mamba MambaLMHeadModel with MambaConfig): standard-mixer students,
 *    with MLPs (GatedMLP) and attention layers (MHA) or without (HF Mamba-2);
 *  - hf-mamba2 (transformers Mamba2ForCausalLM): standard mixer, no MLPs, no attention.
 *
 * A model a format cannot hold is refused (SD_ERR_INPUT) with the format that can.  Every
 * file is written atomically (NAME.tmp, then rename). */
#ifndef SD_EXPORT_H
#define SD_EXPORT_H

#include "convert/model_config.h"
#include "convert/weights.h"

typedef enum { SD_EXPORT_LLAMBA = 0, SD_EXPORT_MAMBA_SSM, SD_EXPORT_HF_MAMBA2 } sd_export_format;

/* "llamba", "mamba_ssm", "hf-mamba2" (SD_ERR_INPUT naming the flag otherwise). */
int sd_export_format_parse(const char *name, sd_export_format *f);
const char *sd_export_format_name(sd_export_format f);

/* SD_OK when format f can hold the model cfg describes; else SD_ERR_INPUT naming src, what
 * does not fit and the format that can hold it. */
int sd_export_check(const sd_model_config *cfg, sd_export_format f, const char *src);

/* The weights under the format's names (w: our names, as sd_load_model returns them) and
 * its config.json text.  *out holds views of w's tensors and new fused ones: free it with
 * sd_weights_free before w. */
int sd_export_weights(const sd_model_config *cfg, const sd_weights *w, sd_export_format f, const char *src,
                      sd_weights *out);
int sd_export_config_json(const sd_model_config *cfg, sd_export_format f, char **json);

/* Checks, then writes DIR (created if missing): model.safetensors, config.json, and
 * tokenizer.json / tokenizer_config.json / special_tokens_map.json copied from tokenizer_dir
 * where present there (tokenizer_dir may be NULL: none copied). */
int sd_export(const sd_model_config *cfg, const sd_weights *w, sd_export_format f, const char *src, const char *dir,
              const char *tokenizer_dir);

#endif
