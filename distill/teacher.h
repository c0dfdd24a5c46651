/* The teacher: a Llama-family decoder (Llama, Mistral, Qwen2 biases, GQA) on the op layer.
 * DESIGN.md section 4.  The forward returns logits and, on request, what the stages read per
 * layer: the hidden state entering each layer, attention probabilities (and log-sum-exp),
 * and the attention output before the residual add. */
#ifndef SD_TEACHER_H
#define SD_TEACHER_H

#include "convert/model_config.h"
#include "convert/weights.h"
#include "kernels/ops.h"

typedef struct {
    sd_tensor *input_norm, *post_norm;            /* [d] */
    sd_tensor *wq, *wk, *wv, *wo;                 /* [Hq*hd, d], [Hkv*hd, d] x2, [d, Hq*hd] */
    sd_tensor *bq, *bk, *bv, *bo;                 /* NULL when the config has none */
    sd_tensor *w_gate, *w_up, *w_down;            /* [I, d], [I, d], [d, I] */
    sd_tensor *b_gate, *b_up, *b_down;            /* mlp_bias */
} sd_teacher_layer;

typedef struct {
    sd_model_config cfg;
    sd_weights w;
    char *src; /* the file or folder it came from, for messages */
    sd_tensor *embed, *final_norm, *lm_head; /* lm_head == embed when tied */
    sd_teacher_layer *layers;
} sd_teacher;

/* Checks that cfg is an architecture the teacher runs and that w holds every tensor the
 * config implies, with the right shape (SD_ERR_INPUT naming src and the tensor). */
int sd_teacher_validate(const sd_model_config *cfg, const sd_weights *w, const char *src);
/* Takes ownership of *w (left empty) after validating. */
int sd_teacher_init(sd_teacher *t, const sd_model_config *cfg, sd_weights *w, const char *src);
/* sd_load_model + sd_teacher_init. */
int sd_teacher_load(sd_teacher *t, const char *path);
void sd_teacher_free(sd_teacher *t);
/* Moves the teacher's weights to ctx's backend (distill/device_weights.h: BF16 matrices, F32
 * vectors); nothing to do on a CPU context.  Forward calls then take that ctx. */
int sd_teacher_to_ctx(sd_ctx *ctx, sd_teacher *t);

/* What a forward can hand back besides logits.  Set the want_* flags; the forward allocates
 * the arrays (sd_teacher_trace_free releases them).
 *   hidden[l], l < L : the residual stream entering layer l  [B, T, d] (hidden[0]: embeddings)
 *   hidden[L]        : the output of the last layer, before the final norm
 *   final_hidden     : after the final norm (HF's last hidden_states entry)
 *   probs[l]         : [B, Hq, T, T] attention probabilities
 *   lse[l]           : [B, Hq, T] log-sum-exp of the scaled scores
 *   attn_out[l]      : [B, T, d] attention output after o_proj, before the residual add
 *   q[l], k[l]       : [B, T, Hq, hd], [B, T, Hkv, hd] queries and keys after rotary (the
 *                      fused stage-1 loss recomputes the probabilities from them) */
typedef struct {
    int want_hidden, want_probs, want_lse, want_attn_out, want_qk;
    sd_tensor *hidden, *probs, *lse, *attn_out, *q, *k;
    sd_tensor final_hidden;
    int num_layers;
} sd_teacher_trace;

void sd_teacher_trace_free(sd_teacher_trace *tr);

/* KV cache for generation (batch 1): per layer [1, capacity, Hkv, hd]. */
typedef struct {
    int capacity, len, num_layers;
    sd_tensor *k, *v;
} sd_kv_cache;

int sd_kv_cache_init(sd_kv_cache *c, const sd_model_config *cfg, int capacity);
void sd_kv_cache_free(sd_kv_cache *c);

/* Runs ids [B, T] (I32, on the host or on ctx's backend) at positions cache->len .. (or 0
 * without a cache).  logits: an allocated F32 (or sd_act_dtype) [B, T, V] tensor on ctx's backend, or NULL to
 * skip the head.  trace may be NULL; its tensors live on ctx's backend, activations in
 * sd_act_dtype(ctx), lse and probs F32 (probs: CPU only).  With a cache (CPU only), B must be
 * 1 and the cache advances by T. */
int sd_teacher_forward(sd_ctx *ctx, const sd_teacher *t, const sd_tensor *ids, sd_kv_cache *cache,
                       sd_tensor *logits, sd_teacher_trace *trace);

#endif
