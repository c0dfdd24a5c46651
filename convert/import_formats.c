/* Llamba and mamba_ssm folders back into our config and names: the inverse of
 * convert/export.c (which cites the source formats followed).  Defaults are those of the
 * source libraries: mamba_ssm's MambaConfig (tie_embeddings true, pad_vocab_size_multiple 8),
 * Mamba2 (d_state 128, d_conv 4, expand 2, headdim 64, ngroups 1, chunk_size 256) and MHA
 * (qkv_proj_bias and out_proj_bias true, rotary_emb_base 10000). */
#include "convert/import_formats.h"
#include "common/error.h"
#include "distill/student.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- JSON fields */

typedef struct {
    const char *src;
    const char *obj; /* "" or "ssm_cfg." etc., for messages */
} jsrc;

static const cJSON *item(const cJSON *o, const char *k) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    return j && !cJSON_IsNull(j) ? j : NULL;
}

static int jint(const jsrc *s, const cJSON *o, const char *k, int required, int def, int *out) {
    const cJSON *j = item(o, k);
    if (!j) {
        if (required) return sd_fail(SD_ERR_INPUT, "%s: field '%s%s' is missing (expected an integer)", s->src, s->obj, k);
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || fabs(j->valuedouble) > (1 << 30))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s%s': expected an integer", s->src, s->obj, k);
    *out = (int)j->valuedouble;
    return SD_OK;
}

static int jpos(const jsrc *s, const cJSON *o, const char *k, int required, int def, int *out) {
    SD_TRY(jint(s, o, k, required, def, out));
    if (*out <= 0 || *out > (1 << 26))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s%s': expected a positive integer, got %d", s->src, s->obj, k, *out);
    return SD_OK;
}

static int jbool(const jsrc *s, const cJSON *o, const char *k, int def, int *out) {
    const cJSON *j = item(o, k);
    if (!j) {
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsBool(j)) return sd_fail(SD_ERR_INPUT, "%s: field '%s%s': expected true or false", s->src, s->obj, k);
    *out = cJSON_IsTrue(j);
    return SD_OK;
}

static int jnum(const jsrc *s, const cJSON *o, const char *k, double def, double *out) {
    const cJSON *j = item(o, k);
    if (!j) {
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsNumber(j)) return sd_fail(SD_ERR_INPUT, "%s: field '%s%s': expected a number", s->src, s->obj, k);
    *out = j->valuedouble;
    return SD_OK;
}

/* A string field that must be absent or equal to want. */
static int jstr_is(const jsrc *s, const cJSON *o, const char *k, const char *want, const char *why) {
    const cJSON *j = item(o, k);
    if (j && (!cJSON_IsString(j) || strcmp(j->valuestring, want) != 0))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s%s': expected \"%s\" (%s)", s->src, s->obj, k, want, why);
    return SD_OK;
}

static const cJSON *jobj(const jsrc *s, const cJSON *o, const char *k, int required, int *rc) {
    const cJSON *j = item(o, k);
    *rc = SD_OK;
    if (j && !cJSON_IsObject(j)) *rc = sd_fail(SD_ERR_INPUT, "%s: field '%s': expected an object", s->src, k);
    else if (!j && required) *rc = sd_fail(SD_ERR_INPUT, "%s: field '%s' is missing (expected an object)", s->src, k);
    return j;
}

sd_import_kind sd_import_detect(const char *json_text) {
    cJSON *root = cJSON_Parse(json_text);
    sd_import_kind k = SD_IMPORT_NONE;
    if (cJSON_IsObject(root)) {
        const cJSON *mt = item(root, "model_type");
        if (cJSON_IsString(mt) && strcmp(mt->valuestring, "llamba") == 0) k = SD_IMPORT_LLAMBA;
        else if (!mt && item(root, "d_model") && item(root, "n_layer") && cJSON_IsObject(item(root, "ssm_cfg")))
            k = SD_IMPORT_MAMBA_SSM;
    }
    cJSON_Delete(root);
    return k;
}

/* ---------------------------------------------------------------- configs */

/* The fields our student's attention would use, for a model without attention layers. */
static void no_attention_fields(sd_model_config *c) {
    c->num_heads = c->num_kv_heads = c->ssm.num_heads;
    c->head_dim = c->ssm.head_dim;
    c->rope = (sd_rope_config){.head_dim = c->head_dim, .rotary_dim = c->head_dim / 2 * 2, .theta = 10000.0};
}

static void student_base(sd_model_config *c) {
    c->arch = SD_ARCH_STUDENT;
    snprintf(c->model_type, sizeof c->model_type, "ssdistill_student");
    snprintf(c->hidden_act, sizeof c->hidden_act, "silu");
    c->max_position_embeddings = 2048;
    c->ssm.time_step_min = 0.0;
    c->ssm.time_step_max = INFINITY;
}

/* num_heads x head_dim = expand x d_model, n_groups dividing num_heads. */
static int ssm_heads(const jsrc *s, sd_model_config *c, int expand, int heads_or_0, int head_dim_or_0) {
    sd_ssm_config *m = &c->ssm;
    int64_t di = (int64_t)expand * c->hidden_size;
    if (heads_or_0) {
        m->num_heads = heads_or_0;
        if (di % heads_or_0) return sd_fail(SD_ERR_INPUT, "%s: field 'ssm_cfg.n_v_heads': %d does not divide expand x d_model %lld", s->src, heads_or_0, (long long)di);
        m->head_dim = (int)(di / heads_or_0);
    } else {
        m->head_dim = head_dim_or_0;
        if (di % head_dim_or_0) return sd_fail(SD_ERR_INPUT, "%s: field 'ssm_cfg.headdim': %d does not divide expand x d_model %lld", s->src, head_dim_or_0, (long long)di);
        m->num_heads = (int)(di / head_dim_or_0);
    }
    if (m->n_groups <= 0 || m->num_heads % m->n_groups)
        return sd_fail(SD_ERR_INPUT, "%s: field 'ssm_cfg': %d B/C groups do not divide %d heads", s->src, m->n_groups, m->num_heads);
    if (m->conv_kernel < 2 || m->conv_kernel > 4) return sd_fail(SD_ERR_INPUT, "%s: field 'ssm_cfg.d_conv': %d (supported: 2..4)", s->src, m->conv_kernel);
    return SD_OK;
}

static int llamba_ssm(const jsrc *s0, const cJSON *ssm, sd_model_config *c) {
    jsrc s = {s0->src, "ssm_cfg."};
    sd_ssm_config *m = &c->ssm;
    int heads, expand;
    m->mixer = SD_MIXER_DISCRETE;
    SD_TRY(jpos(&s, ssm, "d_state", 1, 0, &m->state_size));
    SD_TRY(jpos(&s, ssm, "n_v_heads", 1, 0, &heads));
    SD_TRY(jpos(&s, ssm, "n_qk_heads", 0, heads, &m->n_groups));
    SD_TRY(jpos(&s, ssm, "expand", 0, 1, &expand));
    SD_TRY(jpos(&s, ssm, "chunk_size", 0, 128, &m->chunk_size));
    SD_TRY(jpos(&s, ssm, "d_conv", 0, 4, &m->conv_kernel));
    SD_TRY(jbool(&s, ssm, "bias", 0, &m->use_bias));
    SD_TRY(jbool(&s, ssm, "conv_bias", 1, &m->use_conv_bias));
    SD_TRY(jstr_is(&s, ssm, "activation", "identity", "the discrete mixer's conv has no activation"));
    return ssm_heads(s0, c, expand, heads, 0);
}

static int llamba_mlp(const jsrc *s0, const cJSON *mlp, sd_model_config *c) {
    jsrc s = {s0->src, "mlp_cfg."};
    int bias;
    SD_TRY(jpos(&s, mlp, "intermediate_size", 1, 0, &c->intermediate_size));
    SD_TRY(jbool(&s, mlp, "bias", 0, &bias));
    if (bias) return sd_fail(SD_ERR_INPUT, "%s: field 'mlp_cfg.bias': MLP biases are not supported", s.src);
    return jstr_is(&s, mlp, "act_fn", "silu", "the student's MLP is SwiGLU");
}

static int token_ids(const jsrc *s, const cJSON *root, sd_model_config *c) {
    SD_TRY(jint(s, root, "bos_token_id", 0, -1, &c->bos_token_id));
    return jint(s, root, "eos_token_id", 0, -1, &c->eos_token_id);
}

static int llamba_config(const jsrc *s, const cJSON *root, sd_model_config *c) {
    student_base(c);
    int rc, lm_bias = 0;
    double eps = 1e-5;
    SD_TRY(jpos(s, root, "d_model", 1, 0, &c->hidden_size));
    SD_TRY(jpos(s, root, "n_layer", 1, 0, &c->num_layers));
    SD_TRY(jpos(s, root, "vocab_size", 1, 0, &c->vocab_size));
    SD_TRY(jbool(s, root, "tie_embeddings", 0, &c->tie_word_embeddings));
    SD_TRY(jbool(s, root, "lm_head_bias", 0, &lm_bias));
    if (lm_bias) return sd_fail(SD_ERR_INPUT, "%s: field 'lm_head_bias': an LM head bias is not supported", s->src);
    SD_TRY(jnum(s, root, "norm_epsilon", 1e-5, &eps));
    c->norm_eps = (float)eps;
    if (c->num_layers > SD_MAX_LAYERS)
        return sd_fail(SD_ERR_INPUT, "%s: field 'n_layer': %d (a student has at most %d)", s->src, c->num_layers, SD_MAX_LAYERS);
    const cJSON *mlp = jobj(s, root, "mlp_cfg", 1, &rc), *ssm = rc == SD_OK ? jobj(s, root, "ssm_cfg", 1, &rc) : NULL;
    SD_TRY(rc);
    SD_TRY(llamba_mlp(s, mlp, c));
    SD_TRY(llamba_ssm(s, ssm, c));
    no_attention_fields(c);
    return token_ids(s, root, c);
}

static int mamba_ssm_ssm(const jsrc *s0, const cJSON *ssm, sd_model_config *c) {
    jsrc s = {s0->src, "ssm_cfg."};
    sd_ssm_config *m = &c->ssm;
    int expand, headdim, rmsnorm = 1, nbg = 0, d_ssm;
    m->mixer = SD_MIXER_STANDARD;
    const cJSON *layer = item(ssm, "layer");
    if (!cJSON_IsString(layer) || strcmp(layer->valuestring, "Mamba2") != 0)
        return sd_fail(SD_ERR_INPUT, "%s: field 'ssm_cfg.layer': expected \"Mamba2\" (Mamba-1 models are not supported)", s.src);
    SD_TRY(jpos(&s, ssm, "d_state", 0, 128, &m->state_size));
    SD_TRY(jpos(&s, ssm, "d_conv", 0, 4, &m->conv_kernel));
    SD_TRY(jpos(&s, ssm, "expand", 0, 2, &expand));
    SD_TRY(jpos(&s, ssm, "headdim", 0, 64, &headdim));
    SD_TRY(jpos(&s, ssm, "ngroups", 0, 1, &m->n_groups));
    SD_TRY(jpos(&s, ssm, "chunk_size", 0, 256, &m->chunk_size));
    SD_TRY(jbool(&s, ssm, "bias", 0, &m->use_bias));
    SD_TRY(jbool(&s, ssm, "conv_bias", 1, &m->use_conv_bias));
    SD_TRY(jbool(&s, ssm, "rmsnorm", 1, &rmsnorm));
    SD_TRY(jbool(&s, ssm, "norm_before_gate", 0, &nbg));
    SD_TRY(jint(&s, ssm, "d_ssm", 0, expand * c->hidden_size, &d_ssm));
    if (!rmsnorm || nbg || d_ssm != expand * c->hidden_size)
        return sd_fail(SD_ERR_INPUT, "%s: field 'ssm_cfg': only rmsnorm true, norm_before_gate false and d_ssm = expand x "
                       "d_model are supported", s.src);
    const cJSON *lim = item(ssm, "dt_limit");
    if (lim) {
        if (!cJSON_IsArray(lim) || cJSON_GetArraySize(lim) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(lim, 0)) ||
            !cJSON_IsNumber(cJSON_GetArrayItem(lim, 1)))
            return sd_fail(SD_ERR_INPUT, "%s: field 'ssm_cfg.dt_limit': expected [min, max]", s.src);
        m->time_step_min = cJSON_GetArrayItem(lim, 0)->valuedouble;
        m->time_step_max = cJSON_GetArrayItem(lim, 1)->valuedouble;
        if (m->time_step_max >= 1e30) m->time_step_max = INFINITY; /* how export spells inf */
    }
    return ssm_heads(s0, c, expand, 0, headdim);
}

static int mamba_ssm_attn(const jsrc *s0, const cJSON *root, sd_model_config *c, int *any) {
    jsrc s = {s0->src, "attn_cfg."};
    const cJSON *idx = item(root, "attn_layer_idx"), *it;
    *any = 0;
    if (idx && !cJSON_IsArray(idx)) return sd_fail(SD_ERR_INPUT, "%s: field 'attn_layer_idx': expected a list", s.src);
    cJSON_ArrayForEach(it, idx) {
        double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (v != floor(v) || v < 0 || v >= c->num_layers || c->attn_layer[(int)v])
            return sd_fail(SD_ERR_INPUT, "%s: field 'attn_layer_idx': expected distinct layer indices 0..%d", s.src, c->num_layers - 1);
        c->attn_layer[(int)v] = 1;
        *any = 1;
    }
    if (!*any) return SD_OK;
    int rc, mlp_dim, conv;
    const cJSON *a = jobj(s0, root, "attn_cfg", 1, &rc);
    SD_TRY(rc);
    SD_TRY(jpos(&s, a, "num_heads", 1, 0, &c->num_heads));
    SD_TRY(jpos(&s, a, "num_heads_kv", 0, c->num_heads, &c->num_kv_heads));
    SD_TRY(jpos(&s, a, "head_dim", 0, c->hidden_size / c->num_heads, &c->head_dim));
    SD_TRY(jint(&s, a, "rotary_emb_dim", 0, 0, &c->rope.rotary_dim));
    SD_TRY(jnum(&s, a, "rotary_emb_base", 10000.0, &c->rope.theta));
    SD_TRY(jbool(&s, a, "rotary_emb_interleaved", 0, &c->rope.interleaved));
    SD_TRY(jbool(&s, a, "qkv_proj_bias", 1, &c->attention_bias));
    SD_TRY(jbool(&s, a, "out_proj_bias", 1, &c->o_proj_bias));
    SD_TRY(jint(&s, a, "mlp_dim", 0, 0, &mlp_dim));
    SD_TRY(jint(&s, a, "d_conv", 0, 0, &conv));
    if (mlp_dim || conv || item(a, "rotary_emb_scale_base"))
        return sd_fail(SD_ERR_INPUT, "%s: field 'attn_cfg': mlp_dim, d_conv and rotary_emb_scale_base are not supported", s.src);
    if (c->num_heads % c->num_kv_heads || c->rope.rotary_dim < 0 || c->rope.rotary_dim % 2 || c->rope.rotary_dim > c->head_dim)
        return sd_fail(SD_ERR_INPUT, "%s: field 'attn_cfg': %d heads, %d kv heads, head_dim %d, rotary_emb_dim %d are not usable",
                       s.src, c->num_heads, c->num_kv_heads, c->head_dim, c->rope.rotary_dim);
    c->rope.head_dim = c->head_dim;
    return SD_OK;
}

/* HF Mamba-2 (no MLP, no attention): its own names and fields. */
static void as_hf_mamba2(sd_model_config *c) {
    c->arch = SD_ARCH_MAMBA2;
    snprintf(c->model_type, sizeof c->model_type, "mamba2");
    c->num_heads = c->num_kv_heads = c->ssm.num_heads;
    c->head_dim = c->ssm.head_dim;
    c->intermediate_size = c->ssm.num_heads * c->ssm.head_dim;
    c->max_position_embeddings = 0;
    memset(&c->rope, 0, sizeof c->rope);
}

static int mamba_ssm_config(const jsrc *s, const cJSON *root, sd_model_config *c) {
    student_base(c);
    int rms = 1, pad, any_attn, rc;
    SD_TRY(jpos(s, root, "d_model", 1, 0, &c->hidden_size));
    SD_TRY(jpos(s, root, "n_layer", 1, 0, &c->num_layers));
    SD_TRY(jpos(s, root, "vocab_size", 1, 0, &c->vocab_size));
    SD_TRY(jint(s, root, "d_intermediate", 0, 0, &c->intermediate_size));
    SD_TRY(jbool(s, root, "tie_embeddings", 1, &c->tie_word_embeddings));
    SD_TRY(jbool(s, root, "rms_norm", 1, &rms));
    SD_TRY(jpos(s, root, "pad_vocab_size_multiple", 0, 8, &pad));
    if (!rms) return sd_fail(SD_ERR_INPUT, "%s: field 'rms_norm': LayerNorm blocks are not supported (expected true)", s->src);
    if (c->num_layers > SD_MAX_LAYERS)
        return sd_fail(SD_ERR_INPUT, "%s: field 'n_layer': %d (a student has at most %d)", s->src, c->num_layers, SD_MAX_LAYERS);
    if (c->intermediate_size < 0) return sd_fail(SD_ERR_INPUT, "%s: field 'd_intermediate': negative", s->src);
    c->vocab_size = (c->vocab_size + pad - 1) / pad * pad; /* MambaLMHeadModel pads the vocabulary */
    c->norm_eps = 1e-5f;                                    /* MixerModel's norm_epsilon */
    const cJSON *ssm = jobj(s, root, "ssm_cfg", 1, &rc);
    SD_TRY(rc);
    SD_TRY(mamba_ssm_ssm(s, ssm, c));
    no_attention_fields(c);
    SD_TRY(mamba_ssm_attn(s, root, c, &any_attn));
    if (c->intermediate_size == 0 && !any_attn) as_hf_mamba2(c);
    else if (c->intermediate_size == 0)
        return sd_fail(SD_ERR_INPUT, "%s: field 'd_intermediate': 0 with attention layers (ssdistill's hybrid students "
                       "have MLPs)", s->src);
    c->bos_token_id = c->eos_token_id = -1;
    return SD_OK;
}

int sd_import_config(sd_import_kind kind, const char *json_text, const char *src, sd_model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_Parse(json_text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return sd_fail(SD_ERR_INPUT, "%s: not a JSON object", src);
    }
    jsrc s = {src, ""};
    int rc = kind == SD_IMPORT_LLAMBA ? llamba_config(&s, root, cfg) : mamba_ssm_config(&s, root, cfg);
    cJSON_Delete(root);
    return rc;
}

/* ---------------------------------------------------------------- tensors */

/* Moves tensor i of w into out under a new name (w keeps an empty slot). */
static int move(sd_weights *w, int i, sd_weights *out, const char *name) {
    sd_tensor t = w->items[i].t;
    int rc = sd_weights_add(out, name, t);
    if (rc == SD_OK) {
        w->items[i].t.owns = 0;
        w->items[i].t.data = NULL;
    }
    return rc;
}

/* Rows [r0, r0 + n) and columns [c0, c0 + nc) of a 1-D or 2-D tensor, as a new tensor. */
static int add_block(sd_weights *out, const char *name, const sd_tensor *a, int64_t r0, int64_t n, int64_t c0, int64_t nc) {
    int64_t cols = a->ndim > 1 ? a->shape[1] : 1, shape[2] = {n, nc};
    sd_tensor t;
    SD_TRY(sd_tensor_alloc(&t, SD_F32, a->ndim, shape));
    for (int64_t r = 0; r < n; r++)
        memcpy((float *)t.data + r * nc, (const float *)a->data + (r0 + r) * cols + c0, (size_t)nc * sizeof(float));
    int rc = sd_weights_add(out, name, t);
    if (rc != SD_OK) sd_tensor_free(&t);
    return rc;
}

static const char *lname(char *buf, size_t n, int l, const char *suffix) {
    snprintf(buf, n, "backbone.layers.%d.%s", l, suffix);
    return buf;
}

/* MHA in_proj rows [q; k; v] (and its bias) -> our q/k/v projections. */
static int split_qkv(const sd_model_config *c, const sd_tensor *t, const char *src, const char *name, int l, int bias,
                     sd_weights *out) {
    int64_t q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim;
    int64_t cols = bias ? 1 : c->hidden_size;
    if (t->shape[0] != q + 2 * kv || (t->ndim > 1 ? t->shape[1] : 1) != cols)
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': expected %lld rows (q, k, v) of %lld", src, name,
                       (long long)(q + 2 * kv), (long long)cols);
    const char *sfx = bias ? "bias" : "weight";
    char n[160], part[64];
    snprintf(part, sizeof part, "self_attn.q_proj.%s", sfx);
    SD_TRY(add_block(out, lname(n, sizeof n, l, part), t, 0, q, 0, cols));
    snprintf(part, sizeof part, "self_attn.k_proj.%s", sfx);
    SD_TRY(add_block(out, lname(n, sizeof n, l, part), t, q, kv, 0, cols));
    snprintf(part, sizeof part, "self_attn.v_proj.%s", sfx);
    return add_block(out, lname(n, sizeof n, l, part), t, q + kv, kv, 0, cols);
}

/* Whether every layer's GatedMLP padding (rows I..Ip of both halves of fc1, columns I..Ip of
 * fc2) is zero, so that the MLP is exactly one of size I. */
static int mlp_padding_zero(const sd_model_config *c, const sd_weights *w, int64_t Ip) {
    int64_t I = c->intermediate_size, d = c->hidden_size;
    char n[160];
    for (int l = 0; l < c->num_layers; l++) {
        const sd_tensor *f1 = sd_weights_find(w, lname(n, sizeof n, l, "mlp.fc1.weight"));
        const sd_tensor *f2 = sd_weights_find(w, lname(n, sizeof n, l, "mlp.fc2.weight"));
        if (!f1 || !f2 || f1->ndim != 2 || f2->ndim != 2 || f1->shape[0] != 2 * Ip || f2->shape[1] != Ip) return 0;
        const float *a = f1->data, *b = f2->data;
        for (int h = 0; h < 2; h++)
            for (int64_t i = (h * Ip + I) * d; i < (h + 1) * Ip * d; i++)
                if (a[i] != 0) return 0;
        for (int64_t r = 0; r < d; r++)
            for (int64_t j = I; j < Ip; j++)
                if (b[r * Ip + j] != 0) return 0;
    }
    return 1;
}

/* fc1 = [up; gate] -> up_proj, gate_proj (I rows each out of Ip); fc2 -> down_proj (I columns). */
static int split_mlp(const sd_model_config *c, const sd_tensor *t, const char *src, const char *name, int l, int64_t Ip,
                     int fc2, sd_weights *out) {
    int64_t I = c->intermediate_size, d = c->hidden_size;
    char n[160];
    if (fc2) {
        if (t->ndim != 2 || t->shape[0] != d || t->shape[1] != Ip)
            return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': expected shape [%lld, %lld]", src, name, (long long)d, (long long)Ip);
        return add_block(out, lname(n, sizeof n, l, "mlp.down_proj.weight"), t, 0, d, 0, I);
    }
    if (t->ndim != 2 || t->shape[0] != 2 * Ip || t->shape[1] != d)
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': expected shape [%lld, %lld] (GatedMLP fc1)", src, name,
                       (long long)(2 * Ip), (long long)d);
    SD_TRY(add_block(out, lname(n, sizeof n, l, "mlp.up_proj.weight"), t, 0, I, 0, d));
    return add_block(out, lname(n, sizeof n, l, "mlp.gate_proj.weight"), t, Ip, I, 0, d);
}

/* One tensor of a mamba_ssm folder to our names. */
static int import_tensor(sd_model_config *c, sd_weights *w, int i, const char *src, int64_t Ip, sd_weights *out) {
    const char *name = w->items[i].name;
    sd_student_names names = sd_student_names_of(c);
    if (strcmp(name, "backbone.embedding.weight") == 0) return move(w, i, out, names.embed);
    if (strcmp(name, "backbone.norm_f.weight") == 0) return move(w, i, out, names.final_norm);
    int l, at = 0;
    if (sscanf(name, "backbone.layers.%d.%n", &l, &at) != 1 || at == 0 || l < 0 || l >= c->num_layers)
        return move(w, i, out, name); /* lm_head.weight, or a stray tensor validation will ignore */
    const char *sfx = name + at;
    char n[160];
    int attn = c->arch == SD_ARCH_STUDENT && c->attn_layer[l];
    if (strcmp(sfx, "norm.weight") == 0) return move(w, i, out, lname(n, sizeof n, l, names.layer_norm));
    if (strcmp(sfx, "norm2.weight") == 0) return move(w, i, out, lname(n, sizeof n, l, "post_attention_layernorm.weight"));
    if (strcmp(sfx, "mlp.fc1.weight") == 0) return split_mlp(c, &w->items[i].t, src, name, l, Ip, 0, out);
    if (strcmp(sfx, "mlp.fc2.weight") == 0) return split_mlp(c, &w->items[i].t, src, name, l, Ip, 1, out);
    if (attn && strcmp(sfx, "mixer.in_proj.weight") == 0) return split_qkv(c, &w->items[i].t, src, name, l, 0, out);
    if (attn && strcmp(sfx, "mixer.in_proj.bias") == 0) return split_qkv(c, &w->items[i].t, src, name, l, 1, out);
    if (attn && strcmp(sfx, "mixer.out_proj.weight") == 0) return move(w, i, out, lname(n, sizeof n, l, "self_attn.o_proj.weight"));
    if (attn && strcmp(sfx, "mixer.out_proj.bias") == 0) return move(w, i, out, lname(n, sizeof n, l, "self_attn.o_proj.bias"));
    return move(w, i, out, name); /* the Mamba2 mixer's names are ours */
}

/* The GatedMLP's stored hidden size, from layer 0's fc1 (rows = 2 x hidden). */
static int64_t stored_mlp_size(const sd_model_config *c, const sd_weights *w) {
    const sd_tensor *f1 = sd_weights_find(w, "backbone.layers.0.mlp.fc1.weight");
    return f1 && f1->ndim == 2 && f1->shape[0] % 2 == 0 ? f1->shape[0] / 2 : c->intermediate_size;
}

static int import_mamba_ssm(sd_model_config *c, sd_weights *w, const char *src) {
    int64_t Ip = sd_student_has_mlp(c) ? stored_mlp_size(c, w) : 0;
    if (Ip && Ip < c->intermediate_size)
        return sd_fail(SD_ERR_INPUT, "%s: tensor 'backbone.layers.0.mlp.fc1.weight': %lld rows, fewer than 2 x d_intermediate %d",
                       src, (long long)(2 * Ip), c->intermediate_size);
    /* GatedMLP rounds its hidden size up; padding that is zero is dropped (the same function) */
    if (Ip && Ip != c->intermediate_size && !mlp_padding_zero(c, w, Ip)) c->intermediate_size = (int)Ip;
    sd_weights out;
    sd_weights_init(&out);
    int rc = SD_OK;
    for (int i = 0; i < w->n && rc == SD_OK; i++) rc = import_tensor(c, w, i, src, Ip, &out);
    sd_weights_free(w);
    if (rc != SD_OK) {
        sd_weights_free(&out);
        return rc;
    }
    *w = out;
    return SD_OK;
}

int sd_import_weights(sd_import_kind kind, sd_model_config *cfg, sd_weights *w, const char *src) {
    if (kind == SD_IMPORT_MAMBA_SSM) return import_mamba_ssm(cfg, w, src);
    return SD_OK; /* Llamba's names are ours */
}
