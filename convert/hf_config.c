/* HF config.json <-> sd_model_config. Field names differ per family (GPT-2 says n_embd, Phi
 * says layer_norm_eps), so each family has its own reader, and the writer emits the names its
 * reader expects: to_json followed by parse gives back the identical struct. */
#include "convert/hf_config.h"
#include "common/error.h"
#include "common/fileio.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const cJSON *root;
    const char *src;
} jctx;

static const cJSON *field(const cJSON *obj, const char *name) {
    return cJSON_GetObjectItemCaseSensitive(obj, name);
}

static int present(const cJSON *j) { return j && !cJSON_IsNull(j); }

/* Integer field: required (def ignored) or optional (absent/null -> def). */
static int get_int_in(const jctx *c, const cJSON *obj, const char *name, int required, int def, int *out) {
    const cJSON *j = field(obj, name);
    if (!present(j)) {
        if (required) return sd_fail(SD_ERR_INPUT, "%s: field '%s' is missing (expected an integer)", c->src, name);
        *out = def;
        return SD_OK;
    }
    double d = j->valuedouble;
    if (!cJSON_IsNumber(j) || d != floor(d) || fabs(d) > 2147483647.0)
        return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected an integer", c->src, name);
    *out = (int)d;
    return SD_OK;
}

static int get_int(const jctx *c, const char *name, int required, int def, int *out) {
    return get_int_in(c, c->root, name, required, def, out);
}

/* A positive size such as hidden_size. */
static int get_pos(const jctx *c, const char *name, int *out) {
    SD_TRY(get_int(c, name, 1, 0, out));
    /* The upper bound keeps products such as 4 * n_embd inside an int. */
    if (*out <= 0 || *out > (1 << 26))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected a positive integer below 2^26, got %d", c->src, name, *out);
    return SD_OK;
}

/* Number field; {"__float__": "Infinity"} style values are accepted. */
static int get_num_in(const jctx *c, const cJSON *obj, const char *name, double def, double *out) {
    const cJSON *j = field(obj, name);
    if (!present(j)) {
        *out = def;
        return SD_OK;
    }
    if (cJSON_IsObject(j) && cJSON_IsString(field(j, "__float__"))) {
        const char *s = field(j, "__float__")->valuestring;
        *out = strcmp(s, "-Infinity") == 0 ? -INFINITY : strcmp(s, "NaN") == 0 ? NAN : INFINITY;
        return SD_OK;
    }
    if (!cJSON_IsNumber(j)) return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected a number", c->src, name);
    *out = j->valuedouble;
    return SD_OK;
}

static int get_num(const jctx *c, const char *name, double def, double *out) {
    return get_num_in(c, c->root, name, def, out);
}

static int get_bool_in(const jctx *c, const cJSON *obj, const char *name, int def, int *out) {
    const cJSON *j = field(obj, name);
    if (!present(j)) {
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsBool(j)) return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected true or false", c->src, name);
    *out = cJSON_IsTrue(j) ? 1 : 0;
    return SD_OK;
}

static int get_bool(const jctx *c, const char *name, int def, int *out) {
    return get_bool_in(c, c->root, name, def, out);
}

static int get_str_in(const jctx *c, const cJSON *obj, const char *name, const char *def, char *out, size_t n) {
    const cJSON *j = field(obj, name);
    if (!present(j)) {
        snprintf(out, n, "%s", def);
        return SD_OK;
    }
    if (!cJSON_IsString(j)) return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected a string", c->src, name);
    if (strlen(j->valuestring) >= n)
        return sd_fail(SD_ERR_INPUT, "%s: field '%s': value '%.40s...' too long", c->src, name, j->valuestring);
    snprintf(out, n, "%s", j->valuestring);
    return SD_OK;
}

/* bos/eos: an integer, a list (first element) or null (-1). */
static int get_token_id(const jctx *c, const char *name, int *out) {
    const cJSON *j = field(c->root, name);
    *out = -1;
    if (!present(j)) return SD_OK;
    if (cJSON_IsArray(j)) {
        if (cJSON_GetArraySize(j) == 0) return SD_OK;
        j = cJSON_GetArrayItem(j, 0);
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected an integer, a list of integers or null", c->src, name);
    *out = (int)j->valuedouble;
    return SD_OK;
}

/* ---- rotary ---------------------------------------------------------------------------- */

/* rope_parameters (transformers 5) or rope_scaling (older): type "default"/absent = none,
 * "llama3" with its four parameters, anything else refused. */
static int parse_rope_params(const jctx *c, const cJSON *rp, const char *fname, sd_rope_config *r) {
    if (!present(rp)) return SD_OK;
    if (!cJSON_IsObject(rp)) return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected an object or null", c->src, fname);
    const cJSON *type = field(rp, "rope_type");
    if (!present(type)) type = field(rp, "type");
    const char *t = cJSON_IsString(type) ? type->valuestring : "default";
    if (present(type) && !cJSON_IsString(type))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s.rope_type': expected a string", c->src, fname);
    if (present(field(rp, "rope_theta"))) SD_TRY(get_num_in(c, rp, "rope_theta", r->theta, &r->theta));
    if (strcmp(t, "default") == 0) return SD_OK;
    if (strcmp(t, "llama3") != 0)
        return sd_fail(SD_ERR_INPUT, "%s: field '%s': rope type '%s' is not supported (supported: default, llama3)",
                       c->src, fname, t);
    r->scaling = SD_ROPE_SCALING_LLAMA3;
    static const char *need[] = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"};
    for (int i = 0; i < 4; i++)
        if (!cJSON_IsNumber(field(rp, need[i])))
            return sd_fail(SD_ERR_INPUT, "%s: field '%s.%s': missing or not a number (needed by llama3 rope scaling)",
                           c->src, fname, need[i]);
    SD_TRY(get_num_in(c, rp, "factor", 0, &r->factor));
    SD_TRY(get_num_in(c, rp, "low_freq_factor", 0, &r->low_freq_factor));
    SD_TRY(get_num_in(c, rp, "high_freq_factor", 0, &r->high_freq_factor));
    return get_int_in(c, rp, "original_max_position_embeddings", 1, 0, &r->original_max_position_embeddings);
}

static int parse_rope(const jctx *c, sd_model_config *cfg, double default_prf) {
    sd_rope_config *r = &cfg->rope;
    r->head_dim = cfg->head_dim;
    r->interleaved = 0;
    SD_TRY(get_num(c, "rope_theta", 10000.0, &r->theta));
    double prf;
    SD_TRY(get_num(c, "partial_rotary_factor", default_prf, &prf));
    const cJSON *rp = field(c->root, "rope_parameters");
    if (cJSON_IsObject(rp) && present(field(rp, "partial_rotary_factor")))
        SD_TRY(get_num_in(c, rp, "partial_rotary_factor", prf, &prf));
    SD_TRY(parse_rope_params(c, rp, "rope_parameters", r));
    SD_TRY(parse_rope_params(c, field(c->root, "rope_scaling"), "rope_scaling", r));
    if (!(prf > 0 && prf <= 1))
        return sd_fail(SD_ERR_INPUT, "%s: field 'partial_rotary_factor': expected a value in (0, 1], got %g", c->src, prf);
    /* HF: int(head_dim * partial_rotary_factor); the epsilon keeps 0.5 * 16 from becoming 7. */
    r->rotary_dim = (int)(cfg->head_dim * prf + 1e-6);
    if (r->rotary_dim % 2)
        return sd_fail(SD_ERR_INPUT, "%s: field 'partial_rotary_factor': rotary dim %d is odd", c->src, r->rotary_dim);
    if (!(r->theta > 0)) return sd_fail(SD_ERR_INPUT, "%s: field 'rope_theta': expected a positive number", c->src);
    return SD_OK;
}

/* ---- families -------------------------------------------------------------------------- */

static int parse_heads(const jctx *c, sd_model_config *cfg) {
    SD_TRY(get_pos(c, "num_attention_heads", &cfg->num_heads));
    SD_TRY(get_int(c, "num_key_value_heads", 0, cfg->num_heads, &cfg->num_kv_heads));
    if (cfg->num_kv_heads <= 0 || cfg->num_heads % cfg->num_kv_heads)
        return sd_fail(SD_ERR_INPUT, "%s: field 'num_key_value_heads': %d does not divide num_attention_heads %d",
                       c->src, cfg->num_kv_heads, cfg->num_heads);
    if (!present(field(c->root, "head_dim")) && cfg->hidden_size % cfg->num_heads)
        return sd_fail(SD_ERR_INPUT, "%s: field 'num_attention_heads': %d does not divide hidden_size %d", c->src,
                       cfg->num_heads, cfg->hidden_size);
    SD_TRY(get_int(c, "head_dim", 0, cfg->hidden_size / cfg->num_heads, &cfg->head_dim));
    if (cfg->head_dim <= 0 || cfg->head_dim % 2)
        return sd_fail(SD_ERR_INPUT, "%s: field 'head_dim': expected a positive even integer, got %d", c->src, cfg->head_dim);
    return SD_OK;
}

/* Refuses sliding-window attention (Mistral sliding_window set; Qwen2 use_sliding_window). */
static int check_sliding_window(const jctx *c, sd_model_config *cfg) {
    int use = 1;
    if (cfg->arch == SD_ARCH_QWEN2) SD_TRY(get_bool(c, "use_sliding_window", 0, &use));
    const cJSON *sw = field(c->root, "sliding_window");
    if (use && present(sw))
        return sd_fail(SD_ERR_INPUT, "%s: field 'sliding_window': sliding-window attention is not supported (expected null)",
                       c->src);
    return SD_OK;
}

/* The fields every HF decoder config spells the same way (Llama family and Phi); the norm's
 * epsilon and the activation differ only in name and default. */
static int parse_decoder_common(const jctx *c, sd_model_config *cfg, const char *eps_field, double eps_default,
                                const char *act_default) {
    SD_TRY(get_pos(c, "vocab_size", &cfg->vocab_size));
    SD_TRY(get_pos(c, "hidden_size", &cfg->hidden_size));
    SD_TRY(get_pos(c, "num_hidden_layers", &cfg->num_layers));
    SD_TRY(get_pos(c, "intermediate_size", &cfg->intermediate_size));
    SD_TRY(parse_heads(c, cfg));
    SD_TRY(get_int(c, "max_position_embeddings", 0, 2048, &cfg->max_position_embeddings));
    double eps;
    SD_TRY(get_num(c, eps_field, eps_default, &eps));
    cfg->norm_eps = (float)eps;
    SD_TRY(get_str_in(c, c->root, "hidden_act", act_default, cfg->hidden_act, sizeof cfg->hidden_act));
    return get_bool(c, "tie_word_embeddings", 0, &cfg->tie_word_embeddings);
}

static int parse_llama_family(const jctx *c, sd_model_config *cfg) {
    SD_TRY(parse_decoder_common(c, cfg, "rms_norm_eps", 1e-6, "silu"));
    SD_TRY(get_bool(c, "mlp_bias", 0, &cfg->mlp_bias));
    if (cfg->arch == SD_ARCH_QWEN2) { /* Qwen2: q/k/v always biased, o_proj never */
        cfg->attention_bias = 1;
        cfg->o_proj_bias = 0;
    } else {
        SD_TRY(get_bool(c, "attention_bias", 0, &cfg->attention_bias));
        cfg->o_proj_bias = cfg->attention_bias;
    }
    if (cfg->arch != SD_ARCH_LLAMA) SD_TRY(check_sliding_window(c, cfg));
    return parse_rope(c, cfg, 1.0);
}

/* Phi-1.5/2: parallel block, LayerNorm, dense q/k/v/o and MLP all biased, partial rotary. */
static int parse_phi(const jctx *c, sd_model_config *cfg) {
    SD_TRY(parse_decoder_common(c, cfg, "layer_norm_eps", 1e-5, "gelu_new"));
    cfg->attention_bias = cfg->o_proj_bias = cfg->mlp_bias = 1;
    return parse_rope(c, cfg, 0.5);
}

/* GPT-2: learned positions (no rotary), everything biased, tied head by default. */
static int parse_gpt2(const jctx *c, sd_model_config *cfg) {
    SD_TRY(get_pos(c, "vocab_size", &cfg->vocab_size));
    SD_TRY(get_pos(c, "n_embd", &cfg->hidden_size));
    SD_TRY(get_pos(c, "n_layer", &cfg->num_layers));
    SD_TRY(get_pos(c, "n_head", &cfg->num_heads));
    SD_TRY(get_pos(c, "n_positions", &cfg->max_position_embeddings));
    if (cfg->hidden_size % cfg->num_heads)
        return sd_fail(SD_ERR_INPUT, "%s: field 'n_head': %d does not divide n_embd %d", c->src, cfg->num_heads,
                       cfg->hidden_size);
    cfg->num_kv_heads = cfg->num_heads;
    cfg->head_dim = cfg->hidden_size / cfg->num_heads;
    SD_TRY(get_int(c, "n_inner", 0, 4 * cfg->hidden_size, &cfg->intermediate_size));
    double eps;
    SD_TRY(get_num(c, "layer_norm_epsilon", 1e-5, &eps));
    cfg->norm_eps = (float)eps;
    SD_TRY(get_str_in(c, c->root, "activation_function", "gelu_new", cfg->hidden_act, sizeof cfg->hidden_act));
    SD_TRY(get_bool(c, "tie_word_embeddings", 1, &cfg->tie_word_embeddings));
    cfg->attention_bias = cfg->o_proj_bias = cfg->mlp_bias = 1;
    cfg->rope.head_dim = cfg->head_dim; /* rotary_dim 0: no rotary */
    return SD_OK;
}

/* HF Mamba2ForCausalLM: num_heads / head_dim are the SSM's; intermediate = expand * hidden. */
/* A number, or transformers' {"__float__": "Infinity"} spelling of one. */
static int get_float_value(const jctx *c, const cJSON *j, const char *name, double *out) {
    if (cJSON_IsNumber(j)) {
        *out = j->valuedouble;
        return SD_OK;
    }
    const cJSON *f = cJSON_IsObject(j) ? field(j, "__float__") : NULL;
    if (cJSON_IsString(f)) {
        if (strcmp(f->valuestring, "Infinity") == 0) *out = INFINITY;
        else if (strcmp(f->valuestring, "-Infinity") == 0) *out = -INFINITY;
        else return sd_fail(SD_ERR_INPUT, "%s: field '%s': unsupported __float__ value '%s'", c->src, name, f->valuestring);
        return SD_OK;
    }
    return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected a number", c->src, name);
}

/* The mixer fields (HF Mamba2Config names) read from obj: the config's root for HF Mamba-2,
 * its "ssm_cfg" object for our student.  num_heads and head_dim are set by the caller. */
static int parse_ssm_fields(const jctx *c, const cJSON *obj, sd_ssm_config *m) {
    SD_TRY(get_int_in(c, obj, "state_size", 0, 128, &m->state_size));
    SD_TRY(get_int_in(c, obj, "n_groups", 0, 1, &m->n_groups));
    SD_TRY(get_int_in(c, obj, "conv_kernel", 0, 4, &m->conv_kernel));
    SD_TRY(get_int_in(c, obj, "chunk_size", 0, 256, &m->chunk_size));
    SD_TRY(get_bool_in(c, obj, "use_conv_bias", 1, &m->use_conv_bias));
    SD_TRY(get_bool_in(c, obj, "use_bias", 0, &m->use_bias));
    m->time_step_min = 0.0;
    m->time_step_max = INFINITY;
    const cJSON *lim = field(obj, "time_step_limit");
    if (present(lim)) {
        if (!cJSON_IsArray(lim) || cJSON_GetArraySize(lim) != 2)
            return sd_fail(SD_ERR_INPUT, "%s: field 'time_step_limit': expected [min, max]", c->src);
        SD_TRY(get_float_value(c, cJSON_GetArrayItem(lim, 0), "time_step_limit", &m->time_step_min));
        SD_TRY(get_float_value(c, cJSON_GetArrayItem(lim, 1), "time_step_limit", &m->time_step_max));
    }
    if (m->num_heads <= 0 || m->head_dim <= 0)
        return sd_fail(SD_ERR_INPUT, "%s: field 'num_heads': %d heads of dim %d", c->src, m->num_heads, m->head_dim);
    if (m->state_size <= 0 || m->n_groups <= 0 || m->num_heads % m->n_groups != 0)
        return sd_fail(SD_ERR_INPUT, "%s: field 'n_groups': %d must divide num_heads %d (state_size %d)", c->src,
                       m->n_groups, m->num_heads, m->state_size);
    if (m->conv_kernel < 2 || m->conv_kernel > 4)
        return sd_fail(SD_ERR_INPUT, "%s: field 'conv_kernel': %d (supported: 2..4)", c->src, m->conv_kernel);
    if (m->chunk_size <= 0) return sd_fail(SD_ERR_INPUT, "%s: field 'chunk_size': must be positive", c->src);
    return SD_OK;
}

/* Mamba2Config: the mixer fields live at the root; num_heads x head_dim = expand x hidden. */
static int parse_mamba2_ssm(const jctx *c, sd_model_config *cfg) {
    sd_ssm_config *m = &cfg->ssm;
    m->mixer = SD_MIXER_STANDARD;
    m->num_heads = cfg->num_heads;
    m->head_dim = cfg->head_dim;
    SD_TRY(parse_ssm_fields(c, c->root, m));
    if (m->num_heads * m->head_dim != cfg->intermediate_size)
        return sd_fail(SD_ERR_INPUT, "%s: field 'num_heads': num_heads %d x head_dim %d must equal expand x hidden_size %d",
                       c->src, m->num_heads, m->head_dim, cfg->intermediate_size);
    return SD_OK;
}

static int parse_mamba2(const jctx *c, sd_model_config *cfg) {
    SD_TRY(get_pos(c, "vocab_size", &cfg->vocab_size));
    SD_TRY(get_pos(c, "hidden_size", &cfg->hidden_size));
    SD_TRY(get_pos(c, "num_hidden_layers", &cfg->num_layers));
    SD_TRY(get_int(c, "num_heads", 0, 0, &cfg->num_heads));
    cfg->num_kv_heads = cfg->num_heads;
    SD_TRY(get_int(c, "head_dim", 0, 0, &cfg->head_dim));
    int expand = 2;
    SD_TRY(get_int(c, "expand", 0, 2, &expand));
    cfg->intermediate_size = expand * cfg->hidden_size;
    double eps;
    SD_TRY(get_num(c, "layer_norm_epsilon", 1e-5, &eps));
    cfg->norm_eps = (float)eps;
    SD_TRY(get_str_in(c, c->root, "hidden_act", "silu", cfg->hidden_act, sizeof cfg->hidden_act));
    SD_TRY(get_bool(c, "tie_word_embeddings", 0, &cfg->tie_word_embeddings));
    return parse_mamba2_ssm(c, cfg);
}

/* "attn_layer_idx": the hybrid's attention layers, distinct, each below num_hidden_layers. */
static int parse_attn_layers(const jctx *c, sd_model_config *cfg) {
    const cJSON *list = field(c->root, "attn_layer_idx");
    if (!present(list)) return SD_OK;
    if (!cJSON_IsArray(list)) return sd_fail(SD_ERR_INPUT, "%s: field 'attn_layer_idx': expected a list of integers", c->src);
    const cJSON *it;
    cJSON_ArrayForEach(it, list) {
        double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (v != floor(v) || v < 0 || v >= cfg->num_layers)
            return sd_fail(SD_ERR_INPUT, "%s: field 'attn_layer_idx': entries must be layer indices 0..%d",
                           c->src, cfg->num_layers - 1);
        if (cfg->attn_layer[(int)v])
            return sd_fail(SD_ERR_INPUT, "%s: field 'attn_layer_idx': layer %d listed twice", c->src, (int)v);
        cfg->attn_layer[(int)v] = 1;
    }
    return SD_OK;
}

/* Our student: the teacher's Llama-family fields (attention for hybrid layers, MLP size,
 * norms, rotary) plus "ssm_cfg" {"mixer": "discrete" | "standard", num_heads, head_dim and
 * the Mamba2Config mixer fields} and "attn_layer_idx". */
static int parse_student(const jctx *c, sd_model_config *cfg) {
    SD_TRY(parse_llama_family(c, cfg));
    SD_TRY(get_bool(c, "o_proj_bias", cfg->attention_bias, &cfg->o_proj_bias));
    if (cfg->num_layers > SD_MAX_LAYERS)
        return sd_fail(SD_ERR_INPUT, "%s: field 'num_hidden_layers': %d (a student has at most %d)", c->src,
                       cfg->num_layers, SD_MAX_LAYERS);
    const cJSON *s = field(c->root, "ssm_cfg");
    if (!cJSON_IsObject(s)) return sd_fail(SD_ERR_INPUT, "%s: field 'ssm_cfg': missing or not an object", c->src);
    char mixer[16];
    SD_TRY(get_str_in(c, s, "mixer", "", mixer, sizeof mixer));
    sd_ssm_config *m = &cfg->ssm;
    if (strcmp(mixer, "discrete") == 0) m->mixer = SD_MIXER_DISCRETE;
    else if (strcmp(mixer, "standard") == 0) m->mixer = SD_MIXER_STANDARD;
    else return sd_fail(SD_ERR_INPUT, "%s: field 'ssm_cfg.mixer': '%s' (expected \"discrete\" or \"standard\")", c->src, mixer);
    SD_TRY(get_int_in(c, s, "num_heads", 1, 0, &m->num_heads));
    SD_TRY(get_int_in(c, s, "head_dim", 1, 0, &m->head_dim));
    SD_TRY(parse_ssm_fields(c, s, m));
    return parse_attn_layers(c, cfg);
}

static const struct {
    const char *type, *arch_class;
    sd_arch arch;
} g_archs[] = {
    {"llama", "LlamaForCausalLM", SD_ARCH_LLAMA},  {"mistral", "MistralForCausalLM", SD_ARCH_MISTRAL},
    {"qwen2", "Qwen2ForCausalLM", SD_ARCH_QWEN2},  {"phi", "PhiForCausalLM", SD_ARCH_PHI},
    {"gpt2", "GPT2LMHeadModel", SD_ARCH_GPT2},     {"mamba2", "Mamba2ForCausalLM", SD_ARCH_MAMBA2},
    {"ssdistill_student", "SsdistillStudentForCausalLM", SD_ARCH_STUDENT},
};
#define N_ARCHS (int)(sizeof g_archs / sizeof g_archs[0])

/* model_type, or failing that architectures[0]. */
static int parse_arch(const jctx *c, sd_model_config *cfg) {
    const cJSON *mt = field(c->root, "model_type");
    if (present(mt)) {
        if (!cJSON_IsString(mt)) return sd_fail(SD_ERR_INPUT, "%s: field 'model_type': expected a string", c->src);
        for (int i = 0; i < N_ARCHS; i++)
            if (strcmp(mt->valuestring, g_archs[i].type) == 0) {
                cfg->arch = g_archs[i].arch;
                snprintf(cfg->model_type, sizeof cfg->model_type, "%s", g_archs[i].type);
                return SD_OK;
            }
        return sd_fail(SD_ERR_INPUT,
                       "%s: field 'model_type': unknown architecture '%.64s' (supported: llama, mistral, qwen2; "
                       "recognised: phi, gpt2, mamba2, ssdistill_student)", c->src, mt->valuestring);
    }
    const cJSON *a = cJSON_GetArrayItem(field(c->root, "architectures"), 0);
    if (cJSON_IsString(a))
        for (int i = 0; i < N_ARCHS; i++)
            if (strcmp(a->valuestring, g_archs[i].arch_class) == 0) {
                cfg->arch = g_archs[i].arch;
                snprintf(cfg->model_type, sizeof cfg->model_type, "%s", g_archs[i].type);
                return SD_OK;
            }
    return sd_fail(SD_ERR_INPUT, "%s: field 'model_type' is missing (expected a string such as \"llama\")", c->src);
}

int sd_hf_config_parse(const char *json_text, const char *src, sd_model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_Parse(json_text);
    if (!root) return sd_fail(SD_ERR_INPUT, "%s: not valid JSON", src);
    jctx c = {root, src};
    int rc = cJSON_IsObject(root) ? parse_arch(&c, cfg) : sd_fail(SD_ERR_INPUT, "%s: not a JSON object", src);
    if (rc == SD_OK) {
        switch (cfg->arch) {
        case SD_ARCH_PHI: rc = parse_phi(&c, cfg); break;
        case SD_ARCH_GPT2: rc = parse_gpt2(&c, cfg); break;
        case SD_ARCH_MAMBA2: rc = parse_mamba2(&c, cfg); break;
        case SD_ARCH_STUDENT: rc = parse_student(&c, cfg); break;
        default: rc = parse_llama_family(&c, cfg); break;
        }
    }
    if (rc == SD_OK) rc = get_token_id(&c, "bos_token_id", &cfg->bos_token_id);
    if (rc == SD_OK) rc = get_token_id(&c, "eos_token_id", &cfg->eos_token_id);
    cJSON_Delete(root);
    return rc;
}

int sd_hf_config_load(const char *path, sd_model_config *cfg) {
    char *text;
    size_t len;
    SD_TRY(sd_read_file(path, &text, &len));
    int rc = sd_hf_config_parse(text, path, cfg);
    free(text);
    return rc;
}

/* ---- writer ---------------------------------------------------------------------------- */

static void add_int(cJSON *o, const char *name, int v) { cJSON_AddNumberToObject(o, name, v); }
static void add_id(cJSON *o, const char *name, int v) {
    if (v < 0) cJSON_AddNullToObject(o, name);
    else add_int(o, name, v);
}

static void add_rope(cJSON *o, const sd_model_config *cfg) {
    const sd_rope_config *r = &cfg->rope;
    cJSON *rp = cJSON_AddObjectToObject(o, "rope_parameters");
    if (!rp) return;
    cJSON_AddNumberToObject(rp, "rope_theta", r->theta);
    cJSON_AddNumberToObject(o, "partial_rotary_factor", (double)r->rotary_dim / cfg->head_dim);
    if (r->scaling != SD_ROPE_SCALING_LLAMA3) {
        cJSON_AddStringToObject(rp, "rope_type", "default");
        return;
    }
    cJSON_AddStringToObject(rp, "rope_type", "llama3");
    cJSON_AddNumberToObject(rp, "factor", r->factor);
    cJSON_AddNumberToObject(rp, "low_freq_factor", r->low_freq_factor);
    cJSON_AddNumberToObject(rp, "high_freq_factor", r->high_freq_factor);
    add_int(rp, "original_max_position_embeddings", r->original_max_position_embeddings);
}

/* A float that may be infinite, spelt as transformers does ({"__float__": "Infinity"}). */
static void add_float_item(cJSON *arr, double v) {
    if (isfinite(v)) {
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(v));
        return;
    }
    cJSON *f = cJSON_CreateObject();
    if (!f) return;
    cJSON_AddStringToObject(f, "__float__", v > 0 ? "Infinity" : "-Infinity");
    cJSON_AddItemToArray(arr, f);
}

static void add_ssm_fields(cJSON *o, const sd_ssm_config *m) {
    add_int(o, "state_size", m->state_size);
    add_int(o, "n_groups", m->n_groups);
    add_int(o, "conv_kernel", m->conv_kernel);
    add_int(o, "chunk_size", m->chunk_size);
    cJSON_AddBoolToObject(o, "use_conv_bias", m->use_conv_bias);
    cJSON_AddBoolToObject(o, "use_bias", m->use_bias);
    cJSON *lim = cJSON_AddArrayToObject(o, "time_step_limit");
    if (lim) {
        add_float_item(lim, m->time_step_min);
        add_float_item(lim, m->time_step_max);
    }
}

/* The student's own fields, after the Llama-family ones. */
static void add_student_fields(cJSON *o, const sd_model_config *cfg) {
    cJSON_AddBoolToObject(o, "o_proj_bias", cfg->o_proj_bias);
    cJSON *s = cJSON_AddObjectToObject(o, "ssm_cfg");
    if (s) {
        cJSON_AddStringToObject(s, "mixer", cfg->ssm.mixer == SD_MIXER_DISCRETE ? "discrete" : "standard");
        add_int(s, "num_heads", cfg->ssm.num_heads);
        add_int(s, "head_dim", cfg->ssm.head_dim);
        add_ssm_fields(s, &cfg->ssm);
    }
    cJSON *list = cJSON_AddArrayToObject(o, "attn_layer_idx");
    for (int l = 0; list && l < cfg->num_layers && l < SD_MAX_LAYERS; l++)
        if (cfg->attn_layer[l]) cJSON_AddItemToArray(list, cJSON_CreateNumber(l));
}

static void add_family_fields(cJSON *o, const sd_model_config *cfg) {
    switch (cfg->arch) {
    case SD_ARCH_GPT2:
        add_int(o, "n_embd", cfg->hidden_size);
        add_int(o, "n_layer", cfg->num_layers);
        add_int(o, "n_head", cfg->num_heads);
        add_int(o, "n_positions", cfg->max_position_embeddings);
        add_int(o, "n_inner", cfg->intermediate_size);
        cJSON_AddNumberToObject(o, "layer_norm_epsilon", cfg->norm_eps);
        cJSON_AddStringToObject(o, "activation_function", cfg->hidden_act);
        return;
    case SD_ARCH_MAMBA2:
        add_int(o, "hidden_size", cfg->hidden_size);
        add_int(o, "num_hidden_layers", cfg->num_layers);
        add_int(o, "num_heads", cfg->num_heads);
        add_int(o, "head_dim", cfg->head_dim);
        add_int(o, "expand", cfg->intermediate_size / cfg->hidden_size);
        cJSON_AddNumberToObject(o, "layer_norm_epsilon", cfg->norm_eps);
        cJSON_AddStringToObject(o, "hidden_act", cfg->hidden_act);
        add_ssm_fields(o, &cfg->ssm);
        return;
    default: break;
    }
    add_int(o, "hidden_size", cfg->hidden_size);
    add_int(o, "num_hidden_layers", cfg->num_layers);
    add_int(o, "num_attention_heads", cfg->num_heads);
    add_int(o, "num_key_value_heads", cfg->num_kv_heads);
    add_int(o, "head_dim", cfg->head_dim);
    add_int(o, "intermediate_size", cfg->intermediate_size);
    add_int(o, "max_position_embeddings", cfg->max_position_embeddings);
    cJSON_AddNumberToObject(o, cfg->arch == SD_ARCH_PHI ? "layer_norm_eps" : "rms_norm_eps", cfg->norm_eps);
    cJSON_AddStringToObject(o, "hidden_act", cfg->hidden_act);
    if (cfg->arch != SD_ARCH_PHI) {
        cJSON_AddBoolToObject(o, "mlp_bias", cfg->mlp_bias);
        if (cfg->arch != SD_ARCH_QWEN2) cJSON_AddBoolToObject(o, "attention_bias", cfg->attention_bias);
    }
    if (cfg->arch == SD_ARCH_MISTRAL || cfg->arch == SD_ARCH_QWEN2) cJSON_AddNullToObject(o, "sliding_window");
    if (cfg->arch == SD_ARCH_QWEN2) cJSON_AddFalseToObject(o, "use_sliding_window");
    add_rope(o, cfg);
    if (cfg->arch == SD_ARCH_STUDENT) add_student_fields(o, cfg);
}

int sd_hf_config_to_json(const sd_model_config *cfg, char **json) {
    *json = NULL;
    if ((unsigned)cfg->arch > SD_ARCH_STUDENT || (cfg->arch != SD_ARCH_MAMBA2 && cfg->arch != SD_ARCH_GPT2 && cfg->head_dim <= 0) ||
        cfg->hidden_size <= 0)
        return sd_fail(SD_ERR_INTERNAL, "sd_hf_config_to_json: incomplete config");
    cJSON *o = cJSON_CreateObject();
    if (!o) return sd_fail(SD_ERR_SYS, "out of memory building config JSON");
    cJSON *archs = cJSON_AddArrayToObject(o, "architectures");
    if (archs) cJSON_AddItemToArray(archs, cJSON_CreateString(g_archs[cfg->arch].arch_class));
    cJSON_AddStringToObject(o, "model_type", sd_arch_name(cfg->arch));
    add_int(o, "vocab_size", cfg->vocab_size);
    add_family_fields(o, cfg);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", cfg->tie_word_embeddings);
    add_id(o, "bos_token_id", cfg->bos_token_id);
    add_id(o, "eos_token_id", cfg->eos_token_id);
    *json = cJSON_Print(o);
    cJSON_Delete(o);
    return *json ? SD_OK : sd_fail(SD_ERR_SYS, "out of memory printing config JSON");
}
