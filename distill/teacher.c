#include "distill/teacher.h"
#include "common/error.h"
#include "convert/model_io.h"
#include "distill/device_weights.h"
#include "kernels/tensor_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- validation and wiring */

static int arch_supported(const sd_model_config *cfg, const char *src) {
    switch (cfg->arch) {
    case SD_ARCH_LLAMA:
    case SD_ARCH_MISTRAL:
    case SD_ARCH_QWEN2: break;
    default:
        return sd_fail(SD_ERR_INPUT, "%s: architecture '%s' is recognised but the teacher forward does not run it yet "
                       "(supported: llama, mistral, qwen2)", src, sd_arch_name(cfg->arch));
    }
    if (strcmp(cfg->hidden_act, "silu") != 0)
        return sd_fail(SD_ERR_INPUT, "%s: field 'hidden_act': '%s' is not supported for %s (expected silu)", src,
                       cfg->hidden_act, sd_arch_name(cfg->arch));
    if (cfg->num_heads <= 0 || cfg->num_kv_heads <= 0 || cfg->num_heads % cfg->num_kv_heads != 0)
        return sd_fail(SD_ERR_INPUT, "%s: field 'num_key_value_heads': %d does not divide num_attention_heads %d", src,
                       cfg->num_kv_heads, cfg->num_heads);
    if (cfg->head_dim <= 0 || cfg->rope.rotary_dim % 2 != 0 || cfg->rope.rotary_dim > cfg->head_dim)
        return sd_fail(SD_ERR_INPUT, "%s: field 'head_dim': %d with rotary dim %d is not usable", src, cfg->head_dim,
                       cfg->rope.rotary_dim);
    if (cfg->hidden_size <= 0 || cfg->num_layers <= 0 || cfg->vocab_size <= 0 || cfg->intermediate_size <= 0)
        return sd_fail(SD_ERR_INPUT, "%s: config sizes must be positive (hidden_size %d, num_hidden_layers %d, "
                       "vocab_size %d, intermediate_size %d)", src, cfg->hidden_size, cfg->num_layers,
                       cfg->vocab_size, cfg->intermediate_size);
    return SD_OK;
}

/* Looks up NAME (printf-style, layer index) with the given 1-D or 2-D shape. */
static int get2(const sd_weights *w, const char *src, sd_tensor **out, int64_t d0, int64_t d1, const char *fmt,
                int layer) {
    char name[256];
    snprintf(name, sizeof name, fmt, layer);
    int64_t shape[2] = {d0, d1};
    return sd_weights_get(w, src, name, d1 ? 2 : 1, shape, out);
}

static int wire_layer(const sd_model_config *c, const sd_weights *w, const char *src, int l, sd_teacher_layer *L) {
    int64_t d = c->hidden_size, q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim,
            I = c->intermediate_size;
    const char *p = "model.layers.%d.";
    char f[128];
#define GET(field, d0, d1, suffix)                                   \
    do {                                                             \
        snprintf(f, sizeof f, "%s%s", p, suffix);                    \
        SD_TRY(get2(w, src, &L->field, d0, d1, f, l));               \
    } while (0)
    GET(input_norm, d, 0, "input_layernorm.weight");
    GET(post_norm, d, 0, "post_attention_layernorm.weight");
    GET(wq, q, d, "self_attn.q_proj.weight");
    GET(wk, kv, d, "self_attn.k_proj.weight");
    GET(wv, kv, d, "self_attn.v_proj.weight");
    GET(wo, d, q, "self_attn.o_proj.weight");
    GET(w_gate, I, d, "mlp.gate_proj.weight");
    GET(w_up, I, d, "mlp.up_proj.weight");
    GET(w_down, d, I, "mlp.down_proj.weight");
    if (c->attention_bias) {
        GET(bq, q, 0, "self_attn.q_proj.bias");
        GET(bk, kv, 0, "self_attn.k_proj.bias");
        GET(bv, kv, 0, "self_attn.v_proj.bias");
    }
    if (c->o_proj_bias) GET(bo, d, 0, "self_attn.o_proj.bias");
    if (c->mlp_bias) {
        GET(b_gate, I, 0, "mlp.gate_proj.bias");
        GET(b_up, I, 0, "mlp.up_proj.bias");
        GET(b_down, d, 0, "mlp.down_proj.bias");
    }
#undef GET
    return SD_OK;
}

static int wire(const sd_model_config *c, const sd_weights *w, const char *src, sd_teacher *t,
                sd_teacher_layer *layers) {
    sd_tensor *embed, *norm, *head = NULL;
    SD_TRY(get2(w, src, &embed, c->vocab_size, c->hidden_size, "model.embed_tokens.weight", 0));
    SD_TRY(get2(w, src, &norm, c->hidden_size, 0, "model.norm.weight", 0));
    if (c->tie_word_embeddings) {
        head = embed; /* a stored lm_head.weight, if any, is ignored as transformers does */
    } else {
        SD_TRY(get2(w, src, &head, c->vocab_size, c->hidden_size, "lm_head.weight", 0));
    }
    for (int l = 0; l < c->num_layers; l++) SD_TRY(wire_layer(c, w, src, l, &layers[l]));
    if (t) {
        t->embed = embed;
        t->final_norm = norm;
        t->lm_head = head;
    }
    return SD_OK;
}

int sd_teacher_validate(const sd_model_config *cfg, const sd_weights *w, const char *src) {
    SD_TRY(arch_supported(cfg, src));
    sd_teacher_layer *layers = sd_calloc((size_t)cfg->num_layers, sizeof *layers, "teacher layers");
    if (!layers) return SD_ERR_SYS;
    int rc = wire(cfg, w, src, NULL, layers);
    free(layers);
    return rc;
}

int sd_teacher_init(sd_teacher *t, const sd_model_config *cfg, sd_weights *w, const char *src) {
    memset(t, 0, sizeof *t);
    SD_TRY(arch_supported(cfg, src));
    t->cfg = *cfg;
    t->w = *w;
    sd_weights_init(w);
    t->src = sd_strdup(src, "model path");
    t->layers = sd_calloc((size_t)cfg->num_layers, sizeof *t->layers, "teacher layers");
    int rc = (t->src && t->layers) ? wire(&t->cfg, &t->w, src, t, t->layers) : SD_ERR_SYS;
    if (rc != SD_OK) sd_teacher_free(t);
    return rc;
}

int sd_teacher_load(sd_teacher *t, const char *path) {
    sd_model_config cfg;
    sd_weights w;
    sd_weights_init(&w);
    memset(t, 0, sizeof *t);
    char *src = sd_model_tensor_source(path);
    if (!src) return SD_ERR_SYS;
    int rc = sd_load_model(path, &cfg, &w);
    if (rc == SD_OK) rc = sd_teacher_init(t, &cfg, &w, src);
    sd_weights_free(&w);
    free(src);
    return rc;
}

int sd_teacher_to_ctx(sd_ctx *ctx, sd_teacher *t) {
    if (ctx->backend == SD_DEV_CPU) return SD_OK;
    SD_TRY(sd_weights_move_to_ctx(ctx, &t->w));
    return wire(&t->cfg, &t->w, t->src, t, t->layers);
}

void sd_teacher_free(sd_teacher *t) {
    sd_weights_free(&t->w);
    free(t->layers);
    free(t->src);
    memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------- trace and cache */

void sd_teacher_trace_free(sd_teacher_trace *tr) {
    sd_tensor *arrays[6] = {tr->hidden, tr->probs, tr->lse, tr->attn_out, tr->q, tr->k};
    for (int a = 0; a < 6; a++) {
        for (int i = 0; arrays[a] && i < tr->num_layers + (a == 0); i++) sd_tensor_free(&arrays[a][i]);
        free(arrays[a]);
    }
    sd_tensor_free(&tr->final_hidden);
    tr->hidden = tr->probs = tr->lse = tr->attn_out = tr->q = tr->k = NULL;
}

static int trace_alloc(sd_ctx *ctx, sd_teacher_trace *tr, const sd_model_config *c, int64_t B, int64_t T) {
    int L = c->num_layers;
    int64_t d = c->hidden_size, H = c->num_heads;
    tr->num_layers = L;
    tr->hidden = tr->probs = tr->lse = tr->attn_out = tr->q = tr->k = NULL;
    memset(&tr->final_hidden, 0, sizeof tr->final_hidden);
    if (tr->want_hidden) {
        if (!(tr->hidden = sd_calloc((size_t)L + 1, sizeof(sd_tensor), "trace"))) return SD_ERR_SYS;
        for (int l = 0; l <= L; l++) SD_TRY(sd_tensor_act(ctx, &tr->hidden[l], 3, B, T, d, 0));
        SD_TRY(sd_tensor_act(ctx, &tr->final_hidden, 3, B, T, d, 0));
    }
    if (tr->want_probs) {
        if (!(tr->probs = sd_calloc((size_t)L, sizeof(sd_tensor), "trace"))) return SD_ERR_SYS;
        for (int l = 0; l < L; l++) SD_TRY(sd_tensor_new_f32(ctx, &tr->probs[l], 4, B, H, T, T));
    }
    if (tr->want_lse) {
        if (!(tr->lse = sd_calloc((size_t)L, sizeof(sd_tensor), "trace"))) return SD_ERR_SYS;
        for (int l = 0; l < L; l++) SD_TRY(sd_tensor_new_f32(ctx, &tr->lse[l], 3, B, H, T, 0));
    }
    if (tr->want_attn_out) {
        if (!(tr->attn_out = sd_calloc((size_t)L, sizeof(sd_tensor), "trace"))) return SD_ERR_SYS;
        for (int l = 0; l < L; l++) SD_TRY(sd_tensor_act(ctx, &tr->attn_out[l], 3, B, T, d, 0));
    }
    if (tr->want_qk) {
        if (!(tr->q = sd_calloc((size_t)L, sizeof(sd_tensor), "trace"))) return SD_ERR_SYS;
        if (!(tr->k = sd_calloc((size_t)L, sizeof(sd_tensor), "trace"))) return SD_ERR_SYS;
        for (int l = 0; l < L; l++) {
            SD_TRY(sd_tensor_act(ctx, &tr->q[l], 4, B, T, H, c->head_dim));
            SD_TRY(sd_tensor_act(ctx, &tr->k[l], 4, B, T, c->num_kv_heads, c->head_dim));
        }
    }
    return SD_OK;
}

int sd_kv_cache_init(sd_kv_cache *c, const sd_model_config *cfg, int capacity) {
    memset(c, 0, sizeof *c);
    c->capacity = capacity;
    c->num_layers = cfg->num_layers;
    c->k = sd_calloc((size_t)cfg->num_layers, sizeof(sd_tensor), "kv cache");
    c->v = sd_calloc((size_t)cfg->num_layers, sizeof(sd_tensor), "kv cache");
    if (!c->k || !c->v) {
        sd_kv_cache_free(c);
        return SD_ERR_SYS;
    }
    for (int l = 0; l < cfg->num_layers; l++) {
        int rc = sd_tensor_f32(&c->k[l], 4, 1, capacity, cfg->num_kv_heads, cfg->head_dim) == SD_OK
                     ? sd_tensor_f32(&c->v[l], 4, 1, capacity, cfg->num_kv_heads, cfg->head_dim)
                     : SD_ERR_SYS;
        if (rc != SD_OK) {
            sd_kv_cache_free(c);
            return rc;
        }
    }
    return SD_OK;
}

void sd_kv_cache_free(sd_kv_cache *c) {
    for (int l = 0; l < c->num_layers; l++) {
        if (c->k) sd_tensor_free(&c->k[l]);
        if (c->v) sd_tensor_free(&c->v[l]);
    }
    free(c->k);
    free(c->v);
    memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------- forward */

/* Scratch activations of one forward call. */
typedef struct {
    sd_tensor x, xn, q, k, v, att, ao, gate, up;
} scratch;

static void scratch_free(scratch *s) {
    sd_tensor *all[] = {&s->x, &s->xn, &s->q, &s->k, &s->v, &s->att, &s->ao, &s->gate, &s->up};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

static int scratch_alloc(sd_ctx *ctx, scratch *s, const sd_model_config *c, int64_t B, int64_t T) {
    memset(s, 0, sizeof *s);
    int64_t d = c->hidden_size, hd = c->head_dim;
    SD_TRY(sd_tensor_act(ctx, &s->x, 3, B, T, d, 0));
    SD_TRY(sd_tensor_act(ctx, &s->xn, 3, B, T, d, 0));
    SD_TRY(sd_tensor_act(ctx, &s->q, 4, B, T, c->num_heads, hd));
    SD_TRY(sd_tensor_act(ctx, &s->k, 4, B, T, c->num_kv_heads, hd));
    SD_TRY(sd_tensor_act(ctx, &s->v, 4, B, T, c->num_kv_heads, hd));
    SD_TRY(sd_tensor_act(ctx, &s->att, 4, B, T, c->num_heads, hd));
    SD_TRY(sd_tensor_act(ctx, &s->ao, 3, B, T, d, 0));
    SD_TRY(sd_tensor_act(ctx, &s->gate, 3, B, T, c->intermediate_size, 0));
    SD_TRY(sd_tensor_act(ctx, &s->up, 3, B, T, c->intermediate_size, 0));
    return SD_OK;
}

/* Appends this step's k, v [1, T, Hkv, hd] to the cache and returns views of the whole
 * prefix [1, len + T, Hkv, hd] for attention. */
static void cache_append(sd_kv_cache *cache, int l, const scratch *s, sd_tensor *kall, sd_tensor *vall) {
    size_t row = (size_t)s->k.shape[2] * (size_t)s->k.shape[3];
    int64_t T = s->k.shape[1], S = cache->len + T;
    float *kc = cache->k[l].data, *vc = cache->v[l].data;
    memcpy(kc + (size_t)cache->len * row, s->k.data, (size_t)T * row * sizeof(float));
    memcpy(vc + (size_t)cache->len * row, s->v.data, (size_t)T * row * sizeof(float));
    int64_t shape[4] = {1, S, s->k.shape[2], s->k.shape[3]};
    *kall = sd_tensor_view(SD_F32, kc, 4, shape);
    *vall = sd_tensor_view(SD_F32, vc, 4, shape);
}

/* A non-owning [B, T, H * hd] view of a [B, T, H, hd] tensor: what a projection writes. */
static sd_tensor merged_heads(const sd_tensor *t) {
    int64_t shape[3] = {t->shape[0], t->shape[1], t->shape[2] * t->shape[3]};
    return sd_tensor_sub(t, 0, 3, shape);
}

/* One decoder layer on s->x (the residual stream), pre-norm (Llama):
 *   x += o_proj(attn(rope(q_proj(n1(x))), rope(k_proj(n1(x))), v_proj(n1(x))))
 *   x += down_proj(silu(gate_proj(n2(x))) * up_proj(n2(x))) */
static int layer_forward(sd_ctx *ctx, const sd_teacher *t, int l, scratch *s, sd_kv_cache *cache, int64_t pos0,
                         sd_teacher_trace *tr) {
    const sd_model_config *c = &t->cfg;
    const sd_teacher_layer *L = &t->layers[l];
    SD_TRY(sd_rmsnorm(ctx, &s->xn, &s->x, L->input_norm, c->norm_eps));
    sd_tensor q = merged_heads(&s->q), k = merged_heads(&s->k), v = merged_heads(&s->v);
    SD_TRY(sd_linear(ctx, &q, &s->xn, L->wq, L->bq));
    SD_TRY(sd_linear(ctx, &k, &s->xn, L->wk, L->bk));
    SD_TRY(sd_linear(ctx, &v, &s->xn, L->wv, L->bv));
    SD_TRY(sd_rotary(ctx, &s->q, &c->rope, pos0));
    SD_TRY(sd_rotary(ctx, &s->k, &c->rope, pos0));
    if (tr && tr->q) {
        SD_TRY(sd_copy(ctx, &tr->q[l], &s->q));
        SD_TRY(sd_copy(ctx, &tr->k[l], &s->k));
    }
    sd_tensor kall = s->k, vall = s->v;
    kall.owns = vall.owns = 0;
    if (cache) cache_append(cache, l, s, &kall, &vall);
    float scale = 1.0f / sqrtf((float)c->head_dim);
    SD_TRY(sd_attention(ctx, &s->att, &s->q, &kall, &vall, scale, tr && tr->probs ? &tr->probs[l] : NULL,
                        tr && tr->lse ? &tr->lse[l] : NULL));
    sd_tensor att = merged_heads(&s->att);
    SD_TRY(sd_linear(ctx, &s->ao, &att, L->wo, L->bo));
    if (tr && tr->attn_out) SD_TRY(sd_copy(ctx, &tr->attn_out[l], &s->ao));
    SD_TRY(sd_add(ctx, &s->x, &s->x, &s->ao));
    SD_TRY(sd_rmsnorm(ctx, &s->xn, &s->x, L->post_norm, c->norm_eps));
    SD_TRY(sd_linear(ctx, &s->gate, &s->xn, L->w_gate, L->b_gate));
    SD_TRY(sd_linear(ctx, &s->up, &s->xn, L->w_up, L->b_up));
    SD_TRY(sd_swiglu(ctx, &s->gate, &s->gate, &s->up));
    SD_TRY(sd_linear(ctx, &s->ao, &s->gate, L->w_down, L->b_down));
    SD_TRY(sd_add(ctx, &s->x, &s->x, &s->ao));
    return SD_OK;
}

static int check_forward_args(const sd_ctx *ctx, const sd_teacher *t, const sd_tensor *ids, const sd_kv_cache *cache,
                              const sd_tensor *logits) {
    if (ids->dtype != SD_I32 || ids->ndim != 2)
        return sd_fail(SD_ERR_INPUT, "teacher forward: input_ids must be I32 [batch, T], got %s with %d dims",
                       sd_dtype_name(ids->dtype), ids->ndim);
    int64_t B = ids->shape[0], T = ids->shape[1];
    if (cache && ctx->backend != SD_DEV_CPU)
        return sd_fail(SD_ERR_INPUT, "teacher forward: decoding with a KV cache runs on the CPU backend");
    if (cache && (B != 1 || cache->len + T > cache->capacity))
        return sd_fail(SD_ERR_INPUT, "teacher forward: KV cache needs batch 1 and room for %lld more positions "
                       "(%d of %d used)", (long long)T, cache->len, cache->capacity);
    if (logits) {
        int64_t shape[3] = {B, T, t->cfg.vocab_size};
        sd_tensor want = sd_tensor_view(SD_F32, NULL, 3, shape);
        if ((logits->dtype != SD_F32 && logits->dtype != sd_act_dtype(ctx)) || !sd_same_shape(logits, &want))
            return sd_fail(SD_ERR_INTERNAL, "teacher forward: logits must be F32 (or %s) [%lld, %lld, %d]",
                           sd_dtype_name(sd_act_dtype(ctx)), (long long)B, (long long)T, t->cfg.vocab_size);
    }
    return SD_OK;
}

static int forward_body(sd_ctx *ctx, const sd_teacher *t, const sd_tensor *ids, sd_kv_cache *cache,
                        sd_tensor *logits, sd_teacher_trace *tr, scratch *s) {
    const sd_model_config *c = &t->cfg;
    int64_t B = ids->shape[0], T = ids->shape[1], pos0 = cache ? cache->len : 0;
    SD_TRY(scratch_alloc(ctx, s, c, B, T));
    if (tr) SD_TRY(trace_alloc(ctx, tr, c, B, T));
    SD_TRY(sd_embedding(ctx, &s->x, ids, t->embed));
    for (int l = 0; l < c->num_layers; l++) {
        if (tr && tr->hidden) SD_TRY(sd_copy(ctx, &tr->hidden[l], &s->x));
        SD_TRY(layer_forward(ctx, t, l, s, cache, pos0, tr));
    }
    if (tr && tr->hidden) SD_TRY(sd_copy(ctx, &tr->hidden[c->num_layers], &s->x));
    SD_TRY(sd_rmsnorm(ctx, &s->xn, &s->x, t->final_norm, c->norm_eps));
    if (tr && tr->hidden) SD_TRY(sd_copy(ctx, &tr->final_hidden, &s->xn));
    if (logits) SD_TRY(sd_linear(ctx, logits, &s->xn, t->lm_head, NULL));
    if (cache) cache->len += (int)T;
    return SD_OK;
}

int sd_teacher_forward(sd_ctx *ctx, const sd_teacher *t, const sd_tensor *ids, sd_kv_cache *cache,
                       sd_tensor *logits, sd_teacher_trace *trace) {
    SD_TRY(check_forward_args(ctx, t, ids, cache, logits));
    scratch s;
    sd_tensor ids_tmp;
    const sd_tensor *ids_use;
    memset(&s, 0, sizeof s);
    int rc = sd_tensor_on_ctx(ctx, ids, &ids_tmp, &ids_use);
    if (rc == SD_OK) rc = forward_body(ctx, t, ids_use, cache, logits, trace, &s);
    scratch_free(&s);
    sd_tensor_free(&ids_tmp);
    if (rc != SD_OK && trace) sd_teacher_trace_free(trace);
    return rc;
}
