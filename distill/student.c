#include "distill/student.h"
#include "common/error.h"
#include "kernels/conv1d.h"
#include "kernels/gated_norm.h"
#include "kernels/ssd.h"

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
    return sd_tensor_view(SD_F32, (float *)t->data + r0 * cols, cols == 1 ? 1 : 2, shape);
}

static int get(const sd_weights *w, const char *src, sd_tensor **out, int ndim, int64_t d0, int64_t d1,
               int64_t d2, const char *fmt, int layer) {
    char name[256];
    snprintf(name, sizeof name, fmt, layer);
    int64_t shape[3] = {d0, d1, d2};
    return sd_weights_get(w, src, name, ndim, shape, out);
}

static int wire_layer(const sd_model_config *c, const sd_weights *w, const char *src, int l, sd_student_layer *L) {
    const sd_ssm_config *m = &c->ssm;
    int64_t d = c->hidden_size, H = m->num_heads, di = H * m->head_dim, gn = (int64_t)m->n_groups * m->state_size;
    int64_t conv_ch = di + 2 * gn, proj = 2 * di + 2 * gn + H;
    sd_tensor *in_proj, *conv_w, *conv_bias = NULL;
    const char *p = "backbone.layers.%d.";
    char f[160];
#define NAME(suffix) (snprintf(f, sizeof f, "%s%s", p, suffix), f)
    SD_TRY(get(w, src, &L->norm, 1, d, 0, 0, NAME("norm.weight"), l));
    SD_TRY(get(w, src, &in_proj, 2, proj, d, 0, NAME("mixer.in_proj.weight"), l));
    SD_TRY(get(w, src, &conv_w, 3, conv_ch, 1, m->conv_kernel, NAME("mixer.conv1d.weight"), l));
    if (m->use_conv_bias) SD_TRY(get(w, src, &conv_bias, 1, conv_ch, 0, 0, NAME("mixer.conv1d.bias"), l));
    SD_TRY(get(w, src, &L->dt_bias, 1, H, 0, 0, NAME("mixer.dt_bias"), l));
    SD_TRY(get(w, src, &L->a_log, 1, H, 0, 0, NAME("mixer.A_log"), l));
    SD_TRY(get(w, src, &L->d_skip, 1, H, 0, 0, NAME("mixer.D"), l));
    SD_TRY(get(w, src, &L->gate_norm, 1, di, 0, 0, NAME("mixer.norm.weight"), l));
    SD_TRY(get(w, src, &L->out_proj, 2, d, di, 0, NAME("mixer.out_proj.weight"), l));
#undef NAME
    /* in_proj rows: z | x | B | C | dt (mamba_ssm Mamba2 order) */
    L->w_z = row_view(in_proj, 0, di);
    L->w_x = row_view(in_proj, di, di);
    L->w_b = row_view(in_proj, 2 * di, gn);
    L->w_c = row_view(in_proj, 2 * di + gn, gn);
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

static int check_supported(const sd_model_config *c, const char *src) {
    if (c->arch != SD_ARCH_MAMBA2 || c->ssm.mixer != SD_MIXER_STANDARD)
        return sd_fail(SD_ERR_INPUT, "%s: not a Mamba-2 student (architecture '%s')", src, sd_arch_name(c->arch));
    if (c->ssm.use_bias)
        return sd_fail(SD_ERR_INPUT, "%s: field 'use_bias': in_proj/out_proj biases are not supported yet", src);
    if (strcmp(c->hidden_act, "silu") != 0)
        return sd_fail(SD_ERR_INPUT, "%s: field 'hidden_act': '%s' (the Mamba-2 mixer uses silu)", src, c->hidden_act);
    return SD_OK;
}

/* Points s's tensor pointers and row views into w (which s may or may not own). */
static int wire(const sd_model_config *c, const sd_weights *w, const char *src, sd_student *s) {
    SD_TRY(get(w, src, &s->embed, 2, c->vocab_size, c->hidden_size, 0, "backbone.embeddings.weight", 0));
    SD_TRY(get(w, src, &s->final_norm, 1, c->hidden_size, 0, 0, "backbone.norm_f.weight", 0));
    if (c->tie_word_embeddings) s->lm_head = s->embed;
    else SD_TRY(get(w, src, &s->lm_head, 2, c->vocab_size, c->hidden_size, 0, "lm_head.weight", 0));
    for (int l = 0; l < c->num_layers; l++) SD_TRY(wire_layer(c, w, src, l, &s->layers[l]));
    return SD_OK;
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

void sd_student_free(sd_student *s) {
    sd_weights_free(&s->w);
    free(s->layers);
    free(s->src);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- forward */

void sd_student_layer_acts_free(sd_student_layer_acts *a) {
    sd_tensor *all[] = {&a->x,  &a->xn,     &a->z,  &a->x_pre, &a->b_pre, &a->c_pre, &a->xs,
                        &a->bs, &a->cs, &a->dt_raw, &a->dt, &a->loga,  &a->y,     &a->yn};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

static int layer_acts_alloc(sd_student_layer_acts *a, const sd_model_config *c, int64_t B, int64_t T) {
    const sd_ssm_config *m = &c->ssm;
    int64_t d = c->hidden_size, H = m->num_heads, P = m->head_dim, G = m->n_groups, N = m->state_size;
    SD_TRY(sd_tensor_f32(&a->x, 3, B, T, d, 0));
    SD_TRY(sd_tensor_f32(&a->xn, 3, B, T, d, 0));
    SD_TRY(sd_tensor_f32(&a->z, 3, B, T, H * P, 0));
    SD_TRY(sd_tensor_f32(&a->x_pre, 3, B, T, H * P, 0));
    SD_TRY(sd_tensor_f32(&a->b_pre, 3, B, T, G * N, 0));
    SD_TRY(sd_tensor_f32(&a->c_pre, 3, B, T, G * N, 0));
    SD_TRY(sd_tensor_f32(&a->xs, 4, B, T, H, P));
    SD_TRY(sd_tensor_f32(&a->bs, 4, B, T, G, N));
    SD_TRY(sd_tensor_f32(&a->cs, 4, B, T, G, N));
    SD_TRY(sd_tensor_f32(&a->dt_raw, 3, B, T, H, 0));
    SD_TRY(sd_tensor_f32(&a->dt, 3, B, T, H, 0));
    SD_TRY(sd_tensor_f32(&a->loga, 3, B, T, H, 0));
    SD_TRY(sd_tensor_f32(&a->y, 4, B, T, H, P));
    SD_TRY(sd_tensor_f32(&a->yn, 4, B, T, H, P));
    return SD_OK;
}

int sd_student_layer_acts_init(sd_student_layer_acts *a, const sd_model_config *cfg, int64_t B, int64_t T) {
    memset(a, 0, sizeof *a);
    int rc = layer_acts_alloc(a, cfg, B, T);
    if (rc != SD_OK) sd_student_layer_acts_free(a);
    return rc;
}

/* A [B, T, a * b] view of a [B, T, a, b] tensor. */
static sd_tensor flat3(const sd_tensor *t) {
    int64_t shape[3] = {t->shape[0], t->shape[1], t->shape[2] * t->shape[3]};
    return sd_tensor_view(t->dtype, t->data, 3, shape);
}

static const sd_tensor *conv_bias(const sd_ssm_config *m, const sd_tensor *b) { return m->use_conv_bias ? b : NULL; }

/* dt = clamp(softplus(dt_raw + dt_bias), limits); loga = dt * A with A = -exp(A_log)
 * (mamba_ssm Mamba2; the SSD scales x by dt itself).  dt_raw already holds dt_bias. */
static int discretise(sd_ctx *ctx, sd_student_layer_acts *a, const sd_student_layer *L, const sd_ssm_config *m) {
    SD_TRY(sd_softplus(ctx, &a->dt, &a->dt_raw));
    int64_t rows = sd_rows(&a->dt), H = m->num_heads;
    float *dt = a->dt.data, *loga = a->loga.data;
    const float *a_log = L->a_log->data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < H; h++) {
            float v = dt[r * H + h];
            if (v < m->time_step_min) v = (float)m->time_step_min;
            if (v > m->time_step_max) v = (float)m->time_step_max;
            dt[r * H + h] = v;
            loga[r * H + h] = -expf(a_log[h]) * v;
        }
    return SD_OK;
}

/* The block's input side: xn = norm(x), then the five in_proj slices (dt gets dt_bias). */
static int project(sd_ctx *ctx, const sd_model_config *c, const sd_student_layer *L, sd_student_layer_acts *a) {
    SD_TRY(sd_rmsnorm(ctx, &a->xn, &a->x, L->norm, c->norm_eps));
    SD_TRY(sd_linear(ctx, &a->z, &a->xn, &L->w_z, NULL));
    SD_TRY(sd_linear(ctx, &a->x_pre, &a->xn, &L->w_x, NULL));
    SD_TRY(sd_linear(ctx, &a->b_pre, &a->xn, &L->w_b, NULL));
    SD_TRY(sd_linear(ctx, &a->c_pre, &a->xn, &L->w_c, NULL));
    return sd_linear(ctx, &a->dt_raw, &a->xn, &L->w_dt, L->dt_bias);
}

/* The block's output side: out = x + out_proj(gated_norm(y, z)) (HF MambaRMSNormGated). */
static int mix_out(sd_ctx *ctx, const sd_model_config *c, const sd_student_layer *L, sd_student_layer_acts *a,
                   sd_tensor *out) {
    const sd_ssm_config *m = &c->ssm;
    sd_tensor y = flat3(&a->y), yn = flat3(&a->yn);
    int64_t group = (int64_t)m->num_heads * m->head_dim / m->n_groups;
    SD_TRY(sd_gated_rmsnorm(ctx, &yn, &y, &a->z, L->gate_norm, group, c->norm_eps));
    SD_TRY(sd_linear(ctx, out, &yn, L->out_proj, NULL));
    return sd_add(ctx, out, &a->x, out);
}

/* One Mamba-2 block (HF Mamba2Block): out = x + out_proj(gated_norm(SSD(conv(x|B|C)), z)) of norm(x). */
int sd_student_layer_forward(sd_ctx *ctx, const sd_student *st, int l, sd_student_layer_acts *a, sd_tensor *out) {
    const sd_model_config *c = &st->cfg;
    const sd_ssm_config *m = &c->ssm;
    const sd_student_layer *L = &st->layers[l];
    sd_tensor xs = flat3(&a->xs), bs = flat3(&a->bs), cs = flat3(&a->cs);
    const int silu = 1;
    SD_TRY(project(ctx, c, L, a));
    SD_TRY(sd_conv1d(ctx, &xs, &a->x_pre, &L->conv_x, conv_bias(m, &L->bias_x), silu));
    SD_TRY(sd_conv1d(ctx, &bs, &a->b_pre, &L->conv_b, conv_bias(m, &L->bias_b), silu));
    SD_TRY(sd_conv1d(ctx, &cs, &a->c_pre, &L->conv_c, conv_bias(m, &L->bias_c), silu));
    SD_TRY(discretise(ctx, a, L, m));
    SD_TRY(sd_ssd_chunked(ctx, &a->y, &a->xs, &a->dt, &a->loga, &a->bs, &a->cs, L->d_skip, m->chunk_size, NULL, NULL));
    return mix_out(ctx, c, L, a, out);
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
        if (hidden) memcpy(hidden[l].data, a->x.data, sd_nbytes(&a->x));
        SD_TRY(sd_student_layer_forward(ctx, st, l, a, out));
        swap_data(&a->x, out);
    }
    if (hidden) memcpy(hidden[c->num_layers].data, a->x.data, sd_nbytes(&a->x));
    SD_TRY(sd_rmsnorm(ctx, &a->xn, &a->x, st->final_norm, c->norm_eps));
    if (final_hidden) memcpy(final_hidden->data, a->xn.data, sd_nbytes(&a->xn));
    return logits ? sd_linear(ctx, logits, &a->xn, st->lm_head, NULL) : SD_OK;
}

int sd_student_forward(sd_ctx *ctx, const sd_student *st, const sd_tensor *ids, sd_tensor *logits,
                       sd_tensor *hidden, sd_tensor *final_hidden) {
    if (ids->dtype != SD_I32 || ids->ndim != 2)
        return sd_fail(SD_ERR_INPUT, "student forward: input_ids must be I32 [batch, T]");
    sd_student_layer_acts a; /* one set reused by every layer: inference keeps nothing */
    sd_tensor out = {0};
    int rc = sd_student_layer_acts_init(&a, &st->cfg, ids->shape[0], ids->shape[1]);
    if (rc == SD_OK) rc = sd_tensor_f32(&out, 3, ids->shape[0], ids->shape[1], st->cfg.hidden_size, 0);
    if (rc == SD_OK) rc = forward_body(ctx, st, ids, &a, &out, logits, hidden, final_hidden);
    sd_tensor_free(&out);
    sd_student_layer_acts_free(&a);
    return rc;
}

/* ---------------------------------------------------------------- recurrent decoding */

int sd_student_state_init(sd_student_state *st, const sd_model_config *cfg, int batch) {
    memset(st, 0, sizeof *st);
    const sd_ssm_config *m = &cfg->ssm;
    int L = cfg->num_layers;
    int64_t di = (int64_t)m->num_heads * m->head_dim, gn = (int64_t)m->n_groups * m->state_size, w = m->conv_kernel - 1;
    st->num_layers = L;
    st->batch = batch;
    sd_tensor **arrays[4] = {&st->conv_x, &st->conv_b, &st->conv_c, &st->ssm};
    for (int a = 0; a < 4; a++)
        if (!(*arrays[a] = sd_calloc((size_t)L, sizeof(sd_tensor), "decoding state"))) {
            sd_student_state_free(st);
            return SD_ERR_SYS;
        }
    int rc = SD_OK;
    for (int l = 0; rc == SD_OK && l < L; l++) {
        rc = sd_tensor_f32(&st->conv_x[l], 3, batch, di, w, 0);
        if (rc == SD_OK) rc = sd_tensor_f32(&st->conv_b[l], 3, batch, gn, w, 0);
        if (rc == SD_OK) rc = sd_tensor_f32(&st->conv_c[l], 3, batch, gn, w, 0);
        if (rc == SD_OK) rc = sd_tensor_f32(&st->ssm[l], 4, batch, m->num_heads, m->head_dim, m->state_size);
    }
    if (rc != SD_OK) sd_student_state_free(st);
    return rc;
}

void sd_student_state_free(sd_student_state *st) {
    sd_tensor *arrays[4] = {st->conv_x, st->conv_b, st->conv_c, st->ssm};
    for (int a = 0; a < 4; a++) {
        for (int l = 0; arrays[a] && l < st->num_layers; l++) sd_tensor_free(&arrays[a][l]);
        free(arrays[a]);
    }
    memset(st, 0, sizeof *st);
}

/* A view of t without its time dim (T == 1): [B, 1, a, ...] -> [B, a, ...]. */
static sd_tensor drop_time(const sd_tensor *t) {
    int64_t shape[SD_MAX_DIMS];
    shape[0] = t->shape[0];
    for (int i = 2; i < t->ndim; i++) shape[i - 1] = t->shape[i];
    return sd_tensor_view(t->dtype, t->data, t->ndim - 1, shape);
}

/* One block for one token: the recurrent forms of the conv and the SSD on the same
 * projections and output side as the chunked forward. */
static int layer_step(sd_ctx *ctx, const sd_student *stu, int l, sd_student_layer_acts *a, sd_tensor *out,
                      sd_student_state *st) {
    const sd_model_config *c = &stu->cfg;
    const sd_ssm_config *m = &c->ssm;
    const sd_student_layer *L = &stu->layers[l];
    SD_TRY(project(ctx, c, L, a));
    sd_tensor in_x = drop_time(&a->x_pre), in_b = drop_time(&a->b_pre), in_c = drop_time(&a->c_pre);
    sd_tensor xs = flat3(&a->xs), bs = flat3(&a->bs), cs = flat3(&a->cs);
    sd_tensor out_x = drop_time(&xs), out_b = drop_time(&bs), out_c = drop_time(&cs);
    const int silu = 1;
    SD_TRY(sd_conv1d_step(ctx, &out_x, &in_x, &st->conv_x[l], &L->conv_x, conv_bias(m, &L->bias_x), silu));
    SD_TRY(sd_conv1d_step(ctx, &out_b, &in_b, &st->conv_b[l], &L->conv_b, conv_bias(m, &L->bias_b), silu));
    SD_TRY(sd_conv1d_step(ctx, &out_c, &in_c, &st->conv_c[l], &L->conv_c, conv_bias(m, &L->bias_c), silu));
    SD_TRY(discretise(ctx, a, L, m));
    sd_tensor y1 = drop_time(&a->y), x1 = drop_time(&a->xs), dt1 = drop_time(&a->dt), la1 = drop_time(&a->loga),
              b1 = drop_time(&a->bs), c1 = drop_time(&a->cs);
    SD_TRY(sd_ssd_step(ctx, &y1, &x1, &dt1, &la1, &b1, &c1, L->d_skip, &st->ssm[l]));
    return mix_out(ctx, c, L, a, out);
}

static int step_body(sd_ctx *ctx, const sd_student *stu, const sd_tensor *ids, sd_student_layer_acts *a,
                     sd_tensor *out, sd_student_state *st, sd_tensor *logits) {
    const sd_model_config *c = &stu->cfg;
    SD_TRY(sd_embedding(ctx, &a->x, ids, stu->embed));
    for (int l = 0; l < c->num_layers; l++) {
        SD_TRY(layer_step(ctx, stu, l, a, out, st));
        swap_data(&a->x, out);
    }
    SD_TRY(sd_rmsnorm(ctx, &a->xn, &a->x, stu->final_norm, c->norm_eps));
    return logits ? sd_linear(ctx, logits, &a->xn, stu->lm_head, NULL) : SD_OK;
}

int sd_student_step(sd_ctx *ctx, const sd_student *stu, const sd_tensor *ids, sd_student_state *st,
                    sd_tensor *logits) {
    if (ids->dtype != SD_I32 || ids->ndim != 2 || ids->shape[1] != 1 || ids->shape[0] != st->batch)
        return sd_fail(SD_ERR_INPUT, "student step: ids must be I32 [%d, 1]", st->batch);
    sd_student_layer_acts a;
    sd_tensor out = {0};
    int rc = sd_student_layer_acts_init(&a, &stu->cfg, st->batch, 1);
    if (rc == SD_OK) rc = sd_tensor_f32(&out, 3, st->batch, 1, stu->cfg.hidden_size, 0);
    if (rc == SD_OK) rc = step_body(ctx, stu, ids, &a, &out, st, logits);
    if (rc == SD_OK) st->len++;
    sd_tensor_free(&out);
    sd_student_layer_acts_free(&a);
    return rc;
}
