/* The model configuration every loader fills in and every model reads.
 * Filled from HF config.json (convert/hf_config.c), from a llama2.c header (convert/llama2c.c)
 * or from the /config attribute of our HDF5 checkpoint (an HF-style config.json string). */
#ifndef SD_MODEL_CONFIG_H
#define SD_MODEL_CONFIG_H

#include "kernels/rotary.h"

typedef enum {
    SD_ARCH_LLAMA = 0, /* Llama-2/3, TinyLlama, SmolLM, llama2.c */
    SD_ARCH_MISTRAL,   /* Llama layout; sliding window unsupported (refused if set) */
    SD_ARCH_QWEN2,     /* Llama layout + q/k/v biases */
    SD_ARCH_PHI,       /* recognised, not yet supported by the teacher forward */
    SD_ARCH_GPT2,      /* recognised, not yet supported by the teacher forward */
    SD_ARCH_MAMBA2,    /* HF Mamba2ForCausalLM: standard mixer, no MLPs (a student) */
    SD_ARCH_STUDENT    /* ssdistill's student: the teacher's Llama-style blocks with their attention
                          replaced by a mixer in all but the listed layers (Llamba names, DESIGN.md
                          section 6); model_type "ssdistill_student" */
} sd_arch;

/* The most layers a student may have (the hybrid layer mask is a fixed array). */
#define SD_MAX_LAYERS 256

/* The state-space mixer of a student (DESIGN.md section 4). */
typedef enum {
    SD_MIXER_NONE = 0,  /* a Transformer: no SSM */
    SD_MIXER_DISCRETE,  /* discrete Mamba-2 (Phi-Mamba / Llamba) */
    SD_MIXER_STANDARD   /* standard Mamba-2 (mamba_ssm Mamba2, HF Mamba2ForCausalLM) */
} sd_mixer_type;

typedef struct {
    sd_mixer_type mixer;
    int num_heads;      /* H: value (x) heads */
    int head_dim;       /* P: d_inner = H * P */
    int state_size;     /* N */
    int n_groups;       /* G: B/C groups (discrete: n_qk_heads); G divides H */
    int conv_kernel;    /* causal depthwise conv width, 2..4 */
    int use_conv_bias;
    int use_bias;       /* in_proj / out_proj biases */
    int chunk_size;     /* chunk length of the chunked SSD */
    double time_step_min, time_step_max; /* clamp of dt after softplus (time_step_limit); max may be inf */
} sd_ssm_config;

typedef struct {
    sd_arch arch;
    char model_type[32];     /* "llama", "qwen2", ... as in config.json */
    int vocab_size;
    int hidden_size;
    int num_layers;
    int num_heads;
    int num_kv_heads;
    int head_dim;            /* hidden_size / num_heads unless config.json gives head_dim */
    int intermediate_size;
    int max_position_embeddings;
    float norm_eps;          /* rms_norm_eps / layer_norm_eps */
    char hidden_act[32];     /* "silu", "gelu_new", ... */
    int attention_bias;      /* q/k/v(/o) biases: Qwen2 q/k/v; Llama attention_bias covers o too */
    int o_proj_bias;         /* o_proj has a bias (Llama attention_bias=true); Qwen2: 0 */
    int mlp_bias;
    int tie_word_embeddings;
    int bos_token_id;        /* -1 when absent or null */
    int eos_token_id;        /* -1 when absent or null (first of a list) */
    sd_rope_config rope;     /* head_dim, rotary_dim (partial rotary), theta, scaling */
    sd_ssm_config ssm;       /* mixer NONE for Transformers */
    /* SD_ARCH_STUDENT: 1 for layers that keep the teacher's attention (hybrids), 0 for mixer
     * layers; intermediate_size > 0 gives every block the teacher's SwiGLU MLP. */
    unsigned char attn_layer[SD_MAX_LAYERS];
} sd_model_config;

const char *sd_arch_name(sd_arch a);

#endif
