/* Weight transfer from the real stories260K teacher (and tiny-qwen2, whose q/k/v biases test
 * the attention init's conv-bias path): copied tensors are the teacher's, a student whose
 * every layer keeps attention computes the teacher's logits, the attention init gives the
 * mixer C = q, B = k, x = v before rotary, and impossible shapes are refused by name. */
#include "common/error.h"
#include "distill/student_train.h"
#include "distill/transfer.h"
#include "test_util.h"

static double max_rel(const sd_tensor *a, const sd_tensor *b) {
    const float *x = a->data, *y = b->data;
    double err = 0, scale = 1e-30;
    for (int64_t i = 0; i < sd_numel(a); i++) {
        err = fmax(err, fabs((double)x[i] - y[i]));
        scale = fmax(scale, fabs((double)y[i]));
    }
    return err / scale;
}

static int load_teacher(sd_teacher *t, const char *name) {
    char path[1024];
    test_path(path, sizeof path, name);
    return sd_teacher_load(t, path);
}

static void test_copies(const sd_teacher *t) {
    sd_student_spec spec = {.mixer = SD_MIXER_DISCRETE, .state_size = 16};
    sd_model_config c;
    sd_student s;
    CHECK_OK(sd_student_config_for(&t->cfg, &spec, "spec", &c));
    CHECK(c.ssm.num_heads == t->cfg.num_heads && c.ssm.head_dim == t->cfg.head_dim && c.ssm.n_groups == c.ssm.num_heads,
          "defaults: %d heads of %d, %d groups", c.ssm.num_heads, c.ssm.head_dim, c.ssm.n_groups);
    CHECK_OK(sd_student_from_teacher(t, &c, SD_INIT_MOHAWK, 1, &s));
    if (!s.layers) return;
    CHECK(memcmp(s.embed->data, t->embed->data, sd_nbytes(t->embed)) == 0, "embedding copied");
    for (int l = 0; l < c.num_layers; l++) {
        CHECK(memcmp(s.layers[l].w_down->data, t->layers[l].w_down->data, sd_nbytes(t->layers[l].w_down)) == 0 &&
                  memcmp(s.layers[l].norm->data, t->layers[l].input_norm->data, sd_nbytes(t->layers[l].input_norm)) == 0,
              "layer %d MLP and norm copied", l);
        const float *zb = s.layers[l].z_bias->data, *cw = s.layers[l].conv_x.data, *D = s.layers[l].d_skip->data;
        CHECK(zb[0] == SD_Z_BIAS_OPEN && cw[3] == 1.0f && cw[0] == 0.0f && D[0] == 1.0f, "layer %d MOHAWK init", l);
    }
    sd_student_free(&s);
}

/* Every layer kept as attention: the student is the teacher, bit for bit or nearly. */
static void test_all_attention(sd_ctx *ctx, const sd_teacher *t) {
    sd_student_spec spec = {.mixer = SD_MIXER_DISCRETE, .state_size = 16};
    for (int l = 0; l < t->cfg.num_layers; l++) spec.attn_layer[l] = 1;
    sd_model_config c;
    sd_student s;
    CHECK_OK(sd_student_config_for(&t->cfg, &spec, "spec", &c));
    CHECK_OK(sd_student_from_teacher(t, &c, SD_INIT_MOHAWK, 1, &s));
    enum { T = 33 };
    int32_t seq[T];
    for (int i = 0; i < T; i++) seq[i] = (i * 29 + 3) % c.vocab_size;
    int64_t shape[2] = {1, T};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape), a, b;
    CHECK_OK(sd_tensor_f32(&a, 3, 1, T, c.vocab_size, 0));
    CHECK_OK(sd_tensor_f32(&b, 3, 1, T, c.vocab_size, 0));
    CHECK_OK(sd_teacher_forward(ctx, t, &ids, NULL, &a, NULL));
    if (s.layers) CHECK_OK(sd_student_forward(ctx, &s, &ids, &b, NULL, NULL));
    double e = max_rel(&b, &a);
    printf("%s: all-attention student vs teacher logits: %.2e\n", t->src, e);
    CHECK(e < 1e-6, "all-attention student differs from the teacher by %.3e", e);
    sd_tensor_free(&a);
    sd_tensor_free(&b);
    sd_student_free(&s);
}

/* The attention init: the mixer's conv outputs (identity conv with the biases) are q, k, v. */
static void test_attention_init(sd_ctx *ctx, const sd_teacher *t) {
    const sd_model_config *tc = &t->cfg;
    sd_student_spec spec = {.mixer = SD_MIXER_DISCRETE, .state_size = tc->head_dim, .init = SD_INIT_ATTENTION};
    sd_model_config c;
    sd_student s;
    CHECK_OK(sd_student_config_for(tc, &spec, "spec", &c));
    CHECK_OK(sd_student_from_teacher(t, &c, SD_INIT_ATTENTION, 1, &s));
    if (!s.layers) return;
    enum { T = 9 };
    int l = c.num_layers - 1, rep = tc->num_heads / tc->num_kv_heads;
    int64_t hd = tc->head_dim, H = tc->num_heads;
    sd_student_layer_acts a;
    CHECK_OK(sd_student_layer_acts_init(ctx, &a, &c, l, 1, T));
    uint64_t rng = 5;
    for (int64_t i = 0; i < sd_numel(&a.x); i++) ((float *)a.x.data)[i] = sd_rng_normal(&rng);
    CHECK_OK(sd_student_ssm_inputs(ctx, &s, l, &a));
    sd_tensor q, k, v;
    CHECK_OK(sd_tensor_f32(&q, 3, 1, T, H * hd, 0));
    CHECK_OK(sd_tensor_f32(&k, 3, 1, T, tc->num_kv_heads * hd, 0));
    CHECK_OK(sd_tensor_f32(&v, 3, 1, T, tc->num_kv_heads * hd, 0));
    const sd_teacher_layer *L = &t->layers[l];
    CHECK_OK(sd_linear(ctx, &q, &a.xn, L->wq, L->bq));
    CHECK_OK(sd_linear(ctx, &k, &a.xn, L->wk, L->bk));
    CHECK_OK(sd_linear(ctx, &v, &a.xn, L->wv, L->bv));
    double worst = 0;
    for (int64_t tt = 0; tt < T; tt++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < hd; i++) {
                int64_t g = h / rep, row = tt * H * hd + h * hd + i;
                float want_c = ((float *)q.data)[row];
                float want_b = ((float *)k.data)[tt * tc->num_kv_heads * hd + g * hd + i];
                float want_x = ((float *)v.data)[tt * tc->num_kv_heads * hd + g * hd + i];
                worst = fmax(worst, fabs(((float *)a.cs.data)[row] - want_c));
                worst = fmax(worst, fabs(((float *)a.bs.data)[row] - want_b));
                worst = fmax(worst, fabs(((float *)a.xs.data)[row] - want_x));
            }
    printf("%s: attention init: C, B, x vs q, k, v: max abs diff %.2e\n", t->src, worst);
    CHECK(worst < 1e-5, "attention init does not give q, k, v (%.3e)", worst);
    sd_tensor_free(&q);
    sd_tensor_free(&k);
    sd_tensor_free(&v);
    sd_student_layer_acts_free(&a);
    sd_student_free(&s);
}

static void test_refusals(const sd_teacher *t) {
    sd_model_config c;
    sd_student_spec spec = {.mixer = SD_MIXER_DISCRETE, .state_size = 16, .init = SD_INIT_ATTENTION};
    int rc = sd_student_config_for(&t->cfg, &spec, "recipe.json: student", &c);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "recipe.json: student") && strstr(sd_errmsg(), "'init'"),
          "attention init with state 16: rc %d '%s'", rc, sd_errmsg());
    sd_student_spec bad = {.mixer = SD_MIXER_DISCRETE, .num_heads = 8, .n_groups = 3};
    rc = sd_student_config_for(&t->cfg, &bad, "spec", &c);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "n_groups"), "8 heads in 3 groups: rc %d '%s'", rc, sd_errmsg());
    sd_student_spec far = {.mixer = SD_MIXER_DISCRETE};
    far.attn_layer[t->cfg.num_layers] = 1;
    rc = sd_student_config_for(&t->cfg, &far, "spec", &c);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "attn_layers"), "attention layer past the end: '%s'", sd_errmsg());
}

int main(void) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    const char *teachers[] = {"hf/stories260K", "hf/tiny-qwen2"};
    for (int i = 0; i < 2; i++) {
        sd_teacher t;
        CHECK_OK(load_teacher(&t, teachers[i]));
        if (!t.layers) continue;
        test_copies(&t);
        test_all_attention(&ctx, &t);
        test_attention_init(&ctx, &t);
        if (i == 0) test_refusals(&t);
        sd_teacher_free(&t);
    }
    return test_summary("test_transfer");
}
