/* Export of students: see convert/export.h.  The layouts followed:
 *  - Llamba: cartesia-ai's Llamba configs as read by lalamo's HFLlambaConfig (model_type
 *    "llamba", d_model, n_layer, vocab_size, tie_embeddings, pad_vocab_size_multiple,
 *    lm_head_bias, resid_dropout, norm_epsilon, mlp_cfg {intermediate_size, bias, act_fn},
 *    ssm_cfg {d_state, n_v_heads, n_qk_heads, expand, chunk_size, activation "identity",
 *    bias, conv_bias, d_conv}); tensor names are ours already (DESIGN.md section 6).
 *  - mamba_ssm: models/config_mamba.py (MambaConfig's fields only: MambaLMHeadModel builds
 *    the config with MambaConfig(**config)), models/mixer_seq_simple.py (Block: norm, mixer,
 *    norm2, mlp; MixerModel: embedding, layers, norm_f; norm_epsilon fixed at 1e-5),
 *    modules/mlp.py (GatedMLP: fc1 rows [y; gate], y * silu(gate), hidden size rounded up
 *    to a multiple of 128), modules/mha.py (in_proj rows [q; k; v] with qkv_proj_bias,
 *    out_proj with out_proj_bias, RotaryEmbedding on rotary_emb_dim dims, half-split unless
 *    rotary_emb_interleaved), modules/mamba2.py (in_proj z | x | B | C | dt as ours,
 *    RMSNormGated with eps 1e-5 over groups of d_ssm / ngroups, dt_limit).
 *  - hf-mamba2: our Mamba2ForCausalLM names and sd_hf_config_to_json. */
#include "convert/export.h"
#include "common/error.h"
#include "common/fileio.h"
#include "convert/hf_config.h"
#include "convert/safetensors.h"
#include "distill/student.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* mamba_ssm's GatedMLP rounds its hidden size up to this (modules/mlp.py, multiple_of). */
#define SD_MAMBA_SSM_MLP_MULTIPLE 128

int sd_export_format_parse(const char *name, sd_export_format *f) {
    static const char *names[] = {"llamba", "mamba_ssm", "hf-mamba2"};
    for (int i = 0; i < 3; i++)
        if (strcmp(name, names[i]) == 0) {
            *f = (sd_export_format)i;
            return SD_OK;
        }
    return sd_fail(SD_ERR_INPUT, "--format: '%s' (expected llamba, mamba_ssm or hf-mamba2)", name);
}

const char *sd_export_format_name(sd_export_format f) {
    return f == SD_EXPORT_LLAMBA ? "llamba" : f == SD_EXPORT_MAMBA_SSM ? "mamba_ssm" : "hf-mamba2";
}

/* ---------------------------------------------------------------- what fits where */

static int has_attention(const sd_model_config *c) {
    for (int l = 0; c->arch == SD_ARCH_STUDENT && l < c->num_layers; l++)
        if (c->attn_layer[l]) return 1;
    return 0;
}

/* The format that holds a student of this kind, for refusals. */
static const char *home_format(const sd_model_config *c) {
    if (c->ssm.mixer == SD_MIXER_DISCRETE) return has_attention(c) ? "none (llamba has no attention layers)" : "llamba";
    return c->arch == SD_ARCH_MAMBA2 ? "hf-mamba2 or mamba_ssm" : "mamba_ssm";
}

static int refuse(const char *src, sd_export_format f, const char *why, const sd_model_config *c) {
    return sd_fail(SD_ERR_INPUT, "%s: --format %s cannot hold this model: %s (format that can: %s)", src,
                   sd_export_format_name(f), why, home_format(c));
}

static int check_llamba(const sd_model_config *c, const char *src) {
    if (c->arch != SD_ARCH_STUDENT || c->ssm.mixer != SD_MIXER_DISCRETE)
        return refuse(src, SD_EXPORT_LLAMBA, "Llamba has the discrete Mamba-2 mixer only", c);
    if (has_attention(c)) return refuse(src, SD_EXPORT_LLAMBA, "Llamba has no attention layers (attn_layer_idx)", c);
    if (c->intermediate_size <= 0 || c->mlp_bias || strcmp(c->hidden_act, "silu") != 0)
        return refuse(src, SD_EXPORT_LLAMBA, "Llamba blocks need a SwiGLU MLP without biases", c);
    if ((int64_t)c->ssm.num_heads * c->ssm.head_dim % c->hidden_size != 0)
        return refuse(src, SD_EXPORT_LLAMBA, "ssm_cfg.expand must be an integer (heads x head_dim a multiple of d_model)", c);
    return SD_OK;
}

/* A hybrid's attention as mamba_ssm's MHA: llama3 rope scaling has no attn_cfg field. */
static int check_mha(const sd_model_config *c, const char *src) {
    if (!has_attention(c)) return SD_OK;
    if (c->rope.scaling != SD_ROPE_SCALING_NONE)
        return sd_fail(SD_ERR_INPUT, "%s: --format mamba_ssm cannot hold this model: its attention uses llama3 rope "
                       "scaling, which mamba_ssm's MHA (attn_cfg) cannot express (no format can hold it)", src);
    return SD_OK;
}

static int check_mamba_ssm(const sd_model_config *c, const char *src) {
    if (c->ssm.mixer != SD_MIXER_STANDARD)
        return refuse(src, SD_EXPORT_MAMBA_SSM, "mamba_ssm's Mamba2 is the standard mixer, not the discrete one", c);
    /* MixerModel builds its norms with norm_epsilon=1e-5 and MambaConfig cannot change it. */
    if (c->norm_eps != 1e-5f)
        return sd_fail(SD_ERR_INPUT, "%s: --format mamba_ssm cannot hold this model: norm epsilon %g, mamba_ssm fixes "
                       "1e-5 (no format can hold it)", src, c->norm_eps);
    if ((int64_t)c->ssm.num_heads * c->ssm.head_dim % c->hidden_size != 0)
        return sd_fail(SD_ERR_INPUT, "%s: --format mamba_ssm cannot hold this model: heads x head_dim %d is not a "
                       "multiple of d_model %d (ssm_cfg.expand must be an integer)", src,
                       c->ssm.num_heads * c->ssm.head_dim, c->hidden_size);
    if (c->arch == SD_ARCH_STUDENT && (c->mlp_bias || strcmp(c->hidden_act, "silu") != 0))
        return sd_fail(SD_ERR_INPUT, "%s: --format mamba_ssm cannot hold this model: GatedMLP has no biases and uses "
                       "silu (mlp_bias %d, hidden_act '%s')", src, c->mlp_bias, c->hidden_act);
    return check_mha(c, src);
}

int sd_export_check(const sd_model_config *cfg, sd_export_format f, const char *src) {
    if (!sd_is_student(cfg))
        return sd_fail(SD_ERR_INPUT, "%s: a '%s' model is not a Mamba-2 student; export writes students (a teacher is "
                       "already in its own format)", src, sd_arch_name(cfg->arch));
    switch (f) {
    case SD_EXPORT_LLAMBA: return check_llamba(cfg, src);
    case SD_EXPORT_MAMBA_SSM: return check_mamba_ssm(cfg, src);
    case SD_EXPORT_HF_MAMBA2:
        if (cfg->arch != SD_ARCH_MAMBA2) {
            const char *why = cfg->ssm.mixer == SD_MIXER_DISCRETE ? "Mamba2ForCausalLM has the standard mixer only"
                              : has_attention(cfg) ? "Mamba2ForCausalLM has no attention layers"
                                                   : "Mamba2ForCausalLM blocks have no MLPs";
            return refuse(src, f, why, cfg);
        }
        return SD_OK;
    }
    return sd_fail(SD_ERR_INTERNAL, "export: unknown format %d", (int)f);
}

/* ---------------------------------------------------------------- tensors */

static int add_view(sd_weights *out, const sd_weights *w, const char *src, const char *from, const char *to) {
    sd_tensor *t = sd_weights_find(w, from);
    if (!t) return sd_fail(SD_ERR_INPUT, "%s: missing tensor '%s'", src, from);
    sd_tensor v = *t;
    v.owns = 0;
    return sd_weights_add(out, to, v);
}

/* Rows of the named 2-D (or 1-D) tensors stacked, each part padded with zero rows to
 * pad_rows (0: no padding). */
static int add_stacked(sd_weights *out, const sd_weights *w, const char *src, const char *to, const char *const *from,
                       int n, int64_t pad_rows) {
    const sd_tensor *parts[4];
    int64_t rows = 0, cols = 0;
    for (int i = 0; i < n; i++) {
        if (!(parts[i] = sd_weights_find(w, from[i]))) return sd_fail(SD_ERR_INPUT, "%s: missing tensor '%s'", src, from[i]);
        int64_t r = parts[i]->shape[0];
        cols = parts[i]->ndim > 1 ? parts[i]->shape[1] : 1;
        rows += pad_rows > r ? pad_rows : r;
    }
    sd_tensor t;
    int64_t shape[2] = {rows, cols};
    SD_TRY(sd_tensor_alloc(&t, SD_F32, parts[0]->ndim, shape));
    float *dst = t.data;
    for (int i = 0; i < n; i++) {
        int64_t r = parts[i]->shape[0];
        memcpy(dst, parts[i]->data, (size_t)(r * cols) * sizeof(float));
        dst += (pad_rows > r ? pad_rows : r) * cols;
    }
    int rc = sd_weights_add(out, to, t);
    if (rc != SD_OK) sd_tensor_free(&t);
    return rc;
}

/* [rows, cols] with zero columns appended up to new_cols. */
static int add_padded_cols(sd_weights *out, const sd_weights *w, const char *src, const char *from, const char *to,
                           int64_t new_cols) {
    const sd_tensor *a = sd_weights_find(w, from);
    if (!a) return sd_fail(SD_ERR_INPUT, "%s: missing tensor '%s'", src, from);
    int64_t rows = a->shape[0], cols = a->shape[1], shape[2] = {rows, new_cols};
    sd_tensor t;
    SD_TRY(sd_tensor_alloc(&t, SD_F32, 2, shape));
    for (int64_t r = 0; r < rows; r++)
        memcpy((float *)t.data + r * new_cols, (const float *)a->data + r * cols, (size_t)cols * sizeof(float));
    int rc = sd_weights_add(out, to, t);
    if (rc != SD_OK) sd_tensor_free(&t);
    return rc;
}

static const char *lname(char *buf, size_t n, int l, const char *suffix) {
    snprintf(buf, n, "backbone.layers.%d.%s", l, suffix);
    return buf;
}

/* Every tensor under its own name (llamba, hf-mamba2: the names are the format's). */
static int export_same_names(const sd_weights *w, sd_weights *out) {
    for (int i = 0; i < w->n; i++) {
        sd_tensor v = w->items[i].t;
        v.owns = 0;
        SD_TRY(sd_weights_add(out, w->items[i].name, v));
    }
    return SD_OK;
}

static int export_mha(const sd_model_config *c, const sd_weights *w, const char *src, int l, sd_weights *out) {
    char a[160], b[160], q[160], k[160], v[160];
    const char *qkv[3] = {lname(q, sizeof q, l, "self_attn.q_proj.weight"), lname(k, sizeof k, l, "self_attn.k_proj.weight"),
                          lname(v, sizeof v, l, "self_attn.v_proj.weight")};
    SD_TRY(add_stacked(out, w, src, lname(a, sizeof a, l, "mixer.in_proj.weight"), qkv, 3, 0));
    if (c->attention_bias) {
        const char *bqkv[3] = {lname(q, sizeof q, l, "self_attn.q_proj.bias"), lname(k, sizeof k, l, "self_attn.k_proj.bias"),
                               lname(v, sizeof v, l, "self_attn.v_proj.bias")};
        SD_TRY(add_stacked(out, w, src, lname(a, sizeof a, l, "mixer.in_proj.bias"), bqkv, 3, 0));
    }
    SD_TRY(add_view(out, w, src, lname(a, sizeof a, l, "self_attn.o_proj.weight"), lname(b, sizeof b, l, "mixer.out_proj.weight")));
    if (c->o_proj_bias)
        SD_TRY(add_view(out, w, src, lname(a, sizeof a, l, "self_attn.o_proj.bias"), lname(b, sizeof b, l, "mixer.out_proj.bias")));
    return SD_OK;
}

/* The standard mixer's tensors keep their names (mamba_ssm's Mamba2 and HF's agree). */
static int export_mixer(const sd_weights *w, int l, sd_weights *out) {
    static const char *const names[] = {"mixer.in_proj.weight", "mixer.in_proj.bias", "mixer.conv1d.weight",
                                        "mixer.conv1d.bias", "mixer.dt_bias", "mixer.A_log", "mixer.D",
                                        "mixer.norm.weight", "mixer.out_proj.weight", "mixer.out_proj.bias"};
    char a[160];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        sd_tensor *t = sd_weights_find(w, lname(a, sizeof a, l, names[i]));
        if (!t) continue; /* biases are optional; the rest was validated */
        sd_tensor v = *t;
        v.owns = 0;
        SD_TRY(sd_weights_add(out, a, v));
    }
    return SD_OK;
}

/* GatedMLP: fc1 = [up; gate] (y * silu(gate), y first), both padded to the rounded hidden
 * size with zero rows, and fc2 = down with zero columns: silu(0) * 0 = 0, the same function. */
static int export_mlp(const sd_model_config *c, const sd_weights *w, const char *src, int l, sd_weights *out) {
    int64_t I = c->intermediate_size, Ip = (I + SD_MAMBA_SSM_MLP_MULTIPLE - 1) / SD_MAMBA_SSM_MLP_MULTIPLE * SD_MAMBA_SSM_MLP_MULTIPLE;
    char a[160], b[160], up[160], gate[160];
    SD_TRY(add_view(out, w, src, lname(a, sizeof a, l, "post_attention_layernorm.weight"), lname(b, sizeof b, l, "norm2.weight")));
    const char *fc1[2] = {lname(up, sizeof up, l, "mlp.up_proj.weight"), lname(gate, sizeof gate, l, "mlp.gate_proj.weight")};
    SD_TRY(add_stacked(out, w, src, lname(a, sizeof a, l, "mlp.fc1.weight"), fc1, 2, Ip));
    return add_padded_cols(out, w, src, lname(a, sizeof a, l, "mlp.down_proj.weight"), lname(b, sizeof b, l, "mlp.fc2.weight"), Ip);
}

static int export_mamba_ssm(const sd_model_config *c, const sd_weights *w, const char *src, sd_weights *out) {
    sd_student_names names = sd_student_names_of(c);
    SD_TRY(add_view(out, w, src, names.embed, "backbone.embedding.weight"));
    char a[160], b[160];
    for (int l = 0; l < c->num_layers; l++) {
        SD_TRY(add_view(out, w, src, lname(a, sizeof a, l, names.layer_norm), lname(b, sizeof b, l, "norm.weight")));
        int attn = c->arch == SD_ARCH_STUDENT && c->attn_layer[l];
        SD_TRY(attn ? export_mha(c, w, src, l, out) : export_mixer(w, l, out));
        if (sd_student_has_mlp(c)) SD_TRY(export_mlp(c, w, src, l, out));
    }
    SD_TRY(add_view(out, w, src, names.final_norm, "backbone.norm_f.weight"));
    return c->tie_word_embeddings ? SD_OK : add_view(out, w, src, "lm_head.weight", "lm_head.weight");
}

int sd_export_weights(const sd_model_config *cfg, const sd_weights *w, sd_export_format f, const char *src,
                      sd_weights *out) {
    sd_weights_init(out);
    int rc = f == SD_EXPORT_MAMBA_SSM ? export_mamba_ssm(cfg, w, src, out) : export_same_names(w, out);
    if (rc != SD_OK) sd_weights_free(out);
    return rc;
}

/* ---------------------------------------------------------------- config.json */

static void add_int(cJSON *o, const char *k, int v) { cJSON_AddNumberToObject(o, k, v); }

static void llamba_config(const sd_model_config *c, cJSON *o) {
    const sd_ssm_config *m = &c->ssm;
    cJSON_AddStringToObject(o, "model_type", "llamba");
    add_int(o, "d_model", c->hidden_size);
    add_int(o, "n_layer", c->num_layers);
    add_int(o, "vocab_size", c->vocab_size);
    cJSON_AddBoolToObject(o, "tie_embeddings", c->tie_word_embeddings);
    add_int(o, "pad_vocab_size_multiple", 1);
    cJSON_AddFalseToObject(o, "lm_head_bias");
    cJSON_AddNumberToObject(o, "resid_dropout", 0.0);
    cJSON_AddNumberToObject(o, "norm_epsilon", c->norm_eps);
    cJSON *mlp = cJSON_AddObjectToObject(o, "mlp_cfg");
    if (mlp) {
        add_int(mlp, "intermediate_size", c->intermediate_size);
        cJSON_AddFalseToObject(mlp, "bias");
        cJSON_AddStringToObject(mlp, "act_fn", "silu");
    }
    cJSON *s = cJSON_AddObjectToObject(o, "ssm_cfg");
    if (s) {
        add_int(s, "d_state", m->state_size);
        add_int(s, "n_v_heads", m->num_heads);
        add_int(s, "n_qk_heads", m->n_groups);
        add_int(s, "expand", m->num_heads * m->head_dim / c->hidden_size);
        add_int(s, "chunk_size", m->chunk_size);
        cJSON_AddStringToObject(s, "activation", "identity");
        cJSON_AddBoolToObject(s, "bias", m->use_bias);
        cJSON_AddBoolToObject(s, "conv_bias", m->use_conv_bias);
        add_int(s, "d_conv", m->conv_kernel);
    }
}

static void mamba_ssm_ssm_cfg(const sd_model_config *c, cJSON *o) {
    const sd_ssm_config *m = &c->ssm;
    cJSON *s = cJSON_AddObjectToObject(o, "ssm_cfg");
    if (!s) return;
    cJSON_AddStringToObject(s, "layer", "Mamba2");
    add_int(s, "d_state", m->state_size);
    add_int(s, "d_conv", m->conv_kernel);
    add_int(s, "expand", m->num_heads * m->head_dim / c->hidden_size);
    add_int(s, "headdim", m->head_dim);
    add_int(s, "ngroups", m->n_groups);
    add_int(s, "chunk_size", m->chunk_size);
    cJSON_AddBoolToObject(s, "bias", m->use_bias);
    cJSON_AddBoolToObject(s, "conv_bias", m->use_conv_bias);
    cJSON_AddTrueToObject(s, "rmsnorm");
    cJSON_AddFalseToObject(s, "norm_before_gate");
    /* dt_limit defaults to (0.0, inf), which JSON cannot spell: written only when finite */
    if (m->time_step_min != 0.0 || isfinite(m->time_step_max)) {
        cJSON *lim = cJSON_AddArrayToObject(s, "dt_limit");
        if (lim) {
            cJSON_AddItemToArray(lim, cJSON_CreateNumber(m->time_step_min));
            cJSON_AddItemToArray(lim, cJSON_CreateNumber(isfinite(m->time_step_max) ? m->time_step_max : 1e30));
        }
    }
}

static void mamba_ssm_attn(const sd_model_config *c, cJSON *o) {
    cJSON *idx = cJSON_AddArrayToObject(o, "attn_layer_idx");
    cJSON *a = cJSON_AddObjectToObject(o, "attn_cfg");
    if (!idx || !a || !has_attention(c)) return;
    for (int l = 0; l < c->num_layers; l++)
        if (c->attn_layer[l]) cJSON_AddItemToArray(idx, cJSON_CreateNumber(l));
    add_int(a, "num_heads", c->num_heads);
    add_int(a, "num_heads_kv", c->num_kv_heads);
    add_int(a, "head_dim", c->head_dim);
    add_int(a, "rotary_emb_dim", c->rope.rotary_dim);
    cJSON_AddNumberToObject(a, "rotary_emb_base", c->rope.theta);
    cJSON_AddBoolToObject(a, "rotary_emb_interleaved", c->rope.interleaved);
    cJSON_AddBoolToObject(a, "qkv_proj_bias", c->attention_bias);
    cJSON_AddBoolToObject(a, "out_proj_bias", c->o_proj_bias);
}

/* MambaConfig's fields and nothing else: MambaLMHeadModel passes them all as keywords. */
static void mamba_ssm_config(const sd_model_config *c, cJSON *o) {
    add_int(o, "d_model", c->hidden_size);
    add_int(o, "d_intermediate", sd_student_has_mlp(c) ? c->intermediate_size : 0);
    add_int(o, "n_layer", c->num_layers);
    add_int(o, "vocab_size", c->vocab_size);
    mamba_ssm_ssm_cfg(c, o);
    mamba_ssm_attn(c, o);
    cJSON_AddTrueToObject(o, "rms_norm");
    cJSON_AddTrueToObject(o, "residual_in_fp32");
    cJSON_AddTrueToObject(o, "fused_add_norm");
    add_int(o, "pad_vocab_size_multiple", 1);
    cJSON_AddBoolToObject(o, "tie_embeddings", c->tie_word_embeddings);
}

int sd_export_config_json(const sd_model_config *cfg, sd_export_format f, char **json) {
    *json = NULL;
    if (f == SD_EXPORT_HF_MAMBA2) return sd_hf_config_to_json(cfg, json);
    cJSON *o = cJSON_CreateObject();
    if (!o) return sd_fail(SD_ERR_SYS, "out of memory building config.json");
    if (f == SD_EXPORT_LLAMBA) llamba_config(cfg, o);
    else mamba_ssm_config(cfg, o);
    *json = cJSON_Print(o);
    cJSON_Delete(o);
    return *json ? SD_OK : sd_fail(SD_ERR_SYS, "out of memory printing config.json");
}

/* ---------------------------------------------------------------- files */

static int write_text(const char *path, const char *text, size_t len) {
    sd_atomic_file af;
    SD_TRY(sd_atomic_open(&af, path));
    int rc = sd_atomic_write(&af, text, len);
    if (rc == SD_OK) return sd_atomic_commit(&af);
    sd_atomic_abort(&af);
    return rc;
}

static int copy_tokenizer_files(const char *from, const char *dir) {
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    int rc = SD_OK;
    for (size_t i = 0; i < 3 && rc == SD_OK; i++) {
        char *src = sd_path_join(from, files[i]), *dst = sd_path_join(dir, files[i]), *text = NULL;
        size_t len = 0;
        if (!src || !dst) rc = SD_ERR_SYS;
        else if (sd_file_exists(src) && (rc = sd_read_file(src, &text, &len)) == SD_OK) rc = write_text(dst, text, len);
        free(text);
        free(src);
        free(dst);
    }
    return rc;
}

static int make_dir(const char *dir) {
    if (sd_is_dir(dir)) return SD_OK;
    if (mkdir(dir, 0777) != 0) return sd_fail(SD_ERR_SYS, "%s: cannot create the folder: %s", dir, strerror(errno));
    return SD_OK;
}

int sd_export(const sd_model_config *cfg, const sd_weights *w, sd_export_format f, const char *src, const char *dir,
              const char *tokenizer_dir) {
    SD_TRY(sd_export_check(cfg, f, src));
    SD_TRY(sd_student_validate(cfg, w, src));
    if (tokenizer_dir && !sd_is_dir(tokenizer_dir))
        return sd_fail(SD_ERR_INPUT, "%s: --tokenizer-from must be a folder holding tokenizer.json", tokenizer_dir);
    SD_TRY(make_dir(dir));
    sd_weights out;
    char *json = NULL, *st = sd_path_join(dir, "model.safetensors"), *cj = sd_path_join(dir, "config.json");
    int rc = st && cj ? sd_export_weights(cfg, w, f, src, &out) : SD_ERR_SYS;
    if (rc == SD_OK) {
        char meta[64];
        snprintf(meta, sizeof meta, "{\"format\": \"pt\"}");
        rc = sd_st_write(st, &out, meta);
        sd_weights_free(&out);
    }
    if (rc == SD_OK) rc = sd_export_config_json(cfg, f, &json);
    if (rc == SD_OK) rc = write_text(cj, json, strlen(json));
    if (rc == SD_OK && tokenizer_dir) rc = copy_tokenizer_files(tokenizer_dir, dir);
    free(json);
    free(st);
    free(cj);
    return rc;
}
