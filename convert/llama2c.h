/* llama2.c legacy .bin: 7 int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size (negative: separate classifier), seq_len), then fp32 weights in llama2.c order.
 * Weights come out with HF Llama names; q/k rows are permuted from llama2.c's interleaved
 * rotary pairs to HF's half-split layout, so the model runs with interleaved = 0. */
#ifndef SD_LLAMA2C_H
#define SD_LLAMA2C_H

#include "convert/model_config.h"
#include "convert/weights.h"

int sd_llama2c_load(const char *path, sd_model_config *cfg, sd_weights *w);

#endif
