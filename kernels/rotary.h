/* Rotary position embedding (RoFormer; Llama, Qwen2, Phi partial rotary).
 * CUDA dtypes: x / dx F32 or BF16 (rotated in fp32, cos/sin as on the CPU). */
#ifndef SD_ROTARY_H
#define SD_ROTARY_H

#include "kernels/context.h"

typedef enum { SD_ROPE_SCALING_NONE = 0, SD_ROPE_SCALING_LLAMA3 = 1 } sd_rope_scaling_type;

typedef struct {
    int head_dim;
    int rotary_dim;          /* <= head_dim; the first rotary_dim dims of each head rotate */
    double theta;            /* base, e.g. 10000 or 1e6 */
    int interleaved;         /* 0: half-split pairs (i, i + rotary_dim/2) as HF;
                                1: adjacent pairs (2i, 2i+1) as llama2.c / GPT-J */
    sd_rope_scaling_type scaling;
    double factor, low_freq_factor, high_freq_factor; /* llama3 scaling */
    int original_max_position_embeddings;
} sd_rope_config;

/* inv_freq[i] for i < rotary_dim/2, computed in fp32 as HF does (base^(2i/dim)), then
 * rescaled for llama3 scaling (HF _compute_llama3_parameters). */
int sd_rope_inv_freq(const sd_rope_config *cfg, float *inv_freq);

/* Rotates x in place: x is [B, T, H, head_dim]; token t has position pos0 + t.
 * cos/sin of (float)pos * inv_freq in fp32, as HF. */
int sd_rotary(sd_ctx *ctx, sd_tensor *x, const sd_rope_config *cfg, int64_t pos0);

/* Backward of sd_rotary, IN PLACE: dx (the gradient of the rotated x, [B, T, H, head_dim])
 * becomes the gradient of the input, by rotating by minus the angle.  This one op does not
 * accumulate: it overwrites dx (a rotation is its own gradient's transpose). */
int sd_rotary_backward(sd_ctx *ctx, sd_tensor *dx, const sd_rope_config *cfg, int64_t pos0);

#endif
