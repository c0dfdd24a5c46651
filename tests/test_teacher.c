/* The teacher forward on a random in-memory model: the KV-cache path equals the full
 * forward, batch rows are independent, runs are bit-identical, the trace is consistent, and
 * missing or misshapen tensors are refused with the tensor's name. */
#include "common/error.h"
#include "distill/teacher.h"
#include "test_util.h"

static sd_model_config small_config(void) {
    sd_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SD_ARCH_QWEN2;
    strcpy(c.model_type, "qwen2");
    strcpy(c.hidden_act, "silu");
    c.vocab_size = 50;
    c.hidden_size = 32;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 8;
    c.intermediate_size = 48;
    c.max_position_embeddings = 64;
    c.norm_eps = 1e-6f;
    c.attention_bias = 1;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.rope = (sd_rope_config){.head_dim = 8, .rotary_dim = 8, .theta = 10000.0};
    return c;
}

static void add_random(sd_weights *w, const char *name, int64_t d0, int64_t d1, uint64_t *rng, float scale,
                       float offset) {
    sd_tensor t;
    int64_t shape[2] = {d0, d1};
    if (sd_tensor_alloc(&t, SD_F32, d1 ? 2 : 1, shape) != SD_OK) abort();
    test_fill(t.data, (size_t)sd_numel(&t), rng, offset - scale, offset + scale);
    if (sd_weights_add(w, name, t) != SD_OK) abort();
}

/* Every tensor of the config, skipping the one named `omit` (NULL: none). */
static void random_weights(const sd_model_config *c, sd_weights *w, const char *omit) {
    uint64_t rng = 7;
    int64_t d = c->hidden_size, q = c->num_heads * c->head_dim, kv = c->num_kv_heads * c->head_dim,
            I = c->intermediate_size;
    sd_weights_init(w);
    add_random(w, "model.embed_tokens.weight", c->vocab_size, d, &rng, 1.0f, 0);
    add_random(w, "model.norm.weight", d, 0, &rng, 0.2f, 1.0f);
    add_random(w, "lm_head.weight", c->vocab_size, d, &rng, 0.3f, 0);
    for (int l = 0; l < c->num_layers; l++) {
        struct { const char *suffix; int64_t d0, d1; float scale, offset; } t[] = {
            {"input_layernorm.weight", d, 0, 0.2f, 1.0f}, {"post_attention_layernorm.weight", d, 0, 0.2f, 1.0f},
            {"self_attn.q_proj.weight", q, d, 0.3f, 0},   {"self_attn.k_proj.weight", kv, d, 0.3f, 0},
            {"self_attn.v_proj.weight", kv, d, 0.3f, 0},  {"self_attn.o_proj.weight", d, q, 0.3f, 0},
            {"self_attn.q_proj.bias", q, 0, 0.1f, 0},     {"self_attn.k_proj.bias", kv, 0, 0.1f, 0},
            {"self_attn.v_proj.bias", kv, 0, 0.1f, 0},    {"mlp.gate_proj.weight", I, d, 0.3f, 0},
            {"mlp.up_proj.weight", I, d, 0.3f, 0},        {"mlp.down_proj.weight", d, I, 0.3f, 0},
        };
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.%s", l, t[i].suffix);
            if (omit && strcmp(name, omit) == 0) continue;
            add_random(w, name, t[i].d0, t[i].d1, &rng, t[i].scale, t[i].offset);
        }
    }
}

static int make_teacher(sd_teacher *t) {
    sd_model_config c = small_config();
    sd_weights w;
    random_weights(&c, &w, NULL);
    int rc = sd_teacher_init(t, &c, &w, "random");
    sd_weights_free(&w);
    return rc;
}

static double max_rel(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= num)) num = d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return num / (den + 1e-30);
}

static void test_cache_equals_full(sd_ctx *ctx, const sd_teacher *t) {
    enum { T = 12, V = 50 };
    int32_t seq[T];
    for (int i = 0; i < T; i++) seq[i] = (i * 7 + 3) % V;
    int64_t shape[2] = {1, T};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape), full, step;
    CHECK_OK(sd_tensor_f32(&full, 3, 1, T, V, 0));
    CHECK_OK(sd_teacher_forward(ctx, t, &ids, NULL, &full, NULL));
    sd_kv_cache cache;
    CHECK_OK(sd_kv_cache_init(&cache, &t->cfg, T));
    /* prefill 5 tokens, then one at a time */
    int64_t pshape[2] = {1, 5};
    sd_tensor pre = sd_tensor_view(SD_I32, seq, 2, pshape), prelog;
    CHECK_OK(sd_tensor_f32(&prelog, 3, 1, 5, V, 0));
    test_poison(prelog.data, 5 * V);
    CHECK_OK(sd_teacher_forward(ctx, t, &pre, &cache, &prelog, NULL));
    double worst = max_rel(prelog.data, full.data, 5 * V);
    CHECK_OK(sd_tensor_f32(&step, 3, 1, 1, V, 0));
    for (int i = 5; i < T; i++) {
        int64_t one[2] = {1, 1};
        sd_tensor id1 = sd_tensor_view(SD_I32, seq + i, 2, one);
        test_poison(step.data, V);
        CHECK_OK(sd_teacher_forward(ctx, t, &id1, &cache, &step, NULL));
        double e = max_rel(step.data, (float *)full.data + (size_t)i * V, V);
        if (!(e <= worst)) worst = e;
    }
    CHECK(worst < 1e-5, "KV-cache logits differ from the full forward by %.3e", worst);
    CHECK(cache.len == T, "cache length %d, expected %d", cache.len, T);
    int64_t one[2] = {1, 1};
    sd_tensor extra = sd_tensor_view(SD_I32, seq, 2, one);
    CHECK(sd_teacher_forward(ctx, t, &extra, &cache, &step, NULL) == SD_ERR_INPUT, "a full cache must be refused");
    printf("kv cache vs full forward: max rel error %.3e\n", worst);
    sd_kv_cache_free(&cache);
    sd_tensor_free(&full);
    sd_tensor_free(&step);
    sd_tensor_free(&prelog);
}

static void test_batch_and_determinism(sd_ctx *ctx, const sd_teacher *t) {
    enum { T = 9, V = 50 };
    int32_t seq[2 * T];
    for (int i = 0; i < 2 * T; i++) seq[i] = (i * 11 + 5) % V;
    int64_t s2[2] = {2, T}, s1[2] = {1, T};
    sd_tensor ids2 = sd_tensor_view(SD_I32, seq, 2, s2), ids1 = sd_tensor_view(SD_I32, seq + T, 2, s1);
    sd_tensor a, b, one;
    CHECK_OK(sd_tensor_f32(&a, 3, 2, T, V, 0));
    CHECK_OK(sd_tensor_f32(&b, 3, 2, T, V, 0));
    CHECK_OK(sd_tensor_f32(&one, 3, 1, T, V, 0));
    sd_teacher_trace tr = {.want_hidden = 1, .want_probs = 1, .want_lse = 1, .want_attn_out = 1};
    CHECK_OK(sd_teacher_forward(ctx, t, &ids2, NULL, &a, &tr));
    CHECK_OK(sd_teacher_forward(ctx, t, &ids2, NULL, &b, NULL));
    CHECK(memcmp(a.data, b.data, sd_nbytes(&a)) == 0, "two identical forwards differ");
    CHECK_OK(sd_teacher_forward(ctx, t, &ids1, NULL, &one, NULL));
    double e = max_rel(one.data, (float *)a.data + T * V, T * V);
    CHECK(e < 1e-5, "batch row 1 differs from its own forward by %.3e", e);
    /* trace: hidden[0] is the embedding of each id; every probability row sums to 1 */
    const float *emb = t->embed->data, *h0 = tr.hidden[0].data;
    int d = t->cfg.hidden_size;
    CHECK(memcmp(h0 + d, emb + (size_t)seq[1] * d, (size_t)d * sizeof(float)) == 0, "hidden[0] is not the embedding");
    const float *p = tr.probs[1].data;
    double worst = 0;
    for (int r = 0; r < 2 * 4 * T; r++) {
        double s = 0;
        for (int c = 0; c < T; c++) s += p[(size_t)r * T + c];
        if (fabs(s - 1) > worst) worst = fabs(s - 1);
    }
    CHECK(worst < 1e-5, "attention rows sum to 1 within %.3e", worst);
    sd_teacher_trace_free(&tr);
    sd_tensor_free(&a);
    sd_tensor_free(&b);
    sd_tensor_free(&one);
}

static void test_bad_weights(void) {
    sd_model_config c = small_config();
    sd_weights w;
    random_weights(&c, &w, "model.layers.1.self_attn.k_proj.bias");
    int rc = sd_teacher_validate(&c, &w, "m.safetensors");
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "model.layers.1.self_attn.k_proj.bias") &&
              strstr(sd_errmsg(), "m.safetensors"),
          "missing tensor: rc %d, '%s'", rc, sd_errmsg());
    sd_weights_free(&w);

    c.intermediate_size = 40; /* the stored MLP is 40 wide; the config below says 49 */
    random_weights(&c, &w, NULL);
    c.intermediate_size = 48 + 1;
    rc = sd_teacher_validate(&c, &w, "m.safetensors");
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "mlp.gate_proj.weight") && strstr(sd_errmsg(), "expected shape"),
          "wrong shape: rc %d, '%s'", rc, sd_errmsg());
    c.arch = SD_ARCH_PHI;
    rc = sd_teacher_validate(&c, &w, "m.safetensors");
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "phi"), "unsupported arch: rc %d, '%s'", rc, sd_errmsg());
    sd_weights_free(&w);
}

static void test_bad_ids(sd_ctx *ctx, const sd_teacher *t) {
    int32_t seq[3] = {1, 50, 2}; /* 50 is past the vocabulary */
    int64_t shape[2] = {1, 3};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape), lg;
    CHECK_OK(sd_tensor_f32(&lg, 3, 1, 3, 50, 0));
    int rc = sd_teacher_forward(ctx, t, &ids, NULL, &lg, NULL);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "50"), "out-of-range id: rc %d '%s'", rc, sd_errmsg());
    sd_tensor_free(&lg);
}

int main(void) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    sd_teacher t;
    CHECK_OK(make_teacher(&t));
    if (t.layers) {
        test_cache_equals_full(&ctx, &t);
        test_batch_and_determinism(&ctx, &t);
        test_bad_ids(&ctx, &t);
    }
    test_bad_weights();
    sd_teacher_free(&t);
    return test_summary("test_teacher");
}
