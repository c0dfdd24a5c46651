#include "distill/student.h"
#include "common/error.h"
#include "kernels/conv1d.h"
#include "kernels/gated_norm.h"
#include "kernels/ssd.h"
#include "kernels/ssm_discretize.h"
#include "kernels/tensor_ops.h"
#include "distill/device_weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- wiring */

/* Rows [r0, r0 + n) of a [rows, ...] tensor as a non-owning [n, cols] view; the trailing
 * dims are flattened into cols (conv1d.weight [C, 1, W] becomes [C, W]). */
static sd_tensor row_view(const sd_tensor *t, int64_t r0, int64_t n) {
    int64_t cols = t->shape[0] ? sd_numel(t) / t->shape[0] : 0;
    int64_t shape[2] = {n, cols};
    return sd_tensor_sub(t, r0 * cols, cols == 1 ? 1 : 2, shape);
}

static int get(const sd_weights *w, const char *src, sd_tensor **out, int ndim, int64_t d0, int64_t d1,
               int64_t d2, const char *fmt, int layer) {
    char name[256];
    snprintf(name, sizeof name, fmt, layer);
    int64_t shape[3] = {d0, d1, d2};
    return sd_weights_get(w, src, name, ndim, shape, out);
}

int sd_is_student(const sd_model_config *cfg) { return cfg->arch == SD_ARCH_MAMBA2 || cfg->arch == SD_ARCH_STUDENT; }

int sd_student_has_mlp(const sd_model_config *cfg) { return cfg->arch == SD_ARCH_STUDENT; }

sd_student_names sd_student_names_of(const sd_model_config *cfg) {
    if (cfg->arch == SD_ARCH_MAMBA2) return (sd_student_names){"backbone.embeddings.weight", "backbone.norm_f.weight", "norm.weight"};
    return (sd_student_names){"backbone.embedding.weight", "backbone.final_layernorm.weight", "input_layernorm.weight"};
}

static int is_attn(const sd_model_config *c, int l) { return c->arch == SD_ARCH_STUDENT && c->attn_layer[l]; }

/* The SSM mixer's tensors.  in_proj has 2 di + 2 G N + H rows in both mixers, in their own
 * order: standard z | x | B | C | dt (mamba_ssm Mamba2), discrete x | B | C | z | a
 * (phi-mamba DiscreteMamba2: xBC, z, A_log). */
static int wire_mixer(const sd_model_config *c, const sd_weights *w, const char *src, int l, sd_student_layer *L) {
    const sd_ssm_config *m = &c->ssm;
    int64_t d = c->hidden_size, H = m->num_heads, di = H * m->head_dim, gn = (int64_t)m->n_groups * m->state_size;
    int64_t conv_ch = di + 2 * gn, proj = 2 * di + 2 * gn + H;
    int discrete = m->mixer == SD_MIXER_DISCRETE;
    sd_tensor *in_proj, *conv_w, *conv_bias = NULL;
    SD_TRY(get(w, src, &in_proj, 2, proj, d, 0, "backbone.layers.%d.mixer.in_proj.weight", l));
    SD_TRY(get(w, src, &conv_w, 3, conv_ch, 1, m->conv_kernel, "backbone.layers.%d.mixer.conv1d.weight", l));
    if (m->use_conv_bias) SD_TRY(get(w, src, &conv_bias, 1, conv_ch, 0, 0, "backbone.layers.%d.mixer.conv1d.bias", l));
    SD_TRY(get(w, src, &L->d_skip, 1, H, 0, 0, "backbone.layers.%d.mixer.D", l));
    SD_TRY(get(w, src, &L->out_proj, 2, d, di, 0, "backbone.layers.%d.mixer.out_proj.weight", l));
    if (discrete) {
        SD_TRY(get(w, src, &L->z_bias, 1, di, 0, 0, "backbone.layers.%d.mixer.z_bias", l));
    } else {
        SD_TRY(get(w, src, &L->dt_bias, 1, H, 0, 0, "backbone.layers.%d.mixer.dt_bias", l));
        SD_TRY(get(w, src, &L->a_log, 1, H, 0, 0, "backbone.layers.%d.mixer.A_log", l));
        SD_TRY(get(w, src, &L->gate_norm, 1, di, 0, 0, "backbone.layers.%d.mixer.norm.weight", l));
    }
    int64_t x0 = discrete ? 0 : di, z0 = discrete ? di + 2 * gn : 0;
    L->w_z = row_view(in_proj, z0, di);
    L->w_x = row_view(in_proj, x0, di);
    L->w_b = row_view(in_proj, x0 + di, gn);
    L->w_c = row_view(in_proj, x0 + di + gn, gn);
    L->w_dt = row_view(in_proj, 2 * di + 2 * gn, H);
    /* conv1d channels: x | B | C; depthwise, so each part convolves on its own */
    L->conv_x = row_view(conv_w, 0, di);
    L->conv_b = row_view(conv_w, di, gn);
    L->conv_c = row_view(conv_w, di + gn, gn);
    if (conv_bias) {
        L->bias_x = row_view(conv_bias, 0, di);
        L->bias_b = row_view(conv_bias, di, gn);
        L->bias_c = row_view(conv_bias, di + gn, gn);
    }
    return SD_OK;
}

/* A hybrid layer's attention: the teacher's q/k/v/o (and biases) under our names. */
static int wire_attention(const sd_model_config *c, const sd_weights *w, const char *src, int l, sd_student_layer *L) {
    int64_t d = c->hidden_size, q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim;
    const char *p = "backbone.layers.%d.self_attn.";
    char f[160];
#define NAME(suffix) (snprintf(f, sizeof f, "%s%s", p, suffix), f)
    SD_TRY(get(w, src, &L->wq, 2, q, d, 0, NAME("q_proj.weight"), l));
    SD_TRY(get(w, src, &L->wk, 2, kv, d, 0, NAME("k_proj.weight"), l));
    SD_TRY(get(w, src, &L->wv, 2, kv, d, 0, NAME("v_proj.weight"), l));
    SD_TRY(get(w, src, &L->wo, 2, d, q, 0, NAME("o_proj.weight"), l));
    if (c->attention_bias) {
        SD_TRY(get(w, src, &L->bq, 1, q, 0, 0, NAME("q_proj.bias"), l));
        SD_TRY(get(w, src, &L->bk, 1, kv, 0, 0, NAME("k_proj.bias"), l));
        SD_TRY(get(w, src, &L->bv, 1, kv, 0, 0, NAME("v_proj.bias"), l));
    }
    if (c->o_proj_bias) SD_TRY(get(w, src, &L->bo, 1, d, 0, 0, NAME("o_proj.bias"), l));
#undef NAME
    return SD_OK;
}

static int wire_mlp(const sd_model_config *c, const sd_weights *w, const char *src, int l, sd_student_layer *L) {
    int64_t d = c->hidden_size, I = c->intermediate_size;
    SD_TRY(get(w, src, &L->mlp_norm, 1, d, 0, 0, "backbone.layers.%d.post_attention_layernorm.weight", l));
    SD_TRY(get(w, src, &L->w_gate, 2, I, d, 0, "backbone.layers.%d.mlp.gate_proj.weight", l));
    SD_TRY(get(w, src, &L->w_up, 2, I, d, 0, "backbone.layers.%d.mlp.up_proj.weight", l));
    return get(w, src, &L->w_down, 2, d, I, 0, "backbone.layers.%d.mlp.down_proj.weight", l);
}

static int wire_layer(const sd_model_config *c, const sd_weights *w, const char *src, int l, sd_student_layer *L) {
    char f[160];
    snprintf(f, sizeof f, "backbone.layers.%%d.%s", sd_student_names_of(c).layer_norm);
    SD_TRY(get(w, src, &L->norm, 1, c->hidden_size, 0, 0, f, l));
    L->attn = is_attn(c, l);
    SD_TRY(L->attn ? wire_attention(c, w, src, l, L) : wire_mixer(c, w, src, l, L));
    return sd_student_has_mlp(c) ? wire_mlp(c, w, src, l, L) : SD_OK;
}

static int check_supported(const sd_model_config *c, const char *src) {
    int ok = (c->arch == SD_ARCH_MAMBA2 && c->ssm.mixer == SD_MIXER_STANDARD) ||
             (c->arch == SD_ARCH_STUDENT && (c->ssm.mixer == SD_MIXER_STANDARD || c->ssm.mixer == SD_MIXER_DISCRETE));
    if (!ok) return sd_fail(SD_ERR_INPUT, "%s: not a Mamba-2 student (architecture '%s')", src, sd_arch_name(c->arch));
    if (c->ssm.use_bias)
        return sd_fail(SD_ERR_INPUT, "%s: field 'use_bias': in_proj/out_proj biases are not supported", src);
    if (strcmp(c->hidden_act, "silu") != 0)
        return sd_fail(SD_ERR_INPUT, "%s: field 'hidden_act': '%s' (supported: silu)", src, c->hidden_act);
    if (c->num_layers <= 0 || c->num_layers > SD_MAX_LAYERS)
        return sd_fail(SD_ERR_INPUT, "%s: field 'num_hidden_layers': %d (supported: 1..%d)", src, c->num_layers, SD_MAX_LAYERS);
    if (c->arch != SD_ARCH_STUDENT) return SD_OK;
    if (c->mlp_bias) return sd_fail(SD_ERR_INPUT, "%s: field 'mlp_bias': MLP biases are not supported in a student", src);
    if (c->num_heads <= 0 || c->num_kv_heads <= 0 || c->num_heads % c->num_kv_heads != 0 || c->head_dim <= 0 ||
        c->rope.rotary_dim % 2 != 0 || c->rope.rotary_dim > c->head_dim)
        return sd_fail(SD_ERR_INPUT, "%s: field 'num_attention_heads': %d heads, %d KV heads of dim %d (rotary %d) "
                       "cannot run attention", src, c->num_heads, c->num_kv_heads, c->head_dim, c->rope.rotary_dim);
    return SD_OK;
}

/* Points s's tensor pointers and row views into w (which s may or may not own). */
static int wire(const sd_model_config *c, const sd_weights *w, const char *src, sd_student *s) {
    sd_student_names n = sd_student_names_of(c);
    SD_TRY(get(w, src, &s->embed, 2, c->vocab_size, c->hidden_size, 0, n.embed, 0));
    SD_TRY(get(w, src, &s->final_norm, 1, c->hidden_size, 0, 0, n.final_norm, 0));
    if (c->tie_word_embeddings) s->lm_head = s->embed;
    else SD_TRY(get(w, src, &s->lm_head, 2, c->vocab_size, c->hidden_size, 0, "lm_head.weight", 0));
    for (int l = 0; l < c->num_layers; l++) SD_TRY(wire_layer(c, w, src, l, &s->layers[l]));
    return SD_OK;
}

int sd_student_param_layer(const char *name) {
    const char *p = strstr(name, "layers.");
    return p && p[7] >= '0' && p[7] <= '9' ? atoi(p + 7) : -1;
}

int sd_student_validate(const sd_model_config *cfg, const sd_weights *w, const char *src) {
    SD_TRY(check_supported(cfg, src));
    sd_student tmp;
    memset(&tmp, 0, sizeof tmp);
    if (!(tmp.layers = sd_calloc((size_t)cfg->num_layers, sizeof *tmp.layers, "student layers"))) return SD_ERR_SYS;
    int rc = wire(cfg, w, src, &tmp);
    free(tmp.layers);
    return rc;
}

int sd_student_init(sd_student *s, const sd_model_config *cfg, sd_weights *w, const char *src) {
    memset(s, 0, sizeof *s);
    SD_TRY(check_supported(cfg, src));
    s->cfg = *cfg;
    s->w = *w;
    sd_weights_init(w);
    s->src = sd_strdup(src, "model path");
    s->layers = sd_calloc((size_t)cfg->num_layers, sizeof *s->layers, "student layers");
    int rc = s->src && s->layers ? wire(&s->cfg, &s->w, src, s) : SD_ERR_SYS;
    if (rc != SD_OK) sd_student_free(s);
    return rc;
}

int sd_student_to_ctx(sd_ctx *ctx, sd_student *s) {
    if (ctx->backend == SD_DEV_CPU) return SD_OK;
    SD_TRY(sd_weights_move_to_ctx(ctx, &s->w));
    return wire(&s->cfg, &s->w, s->src, s);
}

void sd_student_free(sd_student *s) {
    sd_weights_free(&s->w);
    free(s->layers);
    free(s->src);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- forward */

void sd_student_layer_acts_free(sd_student_layer_acts *a) {
    sd_tensor *all[] = {&a->x,  &a->xn,  &a->z,  &a->x_pre, &a->b_pre, &a->c_pre, &a->xs, &a->bs,
                        &a->cs, &a->dt_raw, &a->dt, &a->loga, &a->y, &a->yn, &a->q, &a->k,
                        &a->v,  &a->att, &a->mix, &a->h, &a->hn, &a->gate, &a->up, &a->act};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

static int ssm_acts_alloc(sd_ctx *ctx, sd_student_layer_acts *a, const sd_model_config *c, int64_t B, int64_t T) {
    const sd_ssm_config *m = &c->ssm;
    int64_t H = m->num_heads, P = m->head_dim, G = m->n_groups, N = m->state_size;
    SD_TRY(sd_tensor_act(ctx, &a->z, 3, B, T, H * P, 0));
    SD_TRY(sd_tensor_act(ctx, &a->x_pre, 3, B, T, H * P, 0));
    SD_TRY(sd_tensor_act(ctx, &a->b_pre, 3, B, T, G * N, 0));
    SD_TRY(sd_tensor_act(ctx, &a->c_pre, 3, B, T, G * N, 0));
    SD_TRY(sd_tensor_act(ctx, &a->xs, 4, B, T, H, P));
    SD_TRY(sd_tensor_act(ctx, &a->bs, 4, B, T, G, N));
    SD_TRY(sd_tensor_act(ctx, &a->cs, 4, B, T, G, N));
    SD_TRY(sd_tensor_act(ctx, &a->dt_raw, 3, B, T, H, 0));
    if (m->mixer == SD_MIXER_STANDARD) SD_TRY(sd_tensor_new_f32(ctx, &a->dt, 3, B, T, H, 0));
    SD_TRY(sd_tensor_new_f32(ctx, &a->loga, 3, B, T, H, 0));
    SD_TRY(sd_tensor_act(ctx, &a->y, 4, B, T, H, P));
    return sd_tensor_act(ctx, &a->yn, 4, B, T, H, P);
}

static int attn_acts_alloc(sd_ctx *ctx, sd_student_layer_acts *a, const sd_model_config *c, int64_t B, int64_t T) {
    SD_TRY(sd_tensor_act(ctx, &a->q, 4, B, T, c->num_heads, c->head_dim));
    SD_TRY(sd_tensor_act(ctx, &a->k, 4, B, T, c->num_kv_heads, c->head_dim));
    SD_TRY(sd_tensor_act(ctx, &a->v, 4, B, T, c->num_kv_heads, c->head_dim));
    return sd_tensor_act(ctx, &a->att, 4, B, T, c->num_heads, c->head_dim);
}

static int mlp_acts_alloc(sd_ctx *ctx, sd_student_layer_acts *a, const sd_model_config *c, int64_t B, int64_t T) {
    int64_t d = c->hidden_size, I = c->intermediate_size;
    SD_TRY(sd_tensor_act(ctx, &a->h, 3, B, T, d, 0));
    SD_TRY(sd_tensor_act(ctx, &a->hn, 3, B, T, d, 0));
    SD_TRY(sd_tensor_act(ctx, &a->gate, 3, B, T, I, 0));
    SD_TRY(sd_tensor_act(ctx, &a->up, 3, B, T, I, 0));
    return sd_tensor_act(ctx, &a->act, 3, B, T, I, 0);
}

static int layer_acts_alloc(sd_ctx *ctx, sd_student_layer_acts *a, const sd_model_config *c, int l, int64_t B, int64_t T) {
    int need_ssm = 0, need_attn = 0;
    for (int i = l < 0 ? 0 : l; i < (l < 0 ? c->num_layers : l + 1); i++) {
        need_attn |= is_attn(c, i);
        need_ssm |= !is_attn(c, i);
    }
    SD_TRY(sd_tensor_act(ctx, &a->x, 3, B, T, c->hidden_size, 0));
    SD_TRY(sd_tensor_act(ctx, &a->xn, 3, B, T, c->hidden_size, 0));
    SD_TRY(sd_tensor_act(ctx, &a->mix, 3, B, T, c->hidden_size, 0));
    if (need_ssm) SD_TRY(ssm_acts_alloc(ctx, a, c, B, T));
    if (need_attn) SD_TRY(attn_acts_alloc(ctx, a, c, B, T));
    return sd_student_has_mlp(c) ? mlp_acts_alloc(ctx, a, c, B, T) : SD_OK;
}

int sd_student_layer_acts_init(sd_ctx *ctx, sd_student_layer_acts *a, const sd_model_config *cfg, int l, int64_t B,
                               int64_t T) {
    memset(a, 0, sizeof *a);
    int rc = layer_acts_alloc(ctx, a, cfg, l, B, T);
    if (rc != SD_OK) sd_student_layer_acts_free(a);
    return rc;
}

/* A [B, T, a * b] view of a [B, T, a, b] tensor. */
static sd_tensor flat3(const sd_tensor *t) {
    int64_t shape[3] = {t->shape[0], t->shape[1], t->shape[2] * t->shape[3]};
    return sd_tensor_sub(t, 0, 3, shape);
}

static const sd_tensor *conv_bias(const sd_ssm_config *m, const sd_tensor *b) { return m->use_conv_bias ? b : NULL; }

/* Standard: dt = clamp(softplus(dt_raw + dt_bias), limits), loga = dt * A with A = -exp(A_log)
 * (mamba_ssm Mamba2; the SSD scales x by dt itself); dt_raw already holds dt_bias.
 * Discrete: loga = -softplus(a), no dt (phi-mamba DiscreteMamba2 divides x by softplus(a)
 * before a scan that multiplies by it, so the input enters unscaled). */
static int discretise(sd_ctx *ctx, sd_student_layer_acts *a, const sd_student_layer *L, const sd_ssm_config *m) {
    int standard = m->mixer == SD_MIXER_STANDARD;
    return sd_ssm_discretize(ctx, standard ? &a->dt : NULL, &a->loga, &a->dt_raw, standard ? L->a_log : NULL,
                             (float)m->time_step_min, (float)m->time_step_max);
}

/* The mixer's input side on xn: the five in_proj slices (standard dt gets dt_bias; discrete
 * z gets z_bias, so a->z is the gate's argument in both). */
static int project(sd_ctx *ctx, const sd_model_config *c, const sd_student_layer *L, sd_student_layer_acts *a) {
    int discrete = c->ssm.mixer == SD_MIXER_DISCRETE;
    SD_TRY(sd_linear(ctx, &a->z, &a->xn, &L->w_z, discrete ? L->z_bias : NULL));
    SD_TRY(sd_linear(ctx, &a->x_pre, &a->xn, &L->w_x, NULL));
    SD_TRY(sd_linear(ctx, &a->b_pre, &a->xn, &L->w_b, NULL));
    SD_TRY(sd_linear(ctx, &a->c_pre, &a->xn, &L->w_c, NULL));
    return sd_linear(ctx, &a->dt_raw, &a->xn, &L->w_dt, discrete ? NULL : L->dt_bias);
}

/* The mixer's output side: standard mix = out_proj(gated_norm(y, z)) (HF MambaRMSNormGated);
 * discrete mix = out_proj(y * silu(z + z_bias)). */
static int mix_out(sd_ctx *ctx, const sd_model_config *c, const sd_student_layer *L, sd_student_layer_acts *a) {
    const sd_ssm_config *m = &c->ssm;
    sd_tensor y = flat3(&a->y), yn = flat3(&a->yn);
    if (m->mixer == SD_MIXER_DISCRETE) {
        SD_TRY(sd_swiglu(ctx, &yn, &a->z, &y));
    } else {
        int64_t group = (int64_t)m->num_heads * m->head_dim / m->n_groups;
        SD_TRY(sd_gated_rmsnorm(ctx, &yn, &y, &a->z, L->gate_norm, group, c->norm_eps));
    }
    return sd_linear(ctx, &a->mix, &yn, L->out_proj, NULL);
}

/* The SSM mixer on a->xn over the whole sequence (chunked SSD); inputs_only stops once the
 * SSD's inputs are formed (stage 1). */
static int ssm_forward(sd_ctx *ctx, const sd_student *st, int l, sd_student_layer_acts *a, int inputs_only) {
    const sd_model_config *c = &st->cfg;
    const sd_ssm_config *m = &c->ssm;
    const sd_student_layer *L = &st->layers[l];
    sd_tensor xs = flat3(&a->xs), bs = flat3(&a->bs), cs = flat3(&a->cs);
    const int silu = m->mixer == SD_MIXER_STANDARD; /* the discrete mixer's conv is linear */
    SD_TRY(project(ctx, c, L, a));
    SD_TRY(sd_conv1d(ctx, &xs, &a->x_pre, &L->conv_x, conv_bias(m, &L->bias_x), silu));
    SD_TRY(sd_conv1d(ctx, &bs, &a->b_pre, &L->conv_b, conv_bias(m, &L->bias_b), silu));
    SD_TRY(sd_conv1d(ctx, &cs, &a->c_pre, &L->conv_c, conv_bias(m, &L->bias_c), silu));
    SD_TRY(discretise(ctx, a, L, m));
    if (inputs_only) return SD_OK;
    const sd_tensor *dt = m->mixer == SD_MIXER_STANDARD ? &a->dt : NULL;
    SD_TRY(sd_ssd_chunked(ctx, &a->y, &a->xs, dt, &a->loga, &a->bs, &a->cs, L->d_skip, m->chunk_size, NULL, NULL));
    return mix_out(ctx, c, L, a);
}

/* A hybrid layer: the teacher's attention on a->xn, keys kall/vall (the block's own k/v, or a
 * KV cache's prefix ending with them); queries at positions pos0 ... */
static int attn_project(sd_ctx *ctx, const sd_model_config *c, const sd_student_layer *L, sd_student_layer_acts *a,
                        int64_t pos0) {
    sd_tensor q = flat3(&a->q), k = flat3(&a->k), v = flat3(&a->v);
    SD_TRY(sd_linear(ctx, &q, &a->xn, L->wq, L->bq));
    SD_TRY(sd_linear(ctx, &k, &a->xn, L->wk, L->bk));
    SD_TRY(sd_linear(ctx, &v, &a->xn, L->wv, L->bv));
    SD_TRY(sd_rotary(ctx, &a->q, &c->rope, pos0));
    return sd_rotary(ctx, &a->k, &c->rope, pos0);
}

static int attn_out(sd_ctx *ctx, const sd_model_config *c, const sd_student_layer *L, sd_student_layer_acts *a,
                    const sd_tensor *kall, const sd_tensor *vall) {
    SD_TRY(sd_attention(ctx, &a->att, &a->q, kall, vall, 1.0f / sqrtf((float)c->head_dim), NULL, NULL));
    sd_tensor att = flat3(&a->att);
    return sd_linear(ctx, &a->mix, &att, L->wo, L->bo);
}

/* The block's second half once a->mix holds the mixer output: h = x + mix, then the MLP
 * (Llama: out = h + down(silu(gate(n(h))) * up(n(h)))), or out = h without one. */
static int block_finish(sd_ctx *ctx, const sd_model_config *c, const sd_student_layer *L, sd_student_layer_acts *a,
                        sd_tensor *out) {
    if (!sd_student_has_mlp(c)) return sd_add(ctx, out, &a->x, &a->mix);
    SD_TRY(sd_add(ctx, &a->h, &a->x, &a->mix));
    SD_TRY(sd_rmsnorm(ctx, &a->hn, &a->h, L->mlp_norm, c->norm_eps));
    SD_TRY(sd_linear(ctx, &a->gate, &a->hn, L->w_gate, NULL));
    SD_TRY(sd_linear(ctx, &a->up, &a->hn, L->w_up, NULL));
    SD_TRY(sd_swiglu(ctx, &a->act, &a->gate, &a->up));
    SD_TRY(sd_linear(ctx, out, &a->act, L->w_down, NULL));
    return sd_add(ctx, out, &a->h, out);
}

int sd_student_mixer_forward_impl(sd_ctx *ctx, const sd_student *st, int l, sd_student_layer_acts *a, int inputs_only) {
    const sd_model_config *c = &st->cfg;
    const sd_student_layer *L = &st->layers[l];
    SD_TRY(sd_rmsnorm(ctx, &a->xn, &a->x, L->norm, c->norm_eps));
    if (!L->attn) return ssm_forward(ctx, st, l, a, inputs_only);
    SD_TRY(attn_project(ctx, c, L, a, 0));
    return attn_out(ctx, c, L, a, &a->k, &a->v);
}

int sd_student_layer_forward(sd_ctx *ctx, const sd_student *st, int l, sd_student_layer_acts *a, sd_tensor *out) {
    SD_TRY(sd_student_mixer_forward_impl(ctx, st, l, a, 0));
    return block_finish(ctx, &st->cfg, &st->layers[l], a, out);
}

/* Exchanges the data of two tensors of one shape: the block output becomes the next input. */
static void swap_data(sd_tensor *a, sd_tensor *b) {
    sd_tensor t = *a;
    *a = *b;
    *b = t;
}

static int forward_body(sd_ctx *ctx, const sd_student *st, const sd_tensor *ids, sd_student_layer_acts *a,
                        sd_tensor *out, sd_tensor *logits, sd_tensor *hidden, sd_tensor *final_hidden) {
    const sd_model_config *c = &st->cfg;
    SD_TRY(sd_embedding(ctx, &a->x, ids, st->embed));
    for (int l = 0; l < c->num_layers; l++) {
        if (hidden) SD_TRY(sd_copy(ctx, &hidden[l], &a->x));
        SD_TRY(sd_student_layer_forward(ctx, st, l, a, out));
        swap_data(&a->x, out);
    }
    if (hidden) SD_TRY(sd_copy(ctx, &hidden[c->num_layers], &a->x));
    SD_TRY(sd_rmsnorm(ctx, &a->xn, &a->x, st->final_norm, c->norm_eps));
    if (final_hidden) SD_TRY(sd_copy(ctx, final_hidden, &a->xn));
    return logits ? sd_linear(ctx, logits, &a->xn, st->lm_head, NULL) : SD_OK;
}

int sd_student_forward(sd_ctx *ctx, const sd_student *st, const sd_tensor *ids, sd_tensor *logits,
                       sd_tensor *hidden, sd_tensor *final_hidden) {
    if (ids->dtype != SD_I32 || ids->ndim != 2)
        return sd_fail(SD_ERR_INPUT, "student forward: input_ids must be I32 [batch, T]");
    sd_student_layer_acts a; /* one set reused by every layer: inference keeps nothing */
    sd_tensor out = {0}, ids_tmp;
    const sd_tensor *ids_use;
    int rc = sd_tensor_on_ctx(ctx, ids, &ids_tmp, &ids_use);
    if (rc != SD_OK) return rc;
    rc = sd_student_layer_acts_init(ctx, &a, &st->cfg, -1, ids->shape[0], ids->shape[1]);
    if (rc == SD_OK) rc = sd_tensor_act(ctx, &out, 3, ids->shape[0], ids->shape[1], st->cfg.hidden_size, 0);
    if (rc == SD_OK) rc = forward_body(ctx, st, ids_use, &a, &out, logits, hidden, final_hidden);
    sd_tensor_free(&out);
    sd_tensor_free(&ids_tmp);
    sd_student_layer_acts_free(&a);
    return rc;
}

/* ---------------------------------------------------------------- recurrent decoding */

static int state_alloc(sd_student_state *st, const sd_model_config *cfg) {
    const sd_ssm_config *m = &cfg->ssm;
    int64_t di = (int64_t)m->num_heads * m->head_dim, gn = (int64_t)m->n_groups * m->state_size, w = m->conv_kernel - 1;
    sd_tensor **arrays[6] = {&st->conv_x, &st->conv_b, &st->conv_c, &st->ssm, &st->k, &st->v};
    for (int i = 0; i < 6; i++)
        if (!(*arrays[i] = sd_calloc((size_t)st->num_layers, sizeof(sd_tensor), "decoding state"))) return SD_ERR_SYS;
    for (int l = 0; l < st->num_layers; l++) {
        if (is_attn(cfg, l)) {
            if (st->batch != 1 || st->capacity <= 0)
                return sd_fail(SD_ERR_INPUT, "student decoding: a hybrid (attention in layer %d) decodes one sequence "
                               "with a KV cache of positive capacity (batch %d, capacity %d)", l, st->batch, st->capacity);
            SD_TRY(sd_tensor_f32(&st->k[l], 4, 1, st->capacity, cfg->num_kv_heads, cfg->head_dim));
            SD_TRY(sd_tensor_f32(&st->v[l], 4, 1, st->capacity, cfg->num_kv_heads, cfg->head_dim));
            continue;
        }
        SD_TRY(sd_tensor_f32(&st->conv_x[l], 3, st->batch, di, w, 0));
        SD_TRY(sd_tensor_f32(&st->conv_b[l], 3, st->batch, gn, w, 0));
        SD_TRY(sd_tensor_f32(&st->conv_c[l], 3, st->batch, gn, w, 0));
        SD_TRY(sd_tensor_f32(&st->ssm[l], 4, st->batch, m->num_heads, m->head_dim, m->state_size));
    }
    return SD_OK;
}

int sd_student_state_init(sd_student_state *st, const sd_model_config *cfg, int batch, int capacity) {
    memset(st, 0, sizeof *st);
    st->num_layers = cfg->num_layers;
    st->batch = batch;
    st->capacity = capacity;
    int rc = state_alloc(st, cfg);
    if (rc != SD_OK) sd_student_state_free(st);
    return rc;
}

void sd_student_state_free(sd_student_state *st) {
    sd_tensor *arrays[6] = {st->conv_x, st->conv_b, st->conv_c, st->ssm, st->k, st->v};
    for (int i = 0; i < 6; i++) {
        for (int l = 0; arrays[i] && l < st->num_layers; l++) sd_tensor_free(&arrays[i][l]);
        free(arrays[i]);
    }
    memset(st, 0, sizeof *st);
}

/* A view of t without its time dim (T == 1): [B, 1, a, ...] -> [B, a, ...]. */
static sd_tensor drop_time(const sd_tensor *t) {
    int64_t shape[SD_MAX_DIMS];
    shape[0] = t->shape[0];
    for (int i = 2; i < t->ndim; i++) shape[i - 1] = t->shape[i];
    return sd_tensor_sub(t, 0, t->ndim - 1, shape);
}

/* The SSM mixer for one token: the recurrent forms of the conv and the SSD on the same
 * projections and output side as the chunked forward. */
static int ssm_step(sd_ctx *ctx, const sd_student *stu, int l, sd_student_layer_acts *a, sd_student_state *st) {
    const sd_model_config *c = &stu->cfg;
    const sd_ssm_config *m = &c->ssm;
    const sd_student_layer *L = &stu->layers[l];
    SD_TRY(project(ctx, c, L, a));
    sd_tensor in_x = drop_time(&a->x_pre), in_b = drop_time(&a->b_pre), in_c = drop_time(&a->c_pre);
    sd_tensor xs = flat3(&a->xs), bs = flat3(&a->bs), cs = flat3(&a->cs);
    sd_tensor out_x = drop_time(&xs), out_b = drop_time(&bs), out_c = drop_time(&cs);
    const int silu = m->mixer == SD_MIXER_STANDARD;
    SD_TRY(sd_conv1d_step(ctx, &out_x, &in_x, &st->conv_x[l], &L->conv_x, conv_bias(m, &L->bias_x), silu));
    SD_TRY(sd_conv1d_step(ctx, &out_b, &in_b, &st->conv_b[l], &L->conv_b, conv_bias(m, &L->bias_b), silu));
    SD_TRY(sd_conv1d_step(ctx, &out_c, &in_c, &st->conv_c[l], &L->conv_c, conv_bias(m, &L->bias_c), silu));
    SD_TRY(discretise(ctx, a, L, m));
    sd_tensor y1 = drop_time(&a->y), x1 = drop_time(&a->xs), la1 = drop_time(&a->loga), b1 = drop_time(&a->bs),
              c1 = drop_time(&a->cs), dt1;
    if (m->mixer == SD_MIXER_STANDARD) dt1 = drop_time(&a->dt);
    SD_TRY(sd_ssd_step(ctx, &y1, &x1, m->mixer == SD_MIXER_STANDARD ? &dt1 : NULL, &la1, &b1, &c1, L->d_skip,
                       &st->ssm[l]));
    return mix_out(ctx, c, L, a);
}

/* A hybrid layer for one token: its k/v join the layer's cache, the query attends the prefix. */
static int attn_step(sd_ctx *ctx, const sd_student *stu, int l, sd_student_layer_acts *a, sd_student_state *st) {
    const sd_model_config *c = &stu->cfg;
    const sd_student_layer *L = &stu->layers[l];
    SD_TRY(attn_project(ctx, c, L, a, st->len));
    size_t row = (size_t)c->num_kv_heads * (size_t)c->head_dim;
    float *kc = st->k[l].data, *vc = st->v[l].data;
    memcpy(kc + (size_t)st->len * row, a->k.data, row * sizeof(float));
    memcpy(vc + (size_t)st->len * row, a->v.data, row * sizeof(float));
    int64_t shape[4] = {1, st->len + 1, c->num_kv_heads, c->head_dim};
    sd_tensor kall = sd_tensor_view(SD_F32, kc, 4, shape), vall = sd_tensor_view(SD_F32, vc, 4, shape);
    return attn_out(ctx, c, L, a, &kall, &vall);
}

static int step_body(sd_ctx *ctx, const sd_student *stu, const sd_tensor *ids, sd_student_layer_acts *a,
                     sd_tensor *out, sd_student_state *st, sd_tensor *logits) {
    const sd_model_config *c = &stu->cfg;
    SD_TRY(sd_embedding(ctx, &a->x, ids, stu->embed));
    for (int l = 0; l < c->num_layers; l++) {
        const sd_student_layer *L = &stu->layers[l];
        SD_TRY(sd_rmsnorm(ctx, &a->xn, &a->x, L->norm, c->norm_eps));
        SD_TRY(L->attn ? attn_step(ctx, stu, l, a, st) : ssm_step(ctx, stu, l, a, st));
        SD_TRY(block_finish(ctx, c, L, a, out));
        swap_data(&a->x, out);
    }
    SD_TRY(sd_rmsnorm(ctx, &a->xn, &a->x, stu->final_norm, c->norm_eps));
    return logits ? sd_linear(ctx, logits, &a->xn, stu->lm_head, NULL) : SD_OK;
}

static int has_attn(const sd_model_config *c) {
    for (int l = 0; l < c->num_layers; l++)
        if (is_attn(c, l)) return 1;
    return 0;
}

int sd_student_step(sd_ctx *ctx, const sd_student *stu, const sd_tensor *ids, sd_student_state *st,
                    sd_tensor *logits) {
    if (ctx->backend != SD_DEV_CPU)
        return sd_fail(SD_ERR_INPUT, "student step: recurrent decoding runs on the CPU backend");
    if (ids->dtype != SD_I32 || ids->ndim != 2 || ids->shape[1] != 1 || ids->shape[0] != st->batch)
        return sd_fail(SD_ERR_INPUT, "student step: ids must be I32 [%d, 1]", st->batch);
    if (has_attn(&stu->cfg) && st->len >= st->capacity)
        return sd_fail(SD_ERR_INPUT, "student step: the KV cache of the hybrid's attention layers is full (%d positions)",
                       st->capacity);
    sd_student_layer_acts a;
    sd_tensor out = {0};
    int rc = sd_student_layer_acts_init(ctx, &a, &stu->cfg, -1, st->batch, 1);
    if (rc == SD_OK) rc = sd_tensor_f32(&out, 3, st->batch, 1, stu->cfg.hidden_size, 0);
    if (rc == SD_OK) rc = step_body(ctx, stu, ids, &a, &out, st, logits);
    if (rc == SD_OK) st->len++;
    sd_tensor_free(&out);
    sd_student_layer_acts_free(&a);
    return rc;
}
