#include "distill/transfer.h"
#include "common/error.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------- config */

static void fill_defaults(const sd_model_config *t, const sd_student_spec *in, sd_student_spec *s) {
    *s = *in;
    if (!s->num_heads) s->num_heads = t->num_heads;
    if (!s->expand) s->expand = 1;
    if (!s->head_dim && s->num_heads > 0) s->head_dim = s->expand * t->hidden_size / s->num_heads;
    if (!s->state_size) s->state_size = 64;
    if (!s->n_groups) s->n_groups = s->mixer == SD_MIXER_DISCRETE ? s->num_heads : 1;
    if (!s->conv_kernel) s->conv_kernel = 4;
    if (!s->chunk_size) s->chunk_size = 64;
}

/* The attention init maps head h of the mixer onto the teacher's query head h: C_h <- q_h,
 * B_h <- k of h's KV group, x_h <- v of that group (MambaInLlama, DESIGN.md section 4). */
static int check_attention_init(const sd_model_config *t, const sd_student_spec *s, const char *where) {
    if (s->num_heads != t->num_heads || s->head_dim != t->head_dim || s->state_size != t->head_dim ||
        s->n_groups != s->num_heads)
        return sd_fail(SD_ERR_INPUT, "%s: field 'init': \"attention\" needs num_heads = %d (the teacher's heads), "
                       "head_dim = state_size = %d (its head dim) and n_groups = num_heads; got %d heads of dim %d, "
                       "state_size %d, n_groups %d", where, t->num_heads, t->head_dim, s->num_heads, s->head_dim,
                       s->state_size, s->n_groups);
    return SD_OK;
}

int sd_student_config_for(const sd_model_config *teacher, const sd_student_spec *spec, const char *where,
                          sd_model_config *out) {
    sd_student_spec s;
    fill_defaults(teacher, spec, &s);
    if (s.mixer != SD_MIXER_DISCRETE && s.mixer != SD_MIXER_STANDARD)
        return sd_fail(SD_ERR_INPUT, "%s: field 'mixer': expected discrete or standard", where);
    if (s.num_heads <= 0 || s.head_dim <= 0 || s.state_size <= 0 || s.n_groups <= 0 || s.num_heads % s.n_groups)
        return sd_fail(SD_ERR_INPUT, "%s: field 'n_groups': %d heads of dim %d in %d groups (state %d) is not a shape",
                       where, s.num_heads, s.head_dim, s.n_groups, s.state_size);
    if (s.conv_kernel < 2 || s.conv_kernel > 4)
        return sd_fail(SD_ERR_INPUT, "%s: field 'conv_kernel': %d (supported: 2..4)", where, s.conv_kernel);
    if (s.init == SD_INIT_ATTENTION) SD_TRY(check_attention_init(teacher, &s, where));
    if (teacher->num_layers > SD_MAX_LAYERS)
        return sd_fail(SD_ERR_INPUT, "%s: the teacher has %d layers (a student has at most %d)", where,
                       teacher->num_layers, SD_MAX_LAYERS);
    for (int l = teacher->num_layers; l < SD_MAX_LAYERS; l++)
        if (s.attn_layer[l])
            return sd_fail(SD_ERR_INPUT, "%s: field 'attn_layers': layer %d does not exist (the teacher has %d)", where,
                           l, teacher->num_layers);
    *out = *teacher;
    out->arch = SD_ARCH_STUDENT;
    snprintf(out->model_type, sizeof out->model_type, "%s", sd_arch_name(SD_ARCH_STUDENT));
    out->ssm = (sd_ssm_config){.mixer = s.mixer, .num_heads = s.num_heads, .head_dim = s.head_dim,
                               .state_size = s.state_size, .n_groups = s.n_groups, .conv_kernel = s.conv_kernel,
                               .use_conv_bias = 1, .use_bias = 0, .chunk_size = s.chunk_size,
                               .time_step_min = 0.0, .time_step_max = INFINITY};
    memcpy(out->attn_layer, s.attn_layer, sizeof out->attn_layer);
    return SD_OK;
}

/* ---------------------------------------------------------------- tensors */

/* A new zeroed F32 tensor called "backbone.layers.{l}.SUFFIX" (l < 0: SUFFIX is the name). */
static int add_zero(sd_weights *w, int l, const char *suffix, int ndim, int64_t d0, int64_t d1, int64_t d2,
                    sd_tensor **out) {
    char name[192];
    if (l < 0) snprintf(name, sizeof name, "%s", suffix);
    else snprintf(name, sizeof name, "backbone.layers.%d.%s", l, suffix);
    sd_tensor t;
    SD_TRY(sd_tensor_f32(&t, ndim, d0, d1, d2, 0));
    int rc = sd_weights_add(w, name, t);
    if (rc != SD_OK) {
        sd_tensor_free(&t);
        return rc;
    }
    *out = sd_weights_find(w, name);
    return SD_OK;
}

/* A copy of a teacher tensor under the student's name. */
static int add_copy(sd_weights *w, int l, const char *suffix, const sd_tensor *src) {
    sd_tensor *t;
    int64_t d[3] = {src->shape[0], src->ndim > 1 ? src->shape[1] : 0, 0};
    SD_TRY(add_zero(w, l, suffix, src->ndim, d[0], d[1], d[2], &t));
    memcpy(t->data, src->data, sd_nbytes(src));
    return SD_OK;
}

static void fill(float *p, int64_t n, float v) {
    for (int64_t i = 0; i < n; i++) p[i] = v;
}

/* nn.Linear's default init, kaiming_uniform(a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
static void fill_linear(float *p, int64_t rows, int64_t fan_in, uint64_t *rng) {
    float bound = 1.0f / sqrtf((float)fan_in);
    for (int64_t i = 0; i < rows * fan_in; i++) p[i] = bound * (2.0f * sd_rng_uniform(rng) - 1.0f);
}

/* ---------------------------------------------------------------- mixers */

typedef struct {
    int64_t d, H, P, N, G, di, gn, W;
    int64_t x0, b0, c0, z0, a0; /* in_proj row offsets of each part */
} mixer_dims;

static mixer_dims dims_of(const sd_model_config *c) {
    const sd_ssm_config *m = &c->ssm;
    mixer_dims k = {c->hidden_size, m->num_heads, m->head_dim, m->state_size, m->n_groups, 0, 0, m->conv_kernel,
                    0, 0, 0, 0, 0};
    k.di = k.H * k.P;
    k.gn = k.G * k.N;
    /* discrete x | B | C | z | a (phi-mamba), standard z | x | B | C | dt (mamba_ssm) */
    int discrete = m->mixer == SD_MIXER_DISCRETE;
    k.x0 = discrete ? 0 : k.di;
    k.b0 = k.x0 + k.di;
    k.c0 = k.b0 + k.gn;
    k.z0 = discrete ? k.di + 2 * k.gn : 0;
    k.a0 = 2 * k.di + 2 * k.gn;
    return k;
}

/* The standard mixer's dt, A and gate norm as mamba_ssm Mamba2 initialises them: dt
 * log-uniform in [1e-3, 1e-1] stored as its inverse softplus, A = -U[1, 16], norm 1. */
static int init_standard_extras(sd_weights *w, int l, const mixer_dims *k, uint64_t *rng) {
    sd_tensor *dt_bias, *a_log, *norm;
    SD_TRY(add_zero(w, l, "mixer.dt_bias", 1, k->H, 0, 0, &dt_bias));
    SD_TRY(add_zero(w, l, "mixer.A_log", 1, k->H, 0, 0, &a_log));
    SD_TRY(add_zero(w, l, "mixer.norm.weight", 1, k->di, 0, 0, &norm));
    float *db = dt_bias->data, *al = a_log->data;
    for (int64_t h = 0; h < k->H; h++) {
        double dt = exp(log(1e-3) + sd_rng_uniform(rng) * (log(1e-1) - log(1e-3)));
        db[h] = (float)(dt + log(-expm1(-dt))); /* softplus^-1(dt) */
        al[h] = logf(1.0f + 15.0f * sd_rng_uniform(rng));
    }
    fill(norm->data, k->di, 1.0f);
    return SD_OK;
}

/* Copies rows [r0, r0 + n) of src into rows starting at dst_row of in_proj [rows, d]. */
static void copy_rows(sd_tensor *in_proj, int64_t dst_row, const sd_tensor *src, int64_t r0, int64_t n) {
    int64_t d = in_proj->shape[1];
    memcpy((float *)in_proj->data + dst_row * d, (const float *)src->data + r0 * d, (size_t)(n * d) * sizeof(float));
}

/* The attention init: per mixer head h (= the teacher's query head h, of KV group g), x_h and
 * B_h from g's v and k rows, C_h from q_h's rows; the teacher's q/k/v biases go to the conv
 * bias of those channels, so that the identity conv reproduces q, k and v exactly. */
static void init_from_attention(const sd_teacher_layer *T, const sd_model_config *tc, const mixer_dims *k,
                                sd_tensor *in_proj, sd_tensor *conv_bias, sd_tensor *out_proj) {
    int64_t hd = tc->head_dim, rep = tc->num_heads / tc->num_kv_heads;
    float *cb = conv_bias->data;
    for (int64_t h = 0; h < k->H; h++) {
        int64_t g = h / rep;
        copy_rows(in_proj, k->x0 + h * hd, T->wv, g * hd, hd);
        copy_rows(in_proj, k->b0 + h * hd, T->wk, g * hd, hd);
        copy_rows(in_proj, k->c0 + h * hd, T->wq, h * hd, hd);
        for (int64_t i = 0; i < hd; i++) {
            cb[h * hd + i] = T->bv ? ((const float *)T->bv->data)[g * hd + i] : 0.0f;
            cb[k->di + h * hd + i] = T->bk ? ((const float *)T->bk->data)[g * hd + i] : 0.0f;
            cb[k->di + k->gn + h * hd + i] = T->bq ? ((const float *)T->bq->data)[h * hd + i] : 0.0f;
        }
    }
    memcpy(out_proj->data, T->wo->data, sd_nbytes(T->wo));
}

static int init_mixer(sd_weights *w, int l, const sd_model_config *c, const sd_teacher *t, sd_mixer_init init,
                      uint64_t *rng) {
    mixer_dims k = dims_of(c);
    int discrete = c->ssm.mixer == SD_MIXER_DISCRETE;
    sd_tensor *in_proj, *conv_w, *conv_b, *d_skip, *out_proj;
    SD_TRY(add_zero(w, l, "mixer.in_proj.weight", 2, 2 * k.di + 2 * k.gn + k.H, k.d, 0, &in_proj));
    SD_TRY(add_zero(w, l, "mixer.conv1d.weight", 3, k.di + 2 * k.gn, 1, k.W, &conv_w));
    SD_TRY(add_zero(w, l, "mixer.conv1d.bias", 1, k.di + 2 * k.gn, 0, 0, &conv_b));
    SD_TRY(add_zero(w, l, "mixer.D", 1, k.H, 0, 0, &d_skip));
    SD_TRY(add_zero(w, l, "mixer.out_proj.weight", 2, k.d, k.di, 0, &out_proj));
    fill_linear(in_proj->data, in_proj->shape[0], k.d, rng);
    fill_linear(out_proj->data, k.d, k.di, rng);
    /* identity conv: the last tap (the current token) 1, the others and the bias 0 */
    float *cw = conv_w->data;
    for (int64_t ch = 0; ch < k.di + 2 * k.gn; ch++) cw[ch * k.W + k.W - 1] = 1.0f;
    fill(d_skip->data, k.H, 1.0f);
    if (init == SD_INIT_ATTENTION) init_from_attention(&t->layers[l], &t->cfg, &k, in_proj, conv_b, out_proj);
    if (!discrete) return init_standard_extras(w, l, &k, rng);
    /* discrete: z rows 0 and z_bias with silu(z_bias) = 1, so the gate starts open (MOHAWK) */
    sd_tensor *z_bias;
    memset((float *)in_proj->data + k.z0 * k.d, 0, (size_t)(k.di * k.d) * sizeof(float));
    SD_TRY(add_zero(w, l, "mixer.z_bias", 1, k.di, 0, 0, &z_bias));
    fill(z_bias->data, k.di, SD_Z_BIAS_OPEN);
    return SD_OK;
}

/* ---------------------------------------------------------------- whole student */

static int copy_attention(sd_weights *w, int l, const sd_teacher_layer *T) {
    SD_TRY(add_copy(w, l, "self_attn.q_proj.weight", T->wq));
    SD_TRY(add_copy(w, l, "self_attn.k_proj.weight", T->wk));
    SD_TRY(add_copy(w, l, "self_attn.v_proj.weight", T->wv));
    SD_TRY(add_copy(w, l, "self_attn.o_proj.weight", T->wo));
    if (T->bq) SD_TRY(add_copy(w, l, "self_attn.q_proj.bias", T->bq));
    if (T->bk) SD_TRY(add_copy(w, l, "self_attn.k_proj.bias", T->bk));
    if (T->bv) SD_TRY(add_copy(w, l, "self_attn.v_proj.bias", T->bv));
    if (T->bo) SD_TRY(add_copy(w, l, "self_attn.o_proj.bias", T->bo));
    return SD_OK;
}

static int build(const sd_teacher *t, const sd_model_config *c, sd_mixer_init init, uint64_t *rng, sd_weights *w) {
    SD_TRY(add_copy(w, -1, "backbone.embedding.weight", t->embed));
    for (int l = 0; l < c->num_layers; l++) {
        const sd_teacher_layer *T = &t->layers[l];
        SD_TRY(add_copy(w, l, "input_layernorm.weight", T->input_norm));
        SD_TRY(c->attn_layer[l] ? copy_attention(w, l, T) : init_mixer(w, l, c, t, init, rng));
        SD_TRY(add_copy(w, l, "post_attention_layernorm.weight", T->post_norm));
        SD_TRY(add_copy(w, l, "mlp.gate_proj.weight", T->w_gate));
        SD_TRY(add_copy(w, l, "mlp.up_proj.weight", T->w_up));
        SD_TRY(add_copy(w, l, "mlp.down_proj.weight", T->w_down));
    }
    SD_TRY(add_copy(w, -1, "backbone.final_layernorm.weight", t->final_norm));
    return c->tie_word_embeddings ? SD_OK : add_copy(w, -1, "lm_head.weight", t->lm_head);
}

int sd_student_from_teacher(const sd_teacher *t, const sd_model_config *scfg, sd_mixer_init init, uint64_t seed,
                            sd_student *out) {
    memset(out, 0, sizeof *out);
    if (scfg->arch != SD_ARCH_STUDENT || scfg->num_layers != t->cfg.num_layers ||
        scfg->hidden_size != t->cfg.hidden_size || scfg->vocab_size != t->cfg.vocab_size)
        return sd_fail(SD_ERR_INTERNAL, "student config does not come from this teacher (%s)", t->src);
    if (t->cfg.mlp_bias)
        return sd_fail(SD_ERR_INPUT, "%s: field 'mlp_bias': a teacher with MLP biases cannot be distilled yet", t->src);
    uint64_t rng;
    sd_rng_seed(&rng, seed);
    sd_weights w;
    sd_weights_init(&w);
    int rc = build(t, scfg, init, &rng, &w);
    if (rc == SD_OK) rc = sd_student_init(out, scfg, &w, "student from teacher");
    sd_weights_free(&w);
    return rc;
}
