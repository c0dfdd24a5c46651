/* Mamba-2 students (DESIGN.md section 4).  This file holds the standard mixer as HF
 * Mamba2ForCausalLM / mamba_ssm Mamba2 (no MLPs); its training forward and backward are in
 * distill/student_train.h.  The discrete mixer, the Llama-style blocks with MLPs and hybrids
 * come with issue 3's remaining work. */
#ifndef SD_STUDENT_H
#define SD_STUDENT_H

#include "convert/model_config.h"
#include "convert/weights.h"
#include "kernels/ops.h"

typedef struct {
    sd_tensor *norm;                 /* [d] pre-mixer RMSNorm */
    /* in_proj [2 di + 2 G N + H, d] as row views: z | x | B | C | dt */
    sd_tensor w_z, w_x, w_b, w_c, w_dt;
    /* conv1d [di + 2 G N, 1, W] as [C, W] row views over x | B | C, and its bias */
    sd_tensor conv_x, conv_b, conv_c, bias_x, bias_b, bias_c;
    sd_tensor *dt_bias, *a_log, *d_skip; /* [H] */
    sd_tensor *gate_norm;            /* [di] gated RMSNorm weight */
    sd_tensor *out_proj;             /* [d, di] */
} sd_student_layer;

typedef struct {
    sd_model_config cfg;
    sd_weights w;
    char *src;
    sd_tensor *embed, *final_norm, *lm_head;
    sd_student_layer *layers;
} sd_student;

/* The activations of one block for B x T tokens: the forward's scratch, and what training
 * keeps for the backward (distill/student_train.h). */
typedef struct {
    sd_tensor x;                   /* [B, T, d] block input (residual stream) */
    sd_tensor xn;                  /* [B, T, d] after the pre-mixer RMSNorm */
    sd_tensor z;                   /* [B, T, di] gate */
    sd_tensor x_pre, b_pre, c_pre; /* conv inputs [B, T, di | GN | GN] */
    sd_tensor xs, bs, cs;          /* conv outputs [B, T, H, P] / [B, T, G, N] */
    sd_tensor dt_raw;              /* [B, T, H] pre-softplus, dt_bias included */
    sd_tensor dt, loga;            /* [B, T, H] */
    sd_tensor y, yn;               /* [B, T, H, P] SSD output, after the gated norm */
} sd_student_layer_acts;

int sd_student_layer_acts_init(sd_student_layer_acts *a, const sd_model_config *cfg, int64_t B, int64_t T);
void sd_student_layer_acts_free(sd_student_layer_acts *a);
/* One block on a->x (chunked SSD): out = a->x + mixer(a->x); every activation stays in a. */
int sd_student_layer_forward(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a, sd_tensor *out);

/* Checks that w holds every tensor cfg implies, with its shape (SD_ERR_INPUT naming src and
 * the tensor). */
int sd_student_validate(const sd_model_config *cfg, const sd_weights *w, const char *src);
/* Takes ownership of *w (left empty). */
int sd_student_init(sd_student *s, const sd_model_config *cfg, sd_weights *w, const char *src);
void sd_student_free(sd_student *s);

/* ids [B, T] I32 -> logits [B, T, V] (or NULL).  hidden (optional): num_layers + 1 tensors
 * [B, T, d] allocated by the caller, as the teacher's trace: hidden[l] enters layer l for
 * l < L, hidden[L] is the last block's output before the final norm; final_hidden (optional,
 * [B, T, d]) is after the final norm. */
int sd_student_forward(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_tensor *logits,
                       sd_tensor *hidden, sd_tensor *final_hidden);

/* Constant-memory decoding state (per layer: the last W-1 conv inputs of x, B and C, and
 * the SSM state), for `batch` sequences. */
typedef struct {
    int num_layers, batch;
    int64_t len; /* tokens consumed */
    sd_tensor *conv_x, *conv_b, *conv_c; /* [batch, channels, W - 1] */
    sd_tensor *ssm;                      /* [batch, H, P, N] */
} sd_student_state;

int sd_student_state_init(sd_student_state *st, const sd_model_config *cfg, int batch);
void sd_student_state_free(sd_student_state *st);

/* One token per sequence: ids [batch, 1] I32 -> logits [batch, 1, V]; the state advances. */
int sd_student_step(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_state *st,
                    sd_tensor *logits);

#endif
