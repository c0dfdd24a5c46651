/* Mamba-2 students (DESIGN.md section 4), two layouts:
 *  - HF Mamba2ForCausalLM (SD_ARCH_MAMBA2): standard mixer blocks, no MLPs, HF names;
 *  - ssdistill's student (SD_ARCH_STUDENT): the teacher's Llama-style blocks (pre-norm mixer,
 *    pre-norm SwiGLU MLP) with the attention replaced by the discrete (Phi-Mamba / Llamba) or
 *    the standard mixer, except in hybrid layers that keep the teacher's attention; Llamba
 *    names (DESIGN.md section 6), attention layers under backbone.layers.{i}.self_attn.
 * Training (forward with kept activations, backward) is in distill/student_train.h. */
#ifndef SD_STUDENT_H
#define SD_STUDENT_H

#include "convert/model_config.h"
#include "convert/weights.h"
#include "kernels/ops.h"

typedef struct {
    int attn;                        /* 1: a hybrid layer running the teacher's attention */
    sd_tensor *norm;                 /* [d] pre-mixer RMSNorm */
    /* SSM mixer.  in_proj as row views: standard z | x | B | C | dt (mamba_ssm order);
     * discrete x | B | C | z | a (Llamba order), w_dt then holds the a rows. */
    sd_tensor w_z, w_x, w_b, w_c, w_dt;
    /* conv1d [di + 2 G N, 1, W] as [C, W] row views over x | B | C, and its bias */
    sd_tensor conv_x, conv_b, conv_c, bias_x, bias_b, bias_c;
    sd_tensor *dt_bias, *a_log;      /* [H] standard only */
    sd_tensor *z_bias;               /* [di] discrete only: out = out_proj(y * silu(z + z_bias)) */
    sd_tensor *d_skip;               /* [H] */
    sd_tensor *gate_norm;            /* [di] standard only: gated RMSNorm weight */
    sd_tensor *out_proj;             /* [d, di] */
    /* attention (hybrid layers): the teacher's q/k/v/o and their biases (NULL when none) */
    sd_tensor *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo;
    /* MLP (SD_ARCH_STUDENT): post-mixer RMSNorm and SwiGLU; NULL for HF Mamba-2 */
    sd_tensor *mlp_norm, *w_gate, *w_up, *w_down;
} sd_student_layer;

typedef struct {
    sd_model_config cfg;
    sd_weights w;
    char *src;
    sd_tensor *embed, *final_norm, *lm_head;
    sd_student_layer *layers;
    /* Gradient sets only (distill/student_train.h), NULL otherwise: called during a backward
     * once a part's gradients are final, with distill/zero.h's event numbers (0 the head and
     * the final norm, num_layers - l layer l, num_layers + 1 the embedding), so that data
     * parallelism can reduce them while the backward goes on. */
    int (*grads_ready)(void *arg, int event);
    void *grads_ready_arg;
} sd_student;

/* The activations of one block for B x T tokens: the forward's scratch, and what training
 * keeps for the backward (distill/student_train.h).  Only the parts the block's kind uses are
 * allocated (data NULL otherwise).  They live on the context's backend in sd_act_dtype, but
 * for dt and loga (F32 everywhere: the SSD's decays). */
typedef struct {
    sd_tensor x;                   /* [B, T, d] block input (residual stream) */
    sd_tensor xn;                  /* [B, T, d] after the pre-mixer RMSNorm */
    /* SSM mixer */
    sd_tensor z;                   /* [B, T, di] gate (discrete: z + z_bias) */
    sd_tensor x_pre, b_pre, c_pre; /* conv inputs [B, T, di | GN | GN] */
    sd_tensor xs, bs, cs;          /* conv outputs [B, T, H, P] / [B, T, G, N] */
    sd_tensor dt_raw;              /* [B, T, H] standard: pre-softplus with dt_bias; discrete: a */
    sd_tensor dt, loga;            /* [B, T, H] (dt: standard only) */
    sd_tensor y, yn;               /* [B, T, H, P] SSD output, after the gate (and norm) */
    /* attention */
    sd_tensor q, k, v, att;        /* [B, T, Hq | Hkv, hd], q and k after rotary */
    sd_tensor mix;                 /* [B, T, d] mixer output (out_proj / o_proj), before the add */
    /* MLP */
    sd_tensor h, hn;               /* [B, T, d] after the mixer's residual add; normed */
    sd_tensor gate, up, act;       /* [B, T, I] */
} sd_student_layer_acts;

/* 1 for the configs this file runs (SD_ARCH_MAMBA2, SD_ARCH_STUDENT), 0 for teachers. */
int sd_is_student(const sd_model_config *cfg);

/* 1 when the blocks have MLPs (SD_ARCH_STUDENT), 0 for HF Mamba-2. */
int sd_student_has_mlp(const sd_model_config *cfg);

/* The layout's names that differ between HF Mamba-2 and ours: the embedding, the final norm
 * and the pre-mixer norm (a suffix under "backbone.layers.{i}."). */
typedef struct {
    const char *embed, *final_norm, *layer_norm;
} sd_student_names;
sd_student_names sd_student_names_of(const sd_model_config *cfg);

/* Activations for layer l's kind, or (l < 0) for any layer of cfg (inference reuses one set). */
int sd_student_layer_acts_init(sd_ctx *ctx, sd_student_layer_acts *a, const sd_model_config *cfg, int l, int64_t B,
                               int64_t T);
void sd_student_layer_acts_free(sd_student_layer_acts *a);
/* One block on a->x (chunked SSD): out = h + mlp(h) with h = a->x + mixer(a->x) (out = h without
 * an MLP); every activation stays in a. */
int sd_student_layer_forward(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, sd_tensor *out);
/* The pre-mixer norm and the mixer alone (a->xn, a->mix); inputs_only: an SSM mixer stops at
 * the SSD's inputs.  distill/student_train.h wraps it for stages 1 and 2. */
int sd_student_mixer_forward_impl(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, int inputs_only);

/* The layer a parameter belongs to ("layers.{l}." in its name: both layouts), -1 for none. */
int sd_student_param_layer(const char *name);

/* Checks that w holds every tensor cfg implies, with its shape (SD_ERR_INPUT naming src and
 * the tensor). */
int sd_student_validate(const sd_model_config *cfg, const sd_weights *w, const char *src);
/* Takes ownership of *w (left empty). */
int sd_student_init(sd_student *s, const sd_model_config *cfg, sd_weights *w, const char *src);
void sd_student_free(sd_student *s);
/* Moves the weights to ctx's backend for inference (distill/device_weights.h); nothing to do
 * on a CPU context.  Training on a GPU wires the student over sd_weights_mixed's compute set
 * instead. */
int sd_student_to_ctx(sd_ctx *ctx, sd_student *s);

/* ids [B, T] I32 (host or ctx's backend) -> logits [B, T, V] F32 on ctx's backend (or NULL).  hidden (optional): num_layers + 1 tensors
 * [B, T, d] allocated by the caller, as the teacher's trace: hidden[l] enters layer l for
 * l < L, hidden[L] is the last block's output before the final norm; final_hidden (optional,
 * [B, T, d]) is after the final norm. */
int sd_student_forward(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_tensor *logits,
                       sd_tensor *hidden, sd_tensor *final_hidden);

/* Decoding state for `batch` sequences: per mixer layer the last W-1 conv inputs of x, B and
 * C and the SSM state (constant memory); per attention layer (hybrids, batch 1 only) a KV
 * cache of `capacity` positions. */
typedef struct {
    int num_layers, batch, capacity;
    int64_t len; /* tokens consumed */
    sd_tensor *conv_x, *conv_b, *conv_c; /* [batch, channels, W - 1] */
    sd_tensor *ssm;                      /* [batch, H, P, N] */
    sd_tensor *k, *v;                    /* [1, capacity, Hkv, hd] */
} sd_student_state;

int sd_student_state_init(sd_student_state *st, const sd_model_config *cfg, int batch, int capacity);
void sd_student_state_free(sd_student_state *st);

/* One token per sequence: ids [batch, 1] I32 -> logits [batch, 1, V]; the state advances.
 * A hybrid's state refuses tokens past its capacity (SD_ERR_INPUT). */
int sd_student_step(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_state *st,
                    sd_tensor *logits);

#endif
