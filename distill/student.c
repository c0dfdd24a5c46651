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

int sd_student_init(sd_student *s, const sd_model_config *cfg, sd_weights *w, const char *src) {
    memset(s, 0, sizeof *s);
    SD_TRY(check_supported(cfg, src));
    s->cfg = *cfg;
    s->w = *w;
    sd_weights_init(w);
    s->src = sd_strdup(src, "model path");
    s->layers = sd_calloc((size_t)cfg->num_layers, sizeof *s->layers, "student layers");
    int rc = s->src && s->layers ? SD_OK : SD_ERR_SYS;
    const sd_model_config *c = &s->cfg;
    if (rc == SD_OK) rc = get(&s->w, src, &s->embed, 2, c->vocab_size, c->hidden_size, 0, "backbone.embeddings.weight", 0);
    if (rc == SD_OK) rc = get(&s->w, src, &s->final_norm, 1, c->hidden_size, 0, 0, "backbone.norm_f.weight", 0);
    if (rc == SD_OK)
        rc = c->tie_word_embeddings ? (s->lm_head = s->embed, SD_OK)
                                    : get(&s->w, src, &s->lm_head, 2, c->vocab_size, c->hidden_size, 0, "lm_head.weight", 0);
    for (int l = 0; rc == SD_OK && l < c->num_layers; l++) rc = wire_layer(c, &s->w, src, l, &s->layers[l]);
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

typedef struct {
    sd_tensor x, xn, z, xs, bs, cs, tmp_x, tmp_b, tmp_c, dt, loga, y, out;
} scratch;

static void scratch_free(scratch *s) {
    sd_tensor *all[] = {&s->x, &s->xn, &s->z, &s->xs, &s->bs, &s->cs, &s->tmp_x, &s->tmp_b, &s->tmp_c,
                        &s->dt, &s->loga, &s->y, &s->out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

static int scratch_alloc(scratch *s, const sd_model_config *c, int64_t B, int64_t T) {
    memset(s, 0, sizeof *s);
    const sd_ssm_config *m = &c->ssm;
    int64_t d = c->hidden_size, H = m->num_heads, P = m->head_dim, G = m->n_groups, N = m->state_size;
    SD_TRY(sd_tensor_f32(&s->x, 3, B, T, d, 0));
    SD_TRY(sd_tensor_f32(&s->xn, 3, B, T, d, 0));
    SD_TRY(sd_tensor_f32(&s->out, 3, B, T, d, 0));
    SD_TRY(sd_tensor_f32(&s->z, 3, B, T, H * P, 0));
    SD_TRY(sd_tensor_f32(&s->tmp_x, 3, B, T, H * P, 0));
    SD_TRY(sd_tensor_f32(&s->tmp_b, 3, B, T, G * N, 0));
    SD_TRY(sd_tensor_f32(&s->tmp_c, 3, B, T, G * N, 0));
    SD_TRY(sd_tensor_f32(&s->xs, 4, B, T, H, P));
    SD_TRY(sd_tensor_f32(&s->bs, 4, B, T, G, N));
    SD_TRY(sd_tensor_f32(&s->cs, 4, B, T, G, N));
    SD_TRY(sd_tensor_f32(&s->dt, 3, B, T, H, 0));
    SD_TRY(sd_tensor_f32(&s->loga, 3, B, T, H, 0));
    SD_TRY(sd_tensor_f32(&s->y, 4, B, T, H, P));
    return SD_OK;
}

/* A [B, T, a * b] view of a [B, T, a, b] tensor. */
static sd_tensor flat3(const sd_tensor *t) {
    int64_t shape[3] = {t->shape[0], t->shape[1], t->shape[2] * t->shape[3]};
    return sd_tensor_view(t->dtype, t->data, 3, shape);
}

/* dt = clamp(softplus(dt_raw + dt_bias), limits); loga = dt * A with A = -exp(A_log)
 * (mamba_ssm Mamba2; the SSD scales x by dt itself). */
static int discretise(sd_ctx *ctx, scratch *s, const sd_student_layer *L, const sd_ssm_config *m) {
    SD_TRY(sd_softplus(ctx, &s->dt, &s->dt));
    int64_t rows = sd_rows(&s->dt), H = m->num_heads;
    float *dt = s->dt.data, *loga = s->loga.data;
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

/* One Mamba-2 block (HF Mamba2Block): x += out_proj(gated_norm(SSD(conv(x|B|C)), z)) of norm(x). */
static int layer_forward(sd_ctx *ctx, const sd_student *st, int l, scratch *s) {
    const sd_model_config *c = &st->cfg;
    const sd_ssm_config *m = &c->ssm;
    const sd_student_layer *L = &st->layers[l];
    sd_tensor xs = flat3(&s->xs), bs = flat3(&s->bs), cs = flat3(&s->cs), y = flat3(&s->y);
    SD_TRY(sd_rmsnorm(ctx, &s->xn, &s->x, L->norm, c->norm_eps));
    SD_TRY(sd_linear(ctx, &s->z, &s->xn, &L->w_z, NULL));
    SD_TRY(sd_linear(ctx, &s->tmp_x, &s->xn, &L->w_x, NULL));
    SD_TRY(sd_linear(ctx, &s->tmp_b, &s->xn, &L->w_b, NULL));
    SD_TRY(sd_linear(ctx, &s->tmp_c, &s->xn, &L->w_c, NULL));
    SD_TRY(sd_linear(ctx, &s->dt, &s->xn, &L->w_dt, L->dt_bias));
    const int silu = 1;
    SD_TRY(sd_conv1d(ctx, &xs, &s->tmp_x, &L->conv_x, m->use_conv_bias ? &L->bias_x : NULL, silu));
    SD_TRY(sd_conv1d(ctx, &bs, &s->tmp_b, &L->conv_b, m->use_conv_bias ? &L->bias_b : NULL, silu));
    SD_TRY(sd_conv1d(ctx, &cs, &s->tmp_c, &L->conv_c, m->use_conv_bias ? &L->bias_c : NULL, silu));
    SD_TRY(discretise(ctx, s, L, m));
    SD_TRY(sd_ssd_chunked(ctx, &s->y, &s->xs, &s->dt, &s->loga, &s->bs, &s->cs, L->d_skip, m->chunk_size, NULL, NULL));
    int64_t group = (int64_t)m->num_heads * m->head_dim / m->n_groups;
    SD_TRY(sd_gated_rmsnorm(ctx, &y, &y, &s->z, L->gate_norm, group, c->norm_eps));
    SD_TRY(sd_linear(ctx, &s->out, &y, L->out_proj, NULL));
    return sd_add(ctx, &s->x, &s->x, &s->out);
}

int sd_student_forward(sd_ctx *ctx, const sd_student *st, const sd_tensor *ids, sd_tensor *logits,
                       sd_tensor *hidden, sd_tensor *final_hidden) {
    if (ids->dtype != SD_I32 || ids->ndim != 2)
        return sd_fail(SD_ERR_INPUT, "student forward: input_ids must be I32 [batch, T]");
    const sd_model_config *c = &st->cfg;
    scratch s;
    int rc = scratch_alloc(&s, c, ids->shape[0], ids->shape[1]);
    if (rc == SD_OK) rc = sd_embedding(ctx, &s.x, ids, st->embed);
    for (int l = 0; rc == SD_OK && l < c->num_layers; l++) {
        if (hidden) memcpy(hidden[l].data, s.x.data, sd_nbytes(&s.x));
        rc = layer_forward(ctx, st, l, &s);
    }
    if (rc == SD_OK && hidden) memcpy(hidden[c->num_layers].data, s.x.data, sd_nbytes(&s.x));
    if (rc == SD_OK) rc = sd_rmsnorm(ctx, &s.xn, &s.x, st->final_norm, c->norm_eps);
    if (rc == SD_OK && final_hidden) memcpy(final_hidden->data, s.xn.data, sd_nbytes(&s.xn));
    if (rc == SD_OK && logits) rc = sd_linear(ctx, logits, &s.xn, st->lm_head, NULL);
    scratch_free(&s);
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

/* The mixer of one block for one token, with the recurrent forms of the conv and the SSD. */
static int layer_step(sd_ctx *ctx, const sd_student *stu, int l, scratch *s, sd_student_state *st) {
    const sd_model_config *c = &stu->cfg;
    const sd_ssm_config *m = &c->ssm;
    const sd_student_layer *L = &stu->layers[l];
    SD_TRY(sd_rmsnorm(ctx, &s->xn, &s->x, L->norm, c->norm_eps));
    SD_TRY(sd_linear(ctx, &s->z, &s->xn, &L->w_z, NULL));
    SD_TRY(sd_linear(ctx, &s->tmp_x, &s->xn, &L->w_x, NULL));
    SD_TRY(sd_linear(ctx, &s->tmp_b, &s->xn, &L->w_b, NULL));
    SD_TRY(sd_linear(ctx, &s->tmp_c, &s->xn, &L->w_c, NULL));
    SD_TRY(sd_linear(ctx, &s->dt, &s->xn, &L->w_dt, L->dt_bias));
    sd_tensor in_x = drop_time(&s->tmp_x), in_b = drop_time(&s->tmp_b), in_c = drop_time(&s->tmp_c);
    sd_tensor xs = flat3(&s->xs), bs = flat3(&s->bs), cs = flat3(&s->cs);
    sd_tensor out_x = drop_time(&xs), out_b = drop_time(&bs), out_c = drop_time(&cs);
    const int silu = 1;
    SD_TRY(sd_conv1d_step(ctx, &out_x, &in_x, &st->conv_x[l], &L->conv_x, m->use_conv_bias ? &L->bias_x : NULL, silu));
    SD_TRY(sd_conv1d_step(ctx, &out_b, &in_b, &st->conv_b[l], &L->conv_b, m->use_conv_bias ? &L->bias_b : NULL, silu));
    SD_TRY(sd_conv1d_step(ctx, &out_c, &in_c, &st->conv_c[l], &L->conv_c, m->use_conv_bias ? &L->bias_c : NULL, silu));
    SD_TRY(discretise(ctx, s, L, m));
    sd_tensor y1 = drop_time(&s->y), x1 = drop_time(&s->xs), dt1 = drop_time(&s->dt), la1 = drop_time(&s->loga),
              b1 = drop_time(&s->bs), c1 = drop_time(&s->cs);
    SD_TRY(sd_ssd_step(ctx, &y1, &x1, &dt1, &la1, &b1, &c1, L->d_skip, &st->ssm[l]));
    sd_tensor y = flat3(&s->y);
    int64_t group = (int64_t)m->num_heads * m->head_dim / m->n_groups;
    SD_TRY(sd_gated_rmsnorm(ctx, &y, &y, &s->z, L->gate_norm, group, c->norm_eps));
    SD_TRY(sd_linear(ctx, &s->out, &y, L->out_proj, NULL));
    return sd_add(ctx, &s->x, &s->x, &s->out);
}

int sd_student_step(sd_ctx *ctx, const sd_student *stu, const sd_tensor *ids, sd_student_state *st,
                    sd_tensor *logits) {
    if (ids->dtype != SD_I32 || ids->ndim != 2 || ids->shape[1] != 1 || ids->shape[0] != st->batch)
        return sd_fail(SD_ERR_INPUT, "student step: ids must be I32 [%d, 1]", st->batch);
    const sd_model_config *c = &stu->cfg;
    scratch s;
    int rc = scratch_alloc(&s, c, st->batch, 1);
    if (rc == SD_OK) rc = sd_embedding(ctx, &s.x, ids, stu->embed);
    for (int l = 0; rc == SD_OK && l < c->num_layers; l++) rc = layer_step(ctx, stu, l, &s, st);
    if (rc == SD_OK) rc = sd_rmsnorm(ctx, &s.xn, &s.x, stu->final_norm, c->norm_eps);
    if (rc == SD_OK && logits) rc = sd_linear(ctx, logits, &s.xn, stu->lm_head, NULL);
    if (rc == SD_OK) st->len++;
    scratch_free(&s);
    return rc;
}
