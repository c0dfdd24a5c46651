#include "distill/student_train.h"
#include "common/error.h"
#include "kernels/conv1d.h"
#include "kernels/gated_norm.h"
#include "kernels/loss.h"
#include "kernels/ssd.h"
#include "kernels/ssm_discretize.h"
#include "kernels/tensor_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

typedef struct {
    int64_t d, H, P, G, N, di, gn, V;
} dims;

static dims dims_of(const sd_model_config *c) {
    const sd_ssm_config *m = &c->ssm;
    dims k = {c->hidden_size, m->num_heads, m->head_dim, m->n_groups, m->state_size, 0, 0, c->vocab_size};
    k.di = k.H * k.P;
    k.gn = k.G * k.N;
    return k;
}

/* A [B, T, a * b] view of a [B, T, a, b] tensor. */
static sd_tensor flat3(const sd_tensor *t) {
    int64_t shape[3] = {t->shape[0], t->shape[1], t->shape[2] * t->shape[3]};
    return sd_tensor_sub(t, 0, 3, shape);
}

static int64_t group_size(const sd_ssm_config *m) { return (int64_t)m->num_heads * m->head_dim / m->n_groups; }

static const sd_tensor *conv_bias(const sd_ssm_config *m, const sd_tensor *b) { return m->use_conv_bias ? b : NULL; }
static sd_tensor *conv_bias_grad(const sd_ssm_config *m, sd_tensor *b) { return m->use_conv_bias ? b : NULL; }

/* ---------------------------------------------------------------- activations */

static int acts_alloc(sd_ctx *ctx, sd_student_acts *a, const sd_model_config *cfg, int64_t B, int64_t T) {
    dims k = dims_of(cfg);
    a->layers = sd_calloc((size_t)cfg->num_layers, sizeof *a->layers, "student activations");
    if (!a->layers) return SD_ERR_SYS;
    a->num_layers = cfg->num_layers;
    for (int l = 0; l < cfg->num_layers; l++) SD_TRY(sd_student_layer_acts_init(ctx, &a->layers[l], cfg, l, B, T));
    SD_TRY(sd_tensor_act(ctx, &a->x_last, 3, B, T, k.d, 0));
    SD_TRY(sd_tensor_act(ctx, &a->xn_final, 3, B, T, k.d, 0));
    SD_TRY(sd_tensor_act(ctx, &a->logits, 3, B, T, k.V, 0)); /* BF16 on CUDA: 2 bytes x B T V */
    SD_TRY(sd_tensor_new_f32(ctx, &a->losses, 1, B * T, 0, 0, 0));
    int64_t shape[2] = {B, T};
    SD_TRY(sd_tensor_alloc(&a->targets_host, SD_I32, 2, shape));
    return sd_tensor_new(ctx, &a->targets, SD_I32, 2, shape);
}

int sd_student_acts_init(sd_ctx *ctx, sd_student_acts *a, const sd_model_config *cfg, int64_t batch, int64_t T) {
    memset(a, 0, sizeof *a);
    a->batch = batch;
    a->T = T;
    int rc = acts_alloc(ctx, a, cfg, batch, T);
    if (rc != SD_OK) sd_student_acts_free(a);
    return rc;
}

void sd_student_acts_free(sd_student_acts *a) {
    for (int l = 0; a->layers && l < a->num_layers; l++) sd_student_layer_acts_free(&a->layers[l]);
    free(a->layers);
    sd_tensor *all[] = {&a->x_last, &a->xn_final, &a->logits, &a->targets, &a->targets_host, &a->losses};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------------- gradient set */

int sd_student_grads_init_in(const sd_student *s, sd_student *g, const sd_weights *views) {
    memset(g, 0, sizeof *g);
    sd_weights w;
    sd_weights_init(&w);
    int rc = SD_OK;
    for (int i = 0; rc == SD_OK && i < s->w.n; i++) {
        const sd_tensor *p = &s->w.items[i].t, *v = sd_weights_find(views, s->w.items[i].name);
        sd_tensor t;
        if (v && (v->dtype != SD_F32 || v->device != p->device || !sd_same_shape(v, p)))
            rc = sd_fail(SD_ERR_INTERNAL, "gradient view of '%s' does not match the parameter", s->w.items[i].name);
        else if (v) t = *v, t.owns = 0;
        else rc = sd_tensor_new_on(p->device, &t, SD_F32, p->ndim, p->shape);
        if (rc == SD_OK) rc = sd_weights_add(&w, s->w.items[i].name, t); /* frees t on failure */
    }
    if (rc == SD_OK) rc = sd_student_init(g, &s->cfg, &w, "gradients");
    sd_weights_free(&w);
    return rc;
}

int sd_student_grads_init(const sd_student *s, sd_student *g) {
    sd_weights none;
    sd_weights_init(&none);
    return sd_student_grads_init_in(s, g, &none);
}

int sd_student_grads_zero(sd_ctx *ctx, sd_student *g) {
    for (int i = 0; i < g->w.n; i++) SD_TRY(sd_zero(ctx, &g->w.items[i].t));
    return SD_OK;
}

/* ---------------------------------------------------------------- random student */

typedef enum { R_NORMAL, R_NORM, R_A_LOG, R_DT_BIAS, R_ONE } rand_kind;

static int add_random(sd_weights *w, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, rand_kind kind,
                      float scale, uint64_t *rng) {
    sd_tensor t;
    SD_TRY(sd_tensor_f32(&t, ndim, d0, d1, d2, 0));
    float *p = t.data;
    for (int64_t i = 0; i < sd_numel(&t); i++) {
        float u = sd_rng_uniform(rng);
        switch (kind) {
        case R_NORMAL: p[i] = scale * sd_rng_normal(rng); break;
        case R_NORM: p[i] = 1.0f + 0.1f * (2 * u - 1); break;
        case R_A_LOG: p[i] = logf(1.0f + 15.0f * u); break;
        case R_DT_BIAS: p[i] = -4.6f + 2.3f * u; break; /* softplus ~ 1e-2 .. 1e-1 */
        case R_ONE: p[i] = 1.0f + 0.2f * (2 * u - 1); break;
        }
    }
    return sd_weights_add(w, name, t); /* frees t on failure */
}

/* Layer-local tensor "backbone.layers.{l}.SUFFIX". */
static const char *layer_name(char *buf, size_t n, int l, const char *suffix) {
    snprintf(buf, n, "backbone.layers.%d.%s", l, suffix);
    return buf;
}

static int add_random_mixer(sd_weights *w, const sd_model_config *c, int l, uint64_t *rng) {
    dims k = dims_of(c);
    const sd_ssm_config *m = &c->ssm;
    char n[160];
    float sd_in = 1.0f / sqrtf((float)k.d), sd_out = 1.0f / sqrtf((float)k.di);
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mixer.in_proj.weight"), 2, 2 * k.di + 2 * k.gn + k.H, k.d, 0,
                      R_NORMAL, sd_in, rng));
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mixer.conv1d.weight"), 3, k.di + 2 * k.gn, 1, m->conv_kernel,
                      R_NORMAL, 0.3f, rng));
    if (m->use_conv_bias)
        SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mixer.conv1d.bias"), 1, k.di + 2 * k.gn, 0, 0, R_NORMAL, 0.1f, rng));
    if (m->mixer == SD_MIXER_DISCRETE) {
        SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mixer.z_bias"), 1, k.di, 0, 0, R_NORMAL, 0.1f, rng));
    } else {
        SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mixer.dt_bias"), 1, k.H, 0, 0, R_DT_BIAS, 0, rng));
        SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mixer.A_log"), 1, k.H, 0, 0, R_A_LOG, 0, rng));
        SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mixer.norm.weight"), 1, k.di, 0, 0, R_NORM, 0, rng));
    }
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mixer.D"), 1, k.H, 0, 0, R_ONE, 0, rng));
    return add_random(w, layer_name(n, sizeof n, l, "mixer.out_proj.weight"), 2, k.d, k.di, 0, R_NORMAL, sd_out, rng);
}

static int add_random_attention(sd_weights *w, const sd_model_config *c, int l, uint64_t *rng) {
    int64_t d = c->hidden_size, q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim;
    float s = 1.0f / sqrtf((float)d);
    char n[160];
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "self_attn.q_proj.weight"), 2, q, d, 0, R_NORMAL, s, rng));
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "self_attn.k_proj.weight"), 2, kv, d, 0, R_NORMAL, s, rng));
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "self_attn.v_proj.weight"), 2, kv, d, 0, R_NORMAL, s, rng));
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "self_attn.o_proj.weight"), 2, d, q, 0, R_NORMAL,
                      1.0f / sqrtf((float)q), rng));
    if (c->attention_bias) {
        SD_TRY(add_random(w, layer_name(n, sizeof n, l, "self_attn.q_proj.bias"), 1, q, 0, 0, R_NORMAL, 0.1f, rng));
        SD_TRY(add_random(w, layer_name(n, sizeof n, l, "self_attn.k_proj.bias"), 1, kv, 0, 0, R_NORMAL, 0.1f, rng));
        SD_TRY(add_random(w, layer_name(n, sizeof n, l, "self_attn.v_proj.bias"), 1, kv, 0, 0, R_NORMAL, 0.1f, rng));
    }
    if (c->o_proj_bias)
        SD_TRY(add_random(w, layer_name(n, sizeof n, l, "self_attn.o_proj.bias"), 1, d, 0, 0, R_NORMAL, 0.1f, rng));
    return SD_OK;
}

static int add_random_mlp(sd_weights *w, const sd_model_config *c, int l, uint64_t *rng) {
    int64_t d = c->hidden_size, I = c->intermediate_size;
    char n[160];
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "post_attention_layernorm.weight"), 1, d, 0, 0, R_NORM, 0, rng));
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mlp.gate_proj.weight"), 2, I, d, 0, R_NORMAL, 1.0f / sqrtf((float)d), rng));
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, "mlp.up_proj.weight"), 2, I, d, 0, R_NORMAL, 1.0f / sqrtf((float)d), rng));
    return add_random(w, layer_name(n, sizeof n, l, "mlp.down_proj.weight"), 2, d, I, 0, R_NORMAL, 1.0f / sqrtf((float)I), rng);
}

static int add_random_layer(sd_weights *w, const sd_model_config *c, int l, uint64_t *rng) {
    char n[160];
    SD_TRY(add_random(w, layer_name(n, sizeof n, l, sd_student_names_of(c).layer_norm), 1, c->hidden_size, 0, 0, R_NORM,
                      0, rng));
    int attn = c->arch == SD_ARCH_STUDENT && c->attn_layer[l];
    SD_TRY(attn ? add_random_attention(w, c, l, rng) : add_random_mixer(w, c, l, rng));
    return sd_student_has_mlp(c) ? add_random_mlp(w, c, l, rng) : SD_OK;
}

static int add_random_all(sd_weights *w, const sd_model_config *c, uint64_t *rng) {
    sd_student_names names = sd_student_names_of(c);
    SD_TRY(add_random(w, names.embed, 2, c->vocab_size, c->hidden_size, 0, R_NORMAL, 1.0f, rng));
    for (int l = 0; l < c->num_layers; l++) SD_TRY(add_random_layer(w, c, l, rng));
    SD_TRY(add_random(w, names.final_norm, 1, c->hidden_size, 0, 0, R_NORM, 0, rng));
    if (!c->tie_word_embeddings)
        SD_TRY(add_random(w, "lm_head.weight", 2, c->vocab_size, c->hidden_size, 0, R_NORMAL,
                          1.0f / sqrtf((float)c->hidden_size), rng));
    return SD_OK;
}

int sd_student_init_random(sd_student *s, const sd_model_config *cfg, uint64_t seed) {
    memset(s, 0, sizeof *s);
    uint64_t rng;
    sd_rng_seed(&rng, seed);
    sd_weights w;
    sd_weights_init(&w);
    int rc = add_random_all(&w, cfg, &rng);
    if (rc == SD_OK) rc = sd_student_init(s, cfg, &w, "random student");
    sd_weights_free(&w);
    return rc;
}

/* ---------------------------------------------------------------- forward */

/* targets[b, t] = ids[b, t + 1] (host tensors); the last position of each row is ignored. */
static int64_t make_targets(sd_tensor *targets, const sd_tensor *ids) {
    int64_t B = ids->shape[0], T = ids->shape[1], n = 0;
    const int32_t *in = ids->data;
    int32_t *tg = targets->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            int last = t + 1 == T;
            tg[b * T + t] = last ? SD_IGNORE_INDEX : in[b * T + t + 1];
            n += !last;
        }
    return n;
}

int sd_student_train_logits(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a) {
    if (ids->dtype != SD_I32 || ids->ndim != 2 || ids->shape[0] != a->batch || ids->shape[1] != a->T)
        return sd_fail(SD_ERR_INPUT, "student train forward: input_ids must be I32 [%lld, %lld]",
                       (long long)a->batch, (long long)a->T);
    int L = s->cfg.num_layers;
    sd_tensor ids_tmp;
    const sd_tensor *ids_use;
    SD_TRY(sd_tensor_on_ctx(ctx, ids, &ids_tmp, &ids_use));
    int rc = sd_embedding(ctx, L ? &a->layers[0].x : &a->x_last, ids_use, s->embed);
    sd_tensor_free(&ids_tmp);
    SD_TRY(rc);
    for (int l = 0; l < L; l++)
        SD_TRY(sd_student_layer_forward(ctx, s, l, &a->layers[l], l + 1 < L ? &a->layers[l + 1].x : &a->x_last));
    SD_TRY(sd_rmsnorm(ctx, &a->xn_final, &a->x_last, s->final_norm, s->cfg.norm_eps));
    return sd_linear(ctx, &a->logits, &a->xn_final, s->lm_head, NULL);
}

int sd_student_train_forward(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a,
                             float *loss) {
    SD_TRY(sd_student_train_logits(ctx, s, ids, a));
    if (ids->device == SD_DEV_CPU) {
        a->count = make_targets(&a->targets_host, ids);
    } else {
        sd_tensor ids_host;
        SD_TRY(sd_tensor_alloc(&ids_host, SD_I32, 2, ids->shape));
        int rc = sd_tensor_into_host(ctx, &ids_host, ids);
        if (rc == SD_OK) a->count = make_targets(&a->targets_host, &ids_host);
        sd_tensor_free(&ids_host);
        SD_TRY(rc);
    }
    SD_TRY(sd_copy_from_host(ctx, &a->targets, &a->targets_host));
    SD_TRY(sd_cross_entropy(ctx, &a->losses, &a->logits, &a->targets, SD_IGNORE_INDEX));
    double sum;
    SD_TRY(sd_sum_host(ctx, &a->losses, &sum));
    *loss = a->count ? (float)(sum / (double)a->count) : 0.0f;
    return SD_OK;
}

/* ---------------------------------------------------------------- backward */

/* Gradient buffers of one block, reused (zeroed) layer after layer; only the parts the
 * model's layer kinds use are allocated. */
typedef struct {
    sd_tensor dxn, dyn, dy, dz, dx_pre, db_pre, dc_pre, dxs, dbs, dcs, ddt, dloga, ddt_raw; /* mixer */
    sd_tensor dq, dk, dv, datt;                                                          /* attention */
    sd_tensor dhn, dgate, dup, dact;                                                     /* MLP */
} grad_scratch;

#define GRAD_SCRATCH_ALL(g)                                                                              \
    {&(g)->dxn, &(g)->dyn,   &(g)->dy,   &(g)->dz,  &(g)->dx_pre, &(g)->db_pre, &(g)->dc_pre, &(g)->dxs, \
     &(g)->dbs, &(g)->dcs,   &(g)->ddt,  &(g)->dloga, &(g)->ddt_raw, &(g)->dq,   &(g)->dk,               \
     &(g)->dv,  &(g)->datt,  &(g)->dhn,  &(g)->dgate, &(g)->dup,   &(g)->dact}

static void grad_scratch_free(grad_scratch *g) {
    sd_tensor *all[] = GRAD_SCRATCH_ALL(g);
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

static int grad_scratch_zero(sd_ctx *ctx, grad_scratch *g) {
    sd_tensor *all[] = GRAD_SCRATCH_ALL(g);
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) SD_TRY(sd_zero(ctx, all[i]));
    return SD_OK;
}

/* Activation gradients in sd_act_dtype (the GEMMs read them beside BF16 weights on CUDA); the
 * SSD's decay gradients ddt, dloga in F32. */
static int grad_scratch_alloc(sd_ctx *ctx, grad_scratch *g, const sd_model_config *c, int64_t B, int64_t T) {
    memset(g, 0, sizeof *g);
    dims k = dims_of(c);
    int any_attn = 0, any_ssm = 0;
    for (int l = 0; l < c->num_layers; l++) {
        int attn = c->arch == SD_ARCH_STUDENT && c->attn_layer[l];
        any_attn |= attn;
        any_ssm |= !attn;
    }
    SD_TRY(sd_tensor_act(ctx, &g->dxn, 3, B, T, k.d, 0));
    if (any_ssm) {
        SD_TRY(sd_tensor_act(ctx, &g->dyn, 3, B, T, k.di, 0));
        SD_TRY(sd_tensor_act(ctx, &g->dy, 4, B, T, k.H, k.P));
        SD_TRY(sd_tensor_act(ctx, &g->dz, 3, B, T, k.di, 0));
        SD_TRY(sd_tensor_act(ctx, &g->dx_pre, 3, B, T, k.di, 0));
        SD_TRY(sd_tensor_act(ctx, &g->db_pre, 3, B, T, k.gn, 0));
        SD_TRY(sd_tensor_act(ctx, &g->dc_pre, 3, B, T, k.gn, 0));
        SD_TRY(sd_tensor_act(ctx, &g->dxs, 4, B, T, k.H, k.P));
        SD_TRY(sd_tensor_act(ctx, &g->dbs, 4, B, T, k.G, k.N));
        SD_TRY(sd_tensor_act(ctx, &g->dcs, 4, B, T, k.G, k.N));
        SD_TRY(sd_tensor_new_f32(ctx, &g->ddt, 3, B, T, k.H, 0));
        SD_TRY(sd_tensor_new_f32(ctx, &g->dloga, 3, B, T, k.H, 0));
        SD_TRY(sd_tensor_act(ctx, &g->ddt_raw, 3, B, T, k.H, 0));
    }
    if (any_attn) {
        SD_TRY(sd_tensor_act(ctx, &g->dq, 4, B, T, c->num_heads, c->head_dim));
        SD_TRY(sd_tensor_act(ctx, &g->dk, 4, B, T, c->num_kv_heads, c->head_dim));
        SD_TRY(sd_tensor_act(ctx, &g->dv, 4, B, T, c->num_kv_heads, c->head_dim));
        SD_TRY(sd_tensor_act(ctx, &g->datt, 4, B, T, c->num_heads, c->head_dim));
    }
    if (sd_student_has_mlp(c)) {
        SD_TRY(sd_tensor_act(ctx, &g->dhn, 3, B, T, k.d, 0));
        SD_TRY(sd_tensor_act(ctx, &g->dgate, 3, B, T, c->intermediate_size, 0));
        SD_TRY(sd_tensor_act(ctx, &g->dup, 3, B, T, c->intermediate_size, 0));
        SD_TRY(sd_tensor_act(ctx, &g->dact, 3, B, T, c->intermediate_size, 0));
    }
    return SD_OK;
}

/* Backward of discretise (kernels/ssm_discretize.h), from dloga (and ddt) to dt_raw, and to
 * A_log for the standard mixer. */
static int discretise_backward(sd_ctx *ctx, grad_scratch *g, const sd_student_layer_acts *a,
                               const sd_student_layer *L, sd_tensor *da_log, const sd_ssm_config *m) {
    int standard = m->mixer == SD_MIXER_STANDARD;
    return sd_ssm_discretize_backward(ctx, &g->ddt_raw, standard ? da_log : NULL, &g->dloga, standard ? &g->ddt : NULL,
                                      &a->dt_raw, &a->loga, standard ? L->a_log : NULL, (float)m->time_step_min,
                                      (float)m->time_step_max);
}

/* The mixer's output side in reverse: dmix -> dy (SSD output) and dz (gate argument). */
static int mix_out_backward(sd_ctx *ctx, const sd_model_config *c, const sd_student_layer *L,
                            const sd_student_layer_acts *a, const sd_tensor *dmix, grad_scratch *g, sd_student_layer *G) {
    const sd_ssm_config *m = &c->ssm;
    sd_tensor yn = flat3(&a->yn), y = flat3(&a->y), dy = flat3(&g->dy);
    SD_TRY(sd_linear_backward(ctx, &g->dyn, G->out_proj, NULL, dmix, &yn, L->out_proj));
    if (m->mixer == SD_MIXER_DISCRETE) return sd_swiglu_backward(ctx, &g->dz, &dy, &g->dyn, &a->z, &y);
    return sd_gated_rmsnorm_backward(ctx, &dy, &g->dz, G->gate_norm, &g->dyn, &y, &a->z, L->gate_norm,
                                     group_size(m), c->norm_eps);
}

/* The SSM mixer's input side in reverse, from the gradients at the SSD's inputs (g->dxs,
 * dbs, dcs, dloga, ddt) and at the gate (g->dz) to the parameters and g->dxn. */
static int ssm_backward_inputs(sd_ctx *ctx, const sd_student *st, int l, const sd_student_layer_acts *a,
                               grad_scratch *g, sd_student *gs) {
    const sd_ssm_config *m = &st->cfg.ssm;
    const sd_student_layer *L = &st->layers[l];
    sd_student_layer *G = &gs->layers[l];
    int standard = m->mixer == SD_MIXER_STANDARD, silu = standard;
    sd_tensor dxs = flat3(&g->dxs), dbs = flat3(&g->dbs), dcs = flat3(&g->dcs);
    SD_TRY(discretise_backward(ctx, g, a, L, G->a_log, m));
    SD_TRY(sd_conv1d_backward(ctx, &g->dx_pre, &G->conv_x, conv_bias_grad(m, &G->bias_x), &dxs, &a->x_pre,
                              &L->conv_x, conv_bias(m, &L->bias_x), silu));
    SD_TRY(sd_conv1d_backward(ctx, &g->db_pre, &G->conv_b, conv_bias_grad(m, &G->bias_b), &dbs, &a->b_pre,
                              &L->conv_b, conv_bias(m, &L->bias_b), silu));
    SD_TRY(sd_conv1d_backward(ctx, &g->dc_pre, &G->conv_c, conv_bias_grad(m, &G->bias_c), &dcs, &a->c_pre,
                              &L->conv_c, conv_bias(m, &L->bias_c), silu));
    SD_TRY(sd_linear_backward(ctx, &g->dxn, &G->w_z, standard ? NULL : G->z_bias, &g->dz, &a->xn, &L->w_z));
    SD_TRY(sd_linear_backward(ctx, &g->dxn, &G->w_x, NULL, &g->dx_pre, &a->xn, &L->w_x));
    SD_TRY(sd_linear_backward(ctx, &g->dxn, &G->w_b, NULL, &g->db_pre, &a->xn, &L->w_b));
    SD_TRY(sd_linear_backward(ctx, &g->dxn, &G->w_c, NULL, &g->dc_pre, &a->xn, &L->w_c));
    return sd_linear_backward(ctx, &g->dxn, &G->w_dt, standard ? G->dt_bias : NULL, &g->ddt_raw, &a->xn, &L->w_dt);
}

/* The SSM mixer in reverse: dmix (gradient at its output) -> g->dxn (at the normed input). */
static int ssm_backward(sd_ctx *ctx, const sd_student *st, int l, const sd_student_layer_acts *a,
                        const sd_tensor *dmix, grad_scratch *g, sd_student *gs) {
    const sd_ssm_config *m = &st->cfg.ssm;
    const sd_student_layer *L = &st->layers[l];
    sd_student_layer *G = &gs->layers[l];
    int standard = m->mixer == SD_MIXER_STANDARD;
    SD_TRY(mix_out_backward(ctx, &st->cfg, L, a, dmix, g, G));
    SD_TRY(sd_ssd_chunked_backward(ctx, &g->dxs, standard ? &g->ddt : NULL, &g->dloga, &g->dbs, &g->dcs, G->d_skip,
                                   &g->dy, &a->xs, standard ? &a->dt : NULL, &a->loga, &a->bs, &a->cs, L->d_skip,
                                   m->chunk_size, NULL, NULL, NULL));
    return ssm_backward_inputs(ctx, st, l, a, g, gs);
}

/* A hybrid layer's attention in reverse: dmix -> g->dxn. */
static int attn_backward(sd_ctx *ctx, const sd_student *st, int l, const sd_student_layer_acts *a,
                         const sd_tensor *dmix, grad_scratch *g, sd_student *gs) {
    const sd_model_config *c = &st->cfg;
    const sd_student_layer *L = &st->layers[l];
    sd_student_layer *G = &gs->layers[l];
    sd_tensor att = flat3(&a->att), datt = flat3(&g->datt);
    sd_tensor dq = flat3(&g->dq), dk = flat3(&g->dk), dv = flat3(&g->dv);
    SD_TRY(sd_linear_backward(ctx, &datt, G->wo, G->bo, dmix, &att, L->wo));
    SD_TRY(sd_attention_backward(ctx, &g->dq, &g->dk, &g->dv, &g->datt, &a->q, &a->k, &a->v,
                                 1.0f / sqrtf((float)c->head_dim), NULL));
    SD_TRY(sd_rotary_backward(ctx, &g->dq, &c->rope, 0));
    SD_TRY(sd_rotary_backward(ctx, &g->dk, &c->rope, 0));
    SD_TRY(sd_linear_backward(ctx, &g->dxn, G->wq, G->bq, &dq, &a->xn, L->wq));
    SD_TRY(sd_linear_backward(ctx, &g->dxn, G->wk, G->bk, &dk, &a->xn, L->wk));
    return sd_linear_backward(ctx, &g->dxn, G->wv, G->bv, &dv, &a->xn, L->wv);
}

/* The MLP in reverse: dx arrives as the gradient at the block output and leaves as the one
 * at h (the residual passes it through; the MLP's part is added by the norm's backward). */
static int mlp_backward(sd_ctx *ctx, const sd_model_config *c, const sd_student_layer *L,
                        const sd_student_layer_acts *a, sd_tensor *dx, grad_scratch *g, sd_student_layer *G) {
    SD_TRY(sd_linear_backward(ctx, &g->dact, G->w_down, NULL, dx, &a->act, L->w_down));
    SD_TRY(sd_swiglu_backward(ctx, &g->dgate, &g->dup, &g->dact, &a->gate, &a->up));
    SD_TRY(sd_linear_backward(ctx, &g->dhn, G->w_gate, NULL, &g->dgate, &a->hn, L->w_gate));
    SD_TRY(sd_linear_backward(ctx, &g->dhn, G->w_up, NULL, &g->dup, &a->hn, L->w_up));
    return sd_rmsnorm_backward(ctx, dx, G->mlp_norm, &g->dhn, &a->h, L->mlp_norm, c->norm_eps);
}

/* One block in reverse: dx holds the gradient at the block's output and leaves with the
 * gradient at its input (the residuals pass it through; the branches' parts are added). */
static int layer_backward(sd_ctx *ctx, const sd_student *st, int l, const sd_student_layer_acts *a, sd_tensor *dx,
                          grad_scratch *g, sd_student *gs) {
    const sd_model_config *c = &st->cfg;
    const sd_student_layer *L = &st->layers[l];
    sd_student_layer *G = &gs->layers[l];
    SD_TRY(grad_scratch_zero(ctx, g));
    if (sd_student_has_mlp(c)) SD_TRY(mlp_backward(ctx, c, L, a, dx, g, G));
    /* dx is now the gradient at h = x + mix, hence also at mix */
    SD_TRY(L->attn ? attn_backward(ctx, st, l, a, dx, g, gs) : ssm_backward(ctx, st, l, a, dx, g, gs));
    return sd_rmsnorm_backward(ctx, dx, G->norm, &g->dxn, &a->x, L->norm, c->norm_eps);
}

static int grads_ready(sd_student *gs, int event) {
    return gs->grads_ready ? gs->grads_ready(gs->grads_ready_arg, event) : SD_OK;
}

/* From dlogits down to the embedding. */
static int backward(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, const sd_student_acts *a, sd_student *gs,
                    const sd_tensor *dlogits, sd_tensor *dx, grad_scratch *g) {
    const sd_model_config *c = &s->cfg;
    /* g->dxn doubles as the gradient at norm_f's output */
    SD_TRY(sd_zero(ctx, &g->dxn));
    SD_TRY(sd_linear_backward(ctx, &g->dxn, gs->lm_head, NULL, dlogits, &a->xn_final, s->lm_head));
    SD_TRY(sd_rmsnorm_backward(ctx, dx, gs->final_norm, &g->dxn, &a->x_last, s->final_norm, c->norm_eps));
    SD_TRY(grads_ready(gs, 0));
    for (int l = c->num_layers - 1; l >= 0; l--) {
        SD_TRY(layer_backward(ctx, s, l, &a->layers[l], dx, g, gs));
        SD_TRY(grads_ready(gs, c->num_layers - l));
    }
    sd_tensor ids_tmp;
    const sd_tensor *ids_use;
    SD_TRY(sd_tensor_on_ctx(ctx, ids, &ids_tmp, &ids_use));
    int rc = sd_embedding_backward(ctx, gs->embed, dx, ids_use);
    sd_tensor_free(&ids_tmp);
    if (rc == SD_OK) rc = grads_ready(gs, c->num_layers + 1);
    return rc;
}

int sd_student_backward_logits(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, const sd_student_acts *a,
                               const sd_tensor *dlogits, sd_student *g) {
    sd_tensor dx = {0}, dl = {0};
    grad_scratch gs;
    int rc = grad_scratch_alloc(ctx, &gs, &s->cfg, a->batch, a->T);
    if (rc == SD_OK) rc = sd_tensor_act(ctx, &dx, 3, a->batch, a->T, s->cfg.hidden_size, 0);
    /* the lm_head GEMM reads dlogits beside the head's weights: in their dtype (BF16 on CUDA) */
    const sd_tensor *dlg = dlogits;
    if (rc == SD_OK && dlogits->dtype != s->lm_head->dtype) {
        rc = sd_tensor_new(ctx, &dl, s->lm_head->dtype, dlogits->ndim, dlogits->shape);
        if (rc == SD_OK) rc = sd_copy(ctx, &dl, dlogits);
        dlg = &dl;
    }
    if (rc == SD_OK) rc = backward(ctx, s, ids, a, g, dlg, &dx, &gs);
    grad_scratch_free(&gs);
    sd_tensor_free(&dx);
    sd_tensor_free(&dl);
    return rc;
}

int sd_student_backward(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, const sd_student_acts *a,
                        sd_student *g) {
    if (a->count == 0) return SD_OK; /* nothing counted: the mean loss has no gradient */
    sd_tensor dlogits = {0};
    int rc = sd_tensor_act(ctx, &dlogits, 3, a->batch, a->T, s->cfg.vocab_size, 0);
    if (rc == SD_OK)
        rc = sd_cross_entropy_backward(ctx, &dlogits, NULL, 1.0f / (float)a->count, &a->logits, &a->targets,
                                       SD_IGNORE_INDEX);
    if (rc == SD_OK) rc = sd_student_backward_logits(ctx, s, ids, a, &dlogits, g);
    sd_tensor_free(&dlogits);
    return rc;
}

/* ---------------------------------------------------------------- one mixer (stages 1 and 2) */

int sd_student_mixer_forward(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a) {
    return sd_student_mixer_forward_impl(ctx, s, l, a, 0);
}

int sd_student_ssm_inputs(sd_ctx *ctx, const sd_student *s, int l, sd_student_layer_acts *a) {
    if (s->layers[l].attn) return sd_fail(SD_ERR_INTERNAL, "student layer %d is an attention layer: no SSM inputs", l);
    return sd_student_mixer_forward_impl(ctx, s, l, a, 1);
}

int sd_student_mixer_backward(sd_ctx *ctx, const sd_student *s, int l, const sd_student_layer_acts *a,
                              const sd_tensor *dmix, sd_student *g) {
    grad_scratch gs;
    int rc = grad_scratch_alloc(ctx, &gs, &s->cfg, a->x.shape[0], a->x.shape[1]);
    if (rc == SD_OK) rc = grad_scratch_zero(ctx, &gs);
    if (rc == SD_OK) {
        rc = s->layers[l].attn ? attn_backward(ctx, s, l, a, dmix, &gs, g) : ssm_backward(ctx, s, l, a, dmix, &gs, g);
    }
    /* the pre-mixer norm is the teacher's (copied, and not a mixer parameter): its gradient
     * and the one at x are not needed by stages 1 and 2 */
    grad_scratch_free(&gs);
    return rc;
}

int sd_student_layer_backward(sd_ctx *ctx, const sd_student *s, int l, const sd_student_layer_acts *a,
                              const sd_tensor *dout, sd_student *g) {
    sd_tensor dx = {0};
    grad_scratch gs;
    int rc = grad_scratch_alloc(ctx, &gs, &s->cfg, a->x.shape[0], a->x.shape[1]);
    if (rc == SD_OK) rc = sd_tensor_act(ctx, &dx, 3, a->x.shape[0], a->x.shape[1], s->cfg.hidden_size, 0);
    if (rc == SD_OK) rc = sd_copy(ctx, &dx, dout);
    if (rc == SD_OK) rc = layer_backward(ctx, s, l, a, &dx, &gs, g);
    grad_scratch_free(&gs);
    sd_tensor_free(&dx);
    return rc;
}

/* Copies src into dst (converting the dtype), or zeroes dst when src is NULL. */
static int copy_or_zero(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src) {
    return src ? sd_copy(ctx, dst, src) : sd_zero(ctx, dst);
}

int sd_student_ssm_inputs_backward(sd_ctx *ctx, const sd_student *s, int l, const sd_student_layer_acts *a,
                                   const sd_tensor *dB, const sd_tensor *dC, const sd_tensor *dloga,
                                   const sd_tensor *ddt, sd_student *g) {
    grad_scratch gs;
    int rc = grad_scratch_alloc(ctx, &gs, &s->cfg, a->x.shape[0], a->x.shape[1]);
    if (rc == SD_OK) rc = grad_scratch_zero(ctx, &gs);
    if (rc == SD_OK) rc = copy_or_zero(ctx, &gs.dbs, dB);
    if (rc == SD_OK) rc = copy_or_zero(ctx, &gs.dcs, dC);
    if (rc == SD_OK) rc = copy_or_zero(ctx, &gs.dloga, dloga);
    if (rc == SD_OK) rc = copy_or_zero(ctx, &gs.ddt, s->cfg.ssm.mixer == SD_MIXER_STANDARD ? ddt : NULL);
    if (rc == SD_OK) rc = ssm_backward_inputs(ctx, s, l, a, &gs, g);
    grad_scratch_free(&gs);
    return rc;
}
